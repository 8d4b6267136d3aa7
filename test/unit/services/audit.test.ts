/**
 * audit, in process on a fresh PostgreSQL database, without NATS: the lease holder appends audit events
 * from the outbox table to the hash-chained, append-only audit_log. Covers operator notes (safe to retry
 * with an Idempotency-Key), queries, chain verification and who may do what.
 */
import { Errors } from "moleculer";
import { waitFor } from "../../helpers/cluster";
import { query } from "../../helpers/databases";
import { describeWithPostgres } from "../../helpers/requirements";
import { startInProcessNode, stopInProcessNodes, user, type InProcessNode } from "../../helpers/service-broker";

interface AuditRow {
	seq: number;
	service: string;
	action: string;
	actor: string;
	target: string | null;
}

describeWithPostgres("audit service (in-process broker)", () => {
	let node: InProcessNode;
	const operator = user("olivia", ["operator"]);
	const admin = user("root", ["admin"]);
	beforeAll(async () => {
		node = await startInProcessNode({ services: ["api", "audit"], database: true });
	});
	afterAll(() => stopInProcessNodes(node));

	const stored = (action: string) =>
		waitFor(`audit.operator.${action} in audit_log`, async () => {
			const { events } = await node.callAs<{ events: AuditRow[] }>(admin, "audit.events", { service: "operator", action });
			return events.length > 0 && events;
		});

	it("records an operator's note and appends it to the chain, which verifies", async () => {
		const accepted = await node.callAs(operator, "audit.record", { action: "deploy.started", subject: "release-42", details: { by: "ci" } });
		expect(accepted).toMatchObject({ accepted: true, type: "audit.operator.deploy.started", actor: "olivia", target: "release-42" });
		const [entry] = await stored("deploy.started");
		expect(entry).toMatchObject({ service: "operator", action: "deploy.started", actor: "olivia", target: "release-42" });
		const verified = await node.callAs<{ ok: boolean; checked: number }>(admin, "audit.verify");
		expect(verified.ok).toBe(true);
		expect(verified.checked).toBeGreaterThanOrEqual(1);
		expect(await node.callAs(admin, "audit.writer")).toMatchObject({ leader: true, mode: "outbox-table" });
	});

	it("keeps audit_log append-only: the table refuses an UPDATE and a DELETE", async () => {
		await stored("deploy.started");
		await expect(query(node.databaseUrl!, "UPDATE audit_log SET actor = 'mallory'")).rejects.toThrow(/append-only: UPDATE rejected/);
		await expect(query(node.databaseUrl!, "DELETE FROM audit_log")).rejects.toThrow(/append-only: DELETE rejected/);
	});

	it("answers a retried note with the same Idempotency-Key once: same answer, one event", async () => {
		const send = () =>
			node.http("POST", "/api/audit/records", { user: operator, headers: { "Idempotency-Key": "note-7" }, body: { action: "incident.opened", subject: "inc-7" } });
		const first = await send();
		const again = await send();
		expect(first.status).toBe(200);
		expect(again).toMatchObject({ status: 200, body: first.body });
		expect(again.headers.get("idempotent-replayed")).toBe("true");
		await stored("incident.opened");
		const [{ n }] = await query<{ n: number }>(node.databaseUrl!, "SELECT count(*)::int AS n FROM outbox WHERE event_type = 'audit.operator.incident.opened'");
		expect(n).toBe(1);
	});

	it("refuses bad input as a ValidationError naming the field", async () => {
		const badAction = node.callAs(operator, "audit.record", { action: "Not An Action", subject: "x" });
		await expect(badAction).rejects.toBeInstanceOf(Errors.ValidationError);
		await expect(badAction).rejects.toMatchObject({ data: [expect.objectContaining({ field: "action" })] });
		await expect(node.callAs(admin, "audit.events", { cursor: "abc" })).rejects.toMatchObject({ data: [expect.objectContaining({ field: "cursor" })] });
		await expect(node.call("audit.report", { type: "audit.x", actor: "a", outcome: "success", node: "n" })).rejects.toMatchObject({ data: [expect.objectContaining({ field: "type" })] });
	});

	it("lets admins, operators and services write notes; reading the trail is for services and admins", async () => {
		const note = { action: "check.done", subject: "s" };
		expect((await node.http("POST", "/api/audit/records", { body: note })).status).toBe(401);
		expect((await node.http("POST", "/api/audit/records", { user: user("u1"), body: note })).status).toBe(403);
		expect((await node.http("POST", "/api/audit/records", { user: user("svc", ["service"]), body: note })).status).toBe(200);
		expect((await node.http("GET", "/api/audit/events", { user: operator })).status).toBe(403);
		expect((await node.http("GET", "/api/audit/verify", { user: admin })).status).toBe(200);
	});
});
