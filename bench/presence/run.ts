/**
 * `npm run bench:presence`: socket.io clients split across NODE1 and NODE2 (one room), against a bare
 * socket.io server broadcasting to the same number of clients, in one run, at each point of a curve:
 * PRESENCE_CURVE (default 1000,5000,10000 sockets; BENCH_CLIENTS=N alone runs the single point N). Sockets
 * are added point by point (the heap baseline is read once, before the first).
 *   fan-out  — room messages posted on NODE1 (50 at the first point, 20 after), max(100 ms, N / 10 ms) apart so
 *              that the clients can take every delivery off their N sockets between two posts: post →
 *              delivery at every client, p50/p99
 *   presence — 100 users coming online on NODE2, seen by a watcher on NODE1: p99 propagation
 *   heap     — heap growth per idle socket after a full GC, over both nodes (SIGUSR2 heap report) and on the bare
 *              server, each after 100 warm-up connections (opened and closed); compiled code is reported apart
 *              (lib/runtime/heap.ts): it grows with what background timers run meanwhile, not with the sockets
 * The room clients live in child processes (bench/presence/clients.ts) of up to BENCH_SOCKETS_PER_CLIENT_PROCESS
 * (2,500) sockets each, filled in order, for the project and the baseline alike: one process taking all N deliveries
 * off its sockets one after another (~30 µs each) made the last delivery of a post wait for the other N−1 to
 * be read, a queue real clients, each on its own device, do not have (2,500 × ~30 µs ≈ 75 ms per post at most).
 * More processes than that take cores from the servers on this 2-core machine (at 1,000 sockets, 4 processes
 * measured p99 94–200 ms, 1 process 75–99), so a point of N sockets uses ceil(N / 2,500) of them. The clients
 * still share this machine's cores with the servers, and both sides pay that alike. Post and arrival times are
 * performance.timeOrigin + performance.now() in each process.
 * PRESENCE_WIRE=1 also times each frame leaving the servers, with the clients at nice 19 (WIRE, below): the
 * servers' side of the fan-out, without the clients' share of the cores; it writes a section of its own.
 */
import { execSync, type ChildProcess } from "child_process";
import { randomUUID } from "crypto";
import fs from "fs";
import os from "os";
import path from "path";
import { constants as gcKinds } from "perf_hooks";
import type { Socket } from "socket.io-client";
import { Client } from "pg";
import { signToken } from "../../lib/http/auth";
import type { HeapReading } from "../../lib/runtime/heap";
import type { Message } from "../../services/city.service";
import { formatNumber, loadAverage, machine, percentile, processCpuMs, ROOT, startProcess, stopProcesses, table, writeSection } from "../lib/harness";
import { svgCharts } from "../lib/svg-plot";
import { connect, connectMany, now, type ClientAnswer, type ClientRequest, type ClientTarget } from "./clients";

/** Which client the client processes run (bench/presence/clients.ts, PRESENCE_CLIENT). */
const CLIENT_KIND = process.env.PRESENCE_CLIENT === "protocol" ? "a minimal client of the wire protocol, PRESENCE_CLIENT=protocol" : "socket.io-client";
/**
 * PRESENCE_WIRE=1: fan-out timed to each frame leaving the servers (bench/presence/send-stamps.cjs, preloaded into
 * them), with the client processes at the lowest CPU priority (nice 19), standing in for clients on devices of
 * their own; written to a section of its own.
 */
const WIRE = process.env.PRESENCE_WIRE === "1";
/** PRESENCE_CLIENT_NICE overrides it (0: the clients compete with the servers as in the other sections) */
const CLIENT_NICENESS = Number(process.env.PRESENCE_CLIENT_NICE ?? 19);
const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const ADMIN_URL = process.env.DATABASE_URL ?? "postgres://root@127.0.0.1:5432/test";
const POINTS = (process.env.PRESENCE_CURVE ?? process.env.BENCH_CLIENTS ?? "1000,5000,10000").split(",").map(Number);
/** BENCH_MESSAGES sets both (small values for a quick check of the bench itself). */
const FIRST_MESSAGES = Number(process.env.BENCH_MESSAGES ?? 50);
const CURVE_MESSAGES = Number(process.env.BENCH_MESSAGES ?? 20);
const SOCKETS_PER_CLIENT_PROCESS = Number(process.env.BENCH_SOCKETS_PER_CLIENT_PROCESS ?? 2_500);
/** Client processes a point of `sockets` uses (sockets fill them in order). */
const clientProcessesFor = (sockets: number) => Math.ceil(sockets / SOCKETS_PER_CLIENT_PROCESS);
const CLIENT_PROCESSES = clientProcessesFor(Math.max(...POINTS));
/** File descriptors a process needs beyond its sockets (nodes' pipes, pg, NATS, node modules). */
const FD_HEADROOM = 500;
const STAMPS_FILE = (server: string) => path.join(os.tmpdir(), `bench-presence-${process.pid}-${server}.stamps`);
/** A server's two stamp files: its frames' stamps and its GC pauses */
const stampFilesOf = (server: string) => [STAMPS_FILE(server), `${STAMPS_FILE(server)}.gc`];
const STAMP_HOOK = path.join(ROOT, "bench", "presence", "send-stamps.cjs");
const SVG_FILE = path.join(ROOT, "docs", "bench", "presence-curve.svg");
const PRESENCE_USERS = Number(process.env.BENCH_PRESENCE_USERS ?? 100);
const JWT_SECRET = "bench-secret-0123456789abcdef0123456789";
const WARM_UP = 100;
const id = `${process.pid}`;
const dbName = `bench_presence_${id}`;
const sleep = (ms: number) => new Promise(r => setTimeout(r, ms));
const token = (user: string) => signToken(JWT_SECRET, { id: user, roles: [], teams: [] });

