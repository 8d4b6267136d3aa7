/**
 * `npm run bench:failover`: the same SIGKILL, SIGSTOP (5 s) and SIGTERM scenarios against (a) plain
 * Moleculer defaults, (b) this project's failover policy, (c) the policy with NATS queue groups and (d) the
 * policy without hedged reads (HEDGE_BUDGET=0), in one run. Two actor nodes and a
 * gateway-only node over NATS; 200 req/s of GET /api/mesh/whoami through the gateway; NODE1 gets the
 * signal 3 s in. Reported: failed requests, longest time without a successful answer, latency p99/max
 * during the event, how long after the signal requests were still disrupted (slow > 500 ms or failed),
 * the latency distribution per 100 ms window around the signal (docs/FAILOVER.md), and the liveness
 * probes and hedged reads the gateway sent during the steady 3 s before it (their cost when nothing fails), and the
 * load client's own longest stall after the signal (a slow request then is the client's, not the mesh's).
 * FAILOVER_ONLY (below) runs chosen scenarios only, for tracing one.
 */
import type { ChildProcess } from "child_process";
import { stallsAfter, startLoad, windowStats, type Sample } from "../../test/helpers/load";
import { machine, percentile, startProcess, stopProcesses, table, writeSection } from "../lib/harness";

const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const DATABASE_URL = process.env.DATABASE_URL ?? "postgres://root@127.0.0.1:5432/test";
const RATE = 200;
/** Moleculer 0.15 defaults (heartbeat 10 s, timeout 30 s, checked every 30 s) detect a dead node after 30–60 s. */
const OBSERVE_DEFAULTS_MS = Number(process.env.BENCH_FAILOVER_OBSERVE_MS ?? 65_000);
const OBSERVE_POLICY_MS = 10_000;
const SLOW_MS = 500;
const STOPPED_FOR_MS = 5_000;
const WINDOW_MS = 100;
/** windows from 200 ms before the signal to 1 s after it */
const WINDOWS = Array.from({ length: 12 }, (_, i) => (i - 2) * WINDOW_MS);
/**
 * FAILOVER_ONLY="b:SIGSTOP,d:SIGSTOP" runs only those scenarios (policy letter : signal), FAILOVER_REPEATS times
 * each, and writes no docs section: for tracing one case (with BENCH_CHILD_LOG=<dir> for the nodes' logs). Each
 * request slower than FAILOVER_SLOW_MS is listed with its start and end relative to the signal.
 */
const ONLY = process.env.FAILOVER_ONLY?.split(",").map(s => s.trim().split(":") as [string, string]) ?? null;
const REPEATS = Number(process.env.FAILOVER_REPEATS ?? 1);
const LIST_SLOWER_THAN_MS = Number(process.env.FAILOVER_SLOW_MS ?? 150);

interface Topology {
	name: string;
	node1: ChildProcess;
	gatewayUrl: string;
	observeMs: number;
}

interface Row {
	policy: string;
	signal: string;
	requests: number;
	failed: number;
	longestGapMs: number;
	p99Ms: number;
	maxMs: number;
	/** when the slowest request after the signal started, ms after the signal: at the event, or a stall later */
	slowestAtMs: number;
	disruptedMs: number;
	/** liveness probes the gateway sent in the steady 3 s before the signal; null where there is no probe */
	steadyProbes: number | null;
	/** hedged reads the gateway sent in the same 3 s; null where there is no probe */
	steadyHedges: number | null;
	/** the load generator's own longest stall after the signal, ms (test/helpers/load.ts): a slow request then is the client's */
	clientStallMs: number;
	windows: Array<{ fromMs: number; requests: number; p50Ms: number; p99Ms: number; maxMs: number }>;
}

let portSeq = 19_500 + (process.pid % 200) * 3;

async function waitForBothNodes(url: string): Promise<void> {
	const seen = new Set<string>();
	const deadline = Date.now() + 30_000;
	while (seen.size < 2) {
		if (Date.now() > deadline) throw new Error(`gateway ${url} never reached both actor nodes (saw ${[...seen]})`);
		try {
			const res = await fetch(`${url}/api/mesh/whoami`);
			if (res.ok) seen.add(((await res.json()) as { nodeID: string }).nodeID);
		} catch {
			/* not up yet */
		}
		await new Promise(r => setTimeout(r, 50));
	}
}

