/**
 * Writes that may be retried: with an Idempotency-Key (HTTP header → ctx.meta.idempotencyKey) the
 * write and its key commit in one transaction. A retry after a commit gets the first response back;
 * a retry after a crash mid-write finds no key and runs once; two concurrent requests with one key
 * serialise on the key's unique index. Reusing a key for a different request is a 422.
 *
 * What a key keeps: by default the response. A write whose response may hold confidential content
 * passes `remember` (what to keep instead, e.g. only the id) and `replay` (how to answer a retry from
 * that, under the retrying caller's rights), so that no stored reply holds plaintext and a replay of
 * a since-deleted resource answers what a fresh read would. The request itself is kept only as an
 * HMAC under the mesh's memory key: a plain hash of a short secret could be guessed back.
 *
 * Keys expire after IDEMPOTENCY_TTL (default 24 h): an expired key is claimed afresh, and the holder
 * of each service's "idempotency-sweep" lease deletes expired keys of that service's scopes.
 */
import { createHmac } from "crypto";
import type { Context, Service, ServiceSchema, ServiceSettingSchema } from "moleculer";
import { Errors } from "moleculer";
import { QueryTypes, type Transaction } from "sequelize";
import { databaseOf, nodeContextOf } from "../lib/runtime/node-resources";
import { UnavailableError } from "../lib/mesh/errors";
import { LeaderDutyMixin } from "./leader-duty.mixin";

export interface IdempotencyMeta {
	idempotencyKey?: string;
	/** moleculer-web copies these onto the HTTP response */
	$responseHeaders?: Record<string, string>;
}

/** Inserts the key, or takes over an expired one; returns nothing when a live key holds it. */
const CLAIM = `INSERT INTO idempotency_keys AS k (scope, key, request_hash, response) VALUES ($1, $2, $3, 'null'::jsonb)
ON CONFLICT (scope, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, response = EXCLUDED.response, created_at = now()
WHERE k.created_at < now() - $4 * interval '1 millisecond'
RETURNING key`;
const EARLIER = `SELECT request_hash, response FROM idempotency_keys WHERE scope = $1 AND key = $2`;
/** CLAIM as a CTE named `claimed`, keeping what a retry is answered from at once ($1–$5: scope, key, hash, kept, TTL). */
const CLAIMED_CTE = `claimed AS (INSERT INTO idempotency_keys AS k (scope, key, request_hash, response) VALUES ($1, $2, $3, $4::jsonb)
ON CONFLICT (scope, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, response = EXCLUDED.response, created_at = now()
WHERE k.created_at < now() - $5::float8 * interval '1 millisecond'
RETURNING key)`;
const SWEEP = `DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
	SELECT ctid FROM idempotency_keys WHERE created_at < now() - $2 * interval '1 millisecond' AND left(scope, length($1)) = $1 LIMIT 5000))`;

/** How often the lease holder sweeps: often enough that keys outlive their TTL by little, at most once a minute. */
const sweepEveryMs = (ttlMs: number) => Math.min(60_000, Math.max(1_000, ttlMs / 2));

export interface IdempotentWriteOptions<T> {
	/** what the key keeps instead of the response (default: the response) */
	remember?: (result: T) => unknown;
	/** answers a retry from what the key kept, with the caller's rights (default: what was kept) */
	replay?: (kept: unknown, t?: Transaction) => Promise<T>;
}

/**
 * For a write that is one statement: with a key, the CTE `claimed` (one row when this request holds the
 * key, none when a live key holds it already) and its parameters, which come first ($1…); the statement
 * numbers its own after them and writes only `FROM claimed`.
 */
export interface KeyClaim {
	cte: string;
	bind: unknown[];
}

export interface IdempotentStatementOptions<T> {
	/** what the key keeps, known before the write (a retry is answered from it by `replay`) */
	keep: unknown;
	replay: (kept: unknown) => Promise<T>;
}

export interface IdempotentWriteMethods {
	/**
	 * Runs `write` in a transaction; with a key in ctx.meta, at most once per (scope, key) while the key lives.
	 * `scope` keeps keys of different actions and users apart; it starts with the service name ("audit.record:u1").
	 */
	idempotentWrite<T>(ctx: Context<unknown, IdempotencyMeta>, scope: string, write: (t: Transaction) => Promise<T>, options?: IdempotentWriteOptions<T>): Promise<T>;
	/**
	 * idempotentWrite for a write that is one statement, claim included: atomic on its own, so no BEGIN
	 * and COMMIT around it — one round trip with or without a key. `write` resolves undefined when, with
	 * a key, it wrote nothing (`claimed` was empty): the request is then answered from the key like a retry.
	 */
	idempotentStatement<T>(ctx: Context<unknown, IdempotencyMeta>, scope: string, write: (claim: KeyClaim | null) => Promise<T | undefined>, options: IdempotentStatementOptions<T>): Promise<T>;
}

