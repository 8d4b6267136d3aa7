/**
 * The outbox relay with several batches in flight (OutboxRelay.runBatches), against real JetStream and a
 * PostgreSQL database of its own: every row is published once, in created_at order, and marked published;
 * a second call finds nothing; a batch that fails to publish leaves its rows pending without blocking the
 * others' marks; an idle relay polls with one EXISTS and claims again once a row is due, or at once when a
 * write rang (OutboxRelay.poll).
 */
import { ServiceBroker } from "moleculer";
import { connect, type NatsConnection } from "nats";
import { Sequelize } from "sequelize";
import { runMigrations } from "../../lib/data/migrations";
import { ensureStream, OutboxRelay } from "../../lib/data/outbox/relay";
import { loadSettings, type EventSettings } from "../../lib/runtime/settings";
import { uniqueNamespace } from "../helpers/cluster";
import { dropFreshDatabases, freshDatabase, query, streamFor, subjectPrefixFor } from "../helpers/databases";
import { describeWithNatsAndPostgres, LOCAL_NATS_URL } from "../helpers/requirements";

const BATCH = 100;
const ROWS = 1_050;

describeWithNatsAndPostgres("outbox relay: batches in flight", () => {
	const namespace = uniqueNamespace("pipeline");
	const prefix = subjectPrefixFor(namespace);
	const stream = streamFor(namespace);
	let databaseUrl: string;
	let nc: NatsConnection;
	let sequelize: Sequelize;
	let broker: ServiceBroker;
	let events: EventSettings;

	beforeAll(async () => {
		databaseUrl = await freshDatabase("pipeline");
		await runMigrations(databaseUrl, "up");
		nc = await connect({ servers: new URL(LOCAL_NATS_URL).host });
		sequelize = new Sequelize(databaseUrl, { logging: false, pool: { max: 6 } });
		events = loadSettings({ EVENTS_SUBJECT_PREFIX: prefix, NATS_STREAM_EVENTS: stream, LOG_LEVEL: "error" }).events;
		await ensureStream(nc, events, ["ops.>"]);
		broker = new ServiceBroker({ logger: false, metrics: false, transporter: null });
		await broker.start();
	});
	afterAll(async () => {
		await broker?.stop();
		await sequelize?.close();
		if (nc) {
			await (await nc.jetstreamManager()).streams.delete(stream).catch(() => undefined);
			await nc.close();
		}
		await dropFreshDatabases();
	});

	async function streamIds(): Promise<string[]> {
		const jsm = await nc.jetstreamManager();
		const info = await jsm.streams.info(stream);
		const ids: string[] = [];
		for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
			const msg = await jsm.streams.getMessage(stream, { seq }).catch(() => null);
			if (msg) ids.push(msg.header?.get("Nats-Msg-Id") ?? "");
		}
		return ids;
	}

	it("publishes every row once, in created_at order, and marks them all; a second call finds nothing", async () => {
		const rows = await query<{ id: string }>(
			databaseUrl,
			`INSERT INTO outbox (aggregate_type, aggregate_id, event_type, subject, payload, created_at)
			 SELECT 'test', 'p', 'test.pipeline', $1, jsonb_build_object('i', g), now() + g * interval '1 microsecond' FROM generate_series(1, $2) g RETURNING id`,
			[`${prefix}.ops.test.pipeline`, ROWS],
		);
		const relay = new OutboxRelay({ broker, sequelize, events, nats: nc, batchSize: BATCH });
		let handled = 0;
		let calls = 0;
		while (handled < ROWS) {
			const result = await relay.runBatches(4);
			expect(result.outage).toBeNull();
			handled += result.handled;
			calls++;
		}
		expect(handled).toBe(ROWS);
		// 1,050 rows in batches of 100, four in flight: three calls (400, 400, 250), not eleven.
		expect(calls).toBe(3);
		expect(await relay.runBatches(4)).toEqual({ handled: 0, outage: null });
		expect(await query(databaseUrl, "SELECT id FROM outbox WHERE status <> 'published'")).toEqual([]);
		expect(await streamIds()).toEqual(rows.map(r => r.id));
	}, 60_000);

	it("rows of a subject no stream captures stay pending with their attempt counted; the other rows are marked", async () => {
		await query(databaseUrl, "DELETE FROM outbox");
		await query(
			databaseUrl,
			`INSERT INTO outbox (aggregate_type, aggregate_id, event_type, subject, payload, created_at)
			 SELECT 'test', 'p', 'test.pipeline', CASE WHEN g % 50 = 0 THEN $2 ELSE $1 END, jsonb_build_object('i', g), now() + g * interval '1 microsecond' FROM generate_series(1, 300) g`,
			[`${prefix}.ops.test.pipeline`, `${prefix}.nowhere.pipeline`],
		);
		// A backoff longer than the test: a failed row is not claimed again by a later batch of the same call.
		const patient = { ...events, outboxBackoffMs: 60_000 };
		const relay = new OutboxRelay({ broker, sequelize, events: patient, nats: nc, batchSize: BATCH });
		expect(await relay.runBatches(4)).toEqual({ handled: 300, outage: null });
		const left = await query<{ attempts: number; last_error: string }>(databaseUrl, "SELECT attempts, last_error FROM outbox WHERE status = 'pending'");
		expect(left).toHaveLength(6);
		for (const row of left) expect(row).toMatchObject({ attempts: 1, last_error: expect.stringMatching(/no JetStream stream captures subject/) });
		expect(await query(databaseUrl, "SELECT id FROM outbox WHERE status = 'published'")).toHaveLength(294);
	}, 60_000);

	it("an idle relay asks with one statement, opens no transaction, and claims as soon as a row is due or a write rang", async () => {
		await query(databaseUrl, "DELETE FROM outbox");
		const statements: string[] = [];
		// Sequelize logs every statement it sends, BEGIN and COMMIT included, as "Executing (<transaction>): <sql>".
		const counted = new Sequelize(databaseUrl, { logging: (line: string) => void statements.push(line.replace(/^Executing \([^)]*\): /, "")), pool: { max: 2 } });
		try {
			const relay = new OutboxRelay({ broker, sequelize: counted, events, nats: nc, batchSize: BATCH });
			expect(await relay.poll(1)).toEqual({ handled: 0, outage: null });
			statements.length = 0;
			for (let i = 0; i < 5; i++) expect(await relay.poll(1)).toEqual({ handled: 0, outage: null });
			// one EXISTS per poll: no BEGIN / SET LOCAL / claim / COMMIT
			expect(statements).toHaveLength(5);
			for (const sql of statements) expect(sql).toMatch(/^SELECT EXISTS/);
			// a row in backoff is not due: still one statement per poll
			await query(databaseUrl, `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, subject, payload, next_attempt_at) VALUES ('test', 'later', 'test.pipeline', $1, '{}', now() + interval '1 hour')`, [`${prefix}.ops.test.pipeline`]);
			expect(await relay.hasDue()).toBe(false);
			const [due] = await query<{ id: string }>(databaseUrl, `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, subject, payload) VALUES ('test', 'now', 'test.pipeline', $1, '{}') RETURNING id`, [`${prefix}.ops.test.pipeline`]);
			expect(await relay.hasDue()).toBe(true);
			expect(await relay.poll(1)).toEqual({ handled: 1, outage: null });
			expect(await query(databaseUrl, "SELECT id FROM outbox WHERE status = 'published'")).toEqual([{ id: due.id }]);
			// a batch that was not full took everything due: the next call asks first
			statements.length = 0;
			expect(await relay.poll(1)).toEqual({ handled: 0, outage: null });
			expect(statements).toHaveLength(1);
			expect(statements[0]).toMatch(/^SELECT EXISTS/);
			// unless a write rang: then it claims without asking
			statements.length = 0;
			expect(await relay.poll(1, true)).toEqual({ handled: 0, outage: null });
			expect(statements[0]).not.toMatch(/EXISTS/);
			expect(statements.some(sql => /FOR UPDATE SKIP LOCKED/.test(sql))).toBe(true);
			// a full batch leaves more behind it: the next call claims without asking either
			const rows = Array.from({ length: BATCH + 1 }, (_, i) => `('test', 'full-${i}', 'test.pipeline', '${prefix}.ops.test.pipeline', '{}'::jsonb)`);
			await query(databaseUrl, `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, subject, payload) VALUES ${rows.join(", ")}`);
			expect(await relay.poll(1)).toEqual({ handled: BATCH, outage: null });
			statements.length = 0;
			expect(await relay.poll(1)).toEqual({ handled: 1, outage: null });
			expect(statements.some(sql => /EXISTS/.test(sql))).toBe(false);
		} finally {
			await counted.close();
		}
	}, 60_000);
});
