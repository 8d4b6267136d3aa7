// Investigation aid (not part of npm run bench): CPU ms per HTTP request in each process (autocannon's
// bench process, gateway, serving node, nats-server) for bare moleculer-web and the project gateway, and
// how req/s moves with the number of connections (a latency bound scales with them, a CPU bound does not).
// `node --import tsx bench/mesh/http-cpu.ts` (HTTP_CONNECTIONS="10,50,200", HTTP_SECONDS=5, HTTP_ONLY=bare|project).
import { execSync } from "node:child_process";
import autocannon from "autocannon";
import { signToken } from "../../lib/http/auth";
import { loadAverage, processCpuMs, startProcess, stopProcesses, runBench } from "../lib/harness";

const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const SECONDS = Number(process.env.HTTP_SECONDS ?? 5);
const CONNECTIONS = (process.env.HTTP_CONNECTIONS ?? "50").split(",").map(Number);
const JWT_SECRET = "bench-secret-0123456789abcdef0123456789";
const namespace = `httpcpu-${process.pid}`;
const selfCpuMs = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1000; };

async function measure(name: string, url: string, headers: Record<string, string>, pids: Record<string, number>, connections: number): Promise<void> {
	const body = JSON.stringify({ message: "hello mesh" });
	const run = (duration: number) => autocannon({ url, method: "POST", connections, headers: { "content-type": "application/json", ...headers }, body, duration });
	await run(1);
	const before = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, processCpuMs(pid)]));
	const self = selfCpuMs();
	const result = await run(SECONDS);
	const n = result.requests.total;
	const per = Object.entries(pids).map(([k, pid]) => `${k} ${((processCpuMs(pid) - before[k]) / n * 1000).toFixed(0)}`).join(", ");
	process.stdout.write(`${name} c=${connections}: ${Math.round(result.requests.average)} req/s p50 ${result.latency.p50} p99 ${result.latency.p99} non2xx ${result.non2xx}; CPU µs/req: bench ${((selfCpuMs() - self) / n * 1000).toFixed(0)}, ${per}; load ${loadAverage()}\n`);
}

async function main(): Promise<void> {
	const natsPid = Number(execSync("pgrep -o nats-server").toString().trim());
	const env = { MESH_NAMESPACE: namespace, NATS_URL, DATABASE_URL: process.env.DATABASE_URL ?? "postgres://root@127.0.0.1:5432/test", JWT_SECRET };
	const only = process.env.HTTP_ONLY;
	try {
		if (only !== "project") {
			const bareEnv = { ...env, MESH_NAMESPACE: `${namespace}-bare` };
			const server = await startProcess("bench/mesh/bare-server.ts", bareEnv);
			const gateway = await startProcess("bench/mesh/bare-gateway.ts", { ...bareEnv, PORT: "9491" });
			for (const c of CONNECTIONS) await measure("bare     ", "http://127.0.0.1:9491/api/echo", {}, { gateway: gateway.pid!, actor: server.pid!, nats: natsPid }, c);
		}
		if (only !== "bare") {
			const token = signToken(JWT_SECRET, { id: "bench", roles: ["admin"], teams: [] });
			const limits = { RATE_LIMIT_PER_KEY: "100000000", RATE_LIMIT_BURST: "100000000" };
			const actor = await startProcess("scripts/run-node.ts", { ...env, NODE_ID: "hc-actors", SERVICES: "mesh", PORT: "0", LOG_LEVEL: "info" }, "Service 'mesh' started");
			const gateway = await startProcess("scripts/run-node.ts", { ...env, ...limits, NODE_ID: "hc-gateway", SERVICES: "api", PORT: "9490", LOG_LEVEL: "info" }, "API Gateway listening");
			for (let i = 0; i < 100; i++) {
				const res = await fetch("http://127.0.0.1:9490/api/mesh/echo", { method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${token}` }, body: "{}" }).catch(() => null);
				if (res?.status === 200) break;
				await new Promise(r => setTimeout(r, 100));
			}
			for (const c of CONNECTIONS) await measure("project  ", "http://127.0.0.1:9490/api/mesh/echo", { authorization: `Bearer ${token}` }, { gateway: gateway.pid!, actor: actor.pid!, nats: natsPid }, c);
		}
	} finally {
		await stopProcesses();
	}
}

runBench(main);