async function admin(sql: string): Promise<void> {
	const c = new Client({ connectionString: ADMIN_URL });
	await c.connect();
	await c.query(sql);
	await c.end();
}

/** The room clients' processes (bench/presence/clients.ts): each answers one request at a time. */
class ClientProcesses {
	private constructor(private readonly children: ChildProcess[]) {}

	static async start(count: number): Promise<ClientProcesses> {
		const children = await Promise.all(Array.from({ length: count }, () => startProcess("bench/presence/clients.ts", {}, "READY", 30_000, true)));
		if (WIRE) for (const child of children) os.setPriority(child.pid!, CLIENT_NICENESS);
		return new ClientProcesses(children);
	}

	get pids(): number[] {
		return this.children.map(c => c.pid!);
	}

	private ask(child: ChildProcess, request: ClientRequest): Promise<ClientAnswer> {
		return new Promise((resolve, reject) => {
			child.once("message", (answer: ClientAnswer | { error: string }) => ("error" in answer ? reject(new Error(`client process: ${answer.error}`)) : resolve(answer)));
			child.send(request);
		});
	}

	private all(request: (index: number) => ClientRequest): Promise<ClientAnswer[]> {
		return Promise.all(this.children.map((child, index) => this.ask(child, request(index))));
	}

	/** Sockets `from` … `to` − 1 of the curve, socket i in process ⌊i / SOCKETS_PER_CLIENT_PROCESS⌋. */
	async connect(from: number, to: number, target: Target): Promise<void> {
		const count = this.children.length;
		await this.all(index => ({ op: "connect", targets: Array.from({ length: to - from }, (_, j) => from + j).filter(i => Math.floor(i / SOCKETS_PER_CLIENT_PROCESS) % count === index).map(target) }));
	}

	async listen(): Promise<void> {
		await this.all(() => ({ op: "listen" }));
	}

	/** Every arrival since listen: the message's number and when it arrived. */
	async collect(): Promise<Array<{ numbers: number[]; times: number[] }>> {
		return (await this.all(() => ({ op: "collect" }))) as Array<{ numbers: number[]; times: number[] }>;
	}

	async close(): Promise<void> {
		await this.all(() => ({ op: "close" }));
	}
}

/**
 * Connects and closes WARM_UP sockets before the "before" heap reading: the code V8 compiles for the
 * first connections (~2 KB per socket over 500 sockets, bench/presence/heap-census.ts) is a one-time
 * cost, not a cost of each idle socket.
 */
async function warmUp(target: Target): Promise<void> {
	const sockets = await connectMany(Array.from({ length: WARM_UP }, (_, i) => target(i)));
	for (const s of sockets) s.close();
	await sleep(1_000);
}

interface FanOut {
	p50: number;
	p99: number;
	delivered: number;
	expected: number;
	/** when each post left the bench (message number → ms since the epoch) */
	sentAt: Map<number, number>;
}

interface SentFanOut {
	p50: number;
	p99: number;
	p100: number;
	/** frames of the posts stamped leaving the servers: one per socket per post, the poster's own copy included */
	sent: number;
	/** each post's last frame, ascending: whether a tail is every post or a few slow ones */
	lastFrames: number[];
	/** the servers' garbage-collection pauses from the first post to the last frame: how many, ms in all, the longest */
	gc: { pauses: number; totalMs: number; longestMs: number; longestKind: string };
	/** posts whose last frame left after 200 ms, each server's part in it: what made the tail */
	slowPosts: SlowPost[];
}

interface GcPause {
	start: number;
	ms: number;
	kind: string;
}

interface SlowPost {
	post: number;
	lastFrameMs: number;
	/** per server: its first frame for the post (late: the post reached it late) and its last, and its GC pauses */
	servers: { server: string; firstFrameMs: number; lastFrameMs: number; pauses: GcPause[] }[];
}

/** The stamp hook records a pause's kind as perf_hooks.constants.NODE_PERFORMANCE_GC_<KIND>: the name, by value */
const GC_KINDS: Record<number, string> = {
	[gcKinds.NODE_PERFORMANCE_GC_MINOR]: "minor",
	[gcKinds.NODE_PERFORMANCE_GC_MAJOR]: "major",
	[gcKinds.NODE_PERFORMANCE_GC_INCREMENTAL]: "incremental",
	[gcKinds.NODE_PERFORMANCE_GC_WEAKCB]: "weak callbacks",
};

/**
 * What the stamp hook (bench/presence/send-stamps.cjs) appends to a file: float64 pairs (stamps) or triples (GC
 * pauses), read as one flat array. measureCurve creates both files of a server (stamps and `.gc`) before each fan-out.
 */
