/**
 * node-registry: the seed's node registry (002, DAARION_API §7) on every gateway, and the durable
 * memory of the mesh's membership.
 *
 *   POST /api/v1/nodes/register            service/admin: a node (external ones use this) registers
 *   POST /api/v1/nodes/{node_id}/heartbeat service/admin: status + metrics; rate-limited per node (429)
 *   GET  /api/v1/nodes?role&status&limit&offset → {nodes, total};  GET /api/v1/nodes/{node_id}
 *   POST /api/v1/broadcast                 admin: `system.broadcast` to every node and every page (banner)
 *
 * Every node running this service registers itself at start and heartbeats every NODE_HEARTBEAT_MS
 * with its capabilities; every instance follows `$node.connected/disconnected` so a node that dies is
 * offline at once (lib/data/node-registry.ts). Exactly one instance — the holder of the "node-registry"
 * lease, NODE1 by preference — writes the join/leave history (fenced by its token), publishes
 * `node.{id}.events` and `ops.alert.critical` for nodes lost, and prunes heartbeat_log.
 */
import { randomUUID } from "crypto";
import os from "os";
import type { Context, Service, ServiceSchema, ServiceSettingSchema } from "moleculer";
import { Errors } from "moleculer";
import { NotFoundError, RateLimitedError } from "../lib/mesh/errors";
import { QueryTypes } from "sequelize";
import { isDatabaseFault } from "../lib/data/db-faults";
import { INTERNAL_ACCESS, type MeshUser } from "../lib/http/auth";
import { auditEvent } from "../lib/data/audit-events";
import { NodeRegistryStore, type Capabilities, type NodeRegistration } from "../lib/data/node-registry";
import { buildHealthReport } from "../lib/http/health";
import type { LeaderLease } from "../lib/data/leader-lease";
import { alertSubject, healthSubject, nodeEventsSubject, publishSubject, SYSTEM_BROADCAST } from "../lib/mesh/subjects";
import { databaseOf, nodeContextOf } from "../lib/runtime/node-resources";
import { TokenBucketLimiter } from "../lib/http/rate-limiter";
import { actionPolicy, leaveReason } from "../lib/mesh/failover-policy";
import { LeaderDutyMixin } from "../mixins/leader-duty.mixin";
import { PUBLISHES } from "../lib/data/outbox/relay";

const RECONCILE_EVERY_MS = 1_000;
const PRUNE_EVERY_MS = 60_000;
/** An external node heartbeats every ~30 s (seed); a burst of 5 absorbs retries, a flood gets 429. */
const HEARTBEAT_RATE = { perSecond: 1, burst: 5 };
const METRICS_MAX_BYTES = 4_096;

interface RegistryNode {
	id: string;
	available: boolean;
	hostname?: string;
	ipList?: string[];
	metadata?: { role?: string; version?: string };
}

interface LastEvent {
	node_id: string;
	event: "joined" | "rejoined" | "left";
}

/** Inserts only while this node holds the lease generation it claims (the database checks). */
const FENCED_INSERT = `
INSERT INTO mesh_node_events (namespace, node_id, role, event, reason, recorded_by, fencing_token)
SELECT $1, $2, $3, $4, $5, $6, $7
WHERE EXISTS (SELECT 1 FROM leader_leases WHERE name = $8 AND holder = $6 AND fencing_token = $7 AND expires_at > now())`;

const LAST_EVENTS = `
SELECT DISTINCT ON (node_id) node_id, event FROM mesh_node_events WHERE namespace = $1 ORDER BY node_id, id DESC`;

type RegistryContext<P> = Context<P, { user?: MeshUser }>;

