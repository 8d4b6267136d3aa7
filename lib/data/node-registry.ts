/**
 * The node registry's tables (migration 009): nodes, node_profiles, heartbeat_log, per mesh namespace.
 *
 * Status is computed when read, from two signals:
 *  - heartbeat age: none for `offlineAfterMs` → offline, for half of it → degraded;
 *  - for mesh nodes, the mesh's own membership: `disconnected_at` is set by every registry instance on
 *    `$node.disconnected` (heartbeat timeout 2.5 s, or a clean stop) and cleared on `$node.connected` and
 *    when the node registers again, so a SIGKILLed node is offline within seconds, not minutes.
 * A node's own report (`degraded`) is kept as reported_status and can only make it look worse.
 */
import { QueryTypes, type Sequelize } from "sequelize";

export interface Capabilities {
	services?: string[];
	models?: string[];
	cpu_count?: number;
	memory_mb?: number;
	gpu?: Record<string, unknown> | null;
	labels?: Record<string, unknown>;
}

export interface NodeRegistration {
	node_id: string;
	name: string;
	role: string;
	kind: "mesh" | "external";
	hostname?: string | null;
	ip?: string | null;
	version?: string | null;
	status?: "online" | "degraded";
	capabilities?: Capabilities;
}

export interface NodeView {
	node_id: string;
	name: string;
	role: string;
	kind: "mesh" | "external";
	hostname: string | null;
	ip: string | null;
	version: string | null;
	status: "online" | "degraded" | "offline";
	registered_at: string;
	last_heartbeat: string;
	disconnected_at: string | null;
	capabilities?: Capabilities;
}

const STATUS = `CASE
	WHEN n.kind = 'mesh' AND n.disconnected_at IS NOT NULL THEN 'offline'
	WHEN n.last_heartbeat < now() - $2 * interval '1 millisecond' THEN 'offline'
	WHEN n.reported_status = 'degraded' OR n.last_heartbeat < now() - ($2 / 2) * interval '1 millisecond' THEN 'degraded'
	ELSE 'online' END`;

const SELECT_NODES = `SELECT n.node_id, n.name, n.role, n.kind, n.hostname, n.ip, n.version, ${STATUS} AS status,
	n.registered_at, n.last_heartbeat, n.disconnected_at,
	json_build_object('services', p.services, 'models', p.models, 'cpu_count', p.cpu_count, 'memory_mb', p.memory_mb, 'gpu', p.gpu, 'labels', p.labels) AS capabilities
FROM nodes n LEFT JOIN node_profiles p ON p.namespace = n.namespace AND p.node_id = n.node_id
WHERE n.namespace = $1`;

export class NodeRegistryStore {
	constructor(
		private readonly sequelize: Sequelize,
		private readonly namespace: string,
		private readonly offlineAfterMs: number,
	) {}

	/** Insert or refresh a node and its profile; returns whether it was new. Clears a mesh disconnect. */
	async register(r: NodeRegistration): Promise<boolean> {
		return this.sequelize.transaction(async t => {
			const [row] = await this.sequelize.query<{ inserted: boolean }>(
				`INSERT INTO nodes (namespace, node_id, name, role, kind, hostname, ip, version, reported_status)
				 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
				 ON CONFLICT (namespace, node_id) DO UPDATE SET name = EXCLUDED.name, role = EXCLUDED.role, hostname = EXCLUDED.hostname, ip = EXCLUDED.ip,
					version = EXCLUDED.version, reported_status = EXCLUDED.reported_status, last_heartbeat = now(), disconnected_at = NULL
				 RETURNING (xmax = 0) AS inserted`,
				{ bind: [this.namespace, r.node_id, r.name, r.role, r.kind, r.hostname ?? null, r.ip ?? null, r.version ?? null, r.status ?? "online"], type: QueryTypes.SELECT, transaction: t },
			);
			const c = r.capabilities ?? {};
			await this.sequelize.query(
				`INSERT INTO node_profiles (namespace, node_id, services, models, cpu_count, memory_mb, gpu, labels)
				 VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb)
				 ON CONFLICT (namespace, node_id) DO UPDATE SET services = EXCLUDED.services, models = EXCLUDED.models, cpu_count = EXCLUDED.cpu_count,
					memory_mb = EXCLUDED.memory_mb, gpu = EXCLUDED.gpu, labels = EXCLUDED.labels, updated_at = now()`,
				{ bind: [this.namespace, r.node_id, c.services ?? [], c.models ?? [], c.cpu_count ?? null, c.memory_mb ?? null, JSON.stringify(c.gpu ?? null), JSON.stringify(c.labels ?? {})], transaction: t },
			);
			return row.inserted;
		});
	}

