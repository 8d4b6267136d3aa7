/**
 * `npm run bench:router`: what the router costs on top of the model call, across two nodes with the
 * built-in local-echo model (no model time, so the mesh and the router are all that is measured).
 *   - router.route on the calling node (as a gateway's node runs it) → swapper-proxy on another node,
 *     vs the same caller calling swapper-proxy.generate on that node directly: p50 overhead (one caller,
 *     sequential) and routed requests/s (100 concurrent), same run, variants taking turns.
 *   - time to the first streamed piece: through a gateway (HTTP POST, SSE, router, mesh) vs straight
 *     from swapper-proxy.generate (stream: true) on the mesh.
 * Events (agent.run.*) are on, written to a fresh database through the outbox batch.
 */
import { loadavg as osLoad } from "os";
import { Client } from "pg";
import { ServiceBroker } from "moleculer";
import type { Readable } from "stream";
import { createBrokerOptions } from "../../moleculer.config";
import { signToken } from "../../lib/http/auth";
import { createSequelize } from "../../lib/data/database";
import type { OutboxBatch } from "../../lib/data/outbox-batch";
import { runMigrations } from "../../lib/data/migrations";
import { attachNodeContext } from "../../lib/runtime/node-resources";
import { loadSettings } from "../../lib/runtime/settings";
import { resolveTransport } from "../../lib/runtime/transport";
import RouterService from "../../services/router.service";
import SwapperProxyService from "../../services/swapper-proxy.service";
import { firstPieceMs, firstSsePieceMs } from "../lib/first-piece";
import { closedLoop, formatNumber, machine, median, percentile, startProcess, stopProcesses, table, writeSection, type LoadResult } from "../lib/harness";

const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const ADMIN_DATABASE_URL = process.env.DATABASE_URL ?? "postgres://root@127.0.0.1:5432/test";
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const TTFT_SAMPLES = Number(process.env.BENCH_TTFT_SAMPLES ?? 200);
const CONCURRENCY = 100;
const JWT_SECRET = "bench-secret-0123456789abcdef0123456789";
const namespace = `benchrouter-${process.pid}`;
const dbName = `bench_router_${process.pid}`;
const user = { id: "bench", roles: [], teams: [] };
/** BENCH_EVENTS=0: the calling node without a database, so no agent.run.* events (an A/B of their cost; prints only). */
const EVENTS = process.env.BENCH_EVENTS !== "0";

async function admin(sql: string): Promise<void> {
	const c = new Client({ connectionString: ADMIN_DATABASE_URL });
	await c.connect();
	try {
		await c.query(sql);
	} finally {
		await c.end();
	}
}

/** The 1-minute load average now, for every figure printed. */
function loadAverage(): string {
	return osLoad()[0].toFixed(1);
}

function medianRound(results: LoadResult[], by: (r: LoadResult) => number): LoadResult {
	return [...results].sort((a, b) => by(a) - by(b))[Math.floor(results.length / 2)];
}

/** ms to the first `data:` piece of the gateway's SSE answer. */
function firstGatewayPieceMs(url: string, token: string): Promise<number> {
	return firstSsePieceMs(url, { authorization: `Bearer ${token}` }, { agent: "bench-agent", message: "how fast is the first token", stream: true });
}

/**
 * CPU per call with router and swapper-proxy in one process (no transport): what the router's own work
 * costs, in CPU microseconds, a figure the other processes on a busy machine disturb far less than
 * wall-clock latency. Sequential calls, events off (no database), metrics on.
 */
