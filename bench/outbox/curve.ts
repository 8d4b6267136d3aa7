/**
 * `npm run bench:outbox-curve`: outbox lag against the offered event rate, stepping up until it saturates.
 * One node runs the outbox relay and the audit writer (SERVICES=audit,outbox), as in bench/audit. At each
 * rate of OUTBOX_CURVE_RATES (default 10, 100, 300, 1000, 3000, 10000 events/s) this process commits one
 * transaction per event for BENCH_SECONDS (default 10), on a schedule whatever the answers, then waits for
 * the step to drain. Per step: commit → published to JetStream (outbox published_at − created_at) and
 * commit → consumed (audit_log recorded_at − created_at), p50/p99; the rate the events were committed and
 * consumed at; the CPU each process used meanwhile (node, this process, PostgreSQL backends of this
 * database, nats-server). A step saturates when the consumed rate falls under 90 % of the offered one or
 * its consumed p99 passes SATURATED_P99_MS; the curve stops at that step. Writes the table into
 * docs/BENCHMARKS.md and the plot to docs/bench/outbox-curve.svg.
 */
import fs from "fs";
import path from "path";
import { execSync } from "child_process";
import { connect } from "nats";
import { Pool } from "pg";
import { adminQuery, fixedRate, formatNumber, loadAverage, machine, percentile, processCpuMs, ROOT, startProcess, stopProcesses, table, writeSection, migratedBenchDatabase } from "../lib/harness";
import { svgCharts } from "../lib/svg-plot";
import { joinMeshAsOutboxWriter, type OutboxWriter } from "../lib/outbox-writer";

const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const RATES = (process.env.OUTBOX_CURVE_RATES ?? "10,100,300,1000,3000,10000").split(",").map(Number);
/** Consumed p99 past which a step counts as saturated: the backlog, not the pipeline, sets the lag. */
const SATURATED_P99_MS = Number(process.env.SATURATED_P99_MS ?? 2_000);
/** How long a step may take to drain after its last commit before the bench gives up on it. */
const DRAIN_TIMEOUT_MS = Number(process.env.DRAIN_TIMEOUT_MS ?? 60_000);
const POOL_SIZE = 10;
const id = `${process.pid}`;
const prefix = `benchoc${id}`;
const stream = `BENCH_OC_${id}`;
const dbName = `bench_outbox_curve_${id}`;
const SVG_FILE = path.join(ROOT, "docs", "bench", "outbox-curve.svg");
const sleep = (ms: number) => new Promise(r => setTimeout(r, ms));

const INSERT_EVENT = `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, subject, payload) VALUES ('audit', $1, $2, $3,
	jsonb_build_object('actor', 'bench', 'outcome', 'success', 'node', 'bench', 'occurred_at', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')))`;

interface Cpu {
	node: number;
	bench: number;
	postgres: number;
	nats: number;
}

interface Step {
	offered: number;
	committed: number;
	consumedRate: number;
	events: number;
	failedCommits: number;
	published: { p50: number; p99: number };
	consumed: { p50: number; p99: number };
	drained: boolean;
	cpu: Cpu;
	load: string;
	saturated: boolean;
}

/** PostgreSQL backends serving this database (the node's pool and this process's): their CPU is what this bench costs PostgreSQL. */
async function backendPids(pool: Pool): Promise<number[]> {
	const { rows } = await pool.query<{ pid: number }>("SELECT pid FROM pg_stat_activity WHERE datname = current_database()");
	return rows.map(r => r.pid);
}

function cpuOf(pids: number[]): number {
	return pids.reduce((sum, pid) => {
		try {
			return sum + processCpuMs(pid);
		} catch {
			return sum; // the backend ended meanwhile
		}
	}, 0);
}

async function count(pool: Pool, sql: string, params: unknown[]): Promise<number> {
	return Number((await pool.query<{ n: string }>(sql, params)).rows[0].n);
}

