/**
 * The one place that opens PostgreSQL connections: Sequelize (for moleculer-db) over pg.
 */
import { Sequelize } from "sequelize";
import type { DatabaseLimits, DatabaseSettings } from "./settings";

/**
 * `limits` caps how long one request can hold a pooled connection: PostgreSQL itself cancels a
 * statement after statement_timeout and ends a session left idle inside a transaction, so a slow
 * query or a stalled handler cannot pin the pool (10 connections) while every other caller waits.
 */
export function createSequelize(database: DatabaseSettings & { url: string }, limits?: DatabaseLimits, poolMax = 10): Sequelize {
	return new Sequelize(database.url, {
		dialect: "postgres",
		logging: false,
		dialectOptions: {
			...(database.ssl ? { ssl: { require: true, rejectUnauthorized: false } } : {}),
			...(limits?.statementTimeoutMs ? { statement_timeout: limits.statementTimeoutMs } : {}),
			...(limits?.idleInTransactionTimeoutMs ? { idle_in_transaction_session_timeout: limits.idleInTransactionTimeoutMs } : {}),
		},
		pool: { max: poolMax, min: 0, idle: 10_000, acquire: 5_000 },
	});
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

interface PgClientLike {
	query<T>(sql: string, values: unknown[]): Promise<{ rows: T[] }>;
}
interface ConnectionManagerLike {
	getConnection(options?: object): Promise<PgClientLike>;
	releaseConnection(connection: PgClientLike): Promise<void>;
}

/**
 * A read on a connection from Sequelize's own pool, straight through pg: for hot point reads where
 * Sequelize's query formatting and result processing cost more than the query (bench/memory).
 */
export async function fastQuery<T>(sequelize: Sequelize, sql: string, values: unknown[]): Promise<T[]> {
	const manager = sequelize.connectionManager as unknown as ConnectionManagerLike;
	const connection = await manager.getConnection({ type: "SELECT" });
	try {
		return (await connection.query<T>(sql, values)).rows;
	} finally {
		await manager.releaseConnection(connection);
	}
}
