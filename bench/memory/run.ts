/**
 * `npm run bench:memory`: the memory service and the outbox relay, against raw pg in the same run.
 *   get        — memory.get called over NATS from another process (auth meta, all middlewares) vs a raw
 *                pg point select, same concurrency, same pool size (10); plus raw pg reads batched the
 *                way memory.get batches them.
 *   create     — memory.create over NATS, without and with an Idempotency-Key, vs raw pg doing the same
 *                transaction (memory row + its two outbox rows, + the idempotency row when keyed) as
 *                separate statements between BEGIN and COMMIT, vs raw pg writing the same rows in one
 *                statement, vs a bare insert of the memory row alone; and, in this process without the
 *                mesh, Sequelize writing them as memory.create did before 2026-12-02 (managed transaction,
 *                model.create, outbox INSERT) and as it does now (one statement), so the cost of the
 *                round trips, of Sequelize and of the mesh show separately. Variants take turns over
 *                BENCH_ROUNDS rounds (default 3); the median round is reported.
 *   relay      — 20,000 pending outbox rows drained to JetStream: events/s.
 *   lag        — memory.create at a steady 300/s: commit → JetStream ack (published_at − created_at).
 * A database of its own on the local PostgreSQL; every process and the stream are removed at the end.
 */
import { randomUUID } from "crypto";
import { ServiceBroker } from "moleculer";
import { QueryTypes } from "sequelize";
import { connect } from "nats";
import { Client, Pool } from "pg";
import { createBrokerOptions } from "../../moleculer.config";
import { loadSettings } from "../../lib/runtime/settings";
import { resolveTransport } from "../../lib/runtime/transport";
import { runMigrations } from "../../lib/data/migrations";
import { createSequelize } from "../../lib/data/database";
import { enqueueEvents } from "../../lib/data/outbox/enqueue";
import MemoryService from "../../services/memory.service";
import { PointReadBatcher } from "../../lib/data/point-read-batcher";
import { relayRinger } from "../lib/outbox-writer";
import { closedLoop, fixedRate, formatNumber, loadAverage, machine, percentile, startProcess, stopProcesses, table, writeSection, type LoadResult, inTransaction, type Variant } from "../lib/harness";

const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const ADMIN_URL = process.env.DATABASE_URL ?? "postgres://root@127.0.0.1:5432/test";
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const CONCURRENCY = 50;
const RELAY_ROWS = 20_000;
const LAG_RATE = 300;
const id = `${process.pid}`;
const namespace = `bench-mem-${id}`;
const prefix = `benchmem${id}`;
const stream = `BENCH_MEM_${id}`;
const dbName = `bench_mem_${id}`;
const user = { id: "bench", roles: ["admin"], teams: [] };

async function admin(sql: string): Promise<void> {
	const c = new Client({ connectionString: ADMIN_URL });
	await c.connect();
	await c.query(sql);
	await c.end();
}

const sleep = (ms: number) => new Promise(r => setTimeout(r, ms));

/** The two outbox rows memory.create writes (the change event and the audit record), same shapes. */
function createEvents(memoryId: string, key: string): unknown[] {
	const at = new Date().toISOString();
	const memory = { id: memoryId, scope: "personal", owner_id: "bench", owner_type: "user", kind: "event", key, version: 1, confidential: false, indexed: false };
	const audit = { actor: "bench", request_id: randomUUID(), target: memoryId, outcome: "success", node: "bench-raw", occurred_at: at, details: { scope: "personal", owner_id: "bench", kind: "event", version: 1, confidential: false, key } };
	return [
		...["memory", memoryId, "memory.created", `${prefix}.memory.created.personal`, JSON.stringify({ action: "created", actor: "bench", memory, at })],
		...["audit", memoryId, "audit.memory.created", `${prefix}.audit.memory.created`, JSON.stringify(audit)],
	];
}

const RAW_MEMORY = "INSERT INTO memories (id, scope, owner_id, owner_type, kind, key, content) VALUES ($1, 'personal', 'bench', 'user', 'event', $2, 'a new memory') RETURNING *";
const RAW_OUTBOX = "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, subject, payload) VALUES ($1, $2, $3, $4, $5::jsonb), ($6, $7, $8, $9, $10::jsonb)";
const RAW_CLAIM = `INSERT INTO idempotency_keys AS k (scope, key, request_hash, response) VALUES ($1, $2, $3, 'null'::jsonb)
ON CONFLICT (scope, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, response = EXCLUDED.response, created_at = now()
WHERE k.created_at < now() - $4 * interval '1 millisecond' RETURNING key`;
const RAW_ONE_STATEMENT = `WITH created AS (${RAW_MEMORY}), events AS (${RAW_OUTBOX.replace(/\$(\d+)/g, (_, n) => `$${Number(n) + 2}`)}) SELECT * FROM created`;