async function lagsMs(pool: Pool, sql: string, tag: string): Promise<{ p50: number; p99: number }> {
	const { rows } = await pool.query<{ ms: string }>(sql, [tag]);
	const sorted = rows.map(r => Number(r.ms)).sort((a, b) => a - b);
	return { p50: percentile(sorted, 50), p99: percentile(sorted, 99) };
}

async function step(pool: Pool, writer: OutboxWriter, rate: number, nodePid: number, natsPid: number): Promise<Step> {
	const tag = `r${rate}`;
	const pids = await backendPids(pool);
	const before = { node: processCpuMs(nodePid), bench: process.cpuUsage(), postgres: cpuOf(pids), nats: processCpuMs(natsPid), at: performance.now() };
	const paced = await fixedRate(() => writer.after(pool.query(INSERT_EVENT, [tag, `audit.bench.${tag}`, `${prefix}.audit.bench.${tag}`])), rate, SECONDS * 1000);
	const deadline = performance.now() + DRAIN_TIMEOUT_MS;
	let consumed = 0;
	while ((consumed = await count(pool, "SELECT count(*) AS n FROM audit_log WHERE action = $1", [tag])) < paced.calls && performance.now() < deadline) await sleep(100);
	const elapsed = performance.now() - before.at;
	const bench = process.cpuUsage(before.bench);
	const share = (ms: number) => (100 * ms) / elapsed;
	const cpu = { node: share(processCpuMs(nodePid) - before.node), bench: share((bench.user + bench.system) / 1000), postgres: share(cpuOf(pids) - before.postgres), nats: share(processCpuMs(natsPid) - before.nats) };
	const published = await lagsMs(pool, "SELECT extract(epoch FROM (published_at - created_at)) * 1000 AS ms FROM outbox WHERE aggregate_id = $1 AND published_at IS NOT NULL", tag);
	const consumedLag = await lagsMs(
		pool,
		"SELECT extract(epoch FROM (a.recorded_at - o.created_at)) * 1000 AS ms FROM audit_log a JOIN outbox o ON o.id::text = a.event_id WHERE o.aggregate_id = $1",
		tag,
	);
	const span = await pool.query<{ first: Date; last: Date }>(
		"SELECT min(o.created_at) AS first, max(a.recorded_at) AS last FROM audit_log a JOIN outbox o ON o.id::text = a.event_id WHERE o.aggregate_id = $1",
		[tag],
	);
	const spanMs = span.rows[0].last && span.rows[0].first ? span.rows[0].last.getTime() - span.rows[0].first.getTime() : NaN;
	const consumedRate = (consumed / Math.max(spanMs, SECONDS * 1000)) * 1000;
	const drained = consumed >= paced.calls;
	const saturated = !drained || consumedRate < 0.9 * rate || consumedLag.p99 > SATURATED_P99_MS;
	const result = { offered: rate, committed: paced.perSecond, consumedRate, events: paced.calls, failedCommits: paced.errors, published, consumed: consumedLag, drained, cpu, load: loadAverage(), saturated };
	process.stdout.write(
		`@${rate}/s: committed ${formatNumber(paced.perSecond)}/s, consumed ${formatNumber(consumedRate)}/s (${consumed}/${paced.calls}), published p50/p99 ${formatNumber(published.p50)}/${formatNumber(published.p99)} ms, ` +
			`consumed p50/p99 ${formatNumber(consumedLag.p50)}/${formatNumber(consumedLag.p99)} ms, CPU node ${cpu.node.toFixed(0)}% bench ${cpu.bench.toFixed(0)}% pg ${cpu.postgres.toFixed(0)}% nats ${cpu.nats.toFixed(0)}%${saturated ? " SATURATED" : ""} (load ${result.load})\n`,
	);
	return result;
}

