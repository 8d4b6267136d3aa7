/**
 * outbox, in process on a fresh PostgreSQL database, without NATS: the lease holder relays committed
 * events as Moleculer events ("moleculer-events-only"), reports its backlog, and re-drives dead events.
 * memory is the writer whose events it relays.
 */
import { randomUUID } from "crypto";
import { Errors } from "moleculer";
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
});