/** What memory.create does, written by hand with pg: BEGIN, [claim the key,] memory, outbox, [key's response,] COMMIT. */
async function rawCreateTransaction(pool: Pool, key: string, idempotencyKey: string | null): Promise<void> {
	await inTransaction(pool, async client => {
		if (idempotencyKey) await client.query(RAW_CLAIM, ["memory.create:bench", idempotencyKey, "0".repeat(64), 86_400_000]);
		const id = randomUUID();
		await client.query(RAW_MEMORY, [id, key]);
		await client.query(RAW_OUTBOX, createEvents(id, key));
		if (idempotencyKey) await client.query("UPDATE idempotency_keys SET response = $3::jsonb WHERE scope = $1 AND key = $2", ["memory.create:bench", idempotencyKey, JSON.stringify({ id })]);
	});
}

/** Each variant ROUNDS times for SECONDS, taking turns, after a warm-up; the median round of each. */
async function measureInTurns(variants: Variant[]): Promise<Map<string, LoadResult & { rounds: number[] }>> {
	const rounds = new Map<string, LoadResult[]>(variants.map(v => [v.name, []]));
	for (const v of variants) await closedLoop(v.call, CONCURRENCY, 1_000);
	for (let round = 0; round < ROUNDS; round++) {
		for (const v of variants) rounds.get(v.name)!.push(await closedLoop(v.call, CONCURRENCY, SECONDS * 1000));
	}
	const medians = new Map<string, LoadResult & { rounds: number[] }>();
	for (const v of variants) {
		const byRate = [...rounds.get(v.name)!].sort((a, b) => a.perSecond - b.perSecond);
		const median = byRate[Math.floor(byRate.length / 2)];
		process.stdout.write(`${v.name}: ${byRate.map(r => formatNumber(r.perSecond)).join(" / ")} ops/s, median p50 ${formatNumber(median.p50)} p99 ${formatNumber(median.p99)} ms, errors ${median.errors}\n`);
		medians.set(v.name, { ...median, rounds: byRate.map(r => r.perSecond) });
	}
	return medians;
}

