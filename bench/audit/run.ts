/**
 * `npm run bench:audit`: the audit trail's cost, against a plain INSERT in the same run.
 *   append   — 30,000 events through AuditWriter.append in batches of 500 (fenced, deduplicated,
 *              hash-chained, append-only trigger, unique indexes) vs a plain multi-row INSERT of the
 *              same rows into a table of the same columns without trigger or indexes: events/s, ratio.
 *   relay    — the outbox relay alone (in this process, a broker without transporter, a real NATS
 *              connection): 20,000 rows drained to JetStream one batch at a time (depth 1, the baseline)
 *              and with 4 batches in flight (OutboxRelay.runBatches, what outbox.service runs), alternated.
 *   pipeline — 20,000 audit events committed to the outbox at once, drained by a real node (outbox
 *              relay → JetStream → audit writer) until all are in audit_log: events/s sustained.
 *   lag      — one source transaction per event at a steady 300 events/s: source commit (outbox
 *              created_at) → audit_log row (recorded_at), p50/p99.
 * A database of its own on the local PostgreSQL; every process and the stream are removed at the end.
 */
import os from "os";
import { connect } from "nats";
import { Pool } from "pg";
import { ServiceBroker } from "moleculer";
import { Sequelize } from "sequelize";
import { ensureStream, OutboxRelay } from "../../lib/data/outbox/relay";
import { loadSettings } from "../../lib/runtime/settings";
import { AuditWriter, columnarInsert, type IncomingAuditEvent } from "../../lib/data/audit-writer";
import type { AuditEntry } from "../../lib/data/audit-chain";
import { joinMeshAsOutboxWriter } from "../lib/outbox-writer";
import { fixedRate, formatNumber, machine, percentile, startProcess, stopProcesses, table, writeSection, adminQuery, migratedBenchDatabase } from "../lib/harness";

const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const APPEND_EVENTS = 30_000;
const BATCH = 500;
const PIPELINE_EVENTS = 20_000;
const RELAY_EVENTS = 20_000;
const RELAY_DEPTH = 4;
const LAG_RATE = 300;
const LAG_SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const id = `${process.pid}`;
const namespace = `bench-audit-${id}`;
const prefix = `benchaudit${id}`;
const stream = `BENCH_AUDIT_${id}`;
const dbName = `bench_audit_${id}`;
const sleep = (ms: number) => new Promise(r => setTimeout(r, ms));
/** 1-minute load average now: every number is printed next to the load it was measured under. */
const loadNow = () => os.loadavg()[0].toFixed(1);


function event(i: number, tag: string): IncomingAuditEvent {
	return {
		event_id: `${tag}-${i}`,
		type: "audit.bench.write",
		payload: { actor: `user-${i % 100}`, request_id: `req-${i}`, target: `memory-${i}`, outcome: "success", node: "bench", occurred_at: new Date().toISOString(), details: { scope: "personal", version: 1 } },
	};
}

async function plainInsert(pool: Pool, entries: AuditEntry[]): Promise<void> {
	const { sql, bind } = columnarInsert("audit_plain", entries);
	await pool.query(sql, bind);
}

async function countRows(pool: Pool, sql: string, params: unknown[] = []): Promise<number> {
	return Number((await pool.query<{ n: string }>(sql, params)).rows[0].n);
}

/**
 * Drains `RELAY_EVENTS` outbox rows on a subject outside audit.> (the node started later must not
 * consume them) with `depth` batches in flight; events/s from the first claim to the last mark.
 */
async function relayRate(pool: Pool, relay: OutboxRelay, subject: string, depth: number): Promise<number> {
	await pool.query("DELETE FROM outbox");
	await pool.query(
		`INSERT INTO outbox (aggregate_type, aggregate_id, event_type, subject, payload)
		 SELECT 'bench', 'relay', 'bench.relay', $1, jsonb_build_object('actor', 'bench', 'target', 't-' || g, 'outcome', 'success') FROM generate_series(1, $2) g`,
		[subject, RELAY_EVENTS],
	);
	const start = performance.now();
	let handled = 0;
	while (handled < RELAY_EVENTS) {
		const result = await relay.runBatches(depth);
		if (result.outage) throw new Error(`relay stage: ${result.outage.reason}`);
		handled += result.handled;
	}
	return (RELAY_EVENTS / (performance.now() - start)) * 1000;
}

