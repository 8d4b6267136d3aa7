/**
 * Test-owned PostgreSQL servers from Debian's binaries (/usr/lib/postgresql/<v>/bin), for tests that
 * restart, kill or fail over the database: never the machine's shared server on 5432, which other
 * suites use at the same time. Each server lives in its own temporary directory owned by the
 * `postgres` user (initdb refuses to run as root), listens on 127.0.0.1 and a free port, trusts local
 * connections, and keeps its Unix socket in its own directory.
 *
 *   const primary = await TestPostgres.create();            // initdb + start
 *   const standby = await TestPostgres.standbyOf(primary);   // pg_basebackup -R + start (streaming)
 *   await primary.stop("immediate"); await standby.promote();
 */
import { execFile, spawnSync } from "child_process";
import fs from "fs";
import os from "os";
import path from "path";
import { promisify } from "util";
import { Client } from "pg";
import { freePort } from "./cluster";

const run = promisify(execFile);

function binDir(): string | null {
	const root = "/usr/lib/postgresql";
	if (!fs.existsSync(root)) return null;
	const versions = fs.readdirSync(root).filter(v => fs.existsSync(path.join(root, v, "bin", "initdb"))).sort((a, b) => Number(b) - Number(a));
	return versions.length ? path.join(root, versions[0], "bin") : null;
}

export const PG_BIN = binDir();
const canRunAsPostgres = PG_BIN !== null && spawnSync("id", ["-u", "postgres"]).status === 0 && process.getuid?.() === 0;

/** describe() needing Debian's PostgreSQL binaries, run as root (to run them as `postgres`); REQUIRE_POSTGRES=1 fails instead of skipping. */
export function describeWithPgBinaries(title: string, body: () => void): void {
	if (canRunAsPostgres) return describe(title, body);
	if (process.env.REQUIRE_POSTGRES === "1") {
		describe(title, () => {
			it("has PostgreSQL server binaries", () => {
				throw new Error("/usr/lib/postgresql/*/bin/initdb not found or not root, but REQUIRE_POSTGRES=1 (apt-get install postgresql)");
			});
		});
		return;
	}
	process.stdout.write(`SKIP "${title}": PostgreSQL server binaries (/usr/lib/postgresql/*/bin) or root not available\n`);
	// Skipped on purpose: no server binaries on this machine and none required here.
	describe.skip(title, body);
}

async function asPostgres(command: string, args: string[], timeoutMs = 60_000): Promise<string> {
	const { stdout } = await run("runuser", ["-u", "postgres", "--", path.join(PG_BIN!, command), ...args], { timeout: timeoutMs });
	return stdout;
}

export class TestPostgres {
	readonly dataDir: string;

	private constructor(
		readonly dir: string,
		readonly port: number,
	) {
		this.dataDir = path.join(dir, "data");
	}

	/** postgres://postgres@127.0.0.1:<port>/<database> */
	url(database = "postgres"): string {
		return `postgres://postgres@127.0.0.1:${this.port}/${database}`;
	}

	get hostPort(): string {
		return `127.0.0.1:${this.port}`;
	}

	private static async workspace(): Promise<{ dir: string; port: number }> {
		const dir = fs.mkdtempSync(path.join(os.tmpdir(), "daarion-pgc-"));
		fs.chmodSync(dir, 0o700);
		await run("chown", ["postgres:postgres", dir]);
		return { dir, port: await freePort() };
	}

	/** A new primary: initdb, settings for streaming replication, started. */
	static async create(options: { synchronousStandby?: boolean } = {}): Promise<TestPostgres> {
		const { dir, port } = await TestPostgres.workspace();
		const server = new TestPostgres(dir, port);
		await asPostgres("initdb", ["-D", server.dataDir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
		const conf = [
			"listen_addresses = '127.0.0.1'",
			`unix_socket_directories = '${dir}'`,
			"wal_level = replica",
			"max_wal_senders = 5",
			"hot_standby = on",
			"fsync = off",
			"full_page_writes = on",
			"max_connections = 100",
			// A synchronous standby: COMMIT returns only once the standby has the WAL, so no acknowledged write is lost on failover.
			options.synchronousStandby ? "synchronous_standby_names = '*'" : "",
		].join("\n");
		fs.appendFileSync(path.join(server.dataDir, "postgresql.conf"), `\n${conf}\n`);
		fs.appendFileSync(path.join(server.dataDir, "pg_hba.conf"), "\nhost replication all 127.0.0.1/32 trust\n");
		await server.start();
		return server;
	}

	/** A streaming standby of `primary` (pg_basebackup -R), started in recovery. */
	static async standbyOf(primary: TestPostgres): Promise<TestPostgres> {
		const { dir, port } = await TestPostgres.workspace();
		const server = new TestPostgres(dir, port);
		await asPostgres("pg_basebackup", ["-h", "127.0.0.1", "-p", String(primary.port), "-U", "postgres", "-D", server.dataDir, "-R", "-X", "stream", "--no-sync"]);
		// The copied configuration would make the standby, once promoted, wait for a synchronous standby of
		// its own that does not exist (every COMMIT would hang): a promoted standby runs alone until one joins.
		fs.appendFileSync(path.join(server.dataDir, "postgresql.conf"), `\nport = ${port}\nunix_socket_directories = '${dir}'\nsynchronous_standby_names = ''\n`);
		await server.start();
		return server;
	}

	async start(): Promise<void> {
		await asPostgres("pg_ctl", ["-D", this.dataDir, "-l", path.join(this.dir, "server.log"), "-o", `-p ${this.port}`, "-w", "-t", "60", "start"]);
	}

	/** pg_ctl stop: "fast" (the default of pg_ctlcluster restart) or "immediate" (a crash, no shutdown checkpoint). */
	async stop(mode: "fast" | "immediate" | "smart" = "fast"): Promise<void> {
		await asPostgres("pg_ctl", ["-D", this.dataDir, "-m", mode, "-w", "-t", "60", "stop"]);
	}

	async restart(mode: "fast" | "immediate" = "fast"): Promise<void> {
		await asPostgres("pg_ctl", ["-D", this.dataDir, "-m", mode, "-l", path.join(this.dir, "server.log"), "-o", `-p ${this.port}`, "-w", "-t", "60", "restart"]);
	}

	async promote(): Promise<void> {
		await asPostgres("pg_ctl", ["-D", this.dataDir, "-w", "-t", "60", "promote"]);
	}

	async query<T extends object>(sql: string, params: unknown[] = [], database = "postgres"): Promise<T[]> {
		const client = new Client({ connectionString: this.url(database), connectionTimeoutMillis: 3_000 });
		await client.connect();
		try {
			return (await client.query<T>(sql, params)).rows;
		} finally {
			await client.end();
		}
	}

	/** Stops the server if it runs and removes its directory. */
	async destroy(): Promise<void> {
		await this.stop("immediate").catch(() => undefined);
		fs.rmSync(this.dir, { recursive: true, force: true });
	}
}