/** Which process was closest to a full core at the first saturated step: the likely limit. */
function limitOf(s: Step): string {
	const shares: Array<[string, number]> = [
		["the node (outbox relay + audit writer, one event loop)", s.cpu.node],
		["PostgreSQL (this database's backends)", s.cpu.postgres],
		["nats-server", s.cpu.nats],
		["this bench process (the committing side)", s.cpu.bench],
	];
	const [name, share] = shares.sort((a, b) => b[1] - a[1])[0];
	return `${name} at ${share.toFixed(0)} % of one core`;
}

function report(steps: Step[], loadAtStart: string): string {
	const rows = steps.map(s => [
		String(s.offered),
		s.committed,
		s.consumedRate,
		s.published.p50,
		s.published.p99,
		s.consumed.p50,
		s.consumed.p99,
		`${s.cpu.node.toFixed(0)} / ${s.cpu.postgres.toFixed(0)} / ${s.cpu.nats.toFixed(0)} / ${s.cpu.bench.toFixed(0)}`,
		`${s.failedCommits}${s.drained ? "" : ", not drained"}`,
		s.load,
		s.saturated ? "yes" : "no",
	]);
	const firstSaturated = steps.find(s => s.saturated);
	const lastHeld = [...steps].reverse().find(s => !s.saturated);
	const where = firstSaturated
		? `Saturates between ${lastHeld ? `${formatNumber(lastHeld.offered)}` : "0"} and ${formatNumber(firstSaturated.offered)} events/s offered: at ${formatNumber(firstSaturated.offered)}/s this process committed ${formatNumber(firstSaturated.committed)}/s (pool of ${POOL_SIZE}, one transaction per event) and the pipeline consumed ${formatNumber(firstSaturated.consumedRate)}/s with a consumed p99 of ${formatNumber(firstSaturated.consumed.p99)} ms; busiest process then: ${limitOf(firstSaturated)}.`
		: `Did not saturate up to ${formatNumber(steps[steps.length - 1].offered)} events/s offered (busiest process at the top step: ${limitOf(steps[steps.length - 1])}); raise OUTBOX_CURVE_RATES.`;
	const commitsFirst =
		firstSaturated && firstSaturated.committed < 0.9 * firstSaturated.offered
			? ` The committing side gave out first (${formatNumber(firstSaturated.committed)} of ${formatNumber(firstSaturated.offered)} events/s committed, one transaction per event over a pool of ${POOL_SIZE}): PostgreSQL's commits per second bound the source before the relay; sources that write several events per transaction go further.`
			: "";
	return [
		`Run ${new Date().toISOString()} on ${machine()}; local PostgreSQL and NATS (JetStream); load average ${loadAtStart} at the start and ${loadAverage()} at the end (other work shares these cores). One node (SERVICES=audit,outbox: outbox relay → JetStream → audit writer); this process commits one transaction per event (pool of ${POOL_SIZE}) at a fixed rate for ${SECONDS} s per step, then waits for the step to drain. \`npm run bench:outbox-curve\`.`,
		"",
		"![outbox lag vs offered event rate](bench/outbox-curve.svg)",
		"",
		table(
			["offered events/s", "committed events/s", "consumed events/s", "→ published p50 ms", "→ published p99 ms", "→ consumed p50 ms", "→ consumed p99 ms", "CPU % node / postgres / nats / bench", "failed commits", "load average", "saturated"],
			rows,
		),
		"",
		`- ${where}${commitsFirst}`,
		"- Lags are from the event's commit (outbox created_at, the transaction's start: a lower bound of the commit time) to the relay's JetStream ack (published_at) and to its audit_log row (recorded_at), both PostgreSQL clocks. A step counts as saturated when the consumed rate falls under 90 % of the offered one, the step does not drain, or its consumed p99 passes " +
			`${formatNumber(SATURATED_P99_MS)} ms.`,
		"- CPU columns: % of one core over the step (the machine has 200 %). PostgreSQL counts the backends of this database only (not the WAL writer or checkpointer); a total well under 200 % with a high load average means the processes waited for cores taken by other work.",
		"- What limits it / past one machine: the relay (leader lease `outbox-relay`) and the audit writer (one writer at a time) each run on one node per database, one event loop each; more nodes on the NATS cluster add consumers of other subjects but not relay or writer throughput, so past the saturation point the levers are larger relay batches or more databases (the events of a service in its own database, each with its own relay), and PostgreSQL on its own machine (its commits per second are the other ceiling this table shows).",
	].join("\n");
}