async function bareTopology(): Promise<Topology> {
	const env = { MESH_NAMESPACE: `bench-fo-bare-${process.pid}-${portSeq}`, NATS_URL };
	const [node1] = await Promise.all([
		startProcess("bench/failover/bare-node.ts", { ...env, NODE_ID: "NODE1" }),
		startProcess("bench/failover/bare-node.ts", { ...env, NODE_ID: "NODE2" }),
	]);
	const port = portSeq++;
	await startProcess("bench/failover/bare-node.ts", { ...env, NODE_ID: "GATEWAY", BARE_ROLE: "gateway", PORT: String(port) });
	return { name: "(a) Moleculer defaults", node1, gatewayUrl: `http://127.0.0.1:${port}`, observeMs: OBSERVE_DEFAULTS_MS };
}

async function projectTopology(extra: Record<string, string> = {}, name = "(b) daarion-mesh policy"): Promise<Topology> {
	const env = {
		...extra,
		MESH_NAMESPACE: `bench-fo-project-${process.pid}-${portSeq}`,
		NATS_URL,
		DATABASE_URL,
		JWT_SECRET: "bench-secret-0123456789abcdef0123456789",
		RATE_LIMIT_PER_KEY: "0",
		LOG_LEVEL: "info",
	};
	const ready = "Service 'mesh' started";
	const [node1] = await Promise.all([
		startProcess("scripts/run-node.ts", { ...env, NODE_ID: "NODE1", NODE_ROLE: "node1", SERVICES: "mesh", PORT: String(portSeq++) }, ready),
		startProcess("scripts/run-node.ts", { ...env, NODE_ID: "NODE2", NODE_ROLE: "node2", SERVICES: "mesh", PORT: String(portSeq++) }, ready),
	]);
	const port = portSeq++;
	await startProcess("scripts/run-node.ts", { ...env, NODE_ID: "GATEWAY", NODE_ROLE: "gateway", SERVICES: "api", PORT: String(port) }, "listening");
	return { name, node1, gatewayUrl: `http://127.0.0.1:${port}`, observeMs: OBSERVE_POLICY_MS };
}

function slowestStart(samples: Sample[], signalAt: number): number {
	let slowest: Sample | undefined;
	for (const s of samples) if (s.start >= signalAt && (!slowest || s.end - s.start > slowest.end - slowest.start)) slowest = s;
	return slowest ? Math.round(slowest.start - signalAt) : 0;
}

/** How long after the signal requests were still failing or slow. */
function disruptedFor(samples: Sample[], signalAt: number): number {
	const bad = samples.filter(s => s.start >= signalAt && (!s.ok || s.end - s.start > SLOW_MS));
	return bad.length ? Math.round(Math.max(...bad.map(s => s.end)) - signalAt) : 0;
}

/** Latency of the requests that *started* in each 100 ms window around the signal. */
function windowsAround(samples: Sample[], signalAt: number): Row["windows"] {
	return WINDOWS.map(fromMs => {
		const latencies = samples
			.filter(s => s.start >= signalAt + fromMs && s.start < signalAt + fromMs + WINDOW_MS)
			.map(s => s.end - s.start)
			.sort((a, b) => a - b);
		const round = (n: number) => Math.round(n * 10) / 10;
		return { fromMs, requests: latencies.length, p50Ms: round(percentile(latencies, 50)), p99Ms: round(percentile(latencies, 99)), maxMs: round(latencies.at(-1) ?? 0) };
	});
}

/**
 * The gateway's liveness probes and hedged calls so far (all outcomes), or null where the gateway serves no
 * project metrics (the bare topology). A counter with no samples yet is not rendered at all: that is 0.
 */
async function steadyCounters(gatewayUrl: string): Promise<{ probes: number; hedges: number } | null> {
	const text = await fetch(`${gatewayUrl}/metrics`).then(r => (r.ok ? r.text() : null), () => null);
	if (text === null || !text.includes("mesh_")) return null;
	const total = (metric: string) =>
		text
			.split("\n")
			.filter(l => l.startsWith(metric))
			.reduce((sum, l) => sum + Number(l.split(" ").at(-1)), 0);
	return { probes: total("mesh_liveness_probes_total"), hedges: total("mesh_hedge_total") };
}

