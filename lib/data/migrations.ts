/**
 * SQL migrations: `migrations/NNN_description.sql`, each with the seed's header
 *
 *   -- Migration: 001_memory
 *   -- Description: ...
 *   -- Date: 2026-11-25
 *   -- Author: ...
 *   -- Rollback:
 *   --   DROP TABLE ...;
 *   BEGIN;
 *   ...idempotent DDL...
 *   COMMIT;
 *
 * The runner records each applied file in schema_migrations (version, name, checksum, applied_at)
 * inside the file's own transaction, refuses to run when an applied file was edited, rolls back one
 * step with the file's Rollback section, and holds an advisory lock so that nodes starting together
 * never apply a migration twice.
 */
import { createHash } from "crypto";
import fs from "fs";
import path from "path";
import { Client } from "pg";
import { primaryUrl } from "./primary-locator";

export const MIGRATIONS_DIR = path.resolve(__dirname, "..", "..", "migrations");
/** pg_advisory_lock key: "daarion-migrations" folded into a bigint-sized constant. */
const MIGRATION_LOCK_KEY = 7_311_020_301;
const FILE_PATTERN = /^(\d{3})_([a-z0-9_]+)\.sql$/;

export class MigrationError extends Error {
	constructor(message: string) {
		super(message);
		this.name = "MigrationError";
	}
}

export interface MigrationFile {
	version: string;
	name: string;
	file: string;
	checksum: string;
	description: string;
	/** the SQL between BEGIN; and COMMIT; */
	upSql: string;
	downSql: string;
}

export interface AppliedMigration {
	version: string;
	name: string;
	checksum: string;
	applied_at: Date;
}

function headerValue(lines: string[], key: string): string | undefined {
	const line = lines.find(l => l.toLowerCase().startsWith(`-- ${key.toLowerCase()}:`));
	return line?.slice(line.indexOf(":") + 1).trim();
}

/** The commented lines after `-- Rollback:` up to the first line that is not a comment. */
function rollbackSql(lines: string[]): string {
	const start = lines.findIndex(l => /^-- rollback:/i.test(l));
	if (start < 0) return "";
	const body: string[] = [];
	for (const line of lines.slice(start + 1)) {
		if (!line.startsWith("--")) break;
		body.push(line.replace(/^--\s?/, ""));
	}
	return body.join("\n").trim();
}

export function parseMigration(file: string, text: string): MigrationFile {
	const base = path.basename(file);
	const match = FILE_PATTERN.exec(base);
	if (!match) throw new MigrationError(`${base}: file name must look like NNN_description.sql`);
	const lines = text.split(/\r?\n/);
	for (const key of ["Migration", "Description", "Date", "Author", "Rollback"]) {
		if (headerValue(lines, key) === undefined) throw new MigrationError(`${base}: header line "-- ${key}:" is missing`);
	}
	const wrapped = /^\s*BEGIN;\s*\n([\s\S]*)\n\s*COMMIT;\s*$/m.exec(lines.filter(l => !l.startsWith("--")).join("\n"));
	if (!wrapped) throw new MigrationError(`${base}: the SQL must be wrapped in BEGIN; … COMMIT;`);
	const downSql = rollbackSql(lines);
	if (!downSql) throw new MigrationError(`${base}: the Rollback section is empty`);
	return {
		version: match[1],
		name: match[2],
		file,
		checksum: createHash("sha256").update(text).digest("hex"),
		description: headerValue(lines, "Description") ?? "",
		upSql: wrapped[1].trim(),
		downSql,
	};
}

export function readMigrations(dir = MIGRATIONS_DIR): MigrationFile[] {
	const files = fs.readdirSync(dir).filter(f => f.endsWith(".sql")).sort();
	const migrations = files.map(f => parseMigration(path.join(dir, f), fs.readFileSync(path.join(dir, f), "utf8")));
	const versions = migrations.map(m => m.version);
	const duplicate = versions.find((v, i) => versions.indexOf(v) !== i);
	if (duplicate) throw new MigrationError(`two migration files share version ${duplicate}`);
	return migrations;
}

const CREATE_TABLE = `CREATE TABLE IF NOT EXISTS schema_migrations (
	version text PRIMARY KEY,
	name text NOT NULL,
	checksum text NOT NULL,
	applied_at timestamptz NOT NULL DEFAULT now()
)`;

