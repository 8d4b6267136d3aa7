// Profiling aid (not part of npm run bench): one caller/server pair at a time, as `npm run bench` runs them —
// PAIR=bare (bench/mesh/bare-server.ts) or PAIR=project (a full node, scripts/run-node.ts SERVICES=mesh) — driven
// from this process at PROFILE_CONCURRENCY concurrent (100) for PROFILE_SECONDS. This process profiles itself over exactly the measured
// window (inspector) into PROFILE_DIR/<pair>-caller.cpuprofile; run with BENCH_NODE_ARGS="--cpu-prof
// --cpu-prof-dir=<dir>" to profile the server too; SPIN_US burns that much CPU in the caller per call. Prints calls/s and CPU µs per call of caller, server, nats-server.
import { execSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { Session } from "node:inspector/promises";
import path from "node:path";
import { ServiceBroker } from "moleculer";
import { createBrokerOptions } from "../../moleculer.config";
import { loadSettings } from "../../lib/runtime/settings";
import { resolveTransport } from "../../lib/runtime/transport";
import { closedLoop, processCpuMs, runBench, startProcess, stopProcesses } from "../lib/harness";

const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const PAIR = process.env.PAIR === "project" ? "project" : "bare";
const SECONDS = Number(process.env.PROFILE_SECONDS ?? 8);
const DIR = process.env.PROFILE_DIR ?? "/tmp";
const CONCURRENCY = Number(process.env.PROFILE_CONCURRENCY ?? 100);

async function main(): Promise<void> {
	const namespace = `pair-${process.pid}`;
	const env = { MESH_NAMESPACE: namespace, NATS_URL, DATABASE_URL: process.env.DATABASE_URL ?? "postgres://root@127.0.0.1:5432/test", JWT_SECRET: "pair-secret-0123456789abcdef0123456789", LOG_LEVEL: "warn" };
	const server =
		PAIR === "bare"
			? await startProcess("bench/mesh/bare-server.ts", env)
			: await startProcess("scripts/run-node.ts", { ...env, NODE_ID: "pair-actors", SERVICES: "mesh", PORT: "0", LOG_LEVEL: "info" }, "Service 'mesh' started");
	const settings = loadSettings({ ...process.env, ...env, NODE_ID: "pair-caller" });
	const broker =
		PAIR === "bare"
			? new ServiceBroker({ namespace, nodeID: "pair-caller", transporter: { type: "NATS", options: { url: NATS_URL } }, logger: false })
			: new ServiceBroker(createBrokerOptions(settings, await resolveTransport(settings)));
	await broker.start();
	const action = PAIR === "bare" ? "echo.echo" : "mesh.echo";
	await broker.waitForServices(action.split(".")[0]);
	const user = { id: "bench", roles: ["admin"], teams: [] };
	// SPIN_US: CPU burnt in this process per call, to see what extra caller work does to the other processes' figures.
	const spinUs = Number(process.env.SPIN_US ?? 0);
	const spin = () => {
		const until = performance.now() + spinUs / 1000;
		while (performance.now() < until);
	};
	const call = spinUs ? () => (spin(), broker.call(action, { message: "hello mesh" }, { meta: { user } })) : () => broker.call(action, { message: "hello mesh" }, { meta: { user } });
	await closedLoop(call, CONCURRENCY, 2_000);
	const natsPid = Number(execSync("pgrep -o nats-server").toString().trim());
	const session = new Session();
	session.connect();
	await session.post("Profiler.enable");
	await session.post("Profiler.start");
	const before = { self: process.cpuUsage(), server: processCpuMs(server.pid!), nats: processCpuMs(natsPid) };
	const result = await closedLoop(call, CONCURRENCY, SECONDS * 1000);
	const self = process.cpuUsage(before.self);
	const { profile } = await session.post("Profiler.stop");
	writeFileSync(path.join(DIR, `${PAIR}-caller.cpuprofile`), JSON.stringify(profile));
	const per = (ms: number) => ((ms * 1000) / result.calls).toFixed(1);
	process.stdout.write(
		`${PAIR}: ${Math.round(result.perSecond)} calls/s, ${result.calls} calls, ${result.errors} errors; CPU µs per call: caller ${per((self.user + self.system) / 1000)}, ` +
			`server ${per(processCpuMs(server.pid!) - before.server)}, nats-server ${per(processCpuMs(natsPid) - before.nats)}\n`,
	);
	await broker.stop();
	await stopProcesses();
}

runBench(main);