function requestHash(service: Service, params: unknown): string {
	return createHmac("sha256", nodeContextOf(service.broker).settings.memory.encryptionKey)
		.update(JSON.stringify(params ?? null))
		.digest("hex");
}

/** Deletes expired keys of the service's own scopes, in bounded batches. */
function sweepExpiredKeys(this: Service): Promise<unknown> {
	return databaseOf(this.broker).query(SWEEP, { bind: [`${this.name}.`, nodeContextOf(this.broker).settings.idempotencyTtlMs] });
}

function keyReused(): Errors.ValidationError {
	return new Errors.ValidationError("Idempotency-Key was already used for a different request", "IDEMPOTENCY_KEY_REUSED", [
		{ field: "Idempotency-Key", message: "already used for a different request" },
	]);
}

export const IdempotentWritesMixin: ServiceSchema<ServiceSettingSchema, Record<string, never>, Record<string, never>, Service> = {
	name: "idempotent-writes",
	/** One sweeper per service and mesh (lease): two would only delete the same rows twice, harmlessly. */
	mixins: [
		LeaderDutyMixin({
			duty: service => `idempotency-sweep:${service.name}`,
			leaseKey: "idempotencySweepLease",
			everyMs: service => sweepEveryMs(nodeContextOf(service.broker).settings.idempotencyTtlMs),
			what: "Idempotency key sweep",
			run: sweepExpiredKeys,
		}),
	],
	methods: {
		async idempotentWrite<T>(ctx: Context<unknown, IdempotencyMeta>, scope: string, write: (t: Transaction) => Promise<T>, options: IdempotentWriteOptions<T> = {}): Promise<T> {
			const sequelize = databaseOf(this.broker);
			const key = ctx.meta.idempotencyKey;
			if (!key) return sequelize.transaction(write);
			const hash = requestHash(this, ctx.params);
			const ttlMs = nodeContextOf(this.broker).settings.idempotencyTtlMs;
			return sequelize.transaction(async t => {
				// Blocks while another transaction holds the same key, then sees its committed row.
				const claimed = await sequelize.query(CLAIM, { bind: [scope, key, hash, ttlMs], type: QueryTypes.SELECT, transaction: t });
				if (claimed.length === 0) {
					const [earlier] = await sequelize.query<{ request_hash: string; response: unknown }>(EARLIER, { bind: [scope, key], type: QueryTypes.SELECT, transaction: t });
					if (earlier.request_hash !== hash) throw keyReused();
					ctx.meta.$responseHeaders = { ...ctx.meta.$responseHeaders, "Idempotent-Replayed": "true" };
					return options.replay ? options.replay(earlier.response, t) : (earlier.response as T);
				}
				const result = await write(t);
				await sequelize.query("UPDATE idempotency_keys SET response = $3::jsonb WHERE scope = $1 AND key = $2", {
					bind: [scope, key, JSON.stringify(options.remember ? options.remember(result) : result)],
					transaction: t,
				});
				return result;
			});
		},

		async idempotentStatement<T>(ctx: Context<unknown, IdempotencyMeta>, scope: string, write: (claim: KeyClaim | null) => Promise<T | undefined>, options: IdempotentStatementOptions<T>): Promise<T> {
			const key = ctx.meta.idempotencyKey;
			const hash = key ? requestHash(this, ctx.params) : null;
			const written = await write(key ? { cte: CLAIMED_CTE, bind: [scope, key, hash, JSON.stringify(options.keep), nodeContextOf(this.broker).settings.idempotencyTtlMs] } : null);
			if (written !== undefined) return written;
			if (!key) throw new Errors.MoleculerServerError(`${scope}: a write without an Idempotency-Key wrote nothing`, 500, "WROTE_NOTHING");
			// The key was held by a committed write (the claim waited for it if it was in flight).
			const [earlier] = await databaseOf(this.broker).query<{ request_hash: string; response: unknown }>(EARLIER, { bind: [scope, key], type: QueryTypes.SELECT });
			if (!earlier) throw new UnavailableError("The Idempotency-Key expired while this request ran; retry", "IDEMPOTENCY_KEY_EXPIRED");
			if (earlier.request_hash !== hash) throw keyReused();
			ctx.meta.$responseHeaders = { ...ctx.meta.$responseHeaders, "Idempotent-Replayed": "true" };
			return options.replay(earlier.response);
		},
	},
};
