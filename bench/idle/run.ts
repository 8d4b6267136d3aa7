/**
 * `npm run bench:idle`: what an idle two-node mesh costs — CPU per second of each node process (all its threads),
 * of the PostgreSQL sessions they hold, and transactions per second in their database — against a bare Moleculer
 * node on the same NATS (bench/mesh/bare-server.ts) measured in the same run. Nothing calls the nodes: what is
 * left is heartbeats, leases, the outbox relay's and the audit writer's polling, presence sweeps, metrics.
 * A node that runs 24/7 pays this whether or not anyone uses it, and so does the presence fan-out sharing its core.
 */
import { randomBytes } from "crypto";
import { Client } from "pg";
import { adminQuery, formatNumber, loadAverage, machine, migratedBenchDatabase, processCpuMs, runBench, startProcess, stopProcesses, table, writeSection } from "../lib/harness";

const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const SETTLE_MS = Number(process.env.IDLE_SETTLE_S ?? 15) * 1_000;
const MEASURE_MS = Number(process.env.IDLE_MEASURE_S ?? 30) * 1_000;
const id = randomBytes(3).toString("hex");
const dbName = `bench_idle_${id}`;

interface Reading {
	cpuMs: Map<string, number>;
	transactions: number;
	sessions: number;
	at: number;
}

/** CPU so far of every PostgreSQL session connected to the bench's database, summed. */
async function sessionsCpuMs(admin: Client): Promise<{ cpuMs: number; sessions: number; transactions: number }> {
	const { rows } = await admin.query<{ pid: number }>("SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", [dbName]);
	let cpuMs = 0;
	for (const { pid } of rows) {
		try {
			cpuMs += processCpuMs(pid);
		} catch {
			// the session ended between the query and the read
		}
	}
	const stats = await admin.query<{ n: string }>("SELECT xact_commit + xact_rollback AS n FROM pg_stat_database WHERE datname = $1", [dbName]);
	return { cpuMs, sessions: rows.length, transactions: Number(stats.rows[0]?.n ?? 0) };
}

async function read(pids: Map<string, number>, admin: Client): Promise<Reading> {
	const cpuMs = new Map([...pids].map(([name, pid]) => [name, processCpuMs(pid)]));
	const pg = await sessionsCpuMs(admin);
	cpuMs.set("PostgreSQL sessions of both nodes", pg.cpuMs);
	return { cpuMs, transactions: pg.transactions, at: performance.now(), sessions: pg.sessions };
}

async function main(): Promise<void> {
	const loadAtStart = loadAverage();
	const url = await migratedBenchDatabase(dbName);
	const admin = new Client({ connectionString: url });
	await admin.connect();
	try {
		const base = {
			MESH_NAMESPACE: `bench-idle-${id}`,
			NATS_URL,
			DATABASE_URL: url,
			JWT_SECRET: `idle-${id}-0123456789abcdef0123456789abcdef`,
			LOG_LEVEL: "warn",
			EVENTS_SUBJECT_PREFIX: `benchi${id}`,
			NATS_STREAM_EVENTS: `BENCH_I_${id}`,
		};
		const ready = "API Gateway listening";
		const node1 = await startProcess("scripts/run-node.ts", { ...base, NODE_ID: "bi-node1", NODE_ROLE: "node1", PORT: "9681", LOG_LEVEL: "info" }, ready);
		const node2 = await startProcess("scripts/run-node.ts", { ...base, NODE_ID: "bi-node2", NODE_ROLE: "node2", PORT: "9682", LOG_LEVEL: "info" }, ready);
		const bare = await startProcess("bench/mesh/bare-server.ts", { NATS_URL, MESH_NAMESPACE: `bench-idle-bare-${id}` });
		const pids = new Map([
			["NODE1 (leader of the relay, audit writer, sweeps)", node1.pid!],
			["NODE2", node2.pid!],
			["bare Moleculer node", bare.pid!],
		]);
		await new Promise(resolve => setTimeout(resolve, SETTLE_MS));
		const first = await read(pids, admin);
		await new Promise(resolve => setTimeout(resolve, MEASURE_MS));
		const last = await read(pids, admin);
		const seconds = (last.at - first.at) / 1_000;
		const perSecond = (name: string) => (last.cpuMs.get(name)! - first.cpuMs.get(name)!) / seconds;
		const bareMs = perSecond("bare Moleculer node");
		// One clock tick over the window is the resolution: a ratio to less than a few ticks means nothing.
		const resolution = 10 / seconds;
		const ratio = (name: string) => (name.startsWith("PostgreSQL") ? "" : bareMs >= 3 * resolution ? `${formatNumber(perSecond(name) / bareMs)}×` : "bare under 3 ticks");
		const rows = [...last.cpuMs.keys()].map(name => [name, perSecond(name), ratio(name)]);
		const transactionsPerSecond = (last.transactions - first.transactions) / seconds;
		await stopProcesses();
		writeSection(
			"An idle two-node mesh (bench/idle)",
			[
				`Run ${new Date().toISOString()} on ${machine()}; load average ${loadAtStart} at the start and ${loadAverage()} at the end. Two full nodes (every service, gateway included, real NATS and PostgreSQL, a database of their own) and a bare Moleculer node on the same NATS, nobody calling any of them; ${SETTLE_MS / 1_000} s to settle, then ${formatNumber(seconds)} s measured. CPU from /proc (user + system, all threads; ±1 clock tick = 10 ms over the window). \`npm run bench:idle\`.`,
				"",
				table(["process", "CPU ms per s", "× bare Moleculer node"], rows),
				"",
				`- PostgreSQL: ${last.sessions} sessions of the two nodes, **${formatNumber(transactionsPerSecond)} transactions/s** in their database (each statement outside a transaction counts as one).`,
			].join("\n"),
		);
		process.stdout.write(`${rows.map(r => r.join("  ")).join("\n")}\ntransactions/s ${formatNumber(transactionsPerSecond)}\n`);
	} finally {
		await stopProcesses();
		await admin.end();
		await adminQuery(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`);
	}
}

runBench(main);
