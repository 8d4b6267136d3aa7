/**
 * `npm run bench:db-faults -- [--root <checkout>] [--scenario restart|terminate|failover] [--hosts single|multi]`
 *
 * What clients see when PostgreSQL restarts, drops every connection, or fails over to its standby,
 * with two full nodes under read and keyed-write load (test/helpers/db-chaos.ts). `--root` runs the
 * nodes from another checkout (the base commit, for "before" numbers in docs/FAILOVER.md). Needs root
 * (PostgreSQL runs as the `postgres` user from /usr/lib/postgresql/<v>/bin) and NATS on 127.0.0.1:4222.
 * Prints one JSON line per scenario.
 */
import fs from "fs";
import path from "path";
import { faultWindow, seedMemories, sleep, startChaosLoad, startChaosMesh, type ChaosMesh } from "../../test/helpers/db-chaos";
import { TestPostgres } from "../../test/helpers/pg-cluster";

function arg(name: string, fallback: string): string {
	const i = process.argv.indexOf(`--${name}`);
	return i > 0 ? process.argv[i + 1] : fallback;
}

const READS_PER_SECOND = 40;
const WRITES_PER_SECOND = 8;
const WARMUP_MS = 3_000;
const AFTER_MS = 8_000;

async function scenario(name: string, root: string, multiHost: boolean): Promise<object> {
	const failover = name === "failover";
	const primary = await TestPostgres.create({ synchronousStandby: failover });
	const standby = failover ? await TestPostgres.standbyOf(primary) : null;
	let mesh: ChaosMesh | undefined;
	try {
		await primary.query("CREATE DATABASE app");
		const databaseUrl =
			standby && multiHost ? `postgres://postgres@${primary.hostPort},${standby.hostPort}/app` : primary.url("app");
		mesh = await startChaosMesh({ databaseUrl, root });
		const ids = await seedMemories(mesh, 50);
		const load = startChaosLoad(mesh, ids, { readsPerSecond: READS_PER_SECOND, writesPerSecond: WRITES_PER_SECOND });
		await sleep(WARMUP_MS);
		const faultAt = load.now();
		if (name === "restart") await primary.restart("fast");
		if (name === "terminate") {
			for (let i = 0; i < 4; i++) {
				await primary.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'app' AND pid <> pg_backend_pid()");
				await sleep(500);
			}
		}
		if (failover) {
			await primary.stop("fast");
			// As in test/chaos/pg-failover.test.ts: a replication manager takes a moment to decide.
			await sleep(1_000);
			await standby!.promote();
		}
		const backAt = load.now();
		await sleep(AFTER_MS);
		const { answers, writes } = await load.stop();
		const server = standby ?? primary;
		const rows = await server.query<{ key: string; n: string }>("SELECT key, count(*) AS n FROM memories WHERE key LIKE 'chaos-%' GROUP BY key", [], "app");
		const rowsByKey = new Map(rows.map(r => [r.key, Number(r.n)]));
		const acknowledged = writes.filter(w => w.acknowledged);
		return {
			scenario: name,
			root: path.basename(root),
			db_down_ms: Math.round(backAt - faultAt),
			reads: faultWindow(answers, faultAt - 500, backAt + AFTER_MS, "read"),
			writes: faultWindow(answers, faultAt - 500, backAt + AFTER_MS, "write"),
			answers_500: answers.filter(a => a.status === 500).length,
			failed_without_retry_after: answers.filter(a => a.status >= 500 && !a.retryAfter).length,
			logical_writes: writes.length,
			acknowledged: acknowledged.length,
			acknowledged_but_missing: acknowledged.filter(w => !rowsByKey.has(w.key)).length,
			duplicated: [...rowsByKey.values()].filter(n => n > 1).length,
			first_write_acknowledged_after_back_ms: Math.round(Math.min(...answers.filter(a => a.kind === "write" && a.status === 200 && a.end > backAt).map(a => a.end - backAt))),
			last_failed_read_after_back_ms: Math.round(Math.max(0, ...answers.filter(a => a.kind === "read" && a.status !== 200).map(a => a.end - backAt))),
		};
	} finally {
		// BENCH_LOGS=dir keeps each node's log lines for a closer look.
		if (process.env.BENCH_LOGS && mesh) for (const node of mesh.nodes) fs.writeFileSync(path.join(process.env.BENCH_LOGS, `${name}-${node.nodeID}.log`), node.logs.join("\n"));
		await mesh?.stop();
		await standby?.destroy();
		await primary.destroy();
	}
}

async function main(): Promise<void> {
	const root = path.resolve(arg("root", path.resolve(__dirname, "..", "..")));
	const names = arg("scenario", "restart,terminate,failover").split(",");
	const multiHost = arg("hosts", "multi") === "multi";
	for (const name of names) process.stdout.write(`${JSON.stringify(await scenario(name, root, multiHost))}\n`);
}

main()
	.then(() => process.exit(0))
	.catch(err => {
		process.stderr.write(`bench:db-faults failed: ${(err as Error).stack}\n`);
		process.exit(1);
	});