async function main(): Promise<void> {
	const url = await migratedBenchDatabase(dbName);
	const pool = new Pool({ connectionString: url, max: 10 });
	const nc = await connect({ servers: new URL(NATS_URL).host });
	const sequelize = new Sequelize(url, { logging: false, pool: { max: 5 } });
	try {
		// 1. Append with the chain vs plain INSERT of the same rows.
		await pool.query("INSERT INTO leader_leases (name, holder, fencing_token, acquired_at, renewed_at, expires_at) VALUES ('bench:audit-writer', 'bench', 1, now(), now(), now() + interval '1 hour')");
		await pool.query("CREATE TABLE audit_plain (LIKE audit_log)");
		const writer = new AuditWriter(sequelize, { lease: "bench:audit-writer", holder: "bench", fencingToken: () => 1 });
		const appended: AuditEntry[] = [];
		const chainStart = performance.now();
		for (let i = 0; i < APPEND_EVENTS; i += BATCH) {
			const result = await writer.append(Array.from({ length: BATCH }, (_, k) => event(i + k, "append")));
			appended.push(...result.appended);
		}
		const chainMs = performance.now() - chainStart;
		const plainStart = performance.now();
		for (let i = 0; i < appended.length; i += BATCH) await plainInsert(pool, appended.slice(i, i + BATCH));
		const plainMs = performance.now() - plainStart;
		const chainRate = (APPEND_EVENTS / chainMs) * 1000;
		const plainRate = (APPEND_EVENTS / plainMs) * 1000;
		const appendLoad = loadNow();
		process.stdout.write(`append: chain ${formatNumber(chainRate)} events/s, plain INSERT ${formatNumber(plainRate)} events/s (load ${appendLoad})\n`);

		// 2. The relay alone, one batch at a time vs pipelined, alternated so that load changes hit both.
		const events = loadSettings({ EVENTS_SUBJECT_PREFIX: prefix, NATS_STREAM_EVENTS: stream, LOG_LEVEL: "error" }).events;
		await ensureStream(nc, events, ["audit.>", "ops.>"]);
		const relayBroker = new ServiceBroker({ logger: false, metrics: false, transporter: null });
		await relayBroker.start();
		const relay = new OutboxRelay({ broker: relayBroker, sequelize, events, nats: nc, batchSize: BATCH });
		const relayRuns: Record<number, number[]> = { 1: [], [RELAY_DEPTH]: [] };
		for (let round = 0; round < 2; round++) {
			for (const depth of [1, RELAY_DEPTH]) relayRuns[depth].push(await relayRate(pool, relay, `${prefix}.ops.bench.relay`, depth));
		}
		await relayBroker.stop();
		await pool.query("DELETE FROM outbox");
		const relaySerial = Math.max(...relayRuns[1]);
		const relayPipelined = Math.max(...relayRuns[RELAY_DEPTH]);
		const relayLoad = loadNow();
		process.stdout.write(`relay: depth 1 ${relayRuns[1].map(formatNumber).join(", ")} events/s; depth ${RELAY_DEPTH} ${relayRuns[RELAY_DEPTH].map(formatNumber).join(", ")} events/s (load ${relayLoad})\n`);

		// 3 and 4 run through a real node: outbox relay → JetStream → audit writer.
		const env = { MESH_NAMESPACE: namespace, NATS_URL, DATABASE_URL: url, JWT_SECRET: "bench-secret-0123456789abcdef0123456789", EVENTS_SUBJECT_PREFIX: prefix, NATS_STREAM_EVENTS: stream, LOG_LEVEL: "info", MIGRATE_ON_START: "0", PORT: "0" };
		await startProcess("scripts/run-node.ts", { ...env, NODE_ID: "bench-audit", NODE_ROLE: "node1", SERVICES: "audit,outbox" }, "Service 'audit' started");
		await sleep(1_000);
		const outboxWriter = await joinMeshAsOutboxWriter(env);
		const INSERT_OUTBOX = `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, subject, payload)
			SELECT 'audit', 'bench', 'audit.bench.pipeline', $1, jsonb_build_object('actor', 'bench', 'target', 't-' || g, 'outcome', 'success', 'node', 'bench', 'occurred_at', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
			FROM generate_series(1, $2) g`;
		const pipelineStart = performance.now();
		await pool.query(INSERT_OUTBOX, [`${prefix}.audit.bench.pipeline`, PIPELINE_EVENTS]);
		outboxWriter.ring();
		// When the outbox has no pending row left, the relay stage is done; the writer may still be behind.
		let relayMs = 0;
		for (;;) {
			if (!relayMs && (await countRows(pool, "SELECT count(*) AS n FROM outbox WHERE status = 'pending'")) === 0) relayMs = performance.now() - pipelineStart;
			if ((await countRows(pool, "SELECT count(*) AS n FROM audit_log WHERE action = 'pipeline'")) >= PIPELINE_EVENTS) break;
			await sleep(50);
		}
		const pipelineRate = (PIPELINE_EVENTS / (performance.now() - pipelineStart)) * 1000;
		const pipelineRelayRate = (PIPELINE_EVENTS / (relayMs || performance.now() - pipelineStart)) * 1000;
		const pipelineLoad = loadNow();
		process.stdout.write(`pipeline: ${formatNumber(pipelineRate)} events/s end to end; its relay stage ${formatNumber(pipelineRelayRate)} events/s (load ${pipelineLoad})\n`);

		const lagFrom = new Date();
		const paced = await fixedRate(
			() =>
				outboxWriter.after(
					pool.query(
						`INSERT INTO outbox (aggregate_type, aggregate_id, event_type, subject, payload) VALUES ('audit', 'bench', 'audit.bench.lag', $1,
						 jsonb_build_object('actor', 'bench', 'outcome', 'success', 'node', 'bench', 'occurred_at', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')))`,
						[`${prefix}.audit.bench.lag`],
					),
				),
			LAG_RATE,
			LAG_SECONDS * 1000,
		);
		const expected = Math.floor(LAG_RATE * LAG_SECONDS) - paced.errors;
		while ((await countRows(pool, "SELECT count(*) AS n FROM audit_log WHERE action = 'lag'")) < expected) await sleep(100);
		const { rows } = await pool.query<{ ms: string }>(
			`SELECT extract(epoch FROM (a.recorded_at - o.created_at)) * 1000 AS ms FROM audit_log a JOIN outbox o ON o.id::text = a.event_id
			 WHERE a.action = 'lag' AND o.created_at >= $1 ORDER BY 1`,
			[lagFrom],
		);
		const lags = rows.map(r => Number(r.ms));
		const lag = { p50: percentile(lags, 50), p99: percentile(lags, 99), count: lags.length };
		const lagLoad = loadNow();
		process.stdout.write(`lag: p50 ${formatNumber(lag.p50)} ms p99 ${formatNumber(lag.p99)} ms over ${lag.count} events (load ${lagLoad})\n`);
		await outboxWriter.stop();
		const verify = await countRows(pool, "SELECT count(*) AS n FROM audit_log");
		// Full batches mean the writer is the bottleneck; smaller ones mean it waited for the relay.
		const batches = await countRows(pool, "SELECT count(DISTINCT recorded_at) AS n FROM audit_log WHERE action = 'pipeline'");
		process.stdout.write(`pipeline batches: ${batches} (average ${formatNumber(PIPELINE_EVENTS / batches)} events)\n`);

		const body = [
			`Machine: ${machine()}; ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC; local PostgreSQL and NATS (JetStream); load average at the end ${os.loadavg().map(l => l.toFixed(1)).join(" / ")} (other work shared the 2 cores).`,
			"",
			table(
				["what", "events/s", "note"],
				[
					["append to audit_log (AuditWriter: lease lock, dedupe, sha256 chain, trigger, unique indexes), batches of 500", chainRate, `${APPEND_EVENTS} events; load ${appendLoad}`],
					["plain INSERT of the same rows (same columnar statement) (no trigger, no index), batches of 500", plainRate, `same run; load ${appendLoad}`],
					["outbox relay → JetStream alone, one batch of 500 at a time (baseline)", relaySerial, `best of 2, ${RELAY_EVENTS} events each; load ${relayLoad}`],
					[`outbox relay → JetStream alone, ${RELAY_DEPTH} batches in flight (as outbox.service runs it)`, relayPipelined, `best of 2, alternated with the baseline; load ${relayLoad}`],
					["outbox → relay → JetStream → writer → audit_log, 20,000 events committed at once", pipelineRate, `sustained, end to end; load ${pipelineLoad}`],
				],
			),
			"",
			`- chain / plain ratio: **${formatNumber(chainRate / plainRate)}** (the chain costs ${formatNumber(plainRate / chainRate)}× a plain INSERT); target ≥ 3,000 events/s end to end: ${pipelineRate >= 3_000 ? "met" : "**not met**"}`,
			`- relay pipelined / one batch at a time: **${formatNumber(relayPipelined / relaySerial)}×** (runs: depth 1 ${relayRuns[1].map(formatNumber).join(", ")}; depth ${RELAY_DEPTH} ${relayRuns[RELAY_DEPTH].map(formatNumber).join(", ")} events/s)`,
			`- source commit → audit_log row at ${LAG_RATE} events/s (one transaction per event, ${LAG_SECONDS} s): p50 ${formatNumber(lag.p50)} ms, **p99 ${formatNumber(lag.p99)} ms** over ${lag.count} events (target ≤ 500 ms; load ${lagLoad})`,
			`- pipeline: the relay stage emptied the outbox at ${formatNumber(pipelineRelayRate)} events/s, the writer finished at ${formatNumber(pipelineRate)} events/s; its batches averaged ${formatNumber(PIPELINE_EVENTS / batches)} events of at most 500 (${batches} batches)`,
			`- ${verify} rows in the chain at the end of the run`,
		].join("\n");
		writeSection("Audit trail (bench/audit)", body);
	} finally {
		await stopProcesses();
		await (await nc.jetstreamManager()).streams.delete(stream).catch(() => undefined);
		await nc.close();
		await sequelize.close();
		await pool.end();
		await adminQuery(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`);
	}
}

main().catch(err => {
	process.stderr.write(`bench:audit failed: ${(err as Error).stack}\n`);
	process.exit(1);
});