async function scenario(topology: Topology, signal: NodeJS.Signals): Promise<Row> {
	await waitForBothNodes(topology.gatewayUrl);
	const load = startLoad({ url: `${topology.gatewayUrl}/api/mesh/whoami`, ratePerSecond: RATE, maxInFlight: 20_000, clientTimeoutMs: 60_000 });
	const countersBefore = await steadyCounters(topology.gatewayUrl);
	await new Promise(r => setTimeout(r, 3_000));
	const countersAtSignal = await steadyCounters(topology.gatewayUrl);
	const signalAt = load.now();
	topology.node1.kill(signal);
	if (signal === "SIGSTOP") {
		await new Promise(r => setTimeout(r, STOPPED_FOR_MS));
		topology.node1.kill("SIGCONT");
		await new Promise(r => setTimeout(r, 3_000));
	} else {
		await new Promise(r => setTimeout(r, signal === "SIGKILL" ? topology.observeMs : 5_000));
	}
	const { samples, stalls } = await load.stop();
	const after = stallsAfter(stalls, signalAt);
	const stats = windowStats(samples, signalAt, Infinity);
	const row = {
		policy: topology.name,
		signal,
		requests: stats.requests,
		failed: stats.failed,
		longestGapMs: stats.longestGapMs,
		p99Ms: stats.p99Ms,
		maxMs: stats.maxMs,
		slowestAtMs: slowestStart(samples, signalAt),
		disruptedMs: disruptedFor(samples, signalAt),
		steadyProbes: countersBefore == null || countersAtSignal == null ? null : countersAtSignal.probes - countersBefore.probes,
		steadyHedges: countersBefore == null || countersAtSignal == null ? null : countersAtSignal.hedges - countersBefore.hedges,
		clientStallMs: Math.max(0, ...after.map(st => st.ms)),
		windows: windowsAround(samples, signalAt),
	};
	process.stdout.write(`${JSON.stringify(row)}\n`);
	if (ONLY) {
		listSlowRequests(samples, signalAt);
		for (const st of after) process.stdout.write(`  load client stalled: at ${Math.round(st.at - signalAt)} ms, for ${st.ms} ms\n`);
	}
	return row;
}

/** The 20 slowest requests over LIST_SLOWER_THAN_MS after the signal: when each started and ended, ms after the signal. */
function listSlowRequests(samples: Sample[], signalAt: number): void {
	const slow = samples.filter(s => s.start >= signalAt && s.end - s.start > LIST_SLOWER_THAN_MS);
	const slowest = slow.sort((x, y) => y.end - y.start - (x.end - x.start)).slice(0, 20);
	if (slow.length > slowest.length) process.stdout.write(`  ${slow.length} requests over ${LIST_SLOWER_THAN_MS} ms; the 20 slowest:\n`);
	for (const s of slowest) process.stdout.write(`  slow: started ${Math.round(s.start - signalAt)} ms, ended ${Math.round(s.end - signalAt)} ms, ${Math.round(s.end - s.start)} ms, ${s.ok ? "ok" : "failed"}\n`);
}

/** The four topologies by their letter in the table, in its order. */
const TOPOLOGIES: Record<string, () => Promise<Topology>> = {
	a: bareTopology,
	b: () => projectTopology(),
	c: () => projectTopology({ DISABLE_BALANCER: "true" }, "(c) policy + NATS queue groups"),
	d: () => projectTopology({ HEDGE_BUDGET: "0" }, "(d) policy without hedged reads"),
};
const SIGNALS: NodeJS.Signals[] = ["SIGKILL", "SIGSTOP", "SIGTERM"];

/** Each scenario once on a fresh topology, in order; the processes stopped after each. */
async function runScenarios(scenarios: Array<[string, NodeJS.Signals]>): Promise<Row[]> {
	const rows: Row[] = [];
	try {
		for (const [policy, signal] of scenarios) {
			rows.push(await scenario(await TOPOLOGIES[policy](), signal));
			await stopProcesses();
		}
	} finally {
		await stopProcesses();
	}
	return rows;
}

/** FAILOVER_ONLY's scenarios, each FAILOVER_REPEATS times; no docs section is written. */
async function runOnly(only: Array<[string, string]>): Promise<void> {
	for (const [policy, signal] of only) {
		if (!TOPOLOGIES[policy] || !SIGNALS.includes(signal as NodeJS.Signals)) throw new Error(`FAILOVER_ONLY: no scenario ${policy}:${signal}`);
	}
	for (let i = 0; i < REPEATS; i++) await runScenarios(only as Array<[string, NodeJS.Signals]>);
}