async function cpuPerCall(agentsFile: string): Promise<{ direct: number; routed: number }> {
	const settings = loadSettings({ NODE_ID: "bench-cpu", ROUTER_AGENTS_FILE: agentsFile, SWAPPER_LOCAL_ECHO_MODELS: "bench-echo", SWAPPER_MAX_CONCURRENCY: "256", SWAPPER_QUEUE: "1024", LOG_LEVEL: "warn", JWT_SECRET });
	const transport = { kind: "none", reason: "in-process" } as unknown as Awaited<ReturnType<typeof resolveTransport>>;
	const options = createBrokerOptions(settings, transport);
	const broker = new ServiceBroker({ ...options, transporter: undefined });
	attachNodeContext(broker, { settings, transport, sequelize: null, metricsReporter: options.metricsReporter, startedAt: Date.now() });
	broker.createService(SwapperProxyService);
	broker.createService(RouterService);
	await broker.start();
	const message = "how much does the router cost on top of the model call";
	const calls = {
		direct: () => broker.call("swapper-proxy.generate", { model: "bench-echo", messages: [{ role: "system", content: "Answer briefly." }, { role: "user", content: message }] }),
		routed: () => broker.call("router.route", { agent: "bench-agent", message, mode: "public" }, { meta: { user } }),
	};
	const result = { direct: [] as number[], routed: [] as number[] };
	const n = 5_000;
	for (let round = 0; round < ROUNDS + 1; round++) {
		for (const name of ["direct", "routed"] as const) {
			const before = process.cpuUsage();
			for (let i = 0; i < n; i++) await calls[name]();
			const used = process.cpuUsage(before);
			if (round > 0) result[name].push((used.user + used.system) / n); // round 0 warms up
		}
	}
	await broker.stop();
	return { direct: median(result.direct), routed: median(result.routed) };
}