function float64s(file: string): Float64Array {
	const bytes = fs.readFileSync(file);
	return new Float64Array(bytes.buffer, bytes.byteOffset, bytes.length / 8);
}

/** Every GC pause a server's stamp hook recorded (start, duration, kind triples), in the order it recorded them. */
function gcPausesOf(server: string): GcPause[] {
	const triples = float64s(`${STAMPS_FILE(server)}.gc`);
	const pauses: GcPause[] = [];
	for (let i = 0; i < triples.length; i += 3) pauses.push({ start: triples[i], ms: triples[i + 1], kind: GC_KINDS[triples[i + 2]] ?? `kind ${triples[i + 2]}` });
	return pauses;
}

const overlapping = (pauses: GcPause[], from: number, to: number) => pauses.filter(p => p.start <= to && p.start + p.ms >= from);

/** Post → each of its frames leaving a server, from the servers' send stamps (float64 pairs: number, time). */
function sentFanOut(servers: string[], sentAt: Map<number, number>): SentFanOut {
	const latencies: number[] = [];
	/** per server, per post: its first and last frame, ms after the post left the bench */
	const spans = servers.map(server => {
		const span = new Map<number, { first: number; last: number }>();
		const pairs = float64s(STAMPS_FILE(server));
		for (let i = 0; i < pairs.length; i += 2) {
			const latency = pairs[i + 1] - (sentAt.get(pairs[i]) ?? NaN);
			if (!Number.isFinite(latency)) continue;
			latencies.push(latency);
			const known = span.get(pairs[i]);
			if (!known) {
				span.set(pairs[i], { first: latency, last: latency });
			} else {
				known.first = Math.min(known.first, latency);
				known.last = Math.max(known.last, latency);
			}
		}
		return span;
	});
	const lastFrame = new Map<number, number>();
	for (const span of spans) for (const [post, { last }] of span) lastFrame.set(post, Math.max(lastFrame.get(post) ?? 0, last));
	latencies.sort((a, b) => a - b);
	const slowest = latencies[latencies.length - 1] ?? NaN;
	const [firstPost, lastPost] = [Math.min(...sentAt.values()), Math.max(...sentAt.values())];
	const pausesByServer = servers.map(gcPausesOf);
	const pauses = pausesByServer.flatMap(list => overlapping(list, firstPost, lastPost + (Number.isNaN(slowest) ? 0 : slowest)));
	const longest = pauses.reduce<GcPause | undefined>((a, b) => (a && a.ms >= b.ms ? a : b), undefined);
	const gc = { pauses: pauses.length, totalMs: pauses.reduce((sum, p) => sum + p.ms, 0), longestMs: longest?.ms ?? 0, longestKind: longest?.kind ?? "—" };
	const slowPosts = [...lastFrame.entries()]
		.filter(([, ms]) => ms > 200)
		.sort(([a], [b]) => a - b)
		.map(([post, ms]): SlowPost => {
			const from = sentAt.get(post)!;
			return {
				post,
				lastFrameMs: ms,
				servers: servers.map((server, s) => ({
					server: server.toUpperCase(),
					firstFrameMs: spans[s].get(post)?.first ?? NaN,
					lastFrameMs: spans[s].get(post)?.last ?? NaN,
					pauses: overlapping(pausesByServer[s], from, from + ms),
				})),
			};
		});
	return { gc, slowPosts, p50: percentile(latencies, 50), p99: percentile(latencies, 99), p100: slowest, sent: latencies.length, lastFrames: [...lastFrame.values()].sort((a, b) => a - b) };
}

