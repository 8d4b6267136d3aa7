/**
 * An idle relay is woken through the mesh, not by polling (lib/data/outbox/doorbell.ts): a writer process and a
 * relay process over real NATS, real JetStream and a PostgreSQL database of their own, the relay's own look for
 * due rows set to once a minute (OUTBOX_IDLE_POLL_MS). A write on the other node is published within a second;
 * a row that no write announced stays pending (the control: nothing but the ring wakes the relay); a row in
 * retry backoff is retried on its schedule without any ring.
 */
import { signToken } from "../../lib/http/auth";
import { getJson, startNodeProcess, stopAll, uniqueNamespace, waitFor, waitForMesh, type NodeProcess } from "../helpers/cluster";
import { dropFreshDatabases, freshDatabase, isolatedMeshEnv, query, subjectPrefixFor } from "../helpers/databases";
import { describeWithNatsAndPostgres } from "../helpers/requirements";

const JWT_SECRET = "integration-secret-0123456789abcdef";
/** Far longer than any wait below: a row published within these tests was not found by the fallback poll. */
const IDLE_POLL_MS = 60_000;

describeWithNatsAndPostgres("outbox relay woken by writes, not by polling", () => {
	const namespace = uniqueNamespace("wakeup");
	const prefix = subjectPrefixFor(namespace);
	let databaseUrl: string;
	let writer: NodeProcess;
	let relay: NodeProcess;
	const token = signToken(JWT_SECRET, { id: "u1", roles: [], teams: [] });

	beforeAll(async () => {
		databaseUrl = await freshDatabase("wakeup");
		const env = { ...isolatedMeshEnv(namespace, databaseUrl, JWT_SECRET), OUTBOX_IDLE_POLL_MS: String(IDLE_POLL_MS), OUTBOX_MAX_ATTEMPTS: "3", OUTBOX_BACKOFF_MS: "300" };
		writer = await startNodeProcess({ ...env, NODE_ID: "writer", SERVICES: "api,memory" });
		relay = await startNodeProcess({ ...env, NODE_ID: "relay", SERVICES: "api,outbox" });
		await waitForMesh(writer, ["memory", "outbox"], 2, 40_000, "/api/memory/memories");
		// A relay that starts leading claims once at once: the nodes' start-up events go out, then it is idle.
		await waitFor("the start-up events to be published", async () => (await pending()).length === 0, 30_000);
	});
	afterAll(async () => {
		await stopAll([writer, relay]);
		await dropFreshDatabases();
	});

	async function pending(): Promise<Array<{ id: string }>> {
		return query<{ id: string }>(databaseUrl, "SELECT id FROM outbox WHERE status = 'pending'");
	}

	async function writeMemory(key: string): Promise<string> {
		const created = await getJson(`${writer.url}/api/memory/memories`, {
			method: "POST",
			headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
			body: JSON.stringify({ scope: "public", owner_id: "u1", kind: "fact", key, content: "wake the relay" }),
		});
		expect(created.status).toBe(200);
		return created.body.id as string;
	}

	/** ms from the event's commit to its publication, once published. */
	async function publishedAfterMs(aggregateId: string): Promise<number> {
		return waitFor(
			`memory ${aggregateId}'s event to be published`,
			async () => {
				const [row] = await query<{ ms: number | null }>(
					databaseUrl,
					"SELECT extract(epoch FROM published_at - created_at) * 1000 AS ms FROM outbox WHERE aggregate_id = $1 AND event_type = 'memory.created' AND status = 'published'",
					[aggregateId],
				);
				return row ? Number(row.ms) : undefined;
			},
			10_000,
			20,
		);
	}

	it("a write on another node is published within a second of its commit, each time the relay was idle", async () => {
		for (let i = 0; i < 3; i++) {
			await new Promise(r => setTimeout(r, 300)); // the relay goes back to waiting
			const id = await writeMemory(`wake-${i}`);
			expect(await publishedAfterMs(id)).toBeLessThan(1_000);
		}
	});

	it("a row no write announced waits (nothing polls), and goes out with the next write's ring", async () => {
		const [silent] = await query<{ id: string }>(
			databaseUrl,
			"INSERT INTO outbox (aggregate_type, aggregate_id, event_type, subject, payload) VALUES ('test', 'silent', 'test.silent', $1, '{}') RETURNING id",
			[`${prefix}.ops.test.silent`],
		);
		await new Promise(r => setTimeout(r, 2_000));
		expect((await pending()).map(r => r.id)).toEqual([silent.id]);
		const id = await writeMemory("ring-for-both");
		expect(await publishedAfterMs(id)).toBeLessThan(1_000);
		expect(await pending()).toEqual([]);
	});

	it("a row in retry backoff is retried on its schedule, with no ring, and reaches the DLQ", async () => {
		const [unroutable] = await query<{ id: string }>(
			databaseUrl,
			"INSERT INTO outbox (aggregate_type, aggregate_id, event_type, subject, payload) VALUES ('test', 'x', 'test.unroutable', $1, '{}') RETURNING id",
			[`${prefix}.nowhere.unroutable`],
		);
		await writeMemory("ring-for-the-first-attempt");
		// Attempts at ~0, +300 and +600 ms: on the relay's own schedule, long before its fallback poll.
		const dead = await waitFor("the row to reach the DLQ", async () => (await query<{ attempts: number }>(databaseUrl, "SELECT attempts FROM outbox_dlq WHERE id = $1", [unroutable.id]))[0], 10_000);
		expect(dead.attempts).toBe(3);
	});
});
