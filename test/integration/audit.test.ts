/**
 * Keyed writes through the gateway to another node (real NATS, real PostgreSQL): a retry returns the
 * first result, concurrent retries create one row, a reused key with a different body and a malformed
 * key are refused with errors naming the header, and bad fields get 422.
 */
import { signToken } from "../../lib/auth";
import { getJson, startNodeProcess, stopAll, uniqueNamespace, waitForMesh, type NodeProcess } from "../helpers/cluster";
import { dropFreshDatabases, freshDatabase, isolatedMeshEnv, query } from "../helpers/databases";
import { describeWithNatsAndPostgres } from "../helpers/requirements";

const JWT_SECRET = "integration-secret-0123456789abcdef";
const userToken = signToken(JWT_SECRET, { id: "auditor", roles: [], teams: [] });

describeWithNatsAndPostgres("audit records with Idempotency-Key, across the mesh", () => {
	const namespace = uniqueNamespace("audit");
	let gateway: NodeProcess;
	let actors: NodeProcess;
	let databaseUrl: string;

	beforeAll(async () => {
		// A database of its own: the shared one may carry other branches' migrations.
		databaseUrl = await freshDatabase("audittest");
		const env = isolatedMeshEnv(namespace, databaseUrl, JWT_SECRET);
		[gateway, actors] = await Promise.all([startNodeProcess({ ...env, SERVICES: "api" }), startNodeProcess({ ...env, SERVICES: "audit" })]);
		await waitForMesh(gateway, ["audit"], 2, 40_000, "/api/audit/records");
	});
	afterAll(async () => {
		await stopAll([gateway, actors]);
		await dropFreshDatabases();
	});

	const post = (body: unknown, headers: Record<string, string> = {}) =>
		getJson(`${gateway.url}/api/audit/records`, {
			method: "POST",
			headers: { authorization: `Bearer ${userToken}`, "content-type": "application/json", ...headers },
			body: JSON.stringify(body),
		});

	async function rowsFor(subject: string): Promise<number> {
		return (await query(databaseUrl, "SELECT id FROM audit_records WHERE subject = $1", [subject])).length;
	}

	it("records a write once however often it is retried, and replays the first answer", async () => {
		const subject = `${namespace}-retry`;
		const first = await post({ action: "memory.read", subject }, { "Idempotency-Key": `${subject}-k` });
		expect(first.status).toBe(200);
		expect(first.body).toMatchObject({ actor_id: "auditor", action: "memory.read", subject, node_id: actors.nodeID });
		const again = await post({ action: "memory.read", subject }, { "Idempotency-Key": `${subject}-k` });
		expect(again.status).toBe(200);
		expect(again.headers.get("idempotent-replayed")).toBe("true");
		expect(again.body.id).toBe(first.body.id);
		expect(await rowsFor(subject)).toBe(1);
	});

	it("concurrent requests with one key create one row and all get its answer", async () => {
		const subject = `${namespace}-concurrent`;
		const answers = await Promise.all(Array.from({ length: 8 }, () => post({ action: "x.y", subject }, { "Idempotency-Key": `${subject}-k` })));
		expect(answers.map(a => a.status)).toEqual(Array(8).fill(200));
		expect(new Set(answers.map(a => a.body.id)).size).toBe(1);
		expect(await rowsFor(subject)).toBe(1);
	});

	it("without a key every request is a new record", async () => {
		const subject = `${namespace}-unkeyed`;
		await post({ action: "x.y", subject });
		await post({ action: "x.y", subject });
		expect(await rowsFor(subject)).toBe(2);
	});

	it("refuses a reused key with a different body (422) and a malformed key (400), naming the header", async () => {
		const subject = `${namespace}-reuse`;
		expect((await post({ action: "x.y", subject }, { "Idempotency-Key": `${subject}-k` })).status).toBe(200);
		const reused = await post({ action: "x.z", subject }, { "Idempotency-Key": `${subject}-k` });
		expect(reused.status).toBe(422);
		expect(JSON.stringify(reused.body)).toContain("Idempotency-Key");
		const malformed = await post({ action: "x.y", subject }, { "Idempotency-Key": "has spaces in it" });
		expect(malformed.status).toBe(400);
		expect(malformed.body).toMatchObject({ type: "INVALID_HEADER", data: { field: "Idempotency-Key" } });
		expect(await rowsFor(subject)).toBe(1);
	});

	it("422 names the bad field; 401 without a token; list needs the admin or service role", async () => {
		const bad = await post({ action: "Not Valid!", subject: "s" });
		expect(bad.status).toBe(422);
		expect(bad.body.data[0].field).toBe("action");
		const anonymous = await getJson(`${gateway.url}/api/audit/records`, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
		expect(anonymous.status).toBe(401);
		const list = await getJson(`${gateway.url}/api/audit/records`, { headers: { authorization: `Bearer ${userToken}` } });
		expect(list.status).toBe(403);
	});
});
