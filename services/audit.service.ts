/**
 * audit: an append-only record of who did what. `record` is a write and therefore never retried by
 * the mesh on its own; with an Idempotency-Key it applies at most once however often a client
 * retries (the failover drill in test/chaos relies on that).
 */
import type { Context, Service, ServiceSchema } from "moleculer";
import { QueryTypes, type Transaction } from "sequelize";
import { defineActions, INTERNAL_ACCESS, type MeshUser } from "../lib/auth";
import { databaseOf } from "../lib/node-context";
import { actionPolicy } from "../lib/resilience";
import { IdempotentWritesMixin, type IdempotencyMeta, type IdempotentWriteMethods } from "../mixins/idempotent-writes.mixin";

interface RecordParams {
	action: string;
	subject: string;
	details?: Record<string, unknown>;
}

interface AuditRecord {
	id: string;
	actor_id: string;
	action: string;
	subject: string;
	details: Record<string, unknown>;
	node_id: string;
	request_id: string | null;
	created_at: string;
}

type AuditThis = Service & IdempotentWriteMethods;
type AuditContext<P> = Context<P, IdempotencyMeta & { user?: MeshUser }>;

const INSERT = `INSERT INTO audit_records (actor_id, action, subject, details, node_id, request_id)
VALUES ($1, $2, $3, $4::jsonb, $5, $6) RETURNING *`;

const AuditService: ServiceSchema = {
	name: "audit",
	mixins: [IdempotentWritesMixin],

	actions: defineActions({
		record: {
			...actionPolicy({ idempotent: false, timeout: "standard" }),
			rest: "POST /records",
			access: "user",
			params: {
				action: { type: "string", min: 1, max: 100, pattern: /^[a-z][a-z0-9_.-]*$/ },
				subject: { type: "string", min: 1, max: 300 },
				details: { type: "object", optional: true },
				$$strict: "remove",
			},
			async handler(this: Service, ctx: AuditContext<RecordParams>) {
				const self = this as AuditThis;
				const actor = ctx.meta.user?.id ?? "mesh";
				return self.idempotentWrite(ctx, `audit.record:${actor}`, async (t: Transaction) => {
					const [row] = await databaseOf(this.broker).query<AuditRecord>(INSERT, {
						bind: [actor, ctx.params.action, ctx.params.subject, JSON.stringify(ctx.params.details ?? {}), this.broker.nodeID, ctx.requestID ?? null],
						type: QueryTypes.SELECT,
						transaction: t,
					});
					return row;
				});
			},
		},

		list: {
			...actionPolicy({ idempotent: true, timeout: "fast" }),
			rest: "GET /records",
			access: INTERNAL_ACCESS,
			params: {
				subject: { type: "string", min: 1, max: 300, optional: true },
				limit: { type: "number", integer: true, min: 1, max: 500, optional: true, convert: true },
				$$strict: "remove",
			},
			async handler(this: Service, ctx: Context<{ subject?: string; limit?: number }>) {
				return databaseOf(this.broker).query<AuditRecord>(
					"SELECT * FROM audit_records WHERE ($1::text IS NULL OR subject = $1) ORDER BY created_at DESC LIMIT $2",
					{ bind: [ctx.params.subject ?? null, ctx.params.limit ?? 100], type: QueryTypes.SELECT },
				);
			},
		},
	}),
};

export default AuditService;
