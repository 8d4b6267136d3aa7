/**
 * Several PostgreSQL hosts, one of which accepts writes: what libpq calls
 * `host=h1,h2 target_session_attrs=read-write`, which node-postgres does not implement.
 *
 * Hosts come from DB_HOSTS (`h1:5432,h2:5432`) or a multi-host DATABASE_URL
 * (`postgres://u:p@h1:5432,h2:5432/db`). Every new pool connection is opened to the host last found
 * to be the primary; the connection itself then proves it (`SHOW transaction_read_only` must be
 * `off`), else it is closed and refused. After an unavailability fault the locator forgets the primary,
 * and the next connection asks every host in turn, starting with the one that was primary. Connections
 * to a host that is no longer the primary fail the pool's validation and are evicted when next taken.
 *
 * So when the primary goes away and a standby is promoted (by an operator, Patroni, or a managed
 * service), nodes follow on their next connection, without a restart. What the locator cannot do is
 * decide which standby to promote, or fence an old primary that is still running: that is the
 * replication manager's job (docs/OPERATIONS.md, "PostgreSQL primary failover").
 */
import { Client } from "pg";
import type { Sequelize } from "sequelize";
import { DatabaseUnavailableError } from "./db-faults";
import { parseDatabaseTargets, type DatabaseTargets, type DbHost } from "./db-hosts";
import { isReusableClient } from "./sequelize-internals";

export { parseDatabaseTargets, type DatabaseTargets, type DbHost };

interface ReadOnlyAnswer {
	rows: Array<{ transaction_read_only?: string }>;
}
interface QueryableConnection {
	query(sql: string): Promise<ReadOnlyAnswer>;
	end(): Promise<void> | void;
}

/** Whether a connection reached a server that accepts writes (a primary, not a standby or a read-only one). */
export async function acceptsWrites(connection: QueryableConnection): Promise<boolean> {
	const { rows } = await connection.query("SHOW transaction_read_only");
	return rows[0]?.transaction_read_only === "off";
}

export interface LocatorOptions {
	targets: DatabaseTargets;
	/** connect timeout per host while searching */
	connectTimeoutMs?: number;
	ssl?: boolean;
	onChange?(from: DbHost | null, to: DbHost): void;
}

export class PrimaryLocator {
	private current: DbHost | null = null;
	private lastKnown: DbHost | null = null;
	private searching: Promise<DbHost> | null = null;

	constructor(private readonly options: LocatorOptions) {}

	get hosts(): DbHost[] {
		return this.options.targets.hosts;
	}

	/** The primary: the remembered one, else the first host (starting at the last known) that accepts writes. */
	primary(): Promise<DbHost> {
		if (this.current) return Promise.resolve(this.current);
		this.searching ??= this.search().finally(() => (this.searching = null));
		return this.searching;
	}

	/** After a fault: the next connection searches again. */
	forget(): void {
		this.current = null;
	}

	/** Whether a connection to `host` may still be used: only connections to the current primary. */
	isCurrent(host: DbHost | undefined): boolean {
		if (!host || !this.current) return !this.current;
		return host.host === this.current.host && host.port === this.current.port;
	}

	/** A connection opened to `host` turned out read-only: that host is not the primary (any more). */
	rejected(host: DbHost): void {
		if (this.isCurrent(host)) this.current = null;
	}

	private ordered(): DbHost[] {
		const start = this.lastKnown ? this.hosts.findIndex(h => h.host === this.lastKnown!.host && h.port === this.lastKnown!.port) : 0;
		return [...this.hosts.slice(Math.max(start, 0)), ...this.hosts.slice(0, Math.max(start, 0))];
	}

	private async search(): Promise<DbHost> {
		let sawStandby = false;
		for (const host of this.ordered()) {
			const client = new Client({
				connectionString: this.options.targets.urlFor(host),
				connectionTimeoutMillis: this.options.connectTimeoutMs ?? 1_000,
				ssl: this.options.ssl ? { rejectUnauthorized: false } : undefined,
			});
			client.on("error", () => undefined);
			try {
				await client.connect();
				if (await acceptsWrites(client as unknown as QueryableConnection)) {
					const previous = this.lastKnown;
					this.current = host;
					this.lastKnown = host;
					if (!previous || previous.host !== host.host || previous.port !== host.port) this.options.onChange?.(previous, host);
					return host;
				}
				sawStandby = true;
			} catch {
				// unreachable or still starting: try the next host
			} finally {
				await client.end().catch(() => undefined);
			}
		}
		throw new DatabaseUnavailableError(sawStandby ? "not-primary" : "connection");
	}
}

interface PooledPgConnection extends QueryableConnection {
	host?: string;
	port?: number;
}

function hostOf(connection: PooledPgConnection): DbHost | undefined {
	return connection.host ? { host: connection.host, port: Number(connection.port) } : undefined;
}

/** The pool's validation: a connection is reused only while it is healthy and still on the primary. */
export function primaryOnlyValidator(locator: PrimaryLocator): (connection: unknown) => boolean {
	return connection => {
		const c = connection as PooledPgConnection;
		return isReusableClient(c) && locator.isCurrent(hostOf(c));
	};
}

/** Points every new connection of `sequelize` at the primary and refuses one that reached a standby. */
export function followPrimary(sequelize: Sequelize, locator: PrimaryLocator): void {
	sequelize.addHook("beforeConnect", async config => {
		const primary = await locator.primary();
		config.host = primary.host;
		// Sequelize types the port as text; pg parses it either way.
		config.port = String(primary.port);
	});
	sequelize.addHook("afterConnect", async connection => {
		const c = connection as PooledPgConnection;
		if (await acceptsWrites(c)) return;
		const host = hostOf(c);
		if (host) locator.rejected(host);
		await Promise.resolve(c.end()).catch(() => undefined);
		throw new DatabaseUnavailableError("not-primary");
	});
}

/**
 * A URL of the primary, for one-off clients (the migration runner): the URL itself when it names one
 * host, else the host among several that accepts writes.
 */
export async function primaryUrl(url: string, ssl = false): Promise<string> {
	const targets = parseDatabaseTargets(url);
	if (targets.hosts.length <= 1) return url;
	return targets.urlFor(await new PrimaryLocator({ targets, ssl }).primary());
}