async function main(): Promise<void> {
	if (ONLY) return runOnly(ONLY);
	const rows = await runScenarios(SIGNALS.flatMap(signal => Object.keys(TOPOLOGIES).map(policy => [policy, signal] as [string, NodeJS.Signals])));
	const body = [
		`Run ${new Date().toISOString().slice(0, 10)} on ${machine()}. NODE1 and NODE2 run \`mesh.whoami\`, a gateway-only node takes ${RATE} req/s (open loop) over real NATS; NODE1 gets the signal 3 s in. "Disrupted" = time from the signal until the last request that failed or took over ${SLOW_MS} ms finished.`,
		"",
		table(
			["policy", "signal", "requests", "failed", "longest gap (ms)", "p99 (ms)", "max (ms)", "slowest started at (ms after the signal)", "disrupted (ms)", "load client's longest stall after the signal (ms)"],
			rows.map(r => [r.policy, r.signal, r.requests, String(r.failed), String(r.longestGapMs), String(r.p99Ms), String(r.maxMs), String(r.slowestAtMs), String(r.disruptedMs), String(r.clientStallMs)]),
		),
		"",
		"(d) is (b) with HEDGE_BUDGET=0: the difference is what hedged reads add. The last column is the load generator's own longest event-loop stall after the signal (test/helpers/load.ts, this bench process): an answer that arrives meanwhile is timed late by as much, so a slow request or a gap at the same moment is the client's, not the mesh's. Targets for (b): every request around a SIGKILL answered within 100 ms (max, not p99) and 0 failed; around a SIGSTOP the slowest ≤ 300 ms and 0 failed; 0 errors on SIGTERM. The per-100 ms distribution around each event is in docs/FAILOVER.md; test/chaos asserts them with CI slack: 250 ms for every call around a SIGKILL (36–55 ms on an otherwise idle machine, in a clean-clone CI run too; 244–295 ms at load 1.7–6.6 and 412 ms beside helper sessions, where traced runs show the slowest calls waiting for CPU, not for the mesh: docs/FAILOVER.md, “SIGKILL in test/chaos”), 250 ms for a write in flight on the killed node to answer 503 (33–39 ms), 300 ms around a SIGSTOP (52–70 ms).",
	].join("\n");
	writeSection("Failover (bench/failover)", body);
	process.stdout.write(`\n${body}\n`);
	const timeline = timelineSection(rows);
	writeSection("Around the event, per 100 ms (bench/failover)", timeline, "FAILOVER.md");
	process.stdout.write(`\n${timeline}\n`);
}

function timelineSection(rows: Row[]): string {
	const parts = [
		`Run ${new Date().toISOString().slice(0, 10)} on ${machine()}, by \`npm run bench:failover\` (same run as the table in docs/BENCHMARKS.md). Each cell: p50 / p99 / max latency in ms of the requests that *started* in that 100 ms window (${RATE} req/s, so ~20 per window); the signal reaches NODE1 at 0. SIGSTOP lasts ${STOPPED_FOR_MS / 1000} s.`,
		"",
	];
	for (const signal of ["SIGKILL", "SIGSTOP"]) {
		const mine = rows.filter(r => r.signal === signal);
		parts.push(`**${signal}**`, "");
		parts.push(
			table(
				["window (ms)", ...mine.map(r => r.policy)],
				WINDOWS.map((fromMs, i) => [`${fromMs} … ${fromMs + WINDOW_MS}`, ...mine.map(r => `${r.windows[i].p50Ms} / ${r.windows[i].p99Ms} / ${r.windows[i].maxMs}`)]),
			),
			"",
		);
	}
	const steady = rows.filter(r => r.steadyProbes != null).map(r => `${r.policy} before ${r.signal}: ${r.steadyProbes} / ${r.steadyHedges}`);
	parts.push(`Liveness probes / hedged reads sent by the gateway in the steady 3 s before each signal (${RATE * 3} requests): ${steady.join("; ")}.`);
	return parts.join("\n");
}

main().catch(async err => {
	process.stderr.write(`${(err as Error).stack}\n`);
	await stopProcesses();
	process.exit(1);
});
