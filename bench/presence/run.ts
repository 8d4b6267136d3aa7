/**
 * `npm run bench:presence`: 1,000 socket.io clients split across NODE1 and NODE2 (one room), against a
 * bare socket.io server broadcasting to the same number of clients, in one run.
 *   fan-out  — 50 room messages posted on NODE1, 100 ms apart: post → delivery at every client, p50/p99
 *   presence — 100 users coming online on NODE2, seen by a watcher on NODE1: p99 propagation
 *   heap     — heap growth per idle socket after a full GC, over both nodes (SIGUSR2 heap report) and on the bare
 *              server, each after 100 warm-up connections (opened and closed); compiled code is reported apart
 *              (lib/runtime/heap.ts): it grows with what background timers run meanwhile, not with the sockets
 * Every client lives in this process, so the baseline pays the same receiving cost.
 */
import type { ChildProcess } from "child_process";
import { io, type Socket } from "socket.io-client";
import { Client } from "pg";
import { signToken } from "../../lib/http/auth";
import type { HeapReading } from "../../lib/runtime/heap";
import { formatNumber, machine, percentile, startProcess, stopProcesses, table, writeSection } from "../lib/harness";

const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const ADMIN_URL = process.env.DATABASE_URL ?? "postgres://root@127.0.0.1:5432/test";
const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 1_000);
const MESSAGES = 50;
const PRESENCE_USERS = 100;
const JWT_SECRET = "bench-secret-0123456789abcdef0123456789";
const WARM_UP = 100;
const id = `${process.pid}`;
const dbName = `bench_presence_${id}`;
const WS = { path: "/ws/socket.io", transports: ["websocket"], reconnection: false, forceNew: true };
const sleep = (ms: number) => new Promise(r => setTimeout(r, ms));
const token = (user: string) => signToken(JWT_SECRET, { id: user, roles: [], teams: [] });

async function admin(sql: string): Promise<void> {
	const c = new Client({ connectionString: ADMIN_URL });
	await c.connect();
	await c.query(sql);
	await c.end();
}

function connect(url: string, auth: Record<string, unknown>): Promise<Socket> {
	return new Promise((resolve, reject) => {
		const socket = io(url, { ...WS, auth });
		socket.once("connect", () => resolve(socket));
		socket.once("connect_error", err => reject(err));
	});
}

/** Connects `count` clients, 50 at a time (a thundering herd would measure the kernel, not us). */
async function connectMany(count: number, target: (i: number) => { url: string; auth: Record<string, unknown> }): Promise<Socket[]> {
	const sockets: Socket[] = [];
	for (let i = 0; i < count; i += 50) {
		sockets.push(...(await Promise.all(Array.from({ length: Math.min(50, count - i) }, (_, j) => connect(target(i + j).url, target(i + j).auth)))));
	}
	return sockets;
}

/**
 * Connects and closes WARM_UP sockets before the "before" heap reading: the code V8 compiles for the
 * first connections (~2 KB per socket over 500 sockets, bench/presence/heap-census.ts) is a one-time
 * cost, not a cost of each idle socket.
 */
async function warmUp(target: (i: number) => { url: string; auth: Record<string, unknown> }): Promise<void> {
	const sockets = await connectMany(WARM_UP, target);
	for (const s of sockets) s.close();
	await sleep(1_000);
}

interface FanOut {
	p50: number;
	p99: number;
	delivered: number;
	expected: number;
}

/** Posts MESSAGES messages through `post(n)`; every client timestamps arrival of message n. */
async function fanOut(clients: Socket[], post: (n: number) => void, numberOf: (message: any) => number): Promise<FanOut> {
	const sentAt = new Map<number, number>();
	const latencies: number[] = [];
	for (const c of clients) c.on("message", (m: unknown) => latencies.push(performance.now() - (sentAt.get(numberOf(m)) ?? NaN)));
	for (let n = 1; n <= MESSAGES; n++) {
		sentAt.set(n, performance.now());
		post(n);
		await sleep(100);
	}
	await sleep(2_000);
	const valid = latencies.filter(Number.isFinite).sort((a, b) => a - b);
	for (const c of clients) c.off("message");
	return { p50: percentile(valid, 50), p99: percentile(valid, 99), delivered: valid.length, expected: MESSAGES * clients.length };
}

