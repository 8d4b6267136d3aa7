/**
 * `npm run bench:city`: city message posts over the mesh (message row + its outbox row + the fan-out
 * broadcast), against raw pg doing the same transaction, in one run; two nodes over NATS, a fresh database.
 *   throughput — city.postMessage called over NATS from this process (auth meta, every middleware), pinned
 *                to NODE1, vs raw pg running the same work as a transaction (room row locked, seq taken,
 *                message inserted, outbox row inserted, between BEGIN and COMMIT) and as the one statement
 *                postMessage runs (POST_MESSAGE, services/city.service.ts), same concurrency
 *                (BENCH_CONCURRENCY, default 50) and pool size (10), posts spread over CITY_ROOMS rooms
 *                (default 10: one room serialises its posts on its row lock). The two take turns over
 *                BENCH_ROUNDS rounds (default 3) of BENCH_SECONDS (default 5); the median round is reported.
 *   delivery   — BENCH_SOCKETS socket.io clients (default 1,000) in one room on NODE2; posts to that room
 *                on NODE1 at CITY_POST_RATE per second (default 20) for BENCH_SECONDS: call sent → message
 *                at every socket, p50/p99 (an upper bound of commit → delivered: it includes the call's
 *                trip to NODE1 and the transaction).
 * The bench's nodes run with WS_HANDSHAKE_RATE=0 and WS_MAX_CONNECTIONS_PER_ADDRESS=0 (every client comes
 * from 127.0.0.1) and RATE_LIMIT_PER_KEY=0; the output says so.
 */
import { randomUUID } from "crypto";
import { ServiceBroker } from "moleculer";
import { connect as natsConnect } from "nats";
import { Pool } from "pg";
import { io, type Socket } from "socket.io-client";
import { relayRinger } from "../lib/outbox-writer";
import { createBrokerOptions } from "../../moleculer.config";
import { POST_MESSAGE } from "../../services/city.service";
import { signToken } from "../../lib/http/auth";
import { loadSettings } from "../../lib/runtime/settings";
import { resolveTransport } from "../../lib/runtime/transport";
import { adminQuery, closedLoop, fixedRate, formatNumber, loadAverage, machine, percentile, startProcess, stopProcesses, table, writeSection, type LoadResult, inTransaction, type Variant, migratedBenchDatabase } from "../lib/harness";

const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 50);
const ROOMS = Number(process.env.CITY_ROOMS ?? 10);
const SOCKETS = Number(process.env.BENCH_SOCKETS ?? 1_000);
const POST_RATE = Number(process.env.CITY_POST_RATE ?? 20);
const POOL_SIZE = 10;
const JWT_SECRET = "bench-secret-0123456789abcdef0123456789";
const id = `${process.pid}`;
const namespace = `bench-city-${id}`;
const prefix = `benchcity${id}`;
const stream = `BENCH_CITY_${id}`;
const dbName = `bench_city_${id}`;
const NODE1 = { id: `bc-node1-${id}`, port: 9491 };
const NODE2 = { id: `bc-node2-${id}`, port: 9492 };
const LIVE_ROOM = "live";
const user = { id: "bench-poster", roles: [], teams: [] };
const WS = { path: "/ws/socket.io", transports: ["websocket"], reconnection: false, forceNew: true };
/** Limits the bench lifts on its own nodes, printed beside the results. */
const LIFTED = { RATE_LIMIT_PER_KEY: "0", WS_HANDSHAKE_RATE: "0", WS_MAX_CONNECTIONS_PER_ADDRESS: "0" };
const sleep = (ms: number) => new Promise(r => setTimeout(r, ms));

const ROOM_LOCK = "SELECT id, name, is_public, created_by, created_at FROM city_rooms WHERE id = $1 FOR UPDATE";
const NEXT_SEQ = "UPDATE city_rooms SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq";
const INSERT_MESSAGE = "INSERT INTO city_messages (room_id, seq, author_id, body) VALUES ($1, $2, $3, $4) RETURNING *";
const INSERT_OUTBOX = "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, subject, payload) VALUES ($1, $2, $3, $4, $5::jsonb)";

