/**
 * The one place that opens PostgreSQL connections: Sequelize (for moleculer-db) over pg. Every
 * instance made here is guarded (lib/data/db-guard.ts: typed faults, safe retries, fault monitor) and,
 * with several hosts configured, follows the primary (lib/data/primary-locator.ts).
 */
import { Sequelize } from "sequelize";
import { databaseGuardOf, guardSequelize } from "./db-guard";
import { withPooledClient } from "./sequelize-internals";
import { followPrimary, parseDatabaseTargets, PrimaryLocator, primaryOnlyValidator } from "./primary-locator";
import type { DatabaseLimits, DatabaseSettings } from "../runtime/settings";

/**
 * Connection options that make faults show quickly: a host that does not answer fails the connect
 * after 2 s (instead of the OS's minutes), and TCP keepalive notices a peer that vanished.
 */
const FAULT_DETECTION = { connectionTimeoutMillis: 2_000, keepAlive: true };

/**
 * `limits` caps how long one request can hold a pooled connection: PostgreSQL itself cancels a
 * statement after statement_timeout and ends a session left idle inside a transaction, so a slow
 * query or a stalled handler cannot pin the pool (10 connections) while every other caller waits.
 */
function sessionLimits(limits: DatabaseLimits | undefined): Record<string, number> {
	return {
		...(limits?.statementTimeoutMs ? { statement_timeout: limits.statementTimeoutMs } : {}),
		...(limits?.idleInTransactionTimeoutMs ? { idle_in_transaction_session_timeout: limits.idleInTransactionTimeoutMs } : {}),
	};
}

export function createSequelize(database: DatabaseSettings & { url: string }, limits?: DatabaseLimits, poolMax = 10): Sequelize {
	const targets = parseDatabaseTargets(database.url);
	const locator = targets.hosts.length > 1 ? new PrimaryLocator({ targets, ssl: database.ssl }) : null;
	const sequelize = new Sequelize(locator ? targets.urlFor(targets.hosts[0]) : database.url, {
		dialect: "postgres",
		logging: false,
		dialectOptions: { ...(database.ssl ? { ssl: { require: true, rejectUnauthorized: false } } : {}), ...FAULT_DETECTION, ...sessionLimits(limits) },
		// idle 60 s: a connection closed after 10 s idle had to be opened again by the next burst, in the
		// middle of it (the memory lag bench's first round after a drain queued 29 callers and the outbox
		// relay behind those reconnects); none are kept open while nothing runs, so a DB fault leaves no
		// reconnect loop behind.
		pool: { max: poolMax, min: 0, idle: 60_000, acquire: 5_000, ...(locator ? { validate: primaryOnlyValidator(locator) } : {}) },
	});
	const guard = guardSequelize(sequelize);
	if (locator) {
		followPrimary(sequelize, locator);
		guard.onUnavailable(() => locator.forget());
	}
	return sequelize;
}

export interface DependencyStatus {
	status: "up" | "down";
	latency_ms?: number;
	error?: string;
}

/** SELECT 1 with a deadline, so that a hung database makes /health say "down" instead of hanging too. */
export async function pingDatabase(sequelize: Sequelize, timeoutMs = 1_500): Promise<DependencyStatus> {
	const started = Date.now();
	let timer: NodeJS.Timeout | undefined;
	try {
		await Promise.race([
			sequelize.query("SELECT 1"),
			new Promise((_, reject) => {
				timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
			}),
		]);
		return { status: "up", latency_ms: Date.now() - started };
	} catch (err) {
		return { status: "down", error: (err as Error).message };
	} finally {
		clearTimeout(timer);
	}
}

/**
 * A read on a connection from Sequelize's own pool, straight through pg: for hot point reads where
 * Sequelize's query formatting and result processing cost more than the query (bench/memory). It is an
 * idempotent read, so database faults are retried like any other (lib/data/db-guard.ts).
 */
export async function fastQuery<T>(sequelize: Sequelize, sql: string, values: unknown[]): Promise<T[]> {
	const attempt = () => withPooledClient(sequelize, async client => (await client.query<T>(sql, values)).rows);
	const guard = databaseGuardOf(sequelize);
	return guard ? guard.read(attempt) : attempt();
}
