/**
 * outbox, in process on a fresh PostgreSQL database, without NATS: the lease holder relays committed
 * events as Moleculer events ("moleculer-events-only"), reports its backlog, and re-drives dead events.
 * memory is the writer whose events it relays. After a drain the relay's claim reads the index entries of
 * the rows it published without visiting them again.
 */
import { randomUUID } from "crypto";
import { Errors } from "moleculer";
import { Client } from "pg";
import { CLAIM_BATCH, CLAIM_PLAN } from "../../../lib/data/outbox/relay";
import { waitFor } from "../../helpers/cluster";
import { query } from "../../helpers/databases";
import { describeWithPostgres } from "../../helpers/requirements";
import { eventRecorder, startInProcessNode, stopInProcessNodes, user, type EventRecorder, type InProcessNode } from "../../helpers/service-broker";

interface Status {
	leader: boolean;
	mode: string;
	pending: number;
	dead: number;
}

describeWithPostgres("outbox service (in-process broker)", () => {
	let node: InProcessNode;
	let events: EventRecorder;
	const admin = user("root", ["admin"]);
	beforeAll(async () => {
		events = eventRecorder(["memory.created", "invoice.sent"]);
		node = await startInProcessNode({ services: ["api", "memory", "outbox"], database: true, extraServices: [events.schema] });
	});
	afterAll(() => stopInProcessNodes(node));

	it("relays a committed write's event once, with the outbox id, and leaves nothing pending", async () => {
		const memory = await node.callAs<{ id: string }>(user("alice"), "memory.create", { scope: "personal", owner_id: "alice", kind: "fact", key: "k", content: "c" });
		const relayed = await events.seen<{ id: string; type: string; aggregate: { id: string } }>("memory.created", e => e.aggregate.id === memory.id);
		const [row] = await query<{ id: string; status: string }>(node.databaseUrl!, "SELECT id, status FROM outbox WHERE event_type = 'memory.created' AND aggregate_id = $1", [memory.id]);
		expect(relayed).toMatchObject({ id: row.id, type: "memory.created" });
		await waitFor("the row marked published", async () => (await query<{ status: string }>(node.databaseUrl!, "SELECT status FROM outbox WHERE id = $1", [row.id]))[0].status === "published");
		expect(events.received.filter(e => (e.params as { id: string }).id === row.id)).toHaveLength(1);
		const status = await node.call<Status>("outbox.status");
		expect(status).toMatchObject({ leader: true, mode: "moleculer-events-only", pending: 0 });
	});

	it("re-drives a dead event: it is pending again and relayed under its own id", async () => {
		const id = randomUUID();
		await query(node.databaseUrl!, "INSERT INTO outbox_dlq (id, aggregate_type, aggregate_id, event_type, subject, payload, attempts, last_error, created_at) VALUES ($1, 'invoice', 'i-1', 'invoice.sent', 'invoice.sent', '{\"total\": 3}', 5, 'boom', now())", [id]);
		expect(await node.callAs<unknown[]>(admin, "outbox.dlq", {})).toContainEqual(expect.objectContaining({ id, attempts: 5, last_error: "boom" }));
		expect(await node.callAs(admin, "outbox.redrive", { id })).toEqual({ id, status: "pending" });
		expect(await events.seen("invoice.sent", (e: { id: string }) => e.id === id)).toMatchObject({ total: 3, aggregate: { type: "invoice", id: "i-1" } });
		expect((await node.call<Status>("outbox.status")).dead).toBe(0);
		await expect(node.callAs(admin, "outbox.redrive", { id })).rejects.toMatchObject({ code: 404, type: "NOT_FOUND" });
	});

	it("refuses bad input as a ValidationError naming the field", async () => {
		const badId = node.callAs(admin, "outbox.redrive", { id: "42" });
		await expect(badId).rejects.toBeInstanceOf(Errors.ValidationError);
		await expect(badId).rejects.toMatchObject({ data: [expect.objectContaining({ field: "id" })] });
		await expect(node.callAs(admin, "outbox.dlq", { limit: 0 })).rejects.toMatchObject({ data: [expect.objectContaining({ field: "limit" })] });
	});

	it("is internal over HTTP: 401 without a token, 403 for a user, 200 for a service or an admin", async () => {
		expect((await node.http("GET", "/api/outbox/status")).status).toBe(401);
		expect((await node.http("GET", "/api/outbox/status", { user: user("u1") })).status).toBe(403);
		expect((await node.http("GET", "/api/outbox/dlq", { user: user("u1") })).status).toBe(403);
		expect((await node.http("GET", "/api/outbox/status", { user: user("svc", ["service"]) })).status).toBe(200);
		expect((await node.http("GET", "/api/outbox/dlq?limit=5", { user: admin })).status).toBe(200);
	});

	it("after draining 20,000 rows the claim skips their index entries instead of reading each row again", async () => {
		const url = node.databaseUrl!;
		const rows = 20_000;
		await query(url, "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, subject, payload) SELECT 'drain', g::text, 'drain.event', 'drain.event', jsonb_build_object('n', g) FROM generate_series(1, $1::int) g", [rows]);
		await waitFor("the relay drained the outbox", async () => (await query<{ n: number }>(url, "SELECT count(*)::int AS n FROM outbox WHERE status = 'pending'"))[0].n === 0, 60_000);
		// No VACUUM ran (nor can autovacuum be counted on): every published row still has its entry in the index.
		// The claim as the relay runs it, in a transaction with its planner setting:
		const client = new Client({ connectionString: url });
		await client.connect();
		let plan: { "Shared Hit Blocks": number; "Shared Read Blocks": number };
		try {
			await client.query("BEGIN");
			await client.query(CLAIM_PLAN);
			const { rows: explained } = await client.query<{ "QUERY PLAN": Array<{ Plan: typeof plan }> }>(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${CLAIM_BATCH}`, [500]);
			plan = explained[0]["QUERY PLAN"][0].Plan;
			await client.query("COMMIT");
		} finally {
			await client.end();
		}
		expect(JSON.stringify(plan)).toMatch(/"Node Type":"Index Scan".*"Index Name":"outbox_pending_by_age"/);
		// Index leaf pages hold ~350 entries each: ~60 pages for 20,000 entries already marked dead. A claim
		// that reads the published rows again touches every heap page they are on (~350 here).
		expect(plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]).toBeLessThan(rows / 100);
	});
});