function plot(steps: Step[], caption: string): void {
	const points = (pick: (s: Step) => number) => steps.map(s => [s.offered, Math.max(pick(s), 0.1)] as [number, number]);
	fs.mkdirSync(path.dirname(SVG_FILE), { recursive: true });
	fs.writeFileSync(
		SVG_FILE,
		svgCharts(
			[
				{
					title: "Outbox lag vs offered rate",
					xLabel: "offered events/s",
					yLabel: "lag ms",
					xLog: true,
					yLog: true,
					series: [
						{ name: "→ published p99", color: "#888888", points: points(s => s.published.p99) },
						{ name: "→ consumed p99", color: "#1f6feb", points: points(s => s.consumed.p99) },
						{ name: "→ consumed p50", color: "#2da44e", points: points(s => s.consumed.p50) },
					],
				},
				{
					title: "Throughput vs offered rate",
					xLabel: "offered events/s",
					yLabel: "events/s",
					xLog: true,
					yLog: true,
					series: [
						{ name: "offered", color: "#888888", points: points(s => s.offered) },
						{ name: "consumed", color: "#1f6feb", points: points(s => s.consumedRate) },
					],
				},
			],
			caption,
		),
	);
}

async function main(): Promise<void> {
	const loadAtStart = loadAverage();
	const url = await migratedBenchDatabase(dbName);
	const pool = new Pool({ connectionString: url, max: POOL_SIZE });
	// A saturated step can leave a commit in flight at teardown: DROP DATABASE … WITH (FORCE) then ends its session,
	// which the pool reports as an error event (unhandled, it crashed the bench after its table was written).
	pool.on("error", () => undefined);
	const nc = await connect({ servers: new URL(NATS_URL).host });
	try {
		const env = { MESH_NAMESPACE: `bench-oc-${id}`, NATS_URL, DATABASE_URL: url, JWT_SECRET: "bench-secret-0123456789abcdef0123456789", EVENTS_SUBJECT_PREFIX: prefix, NATS_STREAM_EVENTS: stream, LOG_LEVEL: "info", MIGRATE_ON_START: "0", PORT: "0" };
		const node = await startProcess("scripts/run-node.ts", { ...env, NODE_ID: "bench-outbox-curve", NODE_ROLE: "node1", SERVICES: "audit,outbox" }, "Service 'audit' started");
		await sleep(1_000);
		const writer = await joinMeshAsOutboxWriter(env);
		const natsPid = Number(execSync("pgrep -o nats-server").toString().trim());
		for (let i = 0; i < POOL_SIZE; i++) await pool.query("SELECT 1"); // open the pool before the first step
		const steps: Step[] = [];
		for (const rate of RATES) {
			const s = await step(pool, writer, rate, node.pid!, natsPid);
			steps.push(s);
			if (s.saturated) break; // the next step would only queue more behind the same limit
		}
		await writer.stop();
		const text = report(steps, loadAtStart);
		plot(steps, `${new Date().toISOString().slice(0, 16)}Z, ${machine()}, load ${loadAverage()}; ${SECONDS} s per step`);
		process.stdout.write(`\n${text}\n`);
		writeSection("Outbox lag vs event rate (bench/outbox/curve.ts)", text);
	} finally {
		await stopProcesses();
		await (await nc.jetstreamManager()).streams.delete(stream).catch(() => undefined);
		await nc.close();
		await pool.end();
		await adminQuery(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => undefined);
	}
}

main().then(
	() => process.exit(0),
	err => {
		process.stderr.write(`bench:outbox-curve failed: ${(err as Error).stack}\n`);
		stopProcesses().finally(() => process.exit(1));
	},
);
