/**
 * The outbox relay with real processes, real NATS JetStream and real PostgreSQL (a database of its
 * own): a relay killed between publish and mark publishes again after restart, the stream keeps one
 * copy (message-id dedup) and an idempotent consumer acts once; an event no stream accepts is retried
 * with backoff and lands in the DLQ with an ops alert.
 */
import { ServiceBroker, type Context } from "moleculer";
import { connect, type NatsConnection } from "nats";
import { Client } from "pg";
import { Sequelize } from "sequelize";
import { signToken } from "../../lib/http/auth";
import { handleOnce } from "../../lib/data/outbox/idempotent-consumer";
import { loadSettings } from "../../lib/runtime/settings";
import { createBrokerOptions } from "../../moleculer.config";
import { getJson, startNodeProcess, stopAll, uniqueNamespace, waitFor, waitForMesh, type NodeProcess } from "../helpers/cluster";
import { dropFreshDatabases, freshDatabase, isolatedMeshEnv, query, streamFor, subjectPrefixFor } from "../helpers/databases";
import { describeWithNatsAndPostgres, LOCAL_NATS_URL } from "../helpers/requirements";

const JWT_SECRET = "integration-secret-0123456789abcdef";

describeWithNatsAndPostgres("outbox relay: crash between publish and mark, dedup, idempotent consumer, DLQ", () => {
	const namespace = uniqueNamespace("outbox");
	const prefix = subjectPrefixFor(namespace);
	const stream = streamFor(namespace);
	let databaseUrl: string;
	let env: Record<string, string>;
	let writer: NodeProcess;
	let relay: NodeProcess;
	let nc: NatsConnection;
	let listener: ServiceBroker;
	let sequelize: Sequelize;
	const received: string[] = [];
	const alerts: Array<{ outbox_id: string; attempts: number }> = [];
	let processed = 0;

	beforeAll(async () => {
		databaseUrl = await freshDatabase("outboxtest");
		env = {
			...isolatedMeshEnv(namespace, databaseUrl, JWT_SECRET),
			OUTBOX_MAX_ATTEMPTS: "3",
			OUTBOX_BACKOFF_MS: "200",
			LEASE_TTL_MS: "2000",
		};
		writer = await startNodeProcess({ ...env, NODE_ID: "writer", SERVICES: "api,memory" });
		await waitForMesh(writer, ["memory"], 1, 40_000, "/api/memory/memories");
		// The writer's own start-up audit events (config loaded, probes without a token) are in the outbox
		// already: settle them, so that the crashing relay's first batch is the memory write under test.
		await new Promise(r => setTimeout(r, 500));
		await query(databaseUrl, "UPDATE outbox SET status = 'published', published_at = now() WHERE status = 'pending'");
		nc = await connect({ servers: new URL(LOCAL_NATS_URL).host });
		sequelize = new Sequelize(databaseUrl, { logging: false });

		// An in-mesh consumer of memory.created that must act once per event, however often it arrives.
		const settings = loadSettings({ MESH_NAMESPACE: namespace, NODE_ID: "listener", NATS_URL: LOCAL_NATS_URL, LOG_LEVEL: "error" });
		listener = new ServiceBroker(createBrokerOptions(settings, { kind: "nats", transporter: { type: "NATS", options: { servers: [new URL(LOCAL_NATS_URL).host] } }, reason: "test" }));
		listener.createService({
			name: "listener",
			events: {
				async "memory.created"(ctx: Context<{ id: string }>) {
					received.push(ctx.params.id);
					if (await handleOnce(sequelize, "test-listener", ctx.params.id, async () => undefined)) processed++;
				},
				"ops.alert.warning"(ctx: Context<{ outbox_id: string; attempts: number }>) {
					alerts.push(ctx.params);
				},
			},
		});
		await listener.start();
	});
	afterAll(async () => {
		await stopAll([writer, relay]);
		await listener?.stop();
		await sequelize?.close();
		if (nc) {
			await (await nc.jetstreamManager()).streams.delete(stream).catch(() => undefined);
			await nc.close();
		}
		await dropFreshDatabases();
	});

	/** Every message in the stream; the nodes' own audit events (config loaded, probes without a token) are there too. */
	async function streamMessages(): Promise<Array<{ subject: string; msgId: string }>> {
		const jsm = await nc.jetstreamManager();
		const info = await jsm.streams.info(stream).catch(() => null);
		const out: Array<{ subject: string; msgId: string }> = [];
		for (let seq = 1; info && seq <= info.state.last_seq; seq++) {
			const msg = await jsm.streams.getMessage(stream, { seq }).catch(() => null);
			if (msg) out.push({ subject: msg.subject, msgId: msg.header?.get("Nats-Msg-Id") ?? "" });
		}
		return out;
	}

	it("a relay killed after publishing and before marking publishes again; the stream holds each event once and the consumer acts once", async () => {
		const token = signToken(JWT_SECRET, { id: "u1", roles: [], teams: [] });
		const created = await getJson(`${writer.url}/api/memory/memories`, {
			method: "POST",
			headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
			body: JSON.stringify({ scope: "public", owner_id: "u1", kind: "event", key: "relay-crash", content: "published twice, stored once" }),
		});
		expect(created.status).toBe(200);
		const outboxIds = (await query<{ id: string }>(databaseUrl, "SELECT id FROM outbox WHERE aggregate_id = $1 ORDER BY event_type", [created.body.id])).map(r => r.id);
		expect(outboxIds).toHaveLength(2);

		// No hook in the relay: a SHARE lock lets it claim the rows (FOR UPDATE) and publish them, and
		// makes its UPDATE … published wait, so killing it then is a crash between publish and mark.
		const lock = new Client({ connectionString: databaseUrl });
		await lock.connect();
		try {
			await lock.query("BEGIN");
			await lock.query("LOCK TABLE outbox IN SHARE MODE");
			relay = await startNodeProcess({ ...env, NODE_ID: "relay", NODE_ROLE: "node1", SERVICES: "outbox" });
			await waitFor("JetStream to hold the batch", async () => (await streamMessages()).length === outboxIds.length, 30_000);
			await waitFor(
				"the relay to wait on its UPDATE",
				async () => (await lock.query("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE outbox SET status%'")).rows.length > 0,
				10_000,
			);
			await relay.kill("SIGKILL");
		} finally {
			await lock.query("ROLLBACK").catch(() => undefined);
			await lock.end();
		}
		expect(relay.child.signalCode).toBe("SIGKILL");
		expect((await query<{ status: string }>(databaseUrl, "SELECT status FROM outbox WHERE id = ANY($1)", [outboxIds])).map(r => r.status)).toEqual(["pending", "pending"]);
		expect((await streamMessages()).map(m => m.msgId).filter(id => outboxIds.includes(id)).sort()).toEqual([...outboxIds].sort());

		relay = await startNodeProcess({ ...env, NODE_ID: "relay", NODE_ROLE: "node1", SERVICES: "outbox" });
		await waitFor(
			"the restarted relay to mark both rows published",
			async () => (await query<{ status: string }>(databaseUrl, "SELECT status FROM outbox WHERE id = ANY($1)", [outboxIds])).every(r => r.status === "published"),
			30_000,
		);
		await waitFor("the listener to hear memory.created", async () => received.some(id => outboxIds.includes(id)), 10_000);
		// Published twice (before the crash and after), kept once by the stream's duplicate window.
		expect((await streamMessages()).map(m => m.msgId).filter(id => outboxIds.includes(id)).sort()).toEqual([...outboxIds].sort());
		expect(processed).toBe(1);
		expect(received.length).toBeGreaterThanOrEqual(1);
		expect(await query(databaseUrl, "SELECT event_id FROM processed_events WHERE consumer = 'test-listener'")).toHaveLength(1);
	});

	it("an event no stream accepts is retried with growing backoff, then moved to the DLQ with an ops alert", async () => {
		// Consumers outside the mesh see the alert as a plain NATS subject too.
		type Alert = { outbox_id: string; severity: string; attempts: number; subject: string };
		const natsAlerts: Alert[] = [];
		const alertSub = nc.subscribe(`${prefix}.ops.alert.>`, { callback: (_err, m) => natsAlerts.push({ ...m.json<Alert>(), subject: m.subject }) });
		const [row] = await query<{ id: string; created_at: Date }>(
			databaseUrl,
			"INSERT INTO outbox (aggregate_type, aggregate_id, event_type, subject, payload) VALUES ('test', 'x', 'test.unroutable', $1, '{}') RETURNING id, created_at",
			[`${prefix}.nowhere.unroutable`],
		);
		const dead = await waitFor(
			"the row to reach the DLQ",
			async () => (await query<{ attempts: number; last_error: string; failed_at: Date; created_at: Date }>(databaseUrl, "SELECT * FROM outbox_dlq WHERE id = $1", [row.id]))[0],
			20_000,
		);
		expect(dead.attempts).toBe(3);
		expect(dead.last_error).toMatch(/no JetStream stream captures subject/);
		// Backoff 200 ms then 400 ms: at least 0.6 s between the first attempt and the last, loosely bounded above.
		const spanMs = dead.failed_at.getTime() - dead.created_at.getTime();
		expect(spanMs).toBeGreaterThanOrEqual(550);
		expect(spanMs).toBeLessThan(10_000);
		expect(await query(databaseUrl, "SELECT id FROM outbox WHERE id = $1", [row.id])).toHaveLength(0);
		await waitFor("the ops alert", async () => alerts.some(a => a.outbox_id === row.id), 5_000);
		expect(alerts.find(a => a.outbox_id === row.id)?.attempts).toBe(3);
		await waitFor("the alert on NATS ops.alert.warning", async () => natsAlerts.some(a => a.outbox_id === row.id), 5_000);
		expect(natsAlerts.find(a => a.outbox_id === row.id)).toMatchObject({ severity: "warning", attempts: 3, subject: `${prefix}.ops.alert.warning` });
		alertSub.unsubscribe();

		const admin = { authorization: `Bearer ${signToken(JWT_SECRET, { id: "op", roles: ["admin"], teams: [] })}` };
		const status = await waitFor("the gateway to route /api/outbox/status", async () => {
			const answer = await getJson(`${writer.url}/api/outbox/status`, { headers: admin });
			return answer.status === 200 && answer;
		});
		expect(status.body).toMatchObject({ dead: 1, mode: "jetstream", leader: true, node: "relay" });

		// The operator fixes the cause (the stream now captures the subject) and re-drives the event.
		const jsm = await nc.jetstreamManager();
		const info = await jsm.streams.info(stream);
		await jsm.streams.update(stream, { ...info.config, subjects: [...(info.config.subjects ?? []), `${prefix}.nowhere.>`] });
		const redrive = await getJson(`${writer.url}/api/outbox/dlq/${row.id}/redrive`, { method: "POST", headers: admin });
		expect(redrive.body).toEqual({ id: row.id, status: "pending" });
		await waitFor("the re-driven event to be published", async () => (await query<{ status: string }>(databaseUrl, "SELECT status FROM outbox WHERE id = $1", [row.id]))[0]?.status === "published", 10_000);
		expect((await streamMessages()).some(m => m.msgId === row.id)).toBe(true);
		expect((await getJson(`${writer.url}/api/outbox/dlq/${row.id}/redrive`, { method: "POST", headers: admin })).status).toBe(404);
	});
});