/** What city.postMessage does in its transaction, written by hand with pg (a public room: no membership read). */
async function rawPost(pool: Pool, roomId: string, body: string): Promise<void> {
	await inTransaction(pool, async client => {
		const room = (await client.query<{ id: string; is_public: boolean }>(ROOM_LOCK, [roomId])).rows[0];
		const seq = (await client.query<{ last_seq: string }>(NEXT_SEQ, [roomId])).rows[0].last_seq;
		const message = (await client.query(INSERT_MESSAGE, [roomId, seq, user.id, body])).rows[0];
		const payload = { message, room: { id: room.id, is_public: room.is_public } };
		await client.query(INSERT_OUTBOX, ["city_message", message.id, "message.created", `${prefix}.message.created.${roomId}`, JSON.stringify(payload)]);
	});
}

/** The statement city.postMessage runs, sent by hand with pg (the same parameters: room, user, admin?, body, subject). */
async function rawPostStatement(pool: Pool, roomId: string, body: string): Promise<void> {
	await pool.query(POST_MESSAGE, [roomId, user.id, false, body, `${prefix}.message.created.${roomId}`]);
}

/** Each variant ROUNDS times for SECONDS, taking turns, after a warm-up; the median round of each. */
async function measureInTurns(variants: Variant[]): Promise<Map<string, LoadResult & { rounds: number[]; load: string }>> {
	const rounds = new Map<string, LoadResult[]>(variants.map(v => [v.name, []]));
	for (const v of variants) await closedLoop(v.call, CONCURRENCY, 1_000);
	for (let round = 0; round < ROUNDS; round++) {
		for (const v of variants) rounds.get(v.name)!.push(await closedLoop(v.call, CONCURRENCY, SECONDS * 1000));
	}
	const medians = new Map<string, LoadResult & { rounds: number[]; load: string }>();
	for (const v of variants) {
		const byRate = [...rounds.get(v.name)!].sort((a, b) => a.perSecond - b.perSecond);
		const median = byRate[Math.floor(byRate.length / 2)];
		const load = loadAverage();
		process.stdout.write(`${v.name}: ${byRate.map(r => formatNumber(r.perSecond)).join(" / ")} posts/s, median p50 ${formatNumber(median.p50)} p99 ${formatNumber(median.p99)} ms, errors ${median.errors} (load ${load})\n`);
		medians.set(v.name, { ...median, rounds: byRate.map(r => r.perSecond), load });
	}
	return medians;
}

function connectSocket(url: string, token: string): Promise<Socket> {
	return new Promise((resolve, reject) => {
		const socket = io(url, { ...WS, auth: { token } });
		socket.once("connect", () => resolve(socket));
		socket.once("connect_error", err => reject(err));
	});
}

/** Connects `count` clients, 50 at a time (a thundering herd would measure the kernel, not the node). */
async function connectMany(count: number, url: string): Promise<Socket[]> {
	const sockets: Socket[] = [];
	for (let i = 0; i < count; i += 50) {
		sockets.push(...(await Promise.all(Array.from({ length: Math.min(50, count - i) }, (_, j) => connectSocket(url, signToken(JWT_SECRET, { id: `reader-${i + j}`, roles: [], teams: [] }))))));
	}
	return sockets;
}

interface Delivery {
	p50: number;
	p99: number;
	max: number;
	delivered: number;
	expected: number;
	posted: number;
	failedPosts: number;
	load: string;
}

