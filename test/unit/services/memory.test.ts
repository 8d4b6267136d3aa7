/**
 * memory, in process on a fresh PostgreSQL database: CRUD, validation, ownership, and confidential
 * content sealed at rest.
 */
import { Errors } from "moleculer";
import { query } from "../../helpers/databases";
import { describeWithPostgres } from "../../helpers/requirements";
import { startInProcessNode, stopInProcessNodes, user, type InProcessNode } from "../../helpers/service-broker";

const alice = user("alice", [], ["blue"]);
const bob = user("bob");
const admin = user("root", ["admin"]);

interface Memory {
	id: string;
	scope: string;
	owner_id: string;
	content: string;
	version: number;
}

describeWithPostgres("memory service (in-process broker)", () => {
	let node: InProcessNode;
	beforeAll(async () => {
		node = await startInProcessNode({ services: ["api", "memory"], database: true });
	});
	afterAll(() => stopInProcessNodes(node));

	const create = (who = alice, extra: object = {}) =>
		node.callAs<Memory>(who, "memory.create", { scope: "personal", owner_id: who.id, kind: "fact", key: "colour", content: "green", ...extra });

	it("creates, reads, updates, lists and removes a memory", async () => {
		const created = await create();
		expect(created).toMatchObject({ scope: "personal", owner_id: "alice", owner_type: "user", content: "green", version: 1 });
		expect(await node.callAs(alice, "memory.get", { id: created.id })).toMatchObject({ id: created.id, content: "green" });

		const updated = await node.callAs<Memory>(alice, "memory.update", { id: created.id, version: 1, content: "blue" });
		expect(updated).toMatchObject({ content: "blue", version: 2 });

		const list = await node.callAs<{ rows: Memory[]; total: number }>(alice, "memory.list", { scope: "personal" });
		expect(list.rows.map(r => r.id)).toContain(created.id);

		expect(await node.callAs(alice, "memory.remove", { id: created.id })).toEqual({ id: created.id, deleted: true });
		await expect(node.callAs(alice, "memory.get", { id: created.id })).rejects.toMatchObject({ code: 404, type: "NOT_FOUND" });
	});

	it("refuses bad input as a ValidationError naming the field", async () => {
		await expect(node.callAs(alice, "memory.create", { owner_id: "alice", kind: "fact", key: "k", content: "c" })).rejects.toMatchObject({
			name: "ValidationError",
			data: [expect.objectContaining({ field: "scope" })],
		});
		const wrongOwnerType = create(alice, { owner_type: "team" });
		await expect(wrongOwnerType).rejects.toBeInstanceOf(Errors.ValidationError);
		await expect(wrongOwnerType).rejects.toMatchObject({ data: [expect.objectContaining({ field: "owner_type" })] });
		await expect(node.callAs(alice, "memory.get", { id: "not-a-uuid" })).rejects.toMatchObject({ data: [expect.objectContaining({ field: "id" })] });
	});

	it("answers 401 to a mesh caller without a user, and 401 over HTTP without a token", async () => {
		await expect(node.call("memory.list", {})).rejects.toMatchObject({ code: 401, type: "NO_TOKEN" });
		expect((await node.http("GET", "/api/memory/memories")).status).toBe(401);
		const listed = await node.http("GET", "/api/memory/memories?scope=personal", { user: alice });
		expect(listed.status).toBe(200);
	});

	describe("ownership", () => {
		it("a personal memory is read and changed by its owner or an admin, never by another user", async () => {
			const mine = await create();
			await expect(node.callAs(bob, "memory.get", { id: mine.id })).rejects.toMatchObject({ code: 403, type: "FORBIDDEN" });
			await expect(node.callAs(bob, "memory.update", { id: mine.id, version: 1, content: "red" })).rejects.toMatchObject({ code: 403 });
			await expect(node.callAs(bob, "memory.remove", { id: mine.id })).rejects.toMatchObject({ code: 403 });
			expect(await node.callAs(admin, "memory.get", { id: mine.id })).toMatchObject({ content: "green" });
			const bobs = await node.callAs<{ rows: Memory[] }>(bob, "memory.list", {});
			expect(bobs.rows.map(r => r.id)).not.toContain(mine.id);
		});

		it("nobody creates a memory in another user's name, and team memories belong to the token's teams", async () => {
			await expect(create(bob, { owner_id: "alice" })).rejects.toMatchObject({ code: 403, data: { field: "owner_id" } });
			const team = await create(alice, { scope: "team", owner_id: "blue" });
			expect(team).toMatchObject({ owner_type: "team", owner_id: "blue" });
			await expect(node.callAs(bob, "memory.get", { id: team.id })).rejects.toMatchObject({ code: 403 });
		});

		it("a stale version is a 409 that names the current one", async () => {
			const m = await create();
			await node.callAs(alice, "memory.update", { id: m.id, version: 1, content: "v2" });
			await expect(node.callAs(alice, "memory.update", { id: m.id, version: 1, content: "late" })).rejects.toMatchObject({
				code: 409,
				type: "VERSION_CONFLICT",
				data: { field: "version", current: 2 },
			});
		});
	});

	it("keeps confidential content sealed in the table and opens it for its owner", async () => {
		const secret = await create(alice, { key: "pin", content: "4711 under the mat", confidential: true });
		expect(secret.content).toBe("4711 under the mat");
		const [row] = await query<{ content: string | null; content_sealed: Buffer | null }>(node.databaseUrl!, "SELECT content, content_sealed FROM memories WHERE id = $1", [secret.id]);
		expect(row.content).toBeNull();
		expect(row.content_sealed?.toString("utf8") ?? "").not.toContain("4711");
		const [outbox] = await query<{ payloads: string }>(node.databaseUrl!, "SELECT string_agg(payload::text, ' ') AS payloads FROM outbox WHERE aggregate_id = $1", [secret.id]);
		expect(outbox.payloads).not.toContain("4711");
	});

	it("refuses text search outside public memories, naming q", async () => {
		await expect(node.callAs(alice, "memory.list", { scope: "personal", q: "green" })).rejects.toMatchObject({
			type: "SEARCH_PUBLIC_ONLY",
			data: [expect.objectContaining({ field: "q" })],
		});
	});
});
