/**
 * The event stream as a dependency (issue #13): against a test-owned nats-server started WITHOUT
 * JetStream, the node says so — /health is "degraded" with the reason and the fix, one WARN line per
 * state change (not one per second), the outbox backlog shows on /metrics, and the pending event keeps
 * its attempts (an outage is not the event's fault, so no DLQ). When the same server comes back with
 * -js, the relay resumes by itself, publishes the event and says so once.
 */
import fs from "fs";
import os from "os";
import path from "path";
import { getJson, startNodeProcess, stopAll, uniqueNamespace, waitFor, type NodeProcess } from "../helpers/cluster";
import { dropFreshDatabases, freshDatabase, isolatedMeshEnv, query, subjectPrefixFor } from "../helpers/databases";
import { natsServerInstalled, startNatsServer, type TestNatsServer } from "../helpers/nats-server";
import { describeWithNatsAndPostgres } from "../helpers/requirements";

const JWT_SECRET = "event-stream-secret-0123456789abcdef";
const PAUSED_LINE = "Event stream unavailable";
const RESUMED_LINE = "Event stream available again";

function metric(text: string, name: string): number | undefined {
	const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, "m").exec(text);
	return m ? Number(m[1]) : undefined;
}

describeWithNatsAndPostgres("event stream missing: JetStream off on the NATS server", () => {
	const namespace = uniqueNamespace("nojs");
	let nats: TestNatsServer;
	let node: NodeProcess;
	let databaseUrl: string;
	let storeDir: string;

	beforeAll(async () => {
		if (!natsServerInstalled) throw new Error("nats-server binary not found (Debian package nats-server)");
		nats = await startNatsServer();
		databaseUrl = await freshDatabase("nojs");
		storeDir = fs.mkdtempSync(path.join(os.tmpdir(), "nojs-"));
		node = await startNodeProcess({ ...isolatedMeshEnv(namespace, databaseUrl, JWT_SECRET), NATS_URL: nats.url, NODE_ID: "nojs", SERVICES: "api,outbox", LEASE_TTL_MS: "2000" });
	});
	afterAll(async () => {
		await stopAll([node]);
		await nats?.stop();
		await dropFreshDatabases();
		if (storeDir) fs.rmSync(storeDir, { recursive: true, force: true });
	});

	it("reports degraded health with the reason, logs once, shows the backlog on /metrics and keeps the event pending", async () => {
		const health = await waitFor("health to report the event stream down", async () => {
			const answer = await getJson(`${node.url}/health`).catch(() => null);
			return answer?.body?.dependencies?.event_stream?.status === "down" && answer;
		});
		expect(health.status).toBe(200);
		expect(health.body.status).toBe("degraded");
		expect(health.body.dependencies.event_stream).toMatchObject({ required: false, error: expect.stringMatching(/JetStream is not enabled.*-js/) });
		expect(health.body.dependencies.nats.status).toBe("up");

		const [row] = await query<{ id: string }>(
			databaseUrl,
			"INSERT INTO outbox (aggregate_type, aggregate_id, event_type, subject, payload) VALUES ('test', 'x', 'memory.created', $1, '{}') RETURNING id",
			[`${subjectPrefixFor(namespace)}.memory.created.public`],
		);
		const text = await waitFor("the backlog on /metrics", async () => {
			const body = await (await fetch(`${node.url}/metrics`)).text();
			return (metric(body, "outbox_pending") ?? 0) >= 1 && (metric(body, "outbox_lag_seconds") ?? 0) > 0 && body;
		}, 15_000);
		expect(metric(text, "outbox_relay_paused")).toBe(1);
		expect(text).toMatch(/^service_health\{[^}]*dependency="event_stream"\} 0$/m);

		// Several retry periods pass: still exactly one line, naming the fix.
		await new Promise(resolve => setTimeout(resolve, 4_000));
		const paused = node.logs.filter(line => line.includes(PAUSED_LINE));
		expect(paused).toHaveLength(1);
		expect(paused[0]).toMatch(/start nats-server with -js/);
		expect(node.logs.filter(line => /Outbox relay batch failed/.test(line))).toEqual([]);
		const [kept] = await query<{ status: string; attempts: number }>(databaseUrl, "SELECT status, attempts FROM outbox WHERE id = $1", [row.id]);
		expect(kept).toEqual({ status: "pending", attempts: 0 });
		expect(await query(databaseUrl, "SELECT id FROM outbox_dlq")).toEqual([]);
	});

	it("resumes by itself when the server comes back with JetStream, publishes the event and logs once", async () => {
		await nats.stop();
		await nats.start(["-js", "-sd", storeDir]);
		await waitFor("the pending event to be published", async () => (await query<{ n: string }>(databaseUrl, "SELECT count(*) AS n FROM outbox WHERE status = 'pending'"))[0].n === "0", 45_000, 250);
		const health = await waitFor("health to be healthy again", async () => {
			const answer = await getJson(`${node.url}/health`);
			return answer.body.status === "healthy" && answer;
		}, 15_000);
		expect(health.body.dependencies.event_stream).toEqual({ status: "up", required: false });
		expect(node.logs.filter(line => line.includes(RESUMED_LINE))).toHaveLength(1);
		expect(node.logs.filter(line => line.includes(PAUSED_LINE)).length).toBeLessThanOrEqual(2); // the restart itself may be seen as a disconnect
		const text = await waitFor("the paused gauge back to 0", async () => {
			const body = await (await fetch(`${node.url}/metrics`)).text();
			return metric(body, "outbox_relay_paused") === 0 && body;
		}, 10_000);
		expect(metric(text, "outbox_pending")).toBe(0);
	});

	it("stops promptly on SIGTERM while paused (a backoff never holds up a graceful stop)", async () => {
		await nats.stop();
		await nats.start(); // again without -js
		await waitFor("the pause to be reported", async () => (await getJson(`${node.url}/health`).catch(() => null))?.body?.dependencies?.event_stream?.status === "down", 20_000, 250);
		await new Promise(resolve => setTimeout(resolve, 3_000)); // into the longer backoff steps
		const began = Date.now();
		expect(await node.kill("SIGTERM")).toBe(0);
		expect(Date.now() - began).toBeLessThan(5_000);
	});
});
