/**
 * Keyed writes (mixins/idempotent-writes.mixin.ts) through the gateway to another node (real NATS, real
 * PostgreSQL): a retry returns the first result, concurrent retries create one row, a reused key with a
 * different body and a malformed key are refused with errors naming the header, and bad fields get 422.
 * The write is the test double `drill.write` (test/fixtures/services), which can hold its transaction open.
 */
import { Client } from "pg";
import { signToken } from "../../lib/http/auth";
import { getJson, startNodeProcess, stopAll, TEST_SERVICES_ENV, uniqueNamespace, waitFor, waitForMesh, type NodeProcess } from "../helpers/cluster";
import { dropFreshDatabases, freshDatabase, isolatedMeshEnv } from "../helpers/databases";
import { describeWithNatsAndPostgres } from "../helpers/requirements";

const JWT_SECRET = "integration-secret-0123456789abcdef";
const userToken = signToken(JWT_SECRET, { id: "auditor", roles: [], teams: [] });

describeWithNatsAndPostgres("keyed writes with Idempotency-Key, across the mesh", () => {
	const namespace = uniqueNamespace("keyed");
	let gateway: NodeProcess;
	let actors: NodeProcess;
	let databaseUrl: string;

	beforeAll(async () => {
		databaseUrl = await freshDatabase("keyed");
		const env = isolatedMeshEnv(namespace, databaseUrl, JWT_SECRET);
		[gateway, actors] = await Promise.all([startNodeProcess({ ...env, SERVICES: "api" }), startNodeProcess({ ...env, ...TEST_SERVICES_ENV, SERVICES: "mesh,drill" })]);
		await waitForMesh(gateway, ["drill"], 2, 40_000);
		// POST-only route: routed once an anonymous POST gets 401 instead of 404.
		await waitFor("the gateway to route /api/drill/writes", async () => (await fetch(`${gateway.url}/api/drill/writes`, { method: "POST" })).status === 401);
	});
	afterAll(async () => {
		await stopAll([gateway, actors]);
		await dropFreshDatabases();
	});

	const post = (body: unknown, headers: Record<string, string> = {}) =>
		getJson(`${gateway.url}/api/drill/writes`, {
			method: "POST",
			headers: { authorization: `Bearer ${userToken}`, "content-type": "application/json", ...headers },
			body: JSON.stringify(body),
		});

	async function rowsFor(subject: string): Promise<number> {
		const db = new Client({ connectionString: databaseUrl });
		await db.connect();
		const { rows } = await db.query("SELECT id FROM drill_writes WHERE subject = $1", [subject]);
		await db.end();
		return rows.length;
	}

	it("records a write once however often it is retried, and replays the first answer", async () => {
		const subject = `${namespace}-retry`;
		const first = await post({ subject }, { "Idempotency-Key": `${subject}-k` });
		expect(first.status).toBe(200);
		expect(first.body).toMatchObject({ actor_id: "auditor", subject, node_id: actors.nodeID });
		const again = await post({ subject }, { "Idempotency-Key": `${subject}-k` });
		expect(again.status).toBe(200);
		expect(again.headers.get("idempotent-replayed")).toBe("true");
		expect(again.body.id).toBe(first.body.id);
		expect(await rowsFor(subject)).toBe(1);
	});

	it("concurrent requests with one key create one row and all get its answer", async () => {
		const subject = `${namespace}-concurrent`;
		const answers = await Promise.all(Array.from({ length: 8 }, () => post({ subject, holdMs: 200 }, { "Idempotency-Key": `${subject}-k` })));
		expect(answers.map(a => a.status)).toEqual(Array(8).fill(200));
		expect(new Set(answers.map(a => a.body.id)).size).toBe(1);
		expect(await rowsFor(subject)).toBe(1);
	});

	it("without a key every request is a new record", async () => {
		const subject = `${namespace}-unkeyed`;
		await post({ subject });
		await post({ subject });
		expect(await rowsFor(subject)).toBe(2);
	});

	it("refuses a reused key with a different body (422) and a malformed key (400), naming the header", async () => {
		const subject = `${namespace}-reuse`;
		expect((await post({ subject }, { "Idempotency-Key": `${subject}-k` })).status).toBe(200);
		const reused = await post({ subject, holdMs: 1 }, { "Idempotency-Key": `${subject}-k` });
		expect(reused.status).toBe(422);
		expect(JSON.stringify(reused.body)).toContain("Idempotency-Key");
		const malformed = await post({ subject }, { "Idempotency-Key": "has spaces in it" });
		expect(malformed.status).toBe(400);
		expect(malformed.body).toMatchObject({ type: "INVALID_HEADER", data: { field: "Idempotency-Key" } });
		expect(await rowsFor(subject)).toBe(1);
	});

	it("422 names the bad field; 401 without a token", async () => {
		const bad = await post({ subject: "" });
		expect(bad.status).toBe(422);
		expect(bad.body.data[0].field).toBe("subject");
		const anonymous = await getJson(`${gateway.url}/api/drill/writes`, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
		expect(anonymous.status).toBe(401);
	});
});