async function bareHeap(url: string): Promise<HeapReading> {
	const s = await connect(`${url}/bench`, {});
	const reading = await s.emitWithAck("heap");
	s.close();
	return reading as HeapReading;
}

/** A node's heap after a full GC: SIGUSR2 makes it log one `event: "heap"` line (lib/runtime/node-runtime.ts). */
function nodeHeap(node: ChildProcess): Promise<HeapReading> {
	return new Promise((resolve, reject) => {
		const timer = setTimeout(() => reject(new Error("no heap line within 5 s")), 5_000);
		const onData = (chunk: Buffer) => {
			const match = /"heap_used_bytes":(\d+),"heap_code_bytes":(\d+)/.exec(chunk.toString());
			if (!match) return;
			clearTimeout(timer);
			node.stdout?.off("data", onData);
			resolve({ heapUsed: Number(match[1]), codeBytes: Number(match[2]), afterGc: true });
		};
		node.stdout?.on("data", onData);
		node.kill("SIGUSR2");
	});
}

/** KB per socket between two readings: objects only (code left out), and everything. */
function perSocket(before: HeapReading, after: HeapReading, sockets: number): { objects: number; withCode: number } {
	const kb = (bytes: number) => bytes / sockets / 1024;
	return { objects: kb(after.heapUsed - after.codeBytes - (before.heapUsed - before.codeBytes)), withCode: kb(after.heapUsed - before.heapUsed) };
}

/** The two nodes' heaps added up: each holds half of the room sockets. */
async function bothNodesHeap(node1: ChildProcess, node2: ChildProcess): Promise<HeapReading> {
	const [a, b] = await Promise.all([nodeHeap(node1), nodeHeap(node2)]);
	return { heapUsed: a.heapUsed + b.heapUsed, codeBytes: a.codeBytes + b.codeBytes, afterGc: true };
}

