/**
 * `npm run migrate -- up|down|status|dry-run`: applies, rolls back (one step), lists or previews the
 * SQL migrations in migrations/ against DATABASE_URL / DB_* (or the embedded PostgreSQL in development).
 */
import { withDatabase } from "../lib/data/database-location";
import { runMigrations, type MigrationCommand } from "../lib/data/migrations";
import { loadMigrationSettings } from "../lib/runtime/settings";

const COMMANDS: MigrationCommand[] = ["up", "down", "status", "dry-run"];

async function main(): Promise<void> {
	const command = (process.argv[2] ?? "status") as MigrationCommand;
	if (!COMMANDS.includes(command)) throw new Error(`unknown command "${command}"; use one of: ${COMMANDS.join(", ")}`);
	// Only the database matters here: a production deploy migrates before any node (and its secrets) starts.
	const result = await withDatabase(loadMigrationSettings(), url => runMigrations(url, command, { log: line => process.stdout.write(`${line}\n`) }));
	if (command === "dry-run") process.stdout.write(result.plan.length ? `${result.plan.join("\n\n")}\n` : "nothing pending\n");
	for (const s of result.status) process.stdout.write(`${s.version}_${s.name}\t${s.state}${s.applied_at ? `\t${s.applied_at}` : ""}\n`);
}

main().catch(err => {
	process.stderr.write(`migrate: ${(err as Error).message}\n`);
	process.exit(1);
});