interface NodeRegistryThis extends Service {
	lease: LeaderLease;
	store: NodeRegistryStore;
	heartbeatTimer: NodeJS.Timeout | null;
	/** when the leader last pruned heartbeat_log */
	lastPruneAt: number;
	heartbeatLimiter: TokenBucketLimiter;
	/** dependency → last status seen by this node's own heartbeat (ops.health on change) */
	dependencyStatus: Map<string, string>;
	/** why each node last left, from $node.disconnected (unexpected = heartbeat timeout) */
	leaveReasons: Map<string, string>;
	leaderRound(): Promise<void>;
	reconcile(): Promise<number>;
	registerSelf(): Promise<void>;
	heartbeatSelf(): Promise<void>;
	capabilities(): Promise<Capabilities>;
}

const READ = actionPolicy({ idempotent: true, timeout: "fast" });
const WRITE = actionPolicy({ idempotent: false, timeout: "standard" });
const NODE_ID = { type: "string", min: 1, max: 128, pattern: /^[A-Za-z0-9][A-Za-z0-9_.:-]*$/ } as const;
const STATUS = { type: "enum", values: ["online", "degraded"], optional: true } as const;

const CAPABILITIES = {
	type: "object",
	optional: true,
	strict: "remove",
	props: {
		services: { type: "array", items: { type: "string", min: 1, max: 100 }, max: 200, optional: true },
		models: { type: "array", items: { type: "string", min: 1, max: 200 }, max: 500, optional: true },
		cpu_count: { type: "number", integer: true, min: 1, max: 4_096, optional: true },
		memory_mb: { type: "number", integer: true, min: 1, optional: true },
		gpu: { type: "object", optional: true, nullable: true },
		labels: { type: "object", optional: true },
	},
} as const;

export const REGISTER_PARAMS = {
	node_id: { ...NODE_ID, optional: true },
	name: { type: "string", min: 1, max: 100, optional: true },
	role: { type: "string", min: 1, max: 40, pattern: /^[a-z0-9][a-z0-9_-]*$/ },
	hostname: { type: "string", min: 1, max: 253, optional: true },
	ip: { type: "string", min: 2, max: 45, pattern: /^[0-9A-Fa-f.:]+$/, optional: true },
	version: { type: "string", min: 1, max: 40, optional: true },
	status: STATUS,
	capabilities: CAPABILITIES,
	$$strict: "remove",
} as const;

function firstAddress(): string | null {
	for (const list of Object.values(os.networkInterfaces())) {
		const found = list?.find(a => a.family === "IPv4" && !a.internal);
		if (found) return found.address;
	}
	return "127.0.0.1";
}

function notFound(nodeID: string): Errors.MoleculerClientError {
	return new NotFoundError(`Node ${nodeID} is not registered`, "NODE_NOT_FOUND", { node_id: nodeID });
}