/** Posts `messages` messages through `post(n)`, `intervalMs` apart; every client timestamps arrival of message n. */
async function fanOut(clients: ClientProcesses, sockets: number, post: (n: number) => void, messages: number, intervalMs: number): Promise<FanOut> {
	const sentAt = new Map<number, number>();
	await clients.listen();
	for (let n = 1; n <= messages; n++) {
		sentAt.set(n, now());
		post(n);
		await sleep(intervalMs);
	}
	await sleep(Math.max(2_000, intervalMs));
	const latencies: number[] = [];
	for (const { numbers, times } of await clients.collect()) numbers.forEach((n, i) => latencies.push(times[i] - (sentAt.get(n) ?? NaN)));
	const valid = latencies.filter(Number.isFinite).sort((a, b) => a - b);
	return { p50: percentile(valid, 50), p99: percentile(valid, 99), delivered: valid.length, expected: messages * sockets, sentAt };
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

type Target = (i: number) => ClientTarget;

interface Point {
	sockets: number;
	fanOut: FanOut;
	heap: { objects: number; withCode: number };
	messages: number;
	intervalMs: number;
	/** % of one core during the fan-out: the serving processes (both nodes, or the bare server) and the client processes together */
	cpu: { servers: number; clients: number };
	/** CPU ms the same processes spent per post (all its deliveries, idle time between posts included) */
	cpuMsPerPost: { servers: number; clients: number };
	load: string;
	/** PRESENCE_WIRE=1: the same posts timed to their frames leaving the servers */
	wire?: SentFanOut;
}

interface Side {
	/** connects the sockets of the room; `i` numbers them from 0 over the whole curve */
	target: Target;
	heap: () => Promise<HeapReading>;
	post: (n: number) => void;
	/** the measured servers' processes, for their CPU */
	pids: number[];
	/** PRESENCE_WIRE: the servers whose send stamps time the fan-out (their files: STAMPS_FILE) */
	stampServers: string[];
}

/** Spacing of the posts at N sockets: the clients take N deliveries off their sockets per post, and must be done before the next. */
const intervalFor = (sockets: number) => Math.max(100, Math.round(sockets / 10));
/**
 * What the bare socket.io baseline broadcasts per post: a message of the project's shape and size (city's room
 * message, `Message`), so that both sides encode, send and parse the same bytes. Until 2026-12-04 the baseline sent
 * `{ n }`, a fifth of the frame: its clients parsed less per delivery than the project's.
 */
const roomMessageLike = (n: number): Message => ({ id: randomUUID(), room_id: "bench", seq: n, author_id: "poster", body: String(n), created_at: new Date().toISOString(), edited_at: null, deleted_at: null });
/** The fan-out targets the issues set: p99 ≤ 100 ms at 1,000 sockets (the first presence bench), ≤ 200 ms at 10,000 (#18). */
const fanOutTarget = (sockets: number): string => (sockets >= 10_000 ? "≤ 200 ms at 10,000" : "≤ 100 ms at 1,000");

interface CpuShare {
	result: FanOut;
	/** % of one core */
	servers: number;
	clients: number;
	/** CPU ms spent in all */
	serversMs: number;
	clientsMs: number;
}

function cpuShare(pids: number[], clientPids: number[], run: () => Promise<FanOut>): Promise<CpuShare> {
	const cpuOf = (of: number[]) => of.reduce((sum, pid) => sum + processCpuMs(pid), 0);
	const before = { servers: cpuOf(pids), clients: cpuOf(clientPids), at: performance.now() };
	return run().then(result => {
		const elapsed = performance.now() - before.at;
		const serversMs = cpuOf(pids) - before.servers;
		const clientsMs = cpuOf(clientPids) - before.clients;
		return { result, servers: (100 * serversMs) / elapsed, clients: (100 * clientsMs) / elapsed, serversMs, clientsMs };
	});
}

/** The curve of one side: sockets added point by point, heap per idle socket and fan-out at each. */
async function measureCurve(name: string, side: Side, heapBefore: HeapReading, clients: ClientProcesses): Promise<Point[]> {
	const points: Point[] = [];
	for (const [index, sockets] of POINTS.entries()) {
		await clients.connect(index === 0 ? 0 : POINTS[index - 1], sockets, side.target);
		await sleep(2_000);
		const heap = perSocket(heapBefore, await side.heap(), sockets);
		const messages = index === 0 ? FIRST_MESSAGES : CURVE_MESSAGES;
		const intervalMs = intervalFor(sockets);
		if (WIRE) for (const server of side.stampServers) for (const truncated of stampFilesOf(server)) fs.writeFileSync(truncated, "");
		// when the posts start, e.g. to profile the fan-out alone (perf record -a for the posts' duration, docs/BENCHMARKS.md)
		process.stdout.write(`${name} @${sockets}: posting ${messages} messages ${intervalMs} ms apart from ${new Date().toISOString()}\n`);
		const { result, servers, clients: clientsCpu, serversMs, clientsMs } = await cpuShare(side.pids, clients.pids, () => fanOut(clients, sockets, side.post, messages, intervalMs));
		const wire = WIRE ? sentFanOut(side.stampServers, result.sentAt) : undefined;
		const cpuMsPerPost = { servers: serversMs / messages, clients: clientsMs / messages };
		const point = { sockets, fanOut: result, heap, messages, intervalMs, cpu: { servers, clients: clientsCpu }, cpuMsPerPost, load: loadAverage(), wire };
		if (wire) process.stdout.write(`${name} @${sockets} sent: p50 ${formatNumber(wire.p50)} p99 ${formatNumber(wire.p99)} max ${formatNumber(wire.p100)} ms (${wire.sent} frames); GC ${wire.gc.pauses} pauses, ${formatNumber(wire.gc.totalMs)} ms, longest ${formatNumber(wire.gc.longestMs)} ms (${wire.gc.longestKind}); posts' last frames ${wire.lastFrames.map(ms => ms.toFixed(0)).join(" ")} ms\n`);
		process.stdout.write(
			`${name} @${sockets}: fan-out p50 ${formatNumber(result.p50)} p99 ${formatNumber(result.p99)} ms (${result.delivered}/${result.expected}), heap ${formatNumber(heap.objects)} KB/socket (${formatNumber(heap.withCode)} with code), ` +
				`CPU servers ${servers.toFixed(0)}% clients ${clientsCpu.toFixed(0)}% (load ${point.load})\n`,
		);
		points.push(point);
	}
	return points;
}

/** `ulimit -n` must cover the largest point's sockets in every process: the bare server holds all of them (each node half, each client process its share). */
function checkFileDescriptors(): string {
	const limit = execSync("ulimit -n", { shell: "/bin/bash" }).toString().trim();
	const needed = Math.max(...POINTS) + FD_HEADROOM;
	if (limit !== "unlimited" && Number(limit) < needed) throw new Error(`ulimit -n is ${limit}; ${Math.max(...POINTS)} sockets need at least ${needed}: raise it (ulimit -n ${needed}) and rerun`);
	return limit;
}

function closeAll(sockets: Socket[]): void {
	for (const s of sockets.splice(0)) s.close();
}

function firstPointSection(project: Point, bare: Point, presenceLatencies: number[]): string {
	const rows = [
		["project (2 nodes, mesh fan-out)", project.fanOut.p50, project.fanOut.p99, `${project.fanOut.delivered}/${project.fanOut.expected}`, project.heap.objects, project.heap.withCode],
		["bare socket.io (1 process)", bare.fanOut.p50, bare.fanOut.p99, `${bare.fanOut.delivered}/${bare.fanOut.expected}`, bare.heap.objects, bare.heap.withCode],
	];
	return [
		`Run ${new Date().toISOString()} on ${machine()}; ${project.sockets} socket.io clients (websocket; ${CLIENT_KIND}) in ${clientProcessesFor(project.sockets)} client process(es) of their own; project clients split evenly over NODE1 and NODE2; ${project.messages} messages ${project.intervalMs} ms apart posted on NODE1. Load average ${project.load} (project) and ${bare.load} (bare). Larger socket counts: the next section.`,
		"",
		table(["variant", "fan-out p50 ms", "fan-out p99 ms", "delivered", "heap KB / idle socket", "same, code included"], rows as Array<Array<string | number>>),
		"",
		`- fan-out p99: **${formatNumber(project.fanOut.p99)} ms** at ${project.sockets} clients (target ${fanOutTarget(project.sockets)}); bare socket.io ${formatNumber(bare.fanOut.p99)} ms`,
		`- cross-node presence (online on NODE2 → seen on NODE1, with every curve socket connected): p50 ${formatNumber(percentile(presenceLatencies, 50))} ms, **p99 ${formatNumber(percentile(presenceLatencies, 99))} ms** over ${PRESENCE_USERS} users (target ≤ 50 ms; includes the socket handshake and a PostgreSQL transaction)`,
		`- heap per idle socket (after a full GC, compiled code left out): **${formatNumber(project.heap.objects)} KB** over both nodes (target ≤ 10 KB); bare socket.io ${formatNumber(bare.heap.objects)} KB. Code included: ${formatNumber(project.heap.withCode)} and ${formatNumber(bare.heap.withCode)} KB — code V8 compiles while the sockets open (the handshake path getting optimised, background timers such as lease renewal and metrics), not kept per socket (bench/presence/heap-census.ts names the functions)`,
	].join("\n");
}

function curveSection(project: Point[], bare: Point[], fdLimit: string, loadAtStart: string): string {
	const rows = project.map((p, i) => [
		String(p.sockets),
		p.fanOut.p50,
		p.fanOut.p99,
		bare[i].fanOut.p99,
		`${p.fanOut.delivered}/${p.fanOut.expected}`,
		p.heap.objects,
		bare[i].heap.objects,
		`${p.messages} × ${p.intervalMs} ms`,
		`${p.cpu.servers.toFixed(0)} / ${p.cpu.clients.toFixed(0)}`,
		`${bare[i].cpu.servers.toFixed(0)} / ${bare[i].cpu.clients.toFixed(0)}`,
		p.load,
	]);
	const top = project[project.length - 1];
	const bareTop = bare[bare.length - 1];
	const busiest = top.cpu.clients > top.cpu.servers ? `the ${clientProcessesFor(top.sockets)} client processes (the ${top.sockets} clients' side, ${top.cpu.clients.toFixed(0)} % of a core together) more than both nodes together (${top.cpu.servers.toFixed(0)} %)` : `the two nodes (${top.cpu.servers.toFixed(0)} % of a core together) more than the ${clientProcessesFor(top.sockets)} client processes, the clients' side (${top.cpu.clients.toFixed(0)} %)`;
	return [
		`Run ${new Date().toISOString()} on ${machine()}; load average ${loadAtStart} at the start and ${loadAverage()} at the end (other work shares these cores). Socket.io clients (websocket; ${CLIENT_KIND}) in client processes of up to ${SOCKETS_PER_CLIENT_PROCESS} sockets each, filled in order (a point of N sockets uses ⌈N / ${SOCKETS_PER_CLIENT_PROCESS}⌉ of them: more would take cores from the servers), added point by point; project clients split evenly over NODE1 and NODE2 (one room), posts on NODE1; the bare socket.io server gets the same clients after the project's are closed and its nodes stopped, and broadcasts a message of the same shape and size (until 2026-12-04: \`{ n }\`, with the idle nodes still running). The bench's nodes run with WS_HANDSHAKE_RATE=0 and WS_MAX_CONNECTIONS_PER_ADDRESS=0 (every client is on 127.0.0.1; the defaults allow 200 per address) and RATE_LIMIT_PER_KEY=0; \`ulimit -n\` ${fdLimit}. \`PRESENCE_CURVE=${POINTS.join(",")} npm run bench:presence\`.`,
		"",
		"![presence fan-out p99 and heap per socket vs sockets](bench/presence-curve.svg)",
		"",
		table(["sockets", "project fan-out p50 ms", "project fan-out p99 ms", "bare fan-out p99 ms", "project delivered", "project heap KB / idle socket", "bare heap KB / idle socket", "posts", "project CPU % nodes / clients", "bare CPU % server / clients", "load average"], rows),
		"",
		`- at ${top.sockets} sockets: fan-out p99 **${formatNumber(top.fanOut.p99)} ms** (target ≤ 200 ms: ${top.fanOut.p99 <= 200 ? "met" : "**not met**"}; bare socket.io ${formatNumber(bareTop.fanOut.p99)} ms), heap **${formatNumber(top.heap.objects)} KB per idle socket** over both nodes, compiled code left out (target ≤ 10 KB: ${top.heap.objects <= 10 ? "met" : "**not met**"}; ${formatNumber(top.heap.withCode)} KB with code; bare ${formatNumber(bareTop.heap.objects)} KB).`,
		`- Fan-out is measured from the post leaving the bench process to its arrival at each client (times are performance.timeOrigin + performance.now() in each process). The clients live in processes of their own, up to ${SOCKETS_PER_CLIENT_PROCESS} each, not in one that would take all N deliveries of a post off its sockets one after another (~30 µs each: at 10,000 sockets that queue alone was longer than the 200 ms target); they still share the 2 cores with the servers, so the p99 includes their receiving CPU (the bare column pays it too). Every post is counted at every socket (delivered column); posts are spaced so that the clients finish one before the next.`,
		`- ${cpuFloor(top, bareTop)}`,
		`- What limits it / past one machine: during the top point's fan-out the busiest side was ${busiest}. A node pushes each message once per local socket (socket.io encodes it once per namespace), so fan-out time grows with sockets per node; a message crosses NATS once per gateway, not once per socket, so past one machine more gateway nodes on the NATS cluster, each with its share of the sockets, keep sockets per node (and the p99) where this table shows them, and clients on machines of their own take the receiving side off the nodes' cores.`,
	].join("\n");
}

/**
 * The floor the machine sets: every post costs the nodes and the clients this much CPU, and os.cpus() cores
 * share it, so the last delivery of a post cannot arrive sooner than total / cores even with perfect overlap.
 */
function cpuFloor(top: Point, bareTop: Point): string {
	const cores = os.cpus().length;
	const perPost = (p: Point) => p.cpuMsPerPost.servers + p.cpuMsPerPost.clients;
	const perDelivery = (ms: number, p: Point) => formatNumber((1000 * ms) / p.sockets);
	return (
		`CPU per post at ${top.sockets} sockets (idle time between posts included, so an upper bound): project nodes ${formatNumber(top.cpuMsPerPost.servers)} ms (${perDelivery(top.cpuMsPerPost.servers, top)} µs per delivery) + clients ${formatNumber(top.cpuMsPerPost.clients)} ms (${perDelivery(top.cpuMsPerPost.clients, top)} µs) = ${formatNumber(perPost(top))} ms; ` +
		`bare server ${formatNumber(bareTop.cpuMsPerPost.servers)} ms (${perDelivery(bareTop.cpuMsPerPost.servers, bareTop)} µs) + clients ${formatNumber(bareTop.cpuMsPerPost.clients)} ms = ${formatNumber(perPost(bareTop))} ms. ` +
		`On ${cores} cores shared by servers and clients, the last delivery of a post cannot come before about total / ${cores}: ${formatNumber(perPost(top) / cores)} ms for the project, ${formatNumber(perPost(bareTop) / cores)} ms for bare socket.io — ` +
		(perPost(top) / cores > 200
			? `above the 200 ms target before any queueing: at this size it needs the clients' receiving CPU off these cores (clients on machines of their own) or more cores for the gateways${perPost(bareTop) / cores > 200 ? ", for bare socket.io as much as for the project" : ""}.`
			: `under the 200 ms target: what the p99 adds above it is queueing and scheduling, not CPU the machine lacks.`)
	);
}

/**
 * A measured server's NODE_OPTIONS, and with PRESENCE_WIRE its send stamps (bench/presence/send-stamps.cjs) and
 * PRESENCE_SERVER_NODE_OPTIONS (flags to try on the servers alike, e.g. `--max-semi-space-size=64`).
 */
function serverOptions(server: string): Record<string, string> {
	if (!WIRE) return { NODE_OPTIONS: "--expose-gc" };
	return { NODE_OPTIONS: `--expose-gc --require ${STAMP_HOOK} ${process.env.PRESENCE_SERVER_NODE_OPTIONS ?? ""}`.trim(), PRESENCE_STAMPS_FILE: STAMPS_FILE(server) };
}

/** "post 17 at 262 ms: NODE1 frames 180–262 ms (GC major 94 ms), NODE2 5–121 ms (no GC)" per slow post */
function slowPostsText(posts: SlowPost[]): string {
	if (posts.length === 0) return "none";
	const pauses = (list: GcPause[]) => (list.length === 0 ? "no GC" : `GC ${list.map(p => `${p.kind} ${formatNumber(p.ms)} ms`).join(", ")}`);
	return posts
		.map(p => `post ${p.post} at ${formatNumber(p.lastFrameMs)} ms: ${p.servers.map(s => `${s.server} frames ${formatNumber(s.firstFrameMs)}–${formatNumber(s.lastFrameMs)} ms (${pauses(s.pauses)})`).join(", ")}`)
		.join("; ");
}

const overTarget = (sent: SentFanOut) => sent.lastFrames.filter(ms => ms > 200).length;

function wireSection(project: Point[], bare: Point[], loadAtStart: string): string {
	const sent = (p: Point) => p.wire!;
	const spread = (p: Point, p99: (ms: string) => string = ms => ms) => `${formatNumber(sent(p).p50)} / ${p99(formatNumber(sent(p).p99))} / ${formatNumber(sent(p).p100)}`;
	const pauses = (p: Point) => `${sent(p).gc.pauses}, ${formatNumber(sent(p).gc.totalMs)}, ${formatNumber(sent(p).gc.longestMs)} (${sent(p).gc.longestKind})`;
	const rows = project.map((p, i) => [
		String(p.sockets),
		spread(p, ms => `**${ms}**`),
		spread(bare[i]),
		`${sent(p).sent}; ${sent(bare[i]).sent} of ${p.fanOut.expected + p.messages}`,
		`${formatNumber(percentile(sent(p).lastFrames, 50))}; ${overTarget(sent(p))} of ${p.messages}`,
		`${pauses(p)}; ${pauses(bare[i])}`,
		`${formatNumber(p.fanOut.p99)}; ${formatNumber(bare[i].fanOut.p99)}`,
		`${p.cpu.servers.toFixed(0)} / ${p.cpu.clients.toFixed(0)}; ${bare[i].cpu.servers.toFixed(0)} / ${bare[i].cpu.clients.toFixed(0)}`,
		`${p.messages} × ${p.intervalMs} ms`,
		p.load,
	]);
	const top = project[project.length - 1];
	const bareTop = bare[bare.length - 1];
	return [
		`Run ${new Date().toISOString()} on ${machine()}; load average ${loadAtStart} at the start and ${loadAverage()} at the end. \`PRESENCE_WIRE=1 PRESENCE_CURVE=${POINTS.join(",")} npm run bench:presence\` (client: ${CLIENT_KIND}). The same bench as "How presence fan-out and heap grow with sockets", with two differences. The client processes run at nice ${CLIENT_NICENESS}, so that they take only the CPU the servers leave (clients on devices of their own take none of it). And every server stamps each room message's websocket frame as its \`writev\` returns (bench/presence/send-stamps.cjs, preloaded into both nodes and the bare server alike): on loopback the frame is then in the client socket's queue. "Sent" is the post leaving the bench → each of its frames leaving a server, one per socket, the poster's own copy included; the same clock as the clients' figures (performance.timeOrigin + performance.now() in each process).`,
		"",
		table(["sockets", "project sent p50 / p99 / max ms", "bare socket.io sent p50 / p99 / max ms", "frames stamped: project; bare", "project: a post's last frame, median ms; posts over 200 ms", "GC pauses during the posts, count, ms in all, longest ms (kind): project (both nodes); bare", "p99 the niced clients saw: project; bare", "CPU % servers / clients: project; bare", "posts", "load average"], rows),
		"",
		`- at ${top.sockets} sockets: fan-out p99 to the frames leaving the two nodes **${formatNumber(sent(top).p99)} ms** (target ≤ 200 ms: ${sent(top).p99 <= 200 ? "met" : "**not met**"}), the last frame of any post ${formatNumber(sent(top).p100)} ms; bare socket.io (one process) ${formatNumber(sent(bareTop).p99)} ms.`,
		`- Post by post: a post's last frame left the nodes after a median ${formatNumber(percentile(sent(top).lastFrames, 50))} ms, and ${overTarget(sent(top))} of ${top.messages} posts had one later than 200 ms (each post's last frame, ms: ${sent(top).lastFrames.map(ms => ms.toFixed(0)).join(", ")}).`,
		`- Posts over 200 ms, each node's first and last frame for it (a late first frame: the post reached the node late) and that node's GC pauses while the post went out: ${slowPostsText(sent(top).slowPosts)}.`,
		`- The niced clients' own p99 (${formatNumber(top.fanOut.p99)} ms) is what clients sharing the servers' cores see when the servers go first: their receiving waits until the servers are done. It is not the figure a client on a device of its own sees.`,
	].join("\n");
}

function plot(project: Point[], bare: Point[]): void {
	const series = (pick: (p: Point) => number) => [
		{ name: "bare socket.io", color: "#888888", points: bare.map(p => [p.sockets, Math.max(pick(p), 0.01)] as [number, number]) },
		{ name: "project (2 nodes)", color: "#1f6feb", points: project.map(p => [p.sockets, Math.max(pick(p), 0.01)] as [number, number]) },
	];
	fs.mkdirSync(path.dirname(SVG_FILE), { recursive: true });
	fs.writeFileSync(
		SVG_FILE,
		svgCharts(
			[
				{ title: "Room fan-out p99", xLabel: "sockets", yLabel: "p99 ms (post → every socket)", xLog: true, yLog: true, series: series(p => p.fanOut.p99) },
				{ title: "Heap per idle socket", xLabel: "sockets", yLabel: "KB per socket (after GC, no code)", xLog: true, series: series(p => p.heap.objects) },
			],
			`${new Date().toISOString().slice(0, 16)}Z, ${machine()}, load ${loadAverage()}`,
		),
	);
}

async function main(): Promise<void> {
	const loadAtStart = loadAverage();
	const fdLimit = checkFileDescriptors();
	await admin(`CREATE DATABASE ${dbName}`);
	const url = ADMIN_URL.replace(/\/[^/]*$/, `/${dbName}`);
	const base = { MESH_NAMESPACE: `bench-presence-${id}`, NATS_URL, DATABASE_URL: url, JWT_SECRET, LOG_LEVEL: "warn", RATE_LIMIT_PER_KEY: "0", WS_HANDSHAKE_RATE: "0", WS_MAX_CONNECTIONS_PER_ADDRESS: "0", EVENTS_SUBJECT_PREFIX: `benchp${id}`, NATS_STREAM_EVENTS: `BENCH_P_${id}`, PRESENCE_HEARTBEAT_MS: "600000" };
	const sockets: Socket[] = [];
	let clients: ClientProcesses | null = null;
	try {
		const ready = "API Gateway listening";
		const node1 = await startProcess("scripts/run-node.ts", { ...base, ...serverOptions("node1"), NODE_ID: "bp-node1", NODE_ROLE: "node1", PORT: "9481", LOG_LEVEL: "info" }, ready);
		const node2 = await startProcess("scripts/run-node.ts", { ...base, ...serverOptions("node2"), NODE_ID: "bp-node2", NODE_ROLE: "node2", PORT: "9482", LOG_LEVEL: "info" }, ready);
		const bareServer = await startProcess("bench/presence/bare-socketio.ts", { ...serverOptions("bare"), PORT: "9483" });
		clients = await ClientProcesses.start(CLIENT_PROCESSES);
		const nodes = ["http://127.0.0.1:9481", "http://127.0.0.1:9482"];
		for (let i = 0; i < 100; i++) {
			const res = await fetch(`${nodes[0]}/api/city/rooms`, { method: "POST", headers: { authorization: `Bearer ${token("host")}`, "content-type": "application/json" }, body: JSON.stringify({ id: "bench", name: "Bench" }) }).catch(() => null);
			if (res && (res.status === 200 || res.status === 409)) break;
			await sleep(200);
		}

		// --- project: room sockets split across the two nodes, point by point ---
		const projectTarget: Target = i => ({ url: `${nodes[i % 2]}/city/rooms/bench`, auth: { token: token(`reader-${i}`) } });
		await warmUp(i => ({ url: `${nodes[i % 2]}/city/rooms/bench`, auth: { token: token(`warm-up-${i}`) } }));
		const poster = await connect(`${nodes[0]}/city/rooms/bench`, { token: token("poster") });
		sockets.push(poster);
		const projectBefore = await bothNodesHeap(node1, node2);
		const project = await measureCurve(
			"project",
			{ target: projectTarget, heap: () => bothNodesHeap(node1, node2), post: n => poster.emit("message", { body: String(n) }), pids: [node1.pid!, node2.pid!], stampServers: ["node1", "node2"] },
			projectBefore,
			clients,
		);

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
		await clients.close();
		closeAll(sockets);
		// Left running, the two nodes would spend the bare baseline's run on the 10,000 disconnects and their idle work
		// (~40 ms/s, bench/idle), on the same cores.
		await stopProcesses([node1, node2]);
		await sleep(2_000);

		// --- baseline: bare socket.io, the same points ---
		await warmUp(() => ({ url: "http://127.0.0.1:9483/bench", auth: {} }));
		const barePoster = await connect("http://127.0.0.1:9483/bench", {});
		sockets.push(barePoster);
		const bareBefore = await bareHeap("http://127.0.0.1:9483");
		const bare = await measureCurve(
			"bare",
			{ target: () => ({ url: "http://127.0.0.1:9483/bench", auth: {} }), heap: () => bareHeap("http://127.0.0.1:9483"), post: n => barePoster.emit("post", roomMessageLike(n)), pids: [bareServer.pid!], stampServers: ["bare"] },
			bareBefore,
			clients,
		);

		if (WIRE) {
			const section = wireSection(project, bare, loadAtStart);
			writeSection("Presence fan-out on the wire (bench/presence, PRESENCE_WIRE=1)", section);
			process.stdout.write(`\n${section}\n`);
			return;
		}
		const first = firstPointSection(project[0], bare[0], presenceLatencies);
		writeSection("Presence and rooms over socket.io (bench/presence)", first);
		process.stdout.write(`\n${first}\n`);
		if (POINTS.length > 1) {
			const curve = curveSection(project, bare, fdLimit, loadAtStart);
			plot(project, bare);
			writeSection("How presence fan-out and heap grow with sockets (bench/presence)", curve);
			process.stdout.write(`\n${curve}\n`);
		}
	} finally {
		await clients?.close().catch(() => undefined);
		closeAll(sockets);
		await stopProcesses();
		await admin(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => undefined);
		for (const server of ["node1", "node2", "bare"]) for (const file of stampFilesOf(server)) fs.rmSync(file, { force: true });
	}
}

main().catch(async err => {
	process.stderr.write(`bench failed: ${(err as Error).stack}\n`);
	await stopProcesses();
	process.exit(1);
});