async function appliedMigrations(client: Client): Promise<AppliedMigration[]> {
	await client.query(CREATE_TABLE);
	const { rows } = await client.query<AppliedMigration>("SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version");
	return rows;
}

/** An applied file that changed or vanished means the database no longer matches the code: stop. */
function verifyApplied(applied: AppliedMigration[], files: MigrationFile[]): void {
	for (const row of applied) {
		const file = files.find(f => f.version === row.version);
		if (!file) throw new MigrationError(`migration ${row.version}_${row.name} is applied but its file is missing`);
		if (file.checksum !== row.checksum) {
			throw new MigrationError(`${path.basename(file.file)} was edited after it was applied (checksum differs); add a new migration instead`);
		}
	}
}

export type MigrationCommand = "up" | "down" | "status" | "dry-run";

export interface MigrationStatus {
	version: string;
	name: string;
	state: "applied" | "pending";
	applied_at?: string;
}

export interface MigrationResult {
	command: MigrationCommand;
	applied: string[];
	rolledBack: string[];
	status: MigrationStatus[];
	/** dry-run: the SQL that `up` would run */
	plan: string[];
}

async function inTransaction(client: Client, work: () => Promise<void>): Promise<void> {
	await client.query("BEGIN");
	try {
		await work();
		await client.query("COMMIT");
	} catch (err) {
		await client.query("ROLLBACK").catch(() => undefined);
		throw err;
	}
}

async function applyUp(client: Client, pending: MigrationFile[], log: (line: string) => void): Promise<string[]> {
	const done: string[] = [];
	for (const m of pending) {
		await inTransaction(client, async () => {
			await client.query(m.upSql);
			await client.query("INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)", [m.version, m.name, m.checksum]);
		});
		log(`applied ${m.version}_${m.name}`);
		done.push(`${m.version}_${m.name}`);
	}
	return done;
}

async function rollbackLast(client: Client, applied: AppliedMigration[], files: MigrationFile[], log: (line: string) => void): Promise<string[]> {
	const last = applied.at(-1);
	if (!last) return [];
	const file = files.find(f => f.version === last.version) as MigrationFile;
	await inTransaction(client, async () => {
		await client.query(file.downSql);
		await client.query("DELETE FROM schema_migrations WHERE version = $1", [last.version]);
	});
	log(`rolled back ${last.version}_${last.name}`);
	return [`${last.version}_${last.name}`];
}

function statusOf(applied: AppliedMigration[], files: MigrationFile[]): MigrationStatus[] {
	return files.map(f => {
		const row = applied.find(a => a.version === f.version);
		return row
			? { version: f.version, name: f.name, state: "applied", applied_at: new Date(row.applied_at).toISOString() }
			: { version: f.version, name: f.name, state: "pending" };
	});
}

export async function runMigrations(
	databaseUrl: string,
	command: MigrationCommand,
	options: { dir?: string; log?: (line: string) => void } = {},
): Promise<MigrationResult> {
	const log = options.log ?? (() => undefined);
	const files = readMigrations(options.dir);
	// With several hosts (DB_HOSTS), migrations run on the one that accepts writes.
	const client = new Client({ connectionString: await primaryUrl(databaseUrl) });
	await client.connect();
	try {
		// Session lock: a second node starting at the same moment waits here, then finds nothing pending.
		await client.query("SELECT pg_advisory_lock($1)", [MIGRATION_LOCK_KEY]);
		const applied = await appliedMigrations(client);
		verifyApplied(applied, files);
		const pending = files.filter(f => !applied.some(a => a.version === f.version));
		const result: MigrationResult = { command, applied: [], rolledBack: [], status: [], plan: [] };
		if (command === "up") result.applied = await applyUp(client, pending, log);
		if (command === "down") result.rolledBack = await rollbackLast(client, applied, files, log);
		if (command === "dry-run") result.plan = pending.map(m => `-- ${m.version}_${m.name}: ${m.description}\n${m.upSql}`);
		result.status = statusOf(command === "status" || command === "dry-run" ? applied : await appliedMigrations(client), files);
		return result;
	} finally {
		await client.query("SELECT pg_advisory_unlock($1)", [MIGRATION_LOCK_KEY]).catch(() => undefined);
		await client.end();
	}
}
