/**
 * Where the project's p99 at a paced 1,000 calls/s goes (bench/mesh/run.ts prints it against bare Moleculer):
 * bare and project callers take turns at a fixed rate, each turn with the caller's event-loop delay histogram,
 * and the slowest calls' start times printed so that a periodic task shows as a period.
 * PACED_NODE_ENV (JSON) sets env for the project's serving node and caller, e.g. '{"METRICS":"0"}'.
 * `node --import tsx bench/mesh/paced-tail.ts`
 */
import { monitorEventLoopDelay } from "perf_hooks";
import { closedLoop, fixedRate, formatNumber, percentile, runBench, stopProcesses, type LoadResult } from "../lib/harness";
import { startCallPair } from "./call-pair";

const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const DATABASE_URL = process.env.DATABASE_URL ?? "postgres://root@127.0.0.1:5432/test";
const RATE = 1_000;
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const namespace = `paced-${process.pid}`;
const EXTRA: Record<string, string> = JSON.parse(process.env.PACED_NODE_ENV ?? "{}");

interface Turn {
	result: LoadResult;
	/** the slowest calls: latency and start, ms since the turn's first call */
	slowest: Array<{ ms: number; at: number }>;
	p999: number;
	loopP99: number;
	loopMax: number;
}

/** One paced turn (harness fixedRate) with the caller's event-loop delay recorded over it. */
async function pacedTurn(call: () => Promise<unknown>): Promise<Turn> {
	const answered: Array<{ ms: number; at: number }> = [];
	const loop = monitorEventLoopDelay({ resolution: 1 });
	loop.enable();
	const result = await fixedRate(call, RATE, SECONDS * 1000, (at, ms) => answered.push({ ms, at }));
	loop.disable();
	const ascending = answered.sort((a, b) => a.ms - b.ms);
	const slowest = ascending.slice(-12).reverse();
	return { result, slowest, p999: percentile(ascending.map(a => a.ms), 99.9), loopP99: loop.percentile(99) / 1e6, loopMax: loop.max / 1e6 };
}

function printTurn(name: string, turn: Turn): void {
	const { result } = turn;
	process.stdout.write(
		`${name}: p50 ${formatNumber(result.p50)} p99 ${formatNumber(result.p99)} p99.9 ${formatNumber(turn.p999)} max ${formatNumber(turn.slowest[0]?.ms ?? 0)} ms, ${result.errors} errors; caller loop delay p99 ${formatNumber(turn.loopP99)} max ${formatNumber(turn.loopMax)} ms\n` +
			`   slowest (ms @ start ms): ${turn.slowest.map(s => `${s.ms.toFixed(1)}@${Math.round(s.at)}`).join(" ")}\n`,
	);
}

runBench(async () => {
	// The machine's PostgreSQL, as the other mesh benches use: without DATABASE_URL the serving node started an
	// embedded one, which outlived the node when stopProcesses killed it.
	const env = { MESH_NAMESPACE: namespace, NATS_URL, DATABASE_URL, LOG_LEVEL: "warn", JWT_SECRET: "bench-secret-0123456789abcdef0123456789", ...EXTRA };
	const pair = await startCallPair(env, "paced");
	const variants = [
		{ name: "bare", call: pair.bareCall },
		{ name: "project", call: pair.projectCall },
	];
	for (const v of variants) await closedLoop(v.call, 100, 1_000);
	try {
		for (let round = 0; round < ROUNDS; round++) for (const v of variants) printTurn(`${v.name} round ${round + 1}`, await pacedTurn(v.call));
	} finally {
		await pair.stopCallers();
		await stopProcesses();
	}
});