async function main(): Promise<void> {
	await admin(`CREATE DATABASE ${dbName}`);
	const url = ADMIN_URL.replace(/\/[^/]*$/, `/${dbName}`);
	const base = { MESH_NAMESPACE: `bench-presence-${id}`, NATS_URL, DATABASE_URL: url, JWT_SECRET, LOG_LEVEL: "warn", RATE_LIMIT_PER_KEY: "0", WS_HANDSHAKE_RATE: "0", WS_MAX_CONNECTIONS_PER_ADDRESS: "0", EVENTS_SUBJECT_PREFIX: `benchp${id}`, NATS_STREAM_EVENTS: `BENCH_P_${id}`, PRESENCE_HEARTBEAT_MS: "600000" };
	const sockets: Socket[] = [];
	try {
		const ready = "API Gateway listening";
		const node1 = await startProcess("scripts/run-node.ts", { ...base, NODE_ID: "bp-node1", NODE_ROLE: "node1", PORT: "9481", LOG_LEVEL: "info", NODE_OPTIONS: "--expose-gc" }, ready);
		const node2 = await startProcess("scripts/run-node.ts", { ...base, NODE_ID: "bp-node2", NODE_ROLE: "node2", PORT: "9482", LOG_LEVEL: "info", NODE_OPTIONS: "--expose-gc" }, ready);
		await startProcess("bench/presence/bare-socketio.ts", { PORT: "9483", NODE_OPTIONS: "--expose-gc" });
		const nodes = ["http://127.0.0.1:9481", "http://127.0.0.1:9482"];
		for (let i = 0; i < 100; i++) {
			const res = await fetch(`${nodes[0]}/api/city/rooms`, { method: "POST", headers: { authorization: `Bearer ${token("host")}`, "content-type": "application/json" }, body: JSON.stringify({ id: "bench", name: "Bench" }) }).catch(() => null);
			if (res && (res.status === 200 || res.status === 409)) break;
			await sleep(200);
		}

		// --- project: 1,000 room sockets split across the two nodes ---
		await warmUp(i => ({ url: `${nodes[i % 2]}/city/rooms/bench`, auth: { token: token(`warm-up-${i}`) } }));
		const heapBefore = await bothNodesHeap(node1, node2);
		const roomClients = await connectMany(CLIENTS, i => ({ url: `${nodes[i % 2]}/city/rooms/bench`, auth: { token: token(`reader-${i}`) } }));
		sockets.push(...roomClients);
		await sleep(2_000);
		const heapAfter = await bothNodesHeap(node1, node2);
		const poster = await connect(`${nodes[0]}/city/rooms/bench`, { token: token("poster") });
		sockets.push(poster);
		const project = await fanOut(roomClients, n => poster.emit("message", { body: String(n) }), m => Number((m as { body: string }).body));

		// --- cross-node presence: users come online on NODE2, a watcher on NODE1 sees them ---
		const watcher = await connect(`${nodes[0]}/city/presence`, { token: token("watcher"), device: "w" });
		sockets.push(watcher);
		const onlineAt = new Map<string, number>();
		watcher.on("presence", (p: { user_id: string; status: string }) => p.status === "online" && !onlineAt.has(p.user_id) && onlineAt.set(p.user_id, performance.now()));
		const presenceLatencies: number[] = [];
		for (let i = 0; i < PRESENCE_USERS; i++) {
			const user = `arriving-${i}`;
			const started = performance.now();
			sockets.push(await connect(`${nodes[1]}/city/presence`, { token: token(user), device: "d" }));
			for (let w = 0; w < 200 && !onlineAt.has(user); w++) await sleep(2);
			presenceLatencies.push((onlineAt.get(user) ?? NaN) - started);
		}
		presenceLatencies.sort((a, b) => a - b);

		// --- baseline: bare socket.io, same number of clients ---
		await warmUp(() => ({ url: "http://127.0.0.1:9483/bench", auth: {} }));
		const bareHeapBefore = await bareHeap("http://127.0.0.1:9483");
		const bareClients = await connectMany(CLIENTS, () => ({ url: "http://127.0.0.1:9483/bench", auth: {} }));
		sockets.push(...bareClients);
		await sleep(2_000);
		const bareHeapAfter = await bareHeap("http://127.0.0.1:9483");
		const barePoster = await connect("http://127.0.0.1:9483/bench", {});
		sockets.push(barePoster);
		const bare = await fanOut(bareClients, n => barePoster.emit("post", { n }), m => (m as { n: number }).n);

		const projectHeap = perSocket(heapBefore, heapAfter, CLIENTS);
		const bareSocketHeap = perSocket(bareHeapBefore, bareHeapAfter, CLIENTS);
		const rows = [
			["project (2 nodes, mesh fan-out)", project.p50, project.p99, `${project.delivered}/${project.expected}`, projectHeap.objects, projectHeap.withCode],
			["bare socket.io (1 process)", bare.p50, bare.p99, `${bare.delivered}/${bare.expected}`, bareSocketHeap.objects, bareSocketHeap.withCode],
		];
		const body = [
			`Run ${new Date().toISOString()} on ${machine()}; ${CLIENTS} socket.io clients (websocket) in the bench process; project clients split evenly over NODE1 and NODE2; ${MESSAGES} messages 100 ms apart posted on NODE1.`,
			"",
			table(["variant", "fan-out p50 ms", "fan-out p99 ms", "delivered", "heap KB / idle socket", "same, code included"], rows as Array<Array<string | number>>),
			"",
			`- fan-out p99: **${formatNumber(project.p99)} ms** at ${CLIENTS} clients (target ≤ 100 ms); bare socket.io ${formatNumber(bare.p99)} ms`,
			`- cross-node presence (online on NODE2 → seen on NODE1): p50 ${formatNumber(percentile(presenceLatencies, 50))} ms, **p99 ${formatNumber(percentile(presenceLatencies, 99))} ms** over ${PRESENCE_USERS} users (target ≤ 50 ms; includes the socket handshake and a PostgreSQL transaction)`,
			`- heap per idle socket (after a full GC, compiled code left out): **${formatNumber(projectHeap.objects)} KB** over both nodes (target ≤ 10 KB); bare socket.io ${formatNumber(bareSocketHeap.objects)} KB. Code included: ${formatNumber(projectHeap.withCode)} and ${formatNumber(bareSocketHeap.withCode)} KB — code V8 compiles while the sockets open (the handshake path getting optimised, background timers such as lease renewal and metrics), not kept per socket (bench/presence/heap-census.ts names the functions)`,
		].join("\n");
		writeSection("Presence and rooms over socket.io (bench/presence)", body);
		process.stdout.write(`\n${body}\n`);
	} finally {
		for (const s of sockets) s.close();
		await stopProcesses();
		await admin(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => undefined);
	}
}

main().catch(async err => {
	process.stderr.write(`bench failed: ${(err as Error).stack}\n`);
	await stopProcesses();
	process.exit(1);
});
