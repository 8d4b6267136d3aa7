/**
 * Backups for real: migrate and fill a database, back it up with scripts/backup-db.sh, drop it,
 * restore with scripts/restore-db.sh into a new database, and compare the rows. Also: retention
 * removes dumps older than 7 days, and restore refuses to overwrite an existing database.
 */
import { spawnSync } from "child_process";
import fs from "fs";
import os from "os";
import path from "path";
import { runMigrations } from "../../lib/data/migrations";
import { ROOT } from "../helpers/cluster";
import { dropFreshDatabases, freshDatabase, query } from "../helpers/databases";
import { describeWithPostgres } from "../helpers/requirements";

const pgToolsInstalled = spawnSync("pg_dump", ["--version"]).status === 0;

describeWithPostgres("database backup and restore scripts", () => {
	afterAll(dropFreshDatabases);

	function run(script: string, args: string[], env: Record<string, string>) {
		return spawnSync("bash", [path.join(ROOT, "scripts", script), ...args], { cwd: ROOT, env: { ...process.env, ...env }, encoding: "utf8" });
	}

	it("backup → drop → restore gives the same rows; old dumps are pruned; restore never overwrites", async () => {
		if (!pgToolsInstalled) throw new Error("pg_dump/pg_restore not found (Debian package postgresql-client)");
		const source = await freshDatabase("backuptest");
		await runMigrations(source, "up");
		await query(source, "INSERT INTO idempotency_keys (scope, key, request_hash, response) SELECT 'backup', 'k' || g, 'h', jsonb_build_object('n', g) FROM generate_series(1, 50) g");
		const before = await query<{ key: string }>(source, "SELECT key, response FROM idempotency_keys ORDER BY key");

		const dir = fs.mkdtempSync(path.join(os.tmpdir(), "backups-"));
		const stale = path.join(dir, "daarion-20000101-000000.dump");
		fs.writeFileSync(stale, "old");
		fs.utimesSync(stale, new Date("2000-01-01"), new Date("2000-01-01"));
		const backup = run("backup-db.sh", [], { DATABASE_URL: source, BACKUP_DIR: dir });
		expect(backup.stderr).toBe("");
		expect(backup.status).toBe(0);
		const dumps = fs.readdirSync(dir);
		expect(dumps).toHaveLength(1);
		expect(dumps[0]).toMatch(/^daarion-\d{8}-\d{6}\.dump$/);
		expect(fs.existsSync(stale)).toBe(false);

		await query(source, "DROP TABLE idempotency_keys");
		const target = await freshDatabase("restoretest");
		const refused = run("restore-db.sh", [path.join(dir, dumps[0]), target], {});
		expect(refused.status).toBe(3); // freshDatabase created it already: no overwrite

		const restoredUrl = target.replace(/\/([^/]+)$/, "/$1_restored");
		const restore = run("restore-db.sh", [path.join(dir, dumps[0]), restoredUrl], {});
		expect(restore.status).toBe(0);
		try {
			expect(await query(restoredUrl, "SELECT key, response FROM idempotency_keys ORDER BY key")).toEqual(before);
			expect((await query(restoredUrl, "SELECT version FROM schema_migrations")).length).toBeGreaterThan(0);
		} finally {
			await query(source.replace(/\/[^/]+$/, "/postgres"), `DROP DATABASE IF EXISTS ${restoredUrl.split("/").pop()} WITH (FORCE)`);
		}
	});
});
