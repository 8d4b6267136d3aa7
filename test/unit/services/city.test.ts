/**
 * city, in process on a fresh PostgreSQL database: rooms, membership and messages; a private room the
 * caller may not read answers exactly as a room that does not exist.
 */
import { Errors } from "moleculer";
import { query } from "../../helpers/databases";
import { describeWithPostgres } from "../../helpers/requirements";
import { eventRecorder, startInProcessNode, stopInProcessNodes, user, type EventRecorder, type InProcessNode } from "../../helpers/service-broker";

const owner = user("olga");
const member = user("mike");
const stranger = user("sam");
const admin = user("root", ["admin"]);

interface Message {
	id: string;
	room_id: string;
	seq: number;
	body: string;
}

describeWithPostgres("city service (in-process broker)", () => {
	let node: InProcessNode;
	let events: EventRecorder;
	beforeAll(async () => {
		events = eventRecorder(["city.message.created", "city.member.left"]);
		node = await startInProcessNode({ services: ["api", "city"], database: true, env: { CITY_MAX_MESSAGE_CHARS: "20" }, extraServices: [events.schema] });
		await node.callAs(owner, "city.createRoom", { id: "square", name: "Square" });
		await node.callAs(owner, "city.createRoom", { id: "attic", name: "Attic", is_public: false });
		await node.callAs(owner, "city.addMember", { room_id: "attic", user_id: member.id });
	});
	afterAll(() => stopInProcessNodes(node));

	it("creates a room owned by its creator, who is its first member", async () => {
		const room = await node.callAs(owner, "city.getRoom", { room_id: "square" });
		expect(room).toMatchObject({ id: "square", name: "Square", is_public: true, created_by: "olga", members: ["olga"] });
		await expect(node.callAs(stranger, "city.createRoom", { id: "square", name: "Again" })).rejects.toMatchObject({ code: 409, type: "ROOM_EXISTS", data: { field: "id" } });
	});

	it("numbers messages per room, pages them, and broadcasts each after commit", async () => {
		const first = await node.callAs<Message>(stranger, "city.postMessage", { room_id: "square", body: "one" });
		const second = await node.callAs<Message>(member, "city.postMessage", { room_id: "square", body: "two" });
		expect(second.seq).toBe(first.seq + 1);
		const page = await node.callAs<{ messages: Message[]; next_before: number | null }>(owner, "city.listMessages", { room_id: "square", limit: 1 });
		expect(page).toMatchObject({ messages: [{ body: "two" }], next_before: second.seq });
		const older = await node.callAs<{ messages: Message[] }>(owner, "city.listMessages", { room_id: "square", before: page.next_before });
		expect(older.messages.map(m => m.body)).toEqual(["one"]);
		await events.seen<Message>("city.message.created", m => m.id === second.id);
		const [outbox] = await query<{ n: number }>(node.databaseUrl!, "SELECT count(*)::int AS n FROM outbox WHERE subject = $1", ["message.created.square"]);
		expect(outbox.n).toBeGreaterThanOrEqual(2);
	});

	it("publishes a post's event with the message exactly as the action answered it (the one-statement post builds it in SQL)", async () => {
		const posted = await node.callAs<Message>(member, "city.postMessage", { room_id: "square", body: "same everywhere" });
		const [event] = await query<{ payload: unknown; event_type: string; aggregate_id: string }>(
			node.databaseUrl!,
			"SELECT payload, event_type, aggregate_id FROM outbox WHERE aggregate_id = $1",
			[posted.id],
		);
		expect(event).toMatchObject({ event_type: "message.created", aggregate_id: posted.id });
		// What a client gets over HTTP (JSON) and what the stream carries are the same object.
		expect(event.payload).toEqual({ message: JSON.parse(JSON.stringify(posted)), room: { id: "square", is_public: true } });
	});

	it("refuses bad input as a ValidationError naming the field, and an over-long message as 413", async () => {
		const badId = node.callAs(owner, "city.createRoom", { id: "Not A Room", name: "x" });
		await expect(badId).rejects.toBeInstanceOf(Errors.ValidationError);
		await expect(badId).rejects.toMatchObject({ data: [expect.objectContaining({ field: "id" })] });
		await expect(node.callAs(owner, "city.postMessage", { room_id: "square" })).rejects.toMatchObject({ data: [expect.objectContaining({ field: "body" })] });
		await expect(node.callAs(owner, "city.postMessage", { room_id: "square", body: "x".repeat(21) })).rejects.toMatchObject({ code: 413, type: "MESSAGE_TOO_LARGE", data: { field: "body" } });
	});

	describe("a private room", () => {
		it("is a 404 to a stranger, exactly like a room that does not exist", async () => {
			const hidden = await node.callAs(stranger, "city.getRoom", { room_id: "attic" }).catch((err: Error) => err);
			const missing = await node.callAs(stranger, "city.getRoom", { room_id: "nowhere" }).catch((err: Error) => err);
			expect(hidden).toMatchObject({ code: 404, type: "ROOM_NOT_FOUND" });
			expect(missing).toMatchObject({ code: 404, type: "ROOM_NOT_FOUND" });
			expect((hidden as Error).message.replace("attic", "ROOM")).toBe((missing as Error).message.replace("nowhere", "ROOM"));
			for (const action of ["city.listMessages", "city.members", "city.join"]) {
				await expect(node.callAs(stranger, action, { room_id: "attic" })).rejects.toMatchObject({ code: 404 });
			}
			const seqBefore = await query<{ last_seq: string }>(node.databaseUrl!, "SELECT last_seq FROM city_rooms WHERE id = 'attic'");
			await expect(node.callAs(stranger, "city.postMessage", { room_id: "attic", body: "hello?" })).rejects.toMatchObject({ code: 404, type: "ROOM_NOT_FOUND" });
			await expect(node.callAs(stranger, "city.postMessage", { room_id: "nowhere", body: "hello?" })).rejects.toMatchObject({ code: 404, type: "ROOM_NOT_FOUND" });
			// A refused post takes no number and leaves no message and no event.
			expect(await query(node.databaseUrl!, "SELECT last_seq FROM city_rooms WHERE id = 'attic'")).toEqual(seqBefore);
			expect(await query(node.databaseUrl!, "SELECT id FROM city_messages WHERE body = 'hello?'")).toEqual([]);
			expect(await query(node.databaseUrl!, "SELECT id FROM outbox WHERE payload->'message'->>'body' = 'hello?'")).toEqual([]);
			const rooms = await node.callAs<Array<{ id: string }>>(stranger, "city.listRooms");
			expect(rooms.map(r => r.id)).not.toContain("attic");
		});

		it("is read and posted in by its members and an admin", async () => {
			await expect(node.callAs(member, "city.postMessage", { room_id: "attic", body: "psst" })).resolves.toMatchObject({ room_id: "attic" });
			await expect(node.callAs(admin, "city.postMessage", { room_id: "attic", body: "admin here" })).resolves.toMatchObject({ room_id: "attic", author_id: "root" });
			await expect(node.callAs(admin, "city.listMessages", { room_id: "attic" })).resolves.toMatchObject({ messages: [{ body: "psst" }, { body: "admin here" }] });
		});

		it("has its members managed by its owner only: a member may not add one (403)", async () => {
			await expect(node.callAs(member, "city.addMember", { room_id: "attic", user_id: stranger.id })).rejects.toMatchObject({ code: 403, type: "FORBIDDEN" });
			await expect(node.callAs(owner, "city.removeMember", { room_id: "attic", user_id: owner.id })).rejects.toMatchObject({ code: 409, type: "OWNER_STAYS" });
		});

		it("closes to a removed member, and says so to the gateways", async () => {
			await node.callAs(owner, "city.addMember", { room_id: "attic", user_id: "temp" });
			await node.callAs(owner, "city.removeMember", { room_id: "attic", user_id: "temp" });
			await events.seen<{ user_id: string }>("city.member.left", p => p.user_id === "temp");
			await expect(node.callAs(user("temp"), "city.getRoom", { room_id: "attic" })).rejects.toMatchObject({ code: 404 });
		});
	});

	it("edits only the author's own messages", async () => {
		const mine = await node.callAs<Message>(member, "city.postMessage", { room_id: "square", body: "typo" });
		await expect(node.callAs(stranger, "city.editMessage", { room_id: "square", message_id: mine.id, body: "hijack" })).rejects.toMatchObject({ code: 403 });
		await expect(node.callAs(member, "city.editMessage", { room_id: "square", message_id: mine.id, body: "fixed" })).resolves.toMatchObject({ body: "fixed" });
		await expect(node.callAs(admin, "city.deleteMessage", { room_id: "square", message_id: mine.id })).resolves.toMatchObject({ deleted: true });
	});

	it("needs a token over HTTP: 401 without, and the same 404 for a hidden room with one", async () => {
		expect((await node.http("GET", "/api/city/rooms")).status).toBe(401);
		expect((await node.http("GET", "/api/city/rooms/attic", { user: stranger })).status).toBe(404);
		expect((await node.http("GET", "/api/city/rooms/attic", { user: member })).status).toBe(200);
	});
});