async function main(): Promise<void> {
	await admin(`CREATE DATABASE ${dbName}`);
	const url = new URL(ADMIN_DATABASE_URL);
	url.pathname = `/${dbName}`;
	const databaseUrl = url.toString();
	await runMigrations(databaseUrl, "up", { log: () => undefined });
	const fs = await import("fs");
	const os = await import("os");
	const path = await import("path");
	const agentsFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "bench-router-")), "agents.yml");
	fs.writeFileSync(agentsFile, 'version: "bench"\nagents:\n  - id: bench-agent\n    model: bench-echo\n    system_prompt: Answer briefly.\n');
	const cpu = await cpuPerCall(agentsFile);
	process.stdout.write(`CPU per call in one process: direct ${formatNumber(cpu.direct)} µs, routed ${formatNumber(cpu.routed)} µs\n`);
	const loadAtStart = os.loadavg()[0];
	const env = {
		MESH_NAMESPACE: namespace,
		NATS_URL,
		DATABASE_URL: databaseUrl,
		JWT_SECRET,
		LOG_LEVEL: "warn",
		RATE_LIMIT_PER_KEY: "0",
		ROUTER_AGENTS_FILE: agentsFile,
		EVENTS_SUBJECT_PREFIX: namespace.replace(/-/g, "_"),
		SWAPPER_LOCAL_ECHO_MODELS: "bench-echo",
		SWAPPER_MAX_CONCURRENCY: "256",
		SWAPPER_QUEUE: "1024",
		SWAPPER_LOCAL_ECHO: "false",
	};
	try {
		await startProcess("scripts/run-node.ts", { ...env, NODE_ID: "bench-models", SERVICES: "swapper-proxy", PORT: "0", SWAPPER_LOCAL_ECHO: "true", LOG_LEVEL: "info" }, "Service 'swapper-proxy' started");
		const port = 19_400 + (process.pid % 500);
		await startProcess("scripts/run-node.ts", { ...env, NODE_ID: "bench-gateway", SERVICES: "api,router", PORT: String(port), LOG_LEVEL: "info" }, "Service 'router' started");

		// The caller runs the router itself, as a gateway's node does (preferLocal): route → local router → remote model.
		const settings = loadSettings({ ...env, NODE_ID: "bench-caller" });
		const options = createBrokerOptions(settings, await resolveTransport(settings));
		const broker = new ServiceBroker(options);
		const sequelize = createSequelize({ url: databaseUrl, ssl: false });
		attachNodeContext(broker, { settings, transport: await resolveTransport(settings), sequelize: EVENTS ? sequelize : null, metricsReporter: options.metricsReporter, startedAt: Date.now() });
		broker.createService(RouterService);
		await broker.start();
		await broker.waitForServices(["swapper-proxy"]);
		const message = "how much does the router cost on top of the model call";
		const direct = () => broker.call("swapper-proxy.generate", { model: "bench-echo", messages: [{ role: "system", content: "Answer briefly." }, { role: "user", content: message }] }, { nodeID: "bench-models" });
		const routed = () => broker.call("router.route", { agent: "bench-agent", message, mode: "public" }, { meta: { user } });
		for (let i = 0; i < 100 && !(await routed().then(() => true, () => false)); i++) await new Promise(r => setTimeout(r, 100)); // the model's advert has arrived
		await closedLoop(direct, CONCURRENCY, 1_000);
		await closedLoop(routed, CONCURRENCY, 1_000);

		const seq = { direct: [] as LoadResult[], routed: [] as LoadResult[] };
		const loaded = { direct: [] as LoadResult[], routed: [] as LoadResult[] };
		for (let round = 0; round < ROUNDS; round++) {
			seq.direct.push(await closedLoop(direct, 1, SECONDS * 500));
			seq.routed.push(await closedLoop(routed, 1, SECONDS * 500));
			loaded.direct.push(await closedLoop(direct, CONCURRENCY, SECONDS * 1000));
			loaded.routed.push(await closedLoop(routed, CONCURRENCY, SECONDS * 1000));
			process.stdout.write(`round ${round + 1} (load average ${loadAverage()}): p50 direct ${formatNumber(seq.direct[round].p50)} ms, routed ${formatNumber(seq.routed[round].p50)} ms; ${formatNumber(loaded.direct[round].perSecond)} vs ${formatNumber(loaded.routed[round].perSecond)} calls/s\n`);
		}
		const seqDirect = medianRound(seq.direct, r => r.p50);
		const seqRouted = medianRound(seq.routed, r => r.p50);
		const loadDirect = medianRound(loaded.direct, r => r.perSecond);
		const loadRouted = medianRound(loaded.routed, r => r.perSecond);

		// The throughput rounds leave the caller's agent.run.* events seconds behind (a few thousand rows for
		// PostgreSQL on the same 2 cores): written before the first-token phase, so that it measures the
		// stream path, not the previous phase's backlog (events stay on during it).
		const drainStarted = performance.now();
		await (broker.getLocalService("router") as unknown as { outbox: OutboxBatch | null }).outbox?.flush();
		process.stdout.write(`caller's event backlog written in ${formatNumber(performance.now() - drainStarted)} ms before the first-token phase\n`);
		const loadAfterMesh = loadAverage();
		const token = signToken(JWT_SECRET, user);
		const gatewayUrl = `http://127.0.0.1:${port}/api/router/route`;
		const provider: number[] = [];
		const gateway: number[] = [];
		for (let i = 0; i < 20; i++) await firstGatewayPieceMs(gatewayUrl, token); // warm-up
		const providerRaw: number[] = [];
		for (let i = 0; i < TTFT_SAMPLES; i++) {
			providerRaw.push(await firstPieceMs(() => broker.call("swapper-proxy.generate", { model: "bench-echo", prompt: message, stream: true }, { nodeID: "bench-models" }) as Promise<Readable>));
			gateway.push(await firstGatewayPieceMs(gatewayUrl, token));
		}
		provider.push(...providerRaw);
		const gatewaySorted = [...gateway].sort((a, b) => a - b);
		provider.sort((a, b) => a - b);
		const ttft = { provider: percentile(provider, 50), gateway: percentile(gatewaySorted, 50), providerP99: percentile(provider, 99), gatewayP99: percentile(gatewaySorted, 99) };
		await broker.stop();
		await sequelize.close();

		// Paired by round (the variants ran back to back): the machine's slow patches hit both sides of a pair.
		const pairs = seq.routed.map((r, i) => r.p50 - seq.direct[i].p50).sort((a, b) => a - b);
		const overhead = pairs[Math.floor(pairs.length / 2)];
		const ttftPairs = gateway.map((g, i) => g - providerRaw[i]).sort((a, b) => a - b);
		const ttftDifference = percentile(ttftPairs, 50);
		const slowestRouted = Math.min(...loaded.routed.map(r => r.perSecond));
		const verdict = (ok: boolean) => (ok ? "met" : "MISSED");
		const summary = [
			"Against the issue's targets (this run; the load average says how much else shared the 2 cores):",
			`- router overhead p50: ${formatNumber(overhead)} ms (target ≤ 1 ms): ${verdict(overhead <= 1)}`,
			`- routed requests/s, 100 concurrent: median ${formatNumber(loadRouted.perSecond)}, slowest round ${formatNumber(slowestRouted)} (target ≥ 5,000 in every round): ${verdict(slowestRouted >= 5_000)}; load average ${loadAtStart.toFixed(1)} → ${loadAfterMesh}`,
			`- time to first token, gateway SSE minus the provider's own: ${formatNumber(ttftDifference)} ms (target ≤ 5 ms): ${verdict(ttftDifference <= 5)}; load average ${loadAfterMesh} → ${loadAverage()}`,
		];
		const text = [
			`Run ${new Date().toISOString()} on ${machine()}; load average ${loadAtStart.toFixed(1)} at the start and ${os.loadavg()[0].toFixed(1)} at the end (other work shares these cores); NATS ${NATS_URL}; three processes on this machine (caller with the router, a gateway node, a model node with local-echo); agent.run.* events on; median of ${ROUNDS} rounds, variants taking turns.`,
			"",
			table(
				["CPU per call, router and swapper-proxy in one process (µs)", "direct swapper-proxy.generate", "router.route", "router's own CPU"],
				[["sequential, events off, metrics on", cpu.direct, cpu.routed, formatNumber(cpu.routed - cpu.direct)]],
			),
			"",
			table(
				["", "direct swapper-proxy.generate", "router.route", "difference"],
				[
					["p50, one caller, sequential (ms)", seqDirect.p50, seqRouted.p50, `${formatNumber(overhead)} ms, median of the per-round differences ${pairs.map(formatNumber).join(" / ")} (target ≤ 1 ms)`],
					["p99, one caller, sequential (ms)", seqDirect.p99, seqRouted.p99, formatNumber(seqRouted.p99 - seqDirect.p99)],
					[`calls/s, ${CONCURRENCY} concurrent (median round)`, loadDirect.perSecond, loadRouted.perSecond, `${formatNumber(loadRouted.perSecond / loadDirect.perSecond)}× (target ≥ 5,000 routed/s)`],
					[`calls/s, ${CONCURRENCY} concurrent, every round`, loaded.direct.map(r => formatNumber(r.perSecond)).join(" / "), loaded.routed.map(r => formatNumber(r.perSecond)).join(" / "), ""],
					["errors", loadDirect.errors + seqDirect.errors, loadRouted.errors + seqRouted.errors, ""],
				],
			),
			"",
			table(
				["time to the first streamed piece", "p50 (ms)", "p99 (ms)"],
				[
					["swapper-proxy.generate, stream: true, over the mesh (the provider's own first token, seen by a caller)", ttft.provider, ttft.providerP99],
					["HTTP POST /api/router/route, stream: true, through a gateway node (SSE)", ttft.gateway, ttft.gatewayP99],
					["difference, median of the paired samples (target ≤ 5 ms)", ttftDifference, ""],
				],
			),
			"",
			`${TTFT_SAMPLES} sequential samples each, taken after the caller's agent.run.* backlog from the throughput rounds was written (events stay on). The gateway path includes HTTP, auth, rate limit, the router on the gateway's node and the mesh hop to the model node; the direct path is the mesh hop alone. The gateway path crosses four process boundaries (client → gateway → model node → gateway → client), the direct path two: on a loaded machine each crossing waits for a core, which the difference then contains.`,
			"",
			...summary,
		].join("\n");
		process.stdout.write(`\n${text}\n`);
		if (EVENTS) writeSection("Router and swapper-proxy (bench/router)", text);
	} finally {
		await stopProcesses();
		await admin(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => undefined);
	}
}

main().catch(async err => {
	process.stderr.write(`${(err as Error).stack}\n`);
	await stopProcesses();
	process.exit(1);
});