async function main(): Promise<void> {
	const loadAtStart = loadAverage();
	await admin(`CREATE DATABASE ${dbName}`);
	const url = ADMIN_URL.replace(/\/[^/]*$/, `/${dbName}`);
	await runMigrations(url, "up");
	const pool = new Pool({ connectionString: url, max: 10 });
	const env = { MESH_NAMESPACE: namespace, NATS_URL, DATABASE_URL: url, JWT_SECRET: "bench-secret-0123456789abcdef0123456789", EVENTS_SUBJECT_PREFIX: prefix, NATS_STREAM_EVENTS: stream, LOG_LEVEL: "warn", MIGRATE_ON_START: "0" };
	const nc = await connect({ servers: new URL(NATS_URL).host });
	let caller: ServiceBroker | null = null;
	let sequelizeToClose: { close(): Promise<void> } | null = null;
	try {
		await startProcess("scripts/run-node.ts", { ...env, NODE_ID: "bench-memory", NODE_ROLE: "node1", SERVICES: "memory,outbox", PORT: "0", LOG_LEVEL: "info" }, "Service 'outbox' started");
		const settings = loadSettings({ ...env, NODE_ID: "bench-memory-caller" });
		caller = new ServiceBroker(createBrokerOptions(settings, await resolveTransport(settings)));
		await caller.start();
		await caller.waitForServices("memory");
		const broker = caller;
		const sequelize = createSequelize({ ...settings.database, url }, settings.databaseLimits, 10);
		const { name, define, options } = MemoryService.model;
		sequelizeToClose = sequelize;
		const Memory = sequelize.define(name, define, options);
		const eventRows = (id: string, key: string) => {
			const b = createEvents(id, key) as string[];
			return [0, 5].map(i => ({ aggregateType: b[i], aggregateId: b[i + 1], eventType: b[i + 2], subject: b[i + 3].replace(`${prefix}.`, ""), payload: JSON.parse(b[i + 4]) }));
		};
		const eventSettings = { ...settings.events, subjectPrefix: prefix };

		// Seed rows for reads.
		const ids: string[] = [];
		for (let i = 0; i < 500; i++) {
			const m = (await broker.call("memory.create", { scope: "public", owner_id: "bench", kind: "fact", key: `seed-${i}`, content: `seed content ${i}` }, { meta: { user } })) as { id: string };
			ids.push(m.id);
		}
		const pick = () => ids[Math.floor(Math.random() * ids.length)];
		await sleep(1_000); // let the relay drain the seed events before measuring

		const measure = async (name: string, call: () => Promise<unknown>): Promise<LoadResult> => {
			await closedLoop(call, CONCURRENCY, 1_000);
			const r = await closedLoop(call, CONCURRENCY, SECONDS * 1000);
			process.stdout.write(`${name}: ${formatNumber(r.perSecond)} ops/s p99 ${formatNumber(r.p99)} ms errors ${r.errors}\n`);
			return r;
		};
		let n = 0;
		const meshGet = await measure("memory.get over the mesh", () => broker.call("memory.get", { id: pick() }, { meta: { user } }));
		const rawGet = await measure("raw pg point select", () => pool.query("SELECT * FROM memories WHERE id = $1", [pick()]));
		// memory.get batches concurrent reads (lib/data/point-read-batcher.ts); the same batching over raw pg
		// shows how much of the difference is the batching and how much is the mesh.
		const rawBatcher = new PointReadBatcher<{ id: string }>({
			load: async keys => (await pool.query<{ id: string }>("SELECT * FROM memories WHERE id = ANY($1::uuid[])", [keys])).rows,
			keyOf: row => row.id,
		});
		const rawBatchedGet = await measure("raw pg, reads batched the same way", () => rawBatcher.get(pick()));
		const createParams = () => ({ scope: "personal", owner_id: "bench", kind: "event", key: `c-${n++}`, content: "a new memory" });
		// The raw variants write outbox rows as memory.create does, and ring the relay after their commit as a writing
		// node does (bench/lib/outbox-writer.ts): unrung, the relay would sit idle while they are measured.
		const relay = relayRinger(broker);
		const creates = await measureInTurns([
			{ name: "mesh", call: () => broker.call("memory.create", createParams(), { meta: { user } }) },
			{ name: "mesh keyed", call: () => broker.call("memory.create", createParams(), { meta: { user, idempotencyKey: randomUUID() } }) },
			{ name: "raw transaction", call: () => relay.after(rawCreateTransaction(pool, `r-${n++}`, null)) },
			{ name: "raw transaction keyed", call: () => relay.after(rawCreateTransaction(pool, `r-${n++}`, randomUUID())) },
			{ name: "raw one statement", call: () => {
				const id = randomUUID();
				const key = `r-${n++}`;
				return relay.after(pool.query(RAW_ONE_STATEMENT, [id, key, ...createEvents(id, key)]));
			} },
			{ name: "sequelize before", call: () => relay.after(sequelize.transaction(async t => {
				const key = `s-${n++}`;
				const created = await Memory.create({ scope: "personal", owner_id: "bench", owner_type: "user", kind: "event", key, content: "a new memory", content_sealed: null, key_id: null, indexed: false, confidential: false, version: 1 }, { transaction: t });
				await enqueueEvents(sequelize, t, eventSettings, eventRows(created.get("id") as string, key));
			})) },
			{ name: "sequelize one statement", call: () => {
				const id = randomUUID();
				const key = `s-${n++}`;
				return relay.after(sequelize.query(RAW_ONE_STATEMENT, { bind: [id, key, ...createEvents(id, key)], type: QueryTypes.SELECT }));
			} },
			{ name: "raw insert", call: () => pool.query("INSERT INTO memories (scope, owner_id, kind, key, content) VALUES ('personal', 'bench', 'event', $1, 'a new memory')", [`r-${n++}`]) },
		]);
		const create = (name: string) => creates.get(name)!;

		// Relay throughput: let it catch up, then queue 20,000 rows at once and time the drain.
		await waitForDrain(pool, 120_000);
		await pool.query(
			"INSERT INTO outbox (aggregate_type, aggregate_id, event_type, subject, payload) SELECT 'bench', g::text, 'bench.event', $1, jsonb_build_object('n', g) FROM generate_series(1, $2) g",
			[`${prefix}.memory.bench.public`, RELAY_ROWS],
		);
		// As a writing node would after its commit (lib/data/outbox/doorbell.ts): this process is one, with its own pg pool.
		relay.ring();
		const drainStart = performance.now();
		await waitForDrain(pool, 120_000);
		const relayPerSecond = RELAY_ROWS / ((performance.now() - drainStart) / 1000);
		process.stdout.write(`relay: ${formatNumber(relayPerSecond)} events/s\n`);

		// Lag: steady writes, commit → JetStream ack measured from the rows' own timestamps.
		const lagFrom = new Date();
		const paced = await fixedRate(
			() => broker.call("memory.create", { scope: "public", owner_id: "bench", kind: "event", key: `lag-${n++}`, content: "lag probe" }, { meta: { user } }),
			LAG_RATE,
			SECONDS * 1000,
		);
		await waitForDrain(pool, 30_000);
		const { rows } = await pool.query<{ ms: number }>(
			"SELECT extract(epoch FROM (published_at - created_at)) * 1000 AS ms FROM outbox WHERE created_at >= $1 AND event_type = 'memory.created' ORDER BY 1",
			[lagFrom],
		);
		const lags = rows.map(r => Number(r.ms));
		const lag = { p50: percentile(lags, 50), p99: percentile(lags, 99), count: lags.length };
		process.stdout.write(`lag: p50 ${formatNumber(lag.p50)} ms p99 ${formatNumber(lag.p99)} ms over ${lag.count} events (${paced.errors} errors)\n`);

		const ratio = (a: LoadResult, b: LoadResult) => (a.perSecond / b.perSecond).toFixed(2);
		const createRow = (label: string, name: string) => {
			const r = create(name);
			return [label, r.perSecond, r.rounds.map(formatNumber).join(" / "), r.p50, r.p99, r.errors];
		};
		const body = [
			`Run ${new Date().toISOString()} on ${machine()}; load average ${loadAtStart} at the start; PostgreSQL ${ADMIN_URL.replace(/\/\/[^@]*@/, "//")}, NATS ${NATS_URL}; ${SECONDS} s per measurement, ${CONCURRENCY} concurrent, pool of 10 on both sides.`,
			"",
			table(
				["operation", "ops/s", "p50 ms", "p99 ms", "errors"],
				[
					["memory.get over the mesh", meshGet.perSecond, meshGet.p50, meshGet.p99, meshGet.errors],
					["raw pg point select", rawGet.perSecond, rawGet.p50, rawGet.p99, rawGet.errors],
					["raw pg, point reads batched like memory.get (ANY($1) per event-loop turn)", rawBatchedGet.perSecond, rawBatchedGet.p50, rawBatchedGet.p99, rawBatchedGet.errors],
				],
			),
			"",
			`Writes: variants taking turns, median of ${ROUNDS} rounds of ${SECONDS} s, ${CONCURRENCY} concurrent; load average at the end ${loadAverage()}.`,
			"",
			table(
				["write", "ops/s (median)", "rounds", "p50 ms", "p99 ms", "errors"],
				[
					createRow("memory.create over the mesh (memory + 2 outbox rows, one statement)", "mesh"),
					createRow("memory.create over the mesh with an Idempotency-Key (+ key row, one statement)", "mesh keyed"),
					createRow("raw pg, the same transaction: BEGIN, memory, 2 outbox rows, COMMIT", "raw transaction"),
					createRow("raw pg, the same keyed transaction: BEGIN, claim key, memory, 2 outbox rows, key's response, COMMIT", "raw transaction keyed"),
					createRow("raw pg, the same rows in one statement (CTE)", "raw one statement"),
					createRow("no mesh: Sequelize as memory.create wrote before (managed transaction, model.create, outbox INSERT)", "sequelize before"),
					createRow("no mesh: Sequelize, the same rows in one statement (as memory.create writes now)", "sequelize one statement"),
					createRow("raw pg insert (memory row only)", "raw insert"),
				],
			),
			"",
			`- memory.get / raw select: **${ratio(meshGet, rawGet)}** (target ≥ 0.4); memory.get / raw pg batched the same way: **${ratio(meshGet, rawBatchedGet)}**`,
			`- memory.create / raw pg, the same transaction: **${ratio(create("mesh"), create("raw transaction"))}** (target ≥ 0.5); keyed / raw keyed: **${ratio(create("mesh keyed"), create("raw transaction keyed"))}**`,
			`- memory.create / raw pg, the same rows in one statement: **${ratio(create("mesh"), create("raw one statement"))}**; / bare insert: **${ratio(create("mesh"), create("raw insert"))}**`,
			`- relay throughput: **${formatNumber(relayPerSecond)} events/s** draining ${RELAY_ROWS.toLocaleString("en-US")} rows to JetStream (target ≥ 2,000)`,
			`- commit → JetStream ack at ${LAG_RATE} creates/s: p50 ${formatNumber(lag.p50)} ms, **p99 ${formatNumber(lag.p99)} ms** over ${lag.count} events (target ≤ 200 ms)`,
		].join("\n");
		writeSection("Memory and outbox (bench/memory)", body);
		process.stdout.write(`\n${body}\n`);
	} finally {
		await caller?.stop().catch(() => undefined);
		await sequelizeToClose?.close().catch(() => undefined);
		await stopProcesses();
		await pool.end();
		await (await nc.jetstreamManager()).streams.delete(stream).catch(() => undefined);
		await nc.close();
		await admin(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => undefined);
	}
}

async function waitForDrain(pool: Pool, timeoutMs: number): Promise<void> {
	const deadline = Date.now() + timeoutMs;
	while (Date.now() < deadline) {
		const { rows } = await pool.query<{ n: string }>("SELECT count(*) AS n FROM outbox WHERE status = 'pending'");
		if (Number(rows[0].n) === 0) return;
		await sleep(20);
	}
	throw new Error("the relay did not drain the outbox in time");
}

main().catch(async err => {
	process.stderr.write(`bench failed: ${(err as Error).stack}\n`);
	await stopProcesses();
	process.exit(1);
});
