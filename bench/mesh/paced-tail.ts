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
import { closedLoop, formatNumber, percentile, runBench, startProcess, stopProcesses } from "../lib/harness";

const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const RATE = 1_000;
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const namespace = `paced-${process.pid}`;
const EXTRA: Record<string, string> = JSON.parse(process.env.PACED_NODE_ENV ?? "{}");

async function pacedTurn(call: () => Promise<unknown>): Promise<{ starts: number[]; latencies: number[]; loopP99: number; loopMax: number }> {
	const starts: number[] = [];
	const latencies: number[] = [];
	const loop = monitorEventLoopDelay({ resolution: 1 });
	loop.enable();
	const t0 = performance.now();
	const pending: Promise<void>[] = [];
	for (let i = 0; i < RATE * SECONDS; i++) {
		const wait = t0 + (i * 1000) / RATE - performance.now();
		if (wait > 1) await new Promise(r => setTimeout(r, wait));
		const t = performance.now();
		pending.push(call().then(() => void (starts.push(t - t0), latencies.push(performance.now() - t))));
	}
	await Promise.all(pending);
	loop.disable();
	return { starts, latencies, loopP99: loop.percentile(99) / 1e6, loopMax: loop.max / 1e6 };
}

function describe(name: string, turn: Awaited<ReturnType<typeof pacedTurn>>): void {
	const sorted = [...turn.latencies].sort((a, b) => a - b);
	const slowest = turn.latencies.map((ms, i) => ({ ms, at: turn.starts[i] })).sort((a, b) => b.ms - a.ms).slice(0, 12);
	process.stdout.write(
		`${name}: p50 ${formatNumber(percentile(sorted, 50))} p99 ${formatNumber(percentile(sorted, 99))} p99.9 ${formatNumber(percentile(sorted, 99.9))} max ${formatNumber(sorted[sorted.length - 1])} ms; caller loop delay p99 ${formatNumber(turn.loopP99)} max ${formatNumber(turn.loopMax)} ms\n` +
			`   slowest (ms @ start ms): ${slowest.map(s => `${s.ms.toFixed(1)}@${Math.round(s.at)}`).join(" ")}\n`,
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
		for (let round = 0; round < ROUNDS; round++) for (const v of variants) describe(`${v.name} round ${round + 1}`, await pacedTurn(v.call));
	} finally {
		await Promise.all([bare.stop(), project.stop()]);
		await stopProcesses();
	}
});
