/**
 * Which database errors are infrastructure faults (the database restarted, failed over, dropped a
 * connection, or made a transaction lose a race) rather than bugs, and the one error they become:
 * DatabaseUnavailableError, a retryable 503 SERVICE_UNAVAILABLE. The gateway answers it with
 * Retry-After, sockets with a failed ack carrying the same shape, and callers on the mesh get it back
 * typed (MeshErrorRegenerator) with `retryable: true`. Anything not listed here stays what it was, so a
 * real bug is still a 500. PostgreSQL enforcing one of our per-connection limits (statement timeout,
 * idle-in-transaction timeout) is classified here too, first, as a 503 naming the
 * setting, and not a sign that the database is down.
 *
 * Classes are a closed set: they are metric label values and log fields, never free text.
 */
import { Errors } from "moleculer";
import { restoreFamilyError, UnavailableError } from "../mesh/errors";

export const DB_FAULT_CLASSES = ["connection", "shutdown", "starting", "not-primary", "pool-timeout", "serialization", "deadlock"] as const;
export type DbFaultClass = (typeof DB_FAULT_CLASSES)[number];

/** Faults that say "the database cannot be reached right now" (as opposed to a lost race inside it). */
export function isUnavailability(fault: DbFaultClass): boolean {
	return fault !== "serialization" && fault !== "deadlock";
}

/** SQLSTATE → class. 08xxx (connection exceptions) are matched by prefix below. */
const SQLSTATES: Record<string, DbFaultClass> = {
	"57P01": "shutdown", // admin_shutdown: the server is stopping (fast/immediate) or pg_terminate_backend
	"57P02": "shutdown", // crash_shutdown
	"57P03": "starting", // cannot_connect_now: starting up, shutting down, or in recovery
	"53300": "connection", // too_many_connections
	"25006": "not-primary", // read_only_sql_transaction: we reached a standby
	"40001": "serialization",
	"40P01": "deadlock",
};

