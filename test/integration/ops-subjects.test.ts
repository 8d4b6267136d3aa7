/**
 * The seed's operations subjects as a NATS client outside the mesh sees them (real NATS, a PostgreSQL
 * owned by this test, real node processes):
 *  - `ops.alert.critical` when a node is SIGKILLed (the node-registry leader notices it leave);
 *  - `ops.health.database` when PostgreSQL goes down (status down, previous up) and again when it is
 *    back (up, previous down) — one message per change, not one per heartbeat.
 * `ops.alert.warning` (an event moved to the DLQ) is checked in outbox.test.ts.
 */
import fs from "fs";
import os from "os";
import path from "path";
import { connect, type NatsConnection, type Subscription } from "nats";
import { freePort, startNodeProcess, startPgServer, stopAll, uniqueNamespace, waitFor, waitForMesh, type NodeProcess } from "../helpers/cluster";
import { isolatedMeshEnv, streamFor, subjectPrefixFor } from "../helpers/databases";
import { describeWithNats, LOCAL_NATS_URL } from "../helpers/requirements";

const JWT_SECRET = "ops-subjects-secret-0123456789abcdef";

interface OpsMessage {
	subject: string;
	from?: string;
	node_id?: string;
	dependency?: string;
	status?: string;
	previous?: string | null;
	source?: string;
	message?: string;
	event?: string;
}

describeWithNats("ops.health.{service} and ops.alert.{severity} on NATS", () => {
	const namespace = uniqueNamespace("ops");
	const prefix = subjectPrefixFor(namespace);
	const dir = fs.mkdtempSync(path.join(os.tmpdir(), "daarion-ops-pg-"));
	let pgPort: number;
	let pg: Awaited<ReturnType<typeof startPgServer>>;
	let env: Record<string, string>;
	let registry: NodeProcess;
	let victim: NodeProcess;
	let nc: NatsConnection;
	let subs: Subscription[] = [];
	const seen: OpsMessage[] = [];

	beforeAll(async () => {
		pgPort = await freePort();
		pg = await startPgServer(dir, pgPort);
		nc = await connect({ servers: new URL(LOCAL_NATS_URL).host });
		const record = (subject: string) => nc.subscribe(subject, { callback: (_err, m) => seen.push({ ...m.json<OpsMessage>(), subject: m.subject.slice(prefix.length + 1) }) });
		subs = [record(`${prefix}.ops.>`), record(`${prefix}.node.*.events`)];
		env = { ...isolatedMeshEnv(namespace, pg.url, JWT_SECRET), LEASE_TTL_MS: "2000", NODE_HEARTBEAT_MS: "300", MIGRATE_ON_START: "1" };
		registry = await startNodeProcess({ ...env, NODE_ID: "ops-registry", NODE_ROLE: "node1", SERVICES: "api,node-registry" });
		victim = await startNodeProcess({ ...env, NODE_ID: "ops-victim", NODE_ROLE: "node2", SERVICES: "mesh" });
		await waitForMesh(registry, ["node-registry", "mesh"], 2, 40_000);
	}, 90_000);
	afterAll(async () => {
		for (const sub of subs) sub.unsubscribe();
		await stopAll([registry, victim]);
		if (nc) {
			await (await nc.jetstreamManager()).streams.delete(streamFor(namespace)).catch(() => undefined);
			await nc.close();
		}
		await pg?.stop();
		fs.rmSync(dir, { recursive: true, force: true });
	});

	it("a SIGKILLed node raises ops.alert.critical naming it", async () => {
		// The registry's leader records the join first; only a recorded member can be seen to leave.
		await waitFor("the registry leader to record the victim's join", async () => seen.some(m => m.subject === "node.ops-victim.events" && m.event === "joined"), 20_000);
		expect(seen.filter(m => m.subject.startsWith("ops.alert."))).toEqual([]);
		await victim.kill("SIGKILL");
		const alert = await waitFor("ops.alert.critical for the victim", async () => seen.find(m => m.subject === "ops.alert.critical" && m.node_id === "ops-victim"), 20_000);
		expect(alert).toMatchObject({ source: "node-registry", from: "ops-registry", message: expect.stringMatching(/ops-victim left the mesh unexpectedly/) });
		expect(seen.filter(m => m.subject.startsWith("ops.alert.") && m.node_id === "ops-victim")).toHaveLength(1);
	}, 40_000);

	it("PostgreSQL down and back: one ops.health.database message per change", async () => {
		const health = () => seen.filter(m => m.subject === "ops.health.database");
		expect(health()).toEqual([]);
		expect(await pg.stop()).toBe(0);
		const down = await waitFor("ops.health.database down", async () => health().find(m => m.status === "down"), 20_000);
		expect(down).toMatchObject({ node_id: "ops-registry", dependency: "database", previous: "up", from: "ops-registry" });

		pg = await startPgServer(dir, pgPort);
		const up = await waitFor("ops.health.database up again", async () => health().find(m => m.status === "up"), 30_000);
		expect(up).toMatchObject({ node_id: "ops-registry", dependency: "database", previous: "down" });
		// Several heartbeats (300 ms each) passed while down and after: still one message per change.
		await new Promise(r => setTimeout(r, 1_500));
		expect(health().map(m => `${m.previous}→${m.status}`)).toEqual(["up→down", "down→up"]);
	}, 90_000);
});
