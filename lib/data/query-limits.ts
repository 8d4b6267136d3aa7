/**
 * What a caller hears when PostgreSQL cut its work short because of the per-connection limits
 * (lib/data/database.ts: statement_timeout, idle_in_transaction_session_timeout): a 503 naming the limit,
 * not an anonymous 500. The classification is lib/data/db-faults.ts's (databaseLimitError), the same one
 * the database guard applies to every Sequelize call; this middleware applies it to what reaches an
 * action without passing the guard (a raw pg error), before breakers and metrics see the error.
 */
import type { Middleware } from "moleculer";
import { databaseLimitError } from "./db-faults";

/** Served actions: a database limit becomes QUERY_TIMEOUT / DATABASE_SESSION_ENDED (503) before any other middleware sees the error. */
export function QueryLimitsMiddleware(): Middleware {
	return {
		name: "QueryLimits",
		localAction(next: (ctx: unknown) => Promise<unknown>) {
			return (ctx: unknown) =>
				next(ctx).catch((err: unknown) => {
					throw databaseLimitError(err) ?? err;
				});
		},
	} as Middleware;
}