const NodeRegistryService: ServiceSchema<ServiceSettingSchema, Record<string, never>, Record<string, never>, NodeRegistryThis> = {
	name: "node-registry",
	/** Published through the outbox (the event stream captures it): its audit events; ops.health.* and ops.alert.* go out on NATS and the stream keeps them. */
	metadata: { [PUBLISHES]: ["audit.>", "ops.>"] },
	mixins: [LeaderDutyMixin<NodeRegistryThis>({ duty: "node-registry", everyMs: RECONCILE_EVERY_MS, what: "node-registry reconcile", run() { return this.leaderRound(); } })],

	events: {
		async "$node.disconnected"(ctx: Context<{ node: { id: string }; unexpected?: boolean }>) {
			this.leaveReasons.set(ctx.params.node.id, leaveReason(ctx.params.unexpected));
			await this.store?.markDisconnected(ctx.params.node.id, true).catch(err => this.logger.warn(`node-registry: ${(err as Error).message}`));
		},
		async "$node.connected"(ctx: Context<{ node: { id: string } }>) {
			await this.store?.markDisconnected(ctx.params.node.id, false).catch(err => this.logger.warn(`node-registry: ${(err as Error).message}`));
		},
	},

	actions: {
		register: {
			...WRITE,
			access: INTERNAL_ACCESS,
			params: REGISTER_PARAMS,
			async handler(ctx: RegistryContext<Omit<NodeRegistration, "kind" | "node_id" | "name"> & { node_id?: string; name?: string }>) {
				const p = ctx.params;
				const nodeID = p.node_id ?? `node-${(p.hostname ?? "external").replace(/[^A-Za-z0-9-]/g, "").slice(0, 40) || "external"}-${randomUUID().slice(0, 8)}`;
				const inserted = await this.store.register({ ...p, node_id: nodeID, name: p.name ?? nodeID, kind: "external" });
				await auditEvent(this.broker, ctx, { service: "node-registry", action: "node_registered", actor: ctx.meta.user?.id ?? "mesh", target: nodeID, details: { kind: "external", role: p.role, new: inserted } });
				await publishSubject(this.broker, nodeEventsSubject(nodeID), { event: "registered", node_id: nodeID, kind: "external" });
				return this.store.get(nodeID);
			},
		},

		heartbeat: {
			...WRITE,
			access: INTERNAL_ACCESS,
			params: { node_id: NODE_ID, status: STATUS, metrics: { type: "object", optional: true }, $$strict: "remove" },
			async handler(ctx: RegistryContext<{ node_id: string; status?: "online" | "degraded"; metrics?: Record<string, unknown> }>) {
				const { node_id, status = "online", metrics = {} } = ctx.params;
				const limited = this.heartbeatLimiter.take(node_id);
				if (!limited.allowed) {
					throw new RateLimitedError(`Too many heartbeats for ${node_id}; retry in ${limited.retryAfterSeconds} s`, "RATE_LIMITED", { node_id, retry_after: limited.retryAfterSeconds });
				}
				if (Buffer.byteLength(JSON.stringify(metrics)) > METRICS_MAX_BYTES) {
					throw new Errors.ValidationError(`metrics: at most ${METRICS_MAX_BYTES} bytes of JSON`, "VALIDATION_ERROR", [{ field: "metrics", message: `at most ${METRICS_MAX_BYTES} bytes` }]);
				}
				const result = await this.store.heartbeat(node_id, status, metrics);
				if (!result) throw notFound(node_id);
				if (result.before !== status) await publishSubject(this.broker, nodeEventsSubject(node_id), { event: "status", node_id, status, previous: result.before });
				return { success: true, node_id, status, timestamp: new Date().toISOString() };
			},
		},

		list: {
			...READ,
			access: "user",
			params: {
				role: { type: "string", min: 1, max: 40, optional: true },
				status: { type: "enum", values: ["online", "degraded", "offline"], optional: true },
				limit: { type: "number", integer: true, min: 1, max: 1_000, optional: true, convert: true },
				offset: { type: "number", integer: true, min: 0, optional: true, convert: true },
				$$strict: "remove",
			},
			async handler(ctx: Context<{ role?: string; status?: string; limit?: number; offset?: number }>) {
				return this.store.list({ ...ctx.params, limit: ctx.params.limit ?? 100, offset: ctx.params.offset ?? 0 });
			},
		},

		get: {
			...READ,
			access: "user",
			params: { node_id: NODE_ID, $$strict: "remove" },
			async handler(ctx: Context<{ node_id: string }>) {
				const node = await this.store.get(ctx.params.node_id);
				if (!node) throw notFound(ctx.params.node_id);
				return { ...node, heartbeats: await this.store.recentHeartbeats(node.node_id, 10) };
			},
		},

		broadcast: {
			...WRITE,
			access: ["admin"],
			params: { message: { type: "string", min: 1, max: 500 }, severity: { type: "enum", values: ["info", "warning", "critical"], optional: true }, $$strict: "remove" },
			async handler(ctx: RegistryContext<{ message: string; severity?: string }>) {
				const actor = ctx.meta.user?.id ?? "mesh";
				const id = randomUUID();
				await publishSubject(this.broker, SYSTEM_BROADCAST, { id, message: ctx.params.message, severity: ctx.params.severity ?? "info", by: actor });
				await auditEvent(this.broker, ctx, { service: "node-registry", action: "broadcast_sent", actor, target: SYSTEM_BROADCAST, details: { id, severity: ctx.params.severity ?? "info", length: ctx.params.message.length } });
				return { id, delivered: true };
			},
		},

		leader: {
			...READ,
			rest: "GET /leader",
			access: "public",
			async handler() {
				const { name } = this.lease;
				const [row] = await databaseOf(this.broker).query(
					"SELECT holder, fencing_token, acquired_at, expires_at, handback_to FROM leader_leases WHERE name = $1",
					{ bind: [name], type: QueryTypes.SELECT },
				);
				return { lease: name, ...(row ?? { holder: null }) };
			},
		},
		events: {
			...READ,
			rest: "GET /events",
			access: INTERNAL_ACCESS,
			params: { limit: { type: "number", integer: true, min: 1, max: 1_000, optional: true, convert: true }, $$strict: "remove" },
			async handler(ctx: Context<{ limit?: number }>) {
				return databaseOf(this.broker).query(
					"SELECT node_id, role, event, reason, recorded_by, fencing_token, at FROM mesh_node_events WHERE namespace = $1 ORDER BY id DESC LIMIT $2",
					{ bind: [this.broker.namespace, ctx.params.limit ?? 100], type: QueryTypes.SELECT },
				);
			},
		},
	},

	methods: {
		/** The leader's round (LeaderDutyMixin): the membership history every second, heartbeat_log pruned every minute. */
		async leaderRound(this: NodeRegistryThis) {
			if (Date.now() - this.lastPruneAt >= PRUNE_EVERY_MS) {
				this.lastPruneAt = Date.now();
				const { retentionHours } = nodeContextOf(this.broker).settings.registry;
				await this.store.prune(retentionHours).catch(err => isDatabaseFault(err) || this.logger.warn(`node-registry prune failed: ${(err as Error).message}`));
			}
			await this.reconcile();
		},

		/** Writes the difference between the live registry and the last recorded event of each node. */
		async reconcile(this: NodeRegistryThis): Promise<number> {
			if (!this.lease.isLeader()) return 0;
			const sequelize = databaseOf(this.broker);
			const recorded = new Map(
				(await sequelize.query<LastEvent>(LAST_EVENTS, { bind: [this.broker.namespace], type: QueryTypes.SELECT })).map(r => [r.node_id, r.event]),
			);
			const nodes = this.broker.registry.getNodeList({ onlyAvailable: false, withServices: false }) as unknown as RegistryNode[];
			let written = 0;
			for (const node of nodes) {
				const last = recorded.get(node.id);
				const event = node.available ? (last === undefined ? "joined" : last === "left" ? "rejoined" : null) : last && last !== "left" ? "left" : null;
				if (!event || !this.lease.isLeader()) continue;
				const reason = event === "left" ? (this.leaveReasons.get(node.id) ?? "heartbeat-timeout") : null;
				await sequelize.query(FENCED_INSERT, {
					bind: [this.broker.namespace, node.id, node.metadata?.role ?? null, event, reason, this.broker.nodeID, this.lease.fencingToken, this.lease.name],
				});
				await auditEvent(this.broker, null, {
					service: "node-registry",
					action: event === "left" ? "node_left" : "node_joined",
					actor: `node:${this.broker.nodeID}`,
					target: node.id,
					outcome: event === "left" && reason !== "graceful" ? "failure" : "success",
					details: { role: node.metadata?.role ?? null, event, reason },
				});
				await publishSubject(this.broker, nodeEventsSubject(node.id), { event, node_id: node.id, reason });
				if (event === "left" && reason !== "graceful") {
					await publishSubject(this.broker, alertSubject("critical"), { source: "node-registry", node_id: node.id, message: `Node ${node.id} left the mesh unexpectedly (${reason})` });
				}
				written++;
			}
			return written;
		},

		async capabilities(this: NodeRegistryThis): Promise<Capabilities> {
			const services = [...new Set((this.broker.services as Service[]).map(s => s.name))].sort();
			let models: string[] = [];
			// swapper-proxy (issue #15) lists its models when it runs somewhere in the mesh.
			if (this.broker.registry.getServiceList({ onlyAvailable: true }).some((s: { name: string }) => s.name === "swapper-proxy")) {
				models = await this.broker
					.call<string[], Record<string, never>>("swapper-proxy.models", {}, { timeout: 1_000 })
					.then(list => (Array.isArray(list) ? list.map(String).slice(0, 500) : []))
					.catch(() => []);
			}
			return { services, models, cpu_count: os.cpus().length, memory_mb: Math.round(os.totalmem() / 2 ** 20), gpu: null, labels: { role: nodeContextOf(this.broker).settings.role } };
		},

		async registerSelf(this: NodeRegistryThis) {
			const { settings } = nodeContextOf(this.broker);
			const inserted = await this.store.register({
				node_id: this.broker.nodeID,
				name: this.broker.nodeID,
				role: settings.role,
				kind: "mesh",
				hostname: os.hostname(),
				ip: firstAddress(),
				version: settings.version,
				capabilities: await this.capabilities(),
			});
			await auditEvent(this.broker, null, { service: "node-registry", action: "node_registered", actor: `node:${this.broker.nodeID}`, target: this.broker.nodeID, details: { kind: "mesh", role: settings.role, new: inserted } });
			await publishSubject(this.broker, nodeEventsSubject(this.broker.nodeID), { event: "registered", node_id: this.broker.nodeID, kind: "mesh" });
		},

		/** The node's own registry heartbeat, with its dependencies' health (ops.health.{dependency} on change). */
		async heartbeatSelf(this: NodeRegistryThis) {
			const report = await buildHealthReport(this.broker);
			const changed = Object.entries(report.dependencies).filter(([name, dep]) => this.dependencyStatus.get(name) !== dep.status);
			for (const [name, dep] of changed) {
				const previous = this.dependencyStatus.get(name) ?? null;
				this.dependencyStatus.set(name, dep.status);
				if (previous !== null) await publishSubject(this.broker, healthSubject(name), { node_id: this.broker.nodeID, dependency: name, status: dep.status, previous });
			}
			const status = report.status === "healthy" ? "online" : "degraded";
			const metrics = { load1: os.loadavg()[0], rss_mb: Math.round(process.memoryUsage().rss / 2 ** 20), uptime_s: Math.round(process.uptime()) };
			if (!(await this.store.heartbeat(this.broker.nodeID, status, metrics))) await this.registerSelf();
		},
	},

	created() {
		this.leaveReasons = new Map();
		this.dependencyStatus = new Map();
		this.heartbeatTimer = null;
		this.lastPruneAt = Date.now();
		this.heartbeatLimiter = new TokenBucketLimiter(HEARTBEAT_RATE.perSecond, HEARTBEAT_RATE.burst);
		this.store = new NodeRegistryStore(databaseOf(this.broker), this.broker.namespace, nodeContextOf(this.broker).settings.registry.offlineAfterMs);
	},

	async started() {
		const { registry } = nodeContextOf(this.broker).settings;
		await this.registerSelf().catch(err => this.logger.warn(`node-registry: self-registration failed: ${(err as Error).message}`));
		// Every node's own heartbeat: not a leader duty.
		this.heartbeatTimer = setInterval(() => void this.heartbeatSelf().catch(err => isDatabaseFault(err) || this.logger.warn(`node-registry heartbeat failed: ${(err as Error).message}`)), registry.heartbeatMs);
	},

	stopped() {
		if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
	},
};

export default NodeRegistryService;
