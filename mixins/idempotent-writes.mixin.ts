/**
 * Writes that may be retried: with an Idempotency-Key (HTTP header → ctx.meta.idempotencyKey) the
 * write and its key commit in one transaction. A retry after a commit gets the first response back;
 * a retry after a crash mid-write finds no key and runs once; two concurrent requests with one key
 * serialise on the key's unique index. Reusing a key for a different request is a 422.
 */
import { createHash } from "crypto";
import type { Context, Service, ServiceSchema } from "moleculer";
import { Errors } from "moleculer";
import { QueryTypes, type Transaction } from "sequelize";
import { databaseOf } from "../lib/node-context";

export interface IdempotencyMeta {
	idempotencyKey?: string;
	/** moleculer-web copies these onto the HTTP response */
	$responseHeaders?: Record<string, string>;
}

const CLAIM = `INSERT INTO idempotency_keys (scope, key, request_hash, response) VALUES ($1, $2, $3, $4::jsonb)
ON CONFLICT (scope, key) DO NOTHING RETURNING key`;
const EARLIER = `SELECT request_hash, response FROM idempotency_keys WHERE scope = $1 AND key = $2`;

function requestHash(params: unknown): string {
	return createHash("sha256").update(JSON.stringify(params ?? null)).digest("hex");
}

export interface IdempotentWriteMethods {
	/**
	 * Runs `write` in a transaction; with a key in ctx.meta, at most once per (scope, key).
	 * `scope` keeps keys of different actions and users apart (e.g. "audit.record:u1").
	 */
	idempotentWrite<T>(ctx: Context<unknown, IdempotencyMeta>, scope: string, write: (t: Transaction) => Promise<T>): Promise<T>;
}

export const IdempotentWritesMixin: ServiceSchema = {
	name: "idempotent-writes",
	methods: {
		async idempotentWrite<T>(this: Service, ctx: Context<unknown, IdempotencyMeta>, scope: string, write: (t: Transaction) => Promise<T>): Promise<T> {
			const sequelize = databaseOf(this.broker);
			const key = ctx.meta.idempotencyKey;
			if (!key) return sequelize.transaction(write);
			const hash = requestHash(ctx.params);
			return sequelize.transaction(async t => {
				// Blocks while another transaction holds the same key, then sees its committed row.
				const claimed = await sequelize.query(CLAIM, { bind: [scope, key, hash, "null"], type: QueryTypes.SELECT, transaction: t });
				if (claimed.length === 0) {
					const [earlier] = await sequelize.query<{ request_hash: string; response: T }>(EARLIER, { bind: [scope, key], type: QueryTypes.SELECT, transaction: t });
					if (earlier.request_hash !== hash) {
						throw new Errors.ValidationError("Idempotency-Key was already used for a different request", "IDEMPOTENCY_KEY_REUSED", [
							{ field: "Idempotency-Key", message: "already used for a different request" },
						]);
					}
					ctx.meta.$responseHeaders = { ...ctx.meta.$responseHeaders, "Idempotent-Replayed": "true" };
					return earlier.response;
				}
				const result = await write(t);
				await sequelize.query("UPDATE idempotency_keys SET response = $3::jsonb WHERE scope = $1 AND key = $2", {
					bind: [scope, key, JSON.stringify(result)],
					transaction: t,
				});
				return result;
			});
		},
	},
};
