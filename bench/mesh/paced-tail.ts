/**
 * Where the project's p99 at a paced 1,000 calls/s goes (bench/mesh/run.ts prints it against bare Moleculer):
 * bare and project callers take turns at a fixed rate, each turn with the caller's event-loop delay histogram,
 * and the slowest calls' start times printed so that a periodic task shows as a period.
 * PACED_NODE_ENV (JSON) sets env for the project's serving node and caller, e.g. '{"METRICS":"0"}'.
 * `node --import tsx bench/mesh/paced-tail.ts`
 */
import { monitorEventLoopDelay } from "perf_hooks";
import { ServiceBroker } from "moleculer";
import { createBrokerOptions } from "../../moleculer.config";
import { loadSettings } from "../../lib/runtime/settings";
import { resolveTransport } from "../../lib/runtime/transport";
import { closedLoop, fixedRate, formatNumber, percentile, runBench, startProcess, stopProcesses, type LoadResult } from "../lib/harness";

const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
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
	const env = { MESH_NAMESPACE: namespace, NATS_URL, LOG_LEVEL: "warn", JWT_SECRET: "bench-secret-0123456789abcdef0123456789", ...EXTRA };
	await startProcess("bench/mesh/bare-server.ts", { ...env, MESH_NAMESPACE: `${namespace}-bare` });
	await startProcess("scripts/run-node.ts", { ...env, NODE_ID: "paced-actors", SERVICES: "mesh", PORT: "0", LOG_LEVEL: "info" }, "Service 'mesh' started");
	const bare = new ServiceBroker({ namespace: `${namespace}-bare`, nodeID: "paced-bare-caller", transporter: { type: "NATS", options: { url: NATS_URL } }, logger: false });
	const settings = loadSettings({ ...env, NODE_ID: "paced-project-caller" });
	const project = new ServiceBroker(createBrokerOptions(settings, await resolveTransport(settings)));
	await Promise.all([bare.start(), project.start()]);
	await Promise.all([bare.waitForServices("echo"), project.waitForServices("mesh")]);
	const payload = { message: "hello mesh" };
	const user = { id: "bench", roles: ["admin"], teams: [] };
	const variants = [
		{ name: "bare", call: () => bare.call("echo.echo", payload, { meta: { user } }) },
		{ name: "project", call: () => project.call("mesh.echo", payload, { meta: { user } }) },
	];
	for (const v of variants) await closedLoop(v.call, 100, 1_000);
	try {
		for (let round = 0; round < ROUNDS; round++) for (const v of variants) printTurn(`${v.name} round ${round + 1}`, await pacedTurn(v.call));
	} finally {
		await Promise.all([bare.stop(), project.stop()]);
		await stopProcesses();
	}
});