	/** Records a heartbeat; returns the node's status before it, or null for an unknown node. */
	async heartbeat(nodeID: string, status: "online" | "degraded", metrics: Record<string, unknown>): Promise<{ before: NodeView["status"] } | null> {
		const [row] = await this.sequelize.query<{ before: NodeView["status"] }>(
			`WITH before AS (SELECT ${STATUS} AS status FROM nodes n WHERE n.namespace = $1 AND n.node_id = $3 FOR UPDATE),
			 updated AS (UPDATE nodes SET last_heartbeat = now(), reported_status = $4 WHERE namespace = $1 AND node_id = $3 RETURNING node_id),
			 logged AS (INSERT INTO heartbeat_log (namespace, node_id, status, metrics) SELECT $1, node_id, $4, $5::jsonb FROM updated)
			 SELECT status AS before FROM before`,
			{ bind: [this.namespace, this.offlineAfterMs, nodeID, status, JSON.stringify(metrics)], type: QueryTypes.SELECT },
		);
		return row ? { before: row.before } : null;
	}

	/** The mesh saw the node leave (true) or (re)join (false); only nodes registered as mesh nodes. */
	async markDisconnected(nodeID: string, disconnected: boolean): Promise<void> {
		await this.sequelize.query(
			`UPDATE nodes SET disconnected_at = CASE WHEN $3 THEN COALESCE(disconnected_at, now()) ELSE NULL END WHERE namespace = $1 AND node_id = $2 AND kind = 'mesh'`,
			{ bind: [this.namespace, nodeID, disconnected] },
		);
	}

	async list(filter: { role?: string; status?: string; limit: number; offset: number }): Promise<{ nodes: NodeView[]; total: number }> {
		const where = `${SELECT_NODES} AND ($3::text IS NULL OR n.role = $3)`;
		const rows = await this.sequelize.query<NodeView>(
			`SELECT * FROM (${where}) x WHERE ($4::text IS NULL OR status = $4) ORDER BY node_id`,
			{ bind: [this.namespace, this.offlineAfterMs, filter.role ?? null, filter.status ?? null], type: QueryTypes.SELECT },
		);
		return { nodes: rows.slice(filter.offset, filter.offset + filter.limit), total: rows.length };
	}

	async get(nodeID: string): Promise<NodeView | null> {
		const [row] = await this.sequelize.query<NodeView>(`${SELECT_NODES} AND n.node_id = $3`, { bind: [this.namespace, this.offlineAfterMs, nodeID], type: QueryTypes.SELECT });
		return row ?? null;
	}

	async recentHeartbeats(nodeID: string, limit: number): Promise<Array<{ status: string; metrics: Record<string, unknown>; at: string }>> {
		return this.sequelize.query("SELECT status, metrics, at FROM heartbeat_log WHERE namespace = $1 AND node_id = $2 ORDER BY at DESC LIMIT $3", {
			bind: [this.namespace, nodeID, limit],
			type: QueryTypes.SELECT,
		});
	}

	/** Retention: run by the registry leader. */
	async prune(retentionHours: number): Promise<number> {
		const [, result] = (await this.sequelize.query("DELETE FROM heartbeat_log WHERE at < now() - $1 * interval '1 hour'", { bind: [retentionHours] })) as [unknown, { rowCount?: number }];
		return result?.rowCount ?? 0;
	}
}