/** Posts to the live room on NODE1 at POST_RATE; every socket on NODE2 timestamps the arrival of post n. */
async function delivery(caller: ServiceBroker, sockets: Socket[]): Promise<Delivery> {
	const sentAt = new Map<number, number>();
	const latencies: number[] = [];
	for (const s of sockets) s.on("message", (m: { body: string }) => latencies.push(performance.now() - (sentAt.get(Number(m.body)) ?? NaN)));
	let n = 0;
	const posted = await fixedRate(
		() => {
			const number = ++n;
			sentAt.set(number, performance.now());
			return caller.call("city.postMessage", { room_id: LIVE_ROOM, body: String(number) }, { meta: { user }, nodeID: NODE1.id });
		},
		POST_RATE,
		SECONDS * 1000,
	);
	await sleep(2_000);
	for (const s of sockets) s.off("message");
	const valid = latencies.filter(Number.isFinite).sort((a, b) => a - b);
	return { p50: percentile(valid, 50), p99: percentile(valid, 99), max: valid[valid.length - 1] ?? NaN, delivered: valid.length, expected: posted.calls * sockets.length, posted: posted.calls, failedPosts: posted.errors, load: loadAverage() };
}

function report(throughput: Map<string, LoadResult & { rounds: number[]; load: string }>, live: Delivery, loadAtStart: string): string {
	const mesh = throughput.get("mesh")!;
	const raw = throughput.get("raw pg")!;
	const rawStatement = throughput.get("raw pg statement")!;
	const row = (name: string, r: LoadResult & { rounds: number[]; load: string }) => [name, r.perSecond, r.p50, r.p99, r.rounds.map(formatNumber).join(" / "), String(r.errors), r.load];
	const rows = [
		row("city.postMessage over the mesh (NATS → NODE1: one statement — seq, message, outbox row — + broadcast to every gateway)", mesh),
		row("raw pg, the same transaction (BEGIN, room FOR UPDATE, seq, message, outbox row, COMMIT)", raw),
		row("raw pg, the same statement as postMessage (seq, message and outbox row in one CTE)", rawStatement),
	];
	return [
		`Run ${new Date().toISOString()} on ${machine()}; local PostgreSQL and NATS; load average ${loadAtStart} at the start and ${loadAverage()} at the end (other work shares these cores). Two nodes (all services) over NATS, a fresh database; the bench's nodes run with ${Object.entries(LIFTED).map(([k, v]) => `${k}=${v}`).join(", ")} (every client is on 127.0.0.1). \`npm run bench:city\`.`,
		"",
		`Throughput: ${CONCURRENCY} concurrent posters, posts spread over ${ROOMS} public rooms, pool of ${POOL_SIZE} on both sides; the three take turns over ${ROUNDS} rounds of ${SECONDS} s, median round reported.`,
		"",
		table(["variant", "posts/s", "p50 ms", "p99 ms", "rounds posts/s", "failed (median round)", "load average"], rows),
		"",
		`- mesh / raw pg (same transaction): **${formatNumber(mesh.perSecond / raw.perSecond)}×** (target ≥ 0.5×); mesh / raw pg (same statement): **${formatNumber(mesh.perSecond / rawStatement.perSecond)}×**. The raw sides do not broadcast; the mesh side also hands each message to every gateway over NATS.`,
		`- commit → delivered on the other node: ${SOCKETS} sockets in room \`${LIVE_ROOM}\` on NODE2, ${live.posted} posts on NODE1 at ${POST_RATE}/s: p50 ${formatNumber(live.p50)} ms, **p99 ${formatNumber(live.p99)} ms**, max ${formatNumber(live.max)} ms; delivered ${live.delivered}/${live.expected}, failed posts ${live.failedPosts} (load ${live.load}). Measured from the call leaving this process, so it includes the trip to NODE1 and the transaction: an upper bound of commit → delivered. Every socket lives in this process, which pays the receiving cost.`,
		"- What limits it / past one machine: posts to one room take their numbers one at a time on the room's row lock (held for one statement since postMessage became one: 429 → 756 posts/s in this bench), so a room's rate is bounded by PostgreSQL's lock hand-off and commit latency whatever the node count; posts to different rooms scale with PostgreSQL's commits per second (a PostgreSQL of its own machine) and with more nodes on the NATS cluster sharing the handler and gateway work; each message reaches each gateway once over NATS, then its sockets, so delivery grows with sockets per gateway, not with nodes.",
	].join("\n");
}

