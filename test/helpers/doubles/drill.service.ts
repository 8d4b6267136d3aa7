/**
 * Test double: a keyed write that holds its transaction open for `holdMs`, so chaos drills can kill a
 * node in the middle of a write. Lives in tests only (production schemas carry no test hooks); nodes
 * load it when started through test/helpers/run-node-with-doubles.ts.
 */
import type { Context, Service, ServiceSchema } from "moleculer";
import { QueryTypes, type Transaction } from "sequelize";
import { defineActions, type MeshUser } from "../../../lib/auth";
import { databaseOf } from "../../../lib/node-context";
import { actionPolicy } from "../../../lib/resilience";
import { IdempotentWritesMixin, type IdempotencyMeta, type IdempotentWriteMethods } from "../../../mixins/idempotent-writes.mixin";

const CREATE = `CREATE TABLE IF NOT EXISTS drill_writes (
	id uuid PRIMARY KEY DEFAULT gen_random_uuid(), subject text NOT NULL, actor_id text NOT NULL, node_id text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`;

const DrillService: ServiceSchema = {
	name: "drill",
	mixins: [IdempotentWritesMixin],
	actions: defineActions({
		write: {
			...actionPolicy({ idempotent: false, timeout: "standard" }),
			rest: "POST /writes",
			access: "user",
			params: { subject: { type: "string", min: 1, max: 300 }, holdMs: { type: "number", integer: true, min: 0, max: 4_000, optional: true, convert: true }, $$strict: "remove" },
			async handler(this: Service, ctx: Context<{ subject: string; holdMs?: number }, IdempotencyMeta & { user?: MeshUser }>) {
				const actor = ctx.meta.user?.id ?? "mesh";
				return (this as Service & IdempotentWriteMethods).idempotentWrite(ctx, `drill.write:${actor}`, async (t: Transaction) => {
					const [row] = await databaseOf(this.broker).query("INSERT INTO drill_writes (subject, actor_id, node_id) VALUES ($1, $2, $3) RETURNING *", {
						bind: [ctx.params.subject, actor, this.broker.nodeID],
						type: QueryTypes.SELECT,
						transaction: t,
					});
					if (ctx.params.holdMs) await new Promise(resolve => setTimeout(resolve, ctx.params.holdMs));
					return row;
				});
			},
		},
	}),
	async started(this: Service) {
		// Nodes starting together race on CREATE TABLE IF NOT EXISTS; the loser's error is harmless.
		await databaseOf(this.broker)
			.query(CREATE)
			.catch(() => undefined);
	},
};

export default DrillService;
