/**
 * What a caller hears when PostgreSQL cut its work short because of the per-connection limits
 * (lib/data/database.ts: statement_timeout, idle_in_transaction_session_timeout): a 503 naming the limit,
 * not an anonymous 500. Not retryable on purpose: a statement that ran into the limit once would
 * most likely run into it again on another node, and retrying it would multiply the load that made
 * it slow.
 */
import type { Middleware } from "moleculer";
import { Errors } from "moleculer";

/** SQLSTATEs of the two limits: query_canceled (statement_timeout) and idle_in_transaction_session_timeout. */
const LIMIT_CODES: Record<string, { what: string; setting: string }> = {
	"57014": { what: "the statement ran longer than the database's statement timeout", setting: "DB_STATEMENT_TIMEOUT_MS" },
	"25P03": { what: "the transaction stayed idle longer than the database allows", setting: "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS" },
};

/** pg's error carries the SQLSTATE as `code`; Sequelize wraps it and keeps pg's as `parent`/`original`. */
function sqlState(err: unknown): string | undefined {
	const e = err as { code?: unknown; parent?: { code?: unknown }; original?: { code?: unknown } } | null;
	for (const code of [e?.parent?.code, e?.original?.code, e?.code]) if (typeof code === "string") return code;
	return undefined;
}

/**
 * When PostgreSQL ends a session idle in a transaction, pg reports 25P03 as an event of the
 * connection, and the transaction's next query only says this: the SQLSTATE is not on that error.
 */
const SESSION_ENDED = "Client has encountered a connection error and is not queryable";

export function queryLimitError(err: unknown): Errors.MoleculerServerError | null {
	if (err instanceof Errors.MoleculerError) return null;
	const limit = LIMIT_CODES[sqlState(err) ?? ""];
	if (limit) return new Errors.MoleculerServerError(`The request was stopped: ${limit.what}`, 503, "QUERY_TIMEOUT", { limit: limit.setting });
	if ((err as Error | null)?.message?.includes(SESSION_ENDED)) {
		return new Errors.MoleculerServerError(
			"The database ended this request's session (idle in a transaction longer than allowed, or the connection was lost)",
			503,
			"DATABASE_SESSION_ENDED",
			{ limit: "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS" },
		);
	}
	return null;
}

/** Served actions: a database limit becomes QUERY_TIMEOUT (503) before any other middleware sees the error. */
export function QueryLimitsMiddleware(): Middleware {
	return {
		name: "QueryLimits",
		localAction(next: (ctx: unknown) => Promise<unknown>) {
			return (ctx: unknown) =>
				next(ctx).catch((err: unknown) => {
					throw queryLimitError(err) ?? err;
				});
		},
	} as Middleware;
}
