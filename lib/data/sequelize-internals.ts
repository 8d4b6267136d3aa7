/**
 * The private parts of Sequelize 6's PostgreSQL dialect this project relies on, in one file: its
 * connection manager (acquire and release a pooled pg client, the pool's counters, the pg module it
 * constructs clients from) and the flags it and pg keep on a client (`_invalid`: Sequelize's "do not
 * reuse", `_ending`/`_queryable`: pg's own state). Nothing else in the project reaches into them.
 *
 * Why reach in at all: the guard (db-guard.ts) must see every pool acquire and every client from its
 * birth, the primary follower must refuse a pooled client that went to a standby, and hot point reads
 * skip Sequelize's query formatting on a client of the same pool (database.ts, fastQuery). None of that
 * has a public hook. test/unit/sequelize-internals.test.ts pins each part on a real instance against
 * PostgreSQL, and package.json pins sequelize and pg with tilde ranges, so an upgrade that moves them
 * fails a test rather than a node.
 */
import type { EventEmitter } from "events";
import type { Sequelize } from "sequelize";

/** A pg client as the pool hands it out. */
export interface PooledPgClient {
	query<T = unknown>(sql: string, values?: unknown[]): Promise<{ rows: T[] }>;
}

export type AcquireConnection = (options?: object) => Promise<PooledPgClient>;

interface ConnectionManager {
	getConnection: AcquireConnection;
	releaseConnection(connection: PooledPgClient): Promise<void>;
	pool?: { size?: number; available?: number; waiting?: number };
	lib?: { Client?: PgClientClass };
}

/** pg's Client class as Sequelize's dialect constructs it. */
export type PgClientClass = new (...args: unknown[]) => EventEmitter & PgClientFlags & { query(...args: unknown[]): unknown };

export interface PgClientFlags {
	/** Sequelize's postgres dialect: set when the client emitted an error; the pool drops it */
	_invalid?: boolean;
	/** pg: end() was called */
	_ending?: boolean;
	/** pg: false once the connection is unusable */
	_queryable?: boolean;
}

function managerOf(sequelize: Sequelize): ConnectionManager {
	return sequelize.connectionManager as unknown as ConnectionManager;
}

/** Runs `work` on a client of the instance's own pool, released afterwards whatever happens. */
export async function withPooledClient<T>(sequelize: Sequelize, work: (client: PooledPgClient) => Promise<T>, acquire?: AcquireConnection): Promise<T> {
	const manager = managerOf(sequelize);
	const client = await (acquire ?? manager.getConnection.bind(manager))({ type: "SELECT" });
	try {
		return await work(client);
	} finally {
		await manager.releaseConnection(client);
	}
}

/** The pool's counters: open connections, idle ones, callers waiting for one. */
export function poolCounters(sequelize: Sequelize): { size: number; idle: number; waiting: number } {
	const pool = managerOf(sequelize).pool;
	return { size: pool?.size ?? 0, idle: pool?.available ?? 0, waiting: pool?.waiting ?? 0 };
}

/**
 * Replaces the pool's acquire with `wrap(original)` (Sequelize's own code acquires through it too);
 * returns the original, unwrapped.
 */
export function wrapPoolAcquire(sequelize: Sequelize, wrap: (original: AcquireConnection) => AcquireConnection): AcquireConnection {
	const manager = managerOf(sequelize);
	const original = manager.getConnection.bind(manager);
	manager.getConnection = wrap(original);
	return original;
}

/**
 * Makes the dialect construct its pg clients from `subclass(Base)`. pg's module has lazy getters
 * (pg.native), so the replacement inherits from it instead of copying it. False when the dialect keeps
 * no pg module (nothing replaced).
 */
export function replacePgClientClass(sequelize: Sequelize, subclass: (Base: PgClientClass) => PgClientClass): boolean {
	const manager = managerOf(sequelize);
	const Base = manager.lib?.Client;
	if (!manager.lib || !Base) return false;
	manager.lib = Object.create(manager.lib, { Client: { value: subclass(Base) } });
	return true;
}

/** Whether a pooled client may be handed out again: not broken, not ending. */
export function isReusableClient(connection: unknown): boolean {
	const flags = connection as PgClientFlags;
	return !flags._invalid && !flags._ending;
}

/** Tells the pool never to hand this client out again (as Sequelize does on a client's error). */
export function markClientInvalid(client: object): void {
	(client as PgClientFlags)._invalid = true;
}

/** False once pg has found the connection unusable (its next query fails with "not queryable"). */
export function isQueryableClient(client: object): boolean {
	return (client as PgClientFlags)._queryable !== false;
}
