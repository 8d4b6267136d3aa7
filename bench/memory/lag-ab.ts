/**
 * Lag only, for A/B runs across checkouts (copy this file into the other checkout's bench/memory/):
 * memory.create at a steady LAG_RATE per second for LAG_SECONDS, twice, each time commit → JetStream ack
 * read from the outbox rows' own timestamps (published_at − created_at). Prints; writes no docs.
 * LAG_PREDRAIN=N first queues and drains N rows (a table that has kept many published rows);
 * LAG_VACUUM=1 then vacuums the outbox before measuring.
 * docs/BENCHMARKS.md "Memory → JetStream lag under load" is what it found.
 */
import { ServiceBroker } from "moleculer";
import { Pool } from "pg";
import { createBrokerOptions } from "../../moleculer.config";
import { loadSettings } from "../../lib/runtime/settings";
import { resolveTransport } from "../../lib/runtime/transport";
import { runMigrations } from "../../lib/data/migrations";
// Only harness helpers the 2026-12-01 checkout has too: the file is copied there for the A/B.
import { ADMIN_DATABASE_URL, adminQuery, fixedRate, percentile, startProcess, stopProcesses } from "../lib/harness";

const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const RATE = Number(process.env.LAG_RATE ?? 300);
const SECONDS = Number(process.env.LAG_SECONDS ?? 5);
const id = `${process.pid}`;
const dbName = `bench_lag_${id}`;
const user = { id: "bench", roles: ["admin"], teams: [] };
const sleep = (ms: number) => new Promise(r => setTimeout(r, ms));

/** Until the relay has published every pending row, or `timeoutMs` has passed (the rows then say how far it got). */
async function drained(pool: Pool, timeoutMs: number): Promise<void> {
	const deadline = Date.now() + timeoutMs;
	while (Date.now() < deadline) {
		const { rows } = await pool.query<{ n: number }>("SELECT count(*)::int AS n FROM outbox WHERE status = 'pending'");
		if (rows[0].n === 0) return;
		await sleep(100);
	}
}
async function main() {
	await adminQuery(`CREATE DATABASE ${dbName}`);
	const url = ADMIN_DATABASE_URL.replace(/\/[^/]*$/, `/${dbName}`);
	await runMigrations(url, "up");
	const pool = new Pool({ connectionString: url, max: 4 });
	const env = { MESH_NAMESPACE: `lag-${id}`, NATS_URL, DATABASE_URL: url, JWT_SECRET: "bench-secret-0123456789abcdef0123456789", EVENTS_SUBJECT_PREFIX: `lag${id}`, NATS_STREAM_EVENTS: `LAG_${id}`, LOG_LEVEL: "warn", MIGRATE_ON_START: "0" };
	let caller: ServiceBroker | null = null;
	try {
		await startProcess("scripts/run-node.ts", { ...env, NODE_ID: "lag-memory", NODE_ROLE: "node1", SERVICES: "memory,outbox", PORT: "0", LOG_LEVEL: "info" }, "Service 'outbox' started");
		const settings = loadSettings({ ...env, NODE_ID: "lag-caller" });
		caller = new ServiceBroker(createBrokerOptions(settings, await resolveTransport(settings)));
		await caller.start();
		await caller.waitForServices("memory");
		let n = 0;
		for (let i = 0; i < 200; i++) await caller.call("memory.create", { scope: "public", owner_id: "bench", kind: "event", key: `w-${n++}`, content: "warm" }, { meta: { user } });
		await sleep(2000);
		const predrain = Number(process.env.LAG_PREDRAIN ?? 0);
		if (predrain) {
			await pool.query("INSERT INTO outbox (aggregate_type, aggregate_id, event_type, subject, payload) SELECT 'bench', g::text, 'bench.event', $1, jsonb_build_object('n', g) FROM generate_series(1, $2) g", [`lag${id}.memory.bench.public`, predrain]);
			const t0 = Date.now();
			await drained(pool, 120_000);
			process.stdout.write(`predrain ${predrain} in ${Date.now() - t0} ms\n`);
			if (process.env.LAG_VACUUM) { await pool.query("VACUUM ANALYZE outbox"); process.stdout.write("vacuumed\n"); }
		}
		for (const round of [1, 2]) {
			const from = new Date();
			const paced = await fixedRate(() => caller!.call("memory.create", { scope: "public", owner_id: "bench", kind: "event", key: `lag-${n++}`, content: "lag probe" }, { meta: { user } }), RATE, SECONDS * 1000);
			await drained(pool, 30_000);
			const { rows } = await pool.query<{ ms: number }>("SELECT extract(epoch FROM (published_at - created_at)) * 1000 AS ms FROM outbox WHERE created_at >= $1 AND event_type = 'memory.created' ORDER BY 1", [from]);
			const lags = rows.map(r => Number(r.ms));
			process.stdout.write(`LAG round ${round}: p50 ${percentile(lags, 50).toFixed(1)} p90 ${percentile(lags, 90).toFixed(1)} p99 ${percentile(lags, 99).toFixed(1)} max ${lags.at(-1)?.toFixed(1)} ms over ${lags.length} (errors ${paced.errors}, create p99 ${paced.p99.toFixed(1)} ms)\n`);
		}
	} finally {
		await caller?.stop();
		await stopProcesses();
		await pool.end();
		await adminQuery(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => undefined);
	}
}
main().then(
	() => process.exit(0),
	(err: Error) => {
		process.stderr.write(`${err.stack}\n`);
		process.exit(1);
	},
);
