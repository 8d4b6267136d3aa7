/**
 * The migration runner against real PostgreSQL, each test in a database of its own: up → down → up,
 * refusal after an applied file was edited, two runners at once apply each migration once, dry-run
 * changes nothing, and the CLI reports status.
 */
import { spawnSync } from "child_process";
import fs from "fs";
import os from "os";
import path from "path";
import { Client } from "pg";
import { MIGRATIONS_DIR, readMigrations, runMigrations } from "../../lib/data/migrations";
import { ROOT } from "../helpers/cluster";
import { dropFreshDatabases, freshDatabase } from "../helpers/databases";
import { describeWithPostgres } from "../helpers/requirements";

afterAll(dropFreshDatabases);

async function tables(url: string): Promise<string[]> {
	const client = new Client({ connectionString: url });
	await client.connect();
	const { rows } = await client.query<{ tablename: string }>("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename");
	await client.end();
	return rows.map(r => r.tablename);
}

function copyMigrations(): string {
	const dir = fs.mkdtempSync(path.join(os.tmpdir(), "migrations-"));
	for (const f of fs.readdirSync(MIGRATIONS_DIR).filter(f => f.endsWith(".sql"))) fs.copyFileSync(path.join(MIGRATIONS_DIR, f), path.join(dir, f));
	return dir;
}

const ALL = readMigrations().map(m => `${m.version}_${m.name}`);
const LAST = ALL.at(-1) as string;

describeWithPostgres("migrations runner", () => {
	it("applies every file, rolls back one step with its Rollback section, and applies it again", async () => {
		const url = await freshDatabase("migtest");
		const up = await runMigrations(url, "up");
		expect(up.applied).toEqual(ALL);
		expect(ALL.slice(0, 2)).toEqual(["001_leader_leases", "002_mesh_node_events"]);
		expect(await tables(url)).toEqual(expect.arrayContaining(["schema_migrations", "leader_leases", "leader_lease_events", "mesh_node_events"]));
		// 010 dropped the pre-009 audit table: operator notes live in audit_log.
		expect(await tables(url)).not.toContain("audit_records");
		expect(await tables(url)).toContain("audit_log");

		const down = await runMigrations(url, "down");
		expect(down.rolledBack).toEqual([LAST]);
		expect(down.status.map(s => s.state)).toEqual([...ALL.slice(0, -1).map(() => "applied"), "pending"]);
		// Down to 001: the rollback sections really drop what their files created.
		while ((await runMigrations(url, "status")).status.filter(s => s.state === "applied").length > 1) await runMigrations(url, "down");
		expect(await tables(url)).not.toContain("mesh_node_events");
		expect(await tables(url)).toContain("leader_leases");

		const again = await runMigrations(url, "up");
		expect(again.applied).toEqual(ALL.slice(1));
		expect((await runMigrations(url, "up")).applied).toEqual([]);
	});

	it("refuses to run when an applied file was edited, naming the file", async () => {
		const url = await freshDatabase("migtest");
		const dir = copyMigrations();
		await runMigrations(url, "up", { dir });
		fs.appendFileSync(path.join(dir, "001_leader_leases.sql"), "\n-- a later edit\n");
		await expect(runMigrations(url, "up", { dir })).rejects.toThrow(/001_leader_leases\.sql was edited after it was applied/);
	});

	it("two runners starting together apply each migration exactly once", async () => {
		const url = await freshDatabase("migtest");
		const results = await Promise.all([runMigrations(url, "up"), runMigrations(url, "up"), runMigrations(url, "up")]);
		expect(results.flatMap(r => r.applied).sort()).toEqual(ALL);
		const client = new Client({ connectionString: url });
		await client.connect();
		const { rows } = await client.query("SELECT version FROM schema_migrations");
		await client.end();
		expect(rows).toHaveLength(ALL.length);
	});

	it("dry-run shows the pending SQL and changes nothing", async () => {
		const url = await freshDatabase("migtest");
		const plan = await runMigrations(url, "dry-run");
		expect(plan.plan.join("\n")).toContain("CREATE TABLE IF NOT EXISTS leader_leases");
		expect(await tables(url)).toEqual(["schema_migrations"]);
	});

	it("rejects a file without the seed's header, and the CLI prints status per migration", async () => {
		const dir = copyMigrations();
		fs.writeFileSync(path.join(dir, "999_bad.sql"), "BEGIN;\nSELECT 1;\nCOMMIT;\n");
		const url = await freshDatabase("migtest");
		await expect(runMigrations(url, "up", { dir })).rejects.toThrow(/999_bad\.sql: header line "-- Migration:" is missing/);

		const cli = spawnSync(process.execPath, ["--import", "tsx", "scripts/migrate.ts", "status"], { cwd: ROOT, env: { ...process.env, DATABASE_URL: url }, encoding: "utf8" });
		expect(cli.status).toBe(0);
		expect(cli.stdout).toMatch(/001_leader_leases\tpending/);
		const bad = spawnSync(process.execPath, ["--import", "tsx", "scripts/migrate.ts", "sideways"], { cwd: ROOT, env: { ...process.env, DATABASE_URL: url }, encoding: "utf8" });
		expect(bad.status).toBe(1);
		expect(bad.stderr).toContain('unknown command "sideways"');
	});
});
