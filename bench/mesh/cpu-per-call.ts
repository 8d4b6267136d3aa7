// Investigation aid (not part of npm run bench): CPU microseconds per remote call in each process
// (caller, serving node, nats-server) for bare Moleculer and the project, at 100 concurrent. Throughput
// on this 2-core machine follows the sum, so this shows where a variant's extra cost lands.
// `node --import tsx bench/mesh/cpu-per-call.ts` (ROUNDS=n repeats the project; BARE_META=1 adds a
// bare call carrying the same meta.user; CPU_CALLS sets the calls per measurement; CALLER_GUARD=1 adds the
// project with the input guard also run by the caller, as it was before 2026-12-02).
import { execSync } from "node:child_process";
import { ServiceBroker, type Context, type Middleware } from "moleculer";
import { createBrokerOptions } from "../../moleculer.config";
import { findSchemaProblem, findUnsafeValue } from "../../lib/mesh/input-guard";
import { loadSettings } from "../../lib/runtime/settings";
import { resolveTransport } from "../../lib/runtime/transport";
import { closedLoop, processCpuMs, startProcess, stopProcesses, runBench } from "../lib/harness";

const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const CALLS = Number(process.env.CPU_CALLS ?? 150_000);
const namespace = `cpu-${process.pid}`;
const processCpuUs = (pid: number) => processCpuMs(pid) * 1000;

async function measure(name: string, serverPid: number, call: () => Promise<unknown>): Promise<void> {
	const natsPid = Number(execSync("pgrep -o nats-server").toString().trim());
	await closedLoop(call, 100, 1_500);
	const before = { self: process.cpuUsage(), server: processCpuUs(serverPid), nats: processCpuUs(natsPid) };
	const started = performance.now();
	const result = await closedLoop(call, 100, 60_000, CALLS);
	const self = process.cpuUsage(before.self);
	const per = (us: number) => (us / result.calls).toFixed(1);
	process.stdout.write(
		`${name}: ${Math.round(result.perSecond)} calls/s; CPU µs per call: caller ${per(self.user + self.system)}, ` +
			`server ${per(processCpuUs(serverPid) - before.server)}, nats-server ${per(processCpuUs(natsPid) - before.nats)} ` +
			`(${((performance.now() - started) / 1000).toFixed(1)} s)\n`,
	);
}

/** The caller-side half of the input guard that was removed: the same checks on every call this node sends. */
function callerSideGuard(): Middleware {
	return {
		name: "CallerSideInputGuard",
		remoteAction: (next: (ctx: Context) => Promise<unknown>, action: { params?: Record<string, never> }) => (ctx: Context) => {
			const params = ctx.params as Record<string, unknown>;
			const problem = findUnsafeValue(params) ?? findSchemaProblem(params, action.params);
			return problem ? Promise.reject(new Error(problem.message)) : next(ctx);
		},
	} as unknown as Middleware;
}

async function main(): Promise<void> {
	const env = { MESH_NAMESPACE: namespace, NATS_URL, DATABASE_URL: process.env.DATABASE_URL ?? "postgres://root@127.0.0.1:5432/test", JWT_SECRET: "cpu-secret-0123456789abcdef0123456789", LOG_LEVEL: "warn" };
	const bareServer = await startProcess("bench/mesh/bare-server.ts", { ...env, MESH_NAMESPACE: `${namespace}-bare` });
	const server = await startProcess("scripts/run-node.ts", { ...env, NODE_ID: "cpu-actors", SERVICES: "mesh", PORT: "0", LOG_LEVEL: "info" }, "Service 'mesh' started");
	const bare = new ServiceBroker({ namespace: `${namespace}-bare`, nodeID: "cpu-bare-caller", transporter: { type: "NATS", options: { url: NATS_URL } }, logger: false });
	const settings = loadSettings({ ...process.env, ...env, NODE_ID: "cpu-project-caller" });
	const project = new ServiceBroker(createBrokerOptions(settings, await resolveTransport(settings)));
	const guardedOptions = createBrokerOptions({ ...settings, nodeID: "cpu-guarded-caller" }, await resolveTransport(settings));
	const guarded = process.env.CALLER_GUARD ? new ServiceBroker({ ...guardedOptions, middlewares: [...(guardedOptions.middlewares ?? []), callerSideGuard()] }) : null;
	await Promise.all([bare.start(), project.start(), guarded?.start()]);
	await Promise.all([bare.waitForServices("echo"), project.waitForServices("mesh"), guarded?.waitForServices("mesh")]);
	const user = { id: "bench", roles: ["admin"], teams: [] };
	try {
		for (let round = 0; round < Number(process.env.ROUNDS ?? 1); round++) {
			if (round === 0) await measure("bare Moleculer", bareServer.pid!, () => bare.call("echo.echo", { message: "hello mesh" }));
			if (round === 0 && process.env.BARE_META) await measure("bare + meta  ", bareServer.pid!, () => bare.call("echo.echo", { message: "hello mesh" }, { meta: { user } }));
			await measure("project       ", server.pid!, () => project.call("mesh.echo", { message: "hello mesh" }, { meta: { user } }));
			if (guarded) await measure("project + caller guard", server.pid!, () => guarded.call("mesh.echo", { message: "hello mesh" }, { meta: { user } }));
		}
	} finally {
		await Promise.all([bare.stop(), project.stop(), guarded?.stop()]);
		await stopProcesses();
	}
}

runBench(main);
