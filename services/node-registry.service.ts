/**
 * node-registry: the durable memory of the mesh's membership. Every node runs it; exactly one (the
 * holder of the "node-registry" leader lease, NODE1 by preference) writes what the registry sees —
 * nodes joining, rejoining and leaving, with the reason — into mesh_node_events. Each write is fenced
 * by the lease's token in the database, so a node that hung and woke up cannot write as a stale leader.
 */
import type { Context, Service, ServiceSchema } from "moleculer";
import { QueryTypes } from "sequelize";
import { isDatabaseFault } from "../lib/data/db-faults";
import { defineActions, INTERNAL_ACCESS } from "../lib/auth";
import { createDutyLease, type LeaderLease } from "../lib/leader-lease";
import { databaseOf } from "../lib/node-context";
import { actionPolicy, leaveReason } from "../lib/resilience";

const RECONCILE_EVERY_MS = 1_000;

interface RegistryNode {
	id: string;
	available: boolean;
	metadata?: { role?: string };
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

interface NodeRegistryThis extends Service {
	lease: LeaderLease;
	reconcileTimer: NodeJS.Timeout | null;
	/** why each node last left, from $node.disconnected (unexpected = heartbeat timeout) */
	leaveReasons: Map<string, string>;
	reconcile(): Promise<number>;
}

const READ = actionPolicy({ idempotent: true, timeout: "fast" });

const NodeRegistryService: ServiceSchema = {
	name: "node-registry",

	events: {
		"$node.disconnected"(this: Service, ctx: Context<{ node: { id: string }; unexpected?: boolean }>) {
			(this as NodeRegistryThis).leaveReasons.set(ctx.params.node.id, leaveReason(ctx.params.unexpected));
		},
	},

	actions: defineActions({
		leader: {
			...READ,
			rest: "GET /leader",
			access: "public",
			async handler(this: Service) {
				const { name } = (this as NodeRegistryThis).lease;
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
			async handler(this: Service, ctx: Context<{ limit?: number }>) {
				return databaseOf(this.broker).query(
					"SELECT node_id, role, event, reason, recorded_by, fencing_token, at FROM mesh_node_events WHERE namespace = $1 ORDER BY id DESC LIMIT $2",
					{ bind: [this.broker.namespace, ctx.params.limit ?? 100], type: QueryTypes.SELECT },
				);
			},
		},
	}),

	methods: {
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
				written++;
			}
			return written;
		},
	},

	created(this: Service) {
		const self = this as NodeRegistryThis;
		self.leaveReasons = new Map();
		self.reconcileTimer = null;
	},

	async started(this: Service) {
		const self = this as NodeRegistryThis;
		self.lease = createDutyLease(this.broker, "node-registry", this.logger);
		await self.lease.start();
		self.reconcileTimer = setInterval(() => {
			self.reconcile().catch(err => isDatabaseFault(err) || this.logger.warn(`node-registry reconcile failed: ${(err as Error).message}`));
		}, RECONCILE_EVERY_MS);
	},

	async stopped(this: Service) {
		const self = this as NodeRegistryThis;
		if (self.reconcileTimer) clearInterval(self.reconcileTimer);
		await self.lease?.stop();
	},
};

export default NodeRegistryService;