/** Socket-level errno codes of a connection that failed or broke. */
const ERRNO = new Set(["ECONNREFUSED", "ECONNRESET", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH", "EAI_AGAIN", "ECONNABORTED"]);

/** Sequelize's connection errors, by name (its ConnectionError subclasses). AccessDenied is a config bug, not listed. */
const SEQUELIZE_NAMES: Record<string, DbFaultClass> = {
	SequelizeConnectionRefusedError: "connection",
	SequelizeConnectionTimedOutError: "connection",
	SequelizeHostNotReachableError: "connection",
	SequelizeConnectionAcquireTimeoutError: "pool-timeout",
};

/** node-postgres reports a broken socket with these messages and no code. */
const PG_MESSAGES: Array<[RegExp, DbFaultClass]> = [
	[/Connection terminated|connection error and is not queryable|Client was closed and is not queryable|Connection timed out|timeout exceeded when trying to connect/i, "connection"],
	[/the database system is (starting up|in recovery mode|not yet accepting connections)/i, "starting"],
	[/the database system is shutting down|terminating connection due to administrator command/i, "shutdown"],
	[/cannot execute \w+ in a read-only transaction/i, "not-primary"],
];

interface ErrorLike {
	name?: string;
	code?: unknown;
	message?: string;
	parent?: unknown;
	original?: unknown;
	cause?: unknown;
}

function classifyOne(err: ErrorLike): DbFaultClass | null {
	if (typeof err.code === "string") {
		if (SQLSTATES[err.code]) return SQLSTATES[err.code];
		if (/^08[0-9A-Z]{3}$/.test(err.code)) return "connection";
		if (ERRNO.has(err.code)) return "connection";
	}
	if (err.name && SEQUELIZE_NAMES[err.name]) return SEQUELIZE_NAMES[err.name];
	if (err.name === "DatabaseUnavailableError") return ((err as { data?: { fault?: DbFaultClass } }).data?.fault ?? "connection") as DbFaultClass;
	const message = err.message ?? "";
	for (const [pattern, fault] of PG_MESSAGES) if (pattern.test(message)) return fault;
	return null;
}

/**
 * The per-connection limits (lib/data/database.ts: statement_timeout, idle_in_transaction_session_timeout)
 * by SQLSTATE: query_canceled and idle_in_transaction_session_timeout. PostgreSQL enforcing a limit is
 * neither a bug nor an unavailable database, so these are checked before the fault classes: the caller
 * hears a 503 naming the setting (databaseLimitError below), and the database monitor stays up.
 */
const LIMITS: Record<string, { type: string; message: string; limit: string }> = {
	"57014": { type: "QUERY_TIMEOUT", message: "The request was stopped: the statement ran longer than the database's statement timeout", limit: "DB_STATEMENT_TIMEOUT_MS" },
	"25P03": {
		type: "DATABASE_SESSION_ENDED",
		message: "The database ended this request's session: it stayed idle in a transaction longer than allowed",
		limit: "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
	},
};

/**
 * The SQLSTATE of a database limit an error carries (on itself or on what Sequelize wrapped), or null.
 * When PostgreSQL ends a session idle in a transaction, pg reports 25P03 as an event of the connection
 * and the transaction's next query only says "not queryable"; the guard's pg client (lib/data/db-guard.ts)
 * puts the SQLSTATE that ended the session on that error, so it is told apart from a lost connection here.
 */
export function databaseLimitOf(err: unknown, depth = 0): string | null {
	if (err == null || typeof err !== "object" || depth > 4 || err instanceof Errors.MoleculerError) return null;
	const e = err as ErrorLike;
	if (typeof e.code === "string" && LIMITS[e.code]) return e.code;
	return databaseLimitOf(e.parent ?? e.original ?? e.cause, depth + 1);
}

/**
 * A database limit cut the request short: 503 naming the setting in `data.limit`, retryable for the
 * client like any 503 (the gateway adds Retry-After). A plain MoleculerServerError (no class of its
 * own), so Moleculer's own regenerator restores it, type and data, across the mesh.
 */
export function databaseLimitError(err: unknown): Errors.MoleculerServerError | null {
	const sqlState = databaseLimitOf(err);
	if (!sqlState) return null;
	const limit = LIMITS[sqlState];
	return new Errors.MoleculerServerError(limit.message, 503, limit.type, { limit: limit.limit });
}

/**
 * The fault class of an error from Sequelize or pg, or null for anything else (a database limit
 * included: see LIMITS). Sequelize wraps pg's error (with its SQLSTATE) in `parent`/`original`; the
 * most specific answer wins, so a wrapper whose own name only says "connection" defers to the SQLSTATE
 * it carries.
 */
export function classifyDbFault(err: unknown, depth = 0): DbFaultClass | null {
	if (err == null || typeof err !== "object" || depth > 4) return null;
	if (depth === 0 && databaseLimitOf(err)) return null;
	const e = err as ErrorLike;
	const inner = classifyDbFault(e.parent ?? e.original ?? e.cause, depth + 1);
	return inner ?? classifyOne(e);
}

/** Seconds a client should wait before retrying, per class: a lost race is retried at once. */
function retryAfterSeconds(fault: DbFaultClass): number {
	return isUnavailability(fault) ? 1 : 0;
}

const MESSAGES: Record<DbFaultClass, string> = {
	connection: "The database cannot be reached right now; retry",
	shutdown: "The database is restarting; retry",
	starting: "The database is starting; retry",
	"not-primary": "The database is failing over to a new primary; retry",
	"pool-timeout": "No database connection became free in time; retry",
	serialization: "The transaction lost a race with a concurrent one; retry",
	deadlock: "The transaction lost a race with a concurrent one; retry",
};

/**
 * An infrastructure fault of the database: 503, retryable. `data` carries only the class (no SQL, no
 * host names, no parameters), so it is safe to send to clients and to log.
 */
export class DatabaseUnavailableError extends UnavailableError {
	constructor(fault: DbFaultClass, message = MESSAGES[fault]) {
		super(message, "SERVICE_UNAVAILABLE", { dependency: "database", fault, retry_after: retryAfterSeconds(fault) });
		this.name = "DatabaseUnavailableError";
	}

	get fault(): DbFaultClass {
		return (this.data as { fault: DbFaultClass }).fault;
	}
}

/**
 * The typed error for a database error: a limit → databaseLimitError (503 naming the setting), an
 * infrastructure fault → DatabaseUnavailableError (retryable 503); the error itself otherwise (bugs stay bugs).
 */
export function asDatabaseFault(err: unknown): unknown {
	if (err instanceof DatabaseUnavailableError) return err;
	const limit = databaseLimitError(err);
	if (limit) return limit;
	const fault = classifyDbFault(err);
	return fault ? new DatabaseUnavailableError(fault) : err;
}

/** Whether an error (local or restored from the mesh) is a database fault. */
export function isDatabaseFault(err: unknown): err is DatabaseUnavailableError {
	return err instanceof DatabaseUnavailableError || (err as { name?: string } | null)?.name === "DatabaseUnavailableError";
}

/**
 * Restores the project's error family (lib/mesh/errors.ts) and DatabaseUnavailableError on the caller's
 * side of a mesh call; Moleculer's own regenerator only knows its built-in classes and would hand back
 * a plain Error (which the gateway would hide behind a 500).
 */
export class MeshErrorRegenerator extends Errors.Regenerator {
	// Moleculer's typing says Error; its code treats a falsy answer as "not mine" and carries on.
	restoreCustomError(plainError: { name?: string; message?: string; type?: string; data?: { fault?: DbFaultClass } }): Error {
		if (plainError.name !== "DatabaseUnavailableError") return restoreFamilyError(plainError) ?? (undefined as unknown as Error);
		const fault = DB_FAULT_CLASSES.includes(plainError.data?.fault as DbFaultClass) ? (plainError.data!.fault as DbFaultClass) : "connection";
		return new DatabaseUnavailableError(fault, plainError.message);
	}
}