async function main(): Promise<void> {
	const loadAtStart = loadAverage();
	const url = await migratedBenchDatabase(dbName);
	const pool = new Pool({ connectionString: url, max: POOL_SIZE });
	const sockets: Socket[] = [];
	let caller: ServiceBroker | null = null;
	try {
		const env = { MESH_NAMESPACE: namespace, NATS_URL, DATABASE_URL: url, JWT_SECRET, EVENTS_SUBJECT_PREFIX: prefix, NATS_STREAM_EVENTS: stream, LOG_LEVEL: "info", MIGRATE_ON_START: "0", PRESENCE_HEARTBEAT_MS: "600000", ...LIFTED };
		const ready = "API Gateway listening";
		await startProcess("scripts/run-node.ts", { ...env, NODE_ID: NODE1.id, NODE_ROLE: "node1", PORT: String(NODE1.port) }, ready);
		await startProcess("scripts/run-node.ts", { ...env, NODE_ID: NODE2.id, NODE_ROLE: "node2", PORT: String(NODE2.port) }, ready);
		const settings = loadSettings({ ...env, LOG_LEVEL: "warn", NODE_ID: `bc-caller-${id}` });
		caller = new ServiceBroker(createBrokerOptions(settings, await resolveTransport(settings)));
		await caller.start();
		await caller.waitForServices("city");
		const broker = caller;
		const rooms = [LIVE_ROOM, ...Array.from({ length: ROOMS }, (_, i) => `posts-${i}`)];
		for (const room of rooms) await broker.call("city.createRoom", { id: room, name: room }, { meta: { user }, nodeID: NODE1.id });

		let next = 0;
		const pickRoom = () => rooms[1 + (next++ % ROOMS)];
		// The raw posts write an outbox row as city.postMessage does, and ring the relay after their commit as a
		// writing node does (bench/lib/outbox-writer.ts): unrung, the relay would sit idle while they are measured.
		const relay = relayRinger(broker);
		const throughput = await measureInTurns([
			{ name: "mesh", call: () => broker.call("city.postMessage", { room_id: pickRoom(), body: `post ${randomUUID()}` }, { meta: { user }, nodeID: NODE1.id }) },
			{ name: "raw pg", call: () => relay.after(rawPost(pool, pickRoom(), `post ${randomUUID()}`)) },
			{ name: "raw pg statement", call: () => relay.after(rawPostStatement(pool, pickRoom(), `post ${randomUUID()}`)) },
		]);

		sockets.push(...(await connectMany(SOCKETS, `http://127.0.0.1:${NODE2.port}/city/rooms/${LIVE_ROOM}`)));
		await sleep(1_000);
		const live = await delivery(broker, sockets);
		process.stdout.write(`delivery: p50 ${formatNumber(live.p50)} p99 ${formatNumber(live.p99)} ms, ${live.delivered}/${live.expected} (load ${live.load})\n`);

		const text = report(throughput, live, loadAtStart);
		process.stdout.write(`\n${text}\n`);
		writeSection("City message posts (bench/city)", text);
	} finally {
		for (const s of sockets) s.close();
		await caller?.stop();
		await stopProcesses();
		const nc = await natsConnect({ servers: new URL(NATS_URL).host }).catch(() => null);
		await (await nc?.jetstreamManager())?.streams.delete(stream).catch(() => undefined);
		await nc?.close();
		await pool.end();
		await adminQuery(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => undefined);
	}
}

main().then(
	() => process.exit(0),
	err => {
		process.stderr.write(`bench:city failed: ${(err as Error).stack}\n`);
		stopProcesses().finally(() => process.exit(1));
	},
);
