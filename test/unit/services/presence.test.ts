/**
 * presence, in process on a fresh PostgreSQL database (with city, whose rooms presence asks about):
 * device reports, the status transitions online → away → offline, and who may see what.
 */
import { Errors } from "moleculer";
import { describeWithPostgres } from "../../helpers/requirements";
import { eventRecorder, startInProcessNode, stopInProcessNodes, user, type EventRecorder, type InProcessNode } from "../../helpers/service-broker";

const AWAY_AFTER_MS = 200;

interface Presence {
	user_id: string;
	status: "online" | "away" | "offline";
	previous?: string;
	rooms?: string[];
}

const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms));

describeWithPostgres("presence service (in-process broker)", () => {
	let node: InProcessNode;
	let events: EventRecorder;
	beforeAll(async () => {
		events = eventRecorder(["presence.changed"]);
		node = await startInProcessNode({
			services: ["api", "city", "presence"],
			database: true,
			env: { PRESENCE_AWAY_AFTER_MS: String(AWAY_AFTER_MS), PRESENCE_GRACE_MS: "0", PRESENCE_HEARTBEAT_MS: "60000" },
			extraServices: [events.schema],
		});
	});
	afterAll(() => stopInProcessNodes(node));

	const device = (userId: string, deviceId: string) => ({ user_id: userId, device_id: deviceId, node_id: node.broker.nodeID });
	const changed = (userId: string, status: string) => events.seen<Presence>("presence.changed", p => p.user_id === userId && p.status === status);

	it("goes online → away (the lease holder's sweep, after inactivity) → online → offline, broadcasting each change with the user's rooms", async () => {
		await node.callAs(user("ann"), "city.createRoom", { id: "lobby", name: "Lobby" });
		await expect(node.call("presence.connect", device("ann", "phone"))).resolves.toMatchObject({ user_id: "ann", status: "online" });
		expect(await changed("ann", "online")).toMatchObject({ previous: "offline", rooms: ["lobby"] });

		// No activity for PRESENCE_AWAY_AFTER_MS: the sweep marks the device away and announces it.
		expect(await changed("ann", "away")).toMatchObject({ rooms: ["lobby"] });
		await expect(node.call("presence.heartbeat", { ...device("ann", "phone"), active: true })).resolves.toMatchObject({ status: "online" });
		await events.seen<Presence>("presence.changed", p => p.user_id === "ann" && p.status === "online" && p.previous === "away");

		await node.call("presence.gone", { user_id: "ann", device_id: "phone" });
		// With no grace period, the next sweep marks the device offline.
		expect(await changed("ann", "offline")).toMatchObject({ rooms: ["lobby"] });
		await expect(node.callAs(user("ann"), "presence.user", { user_id: "ann" })).resolves.toMatchObject({ status: "offline" });
	});

	it("reports a device away at once when its heartbeat says the user has been idle that long", async () => {
		await node.call("presence.connect", device("ida", "desk"));
		await sleep(AWAY_AFTER_MS + 50);
		// Whether the sweep got there first or not, the device is away now.
		await expect(node.call("presence.heartbeat", { ...device("ida", "desk"), active: false })).resolves.toMatchObject({ status: "away" });
	});

	it("keeps a user as present as their most present device", async () => {
		// Reported statuses: the sweep leaves an away device alone (no disconnect, fresh heartbeat).
		await expect(node.call("presence.internalOnline", { user_id: "ben", device_id: "laptop", status: "unavailable" })).resolves.toMatchObject({ status: "away", device_status: "away" });
		await expect(node.call("presence.internalOnline", { user_id: "ben", device_id: "phone", status: "online" })).resolves.toMatchObject({ status: "online", device_status: "online" });
		await expect(node.call("presence.internalOnline", { user_id: "ben", device_id: "phone", status: "offline" })).resolves.toMatchObject({ status: "away", device_status: "offline" });
		await expect(node.call("presence.internalOnline", { user_id: "ben", device_id: "laptop", status: "offline" })).resolves.toMatchObject({ status: "offline" });
		await expect(node.callAs(user("x"), "presence.counts")).resolves.toMatchObject({ offline: expect.any(Number) });
	});

	it("refuses bad input as a ValidationError naming the field", async () => {
		const noDevice = node.call("presence.connect", { user_id: "ann", node_id: "n" });
		await expect(noDevice).rejects.toBeInstanceOf(Errors.ValidationError);
		await expect(noDevice).rejects.toMatchObject({ data: [expect.objectContaining({ field: "device_id" })] });
		await expect(node.call("presence.internalOnline", { status: "online" })).rejects.toMatchObject({ name: "ValidationError", data: [expect.objectContaining({ field: "user_id" })] });
		await expect(node.call("presence.internalOnline", { user_id: "a", matrix_user_id: "b" })).rejects.toMatchObject({ data: [expect.objectContaining({ field: "matrix_user_id" })] });
		await expect(node.call("presence.internalOnline", { user_id: "a", status: "asleep" })).rejects.toMatchObject({ data: [expect.objectContaining({ field: "status" })] });
	});

	describe("who may see and report what", () => {
		it("shows a user's devices only to themselves and admins", async () => {
			await node.call("presence.connect", device("cat", "tablet"));
			expect(await node.callAs(user("cat"), "presence.user", { user_id: "cat" })).toMatchObject({ devices: [expect.objectContaining({ device_id: "tablet" })] });
			expect(await node.callAs(user("root", ["admin"]), "presence.user", { user_id: "cat" })).toHaveProperty("devices");
			expect(await node.callAs(user("dan"), "presence.user", { user_id: "cat" })).not.toHaveProperty("devices");
		});

		it("lets only services and admins report through /internal/matrix/presence/online", async () => {
			const body = { matrix_user_id: "eve", status: "online" };
			expect((await node.http("POST", "/internal/matrix/presence/online", { body })).status).toBe(401);
			expect((await node.http("POST", "/internal/matrix/presence/online", { user: user("eve"), body })).status).toBe(403);
			const served = await node.http("POST", "/internal/matrix/presence/online", { user: user("bridge", ["service"]), body });
			expect(served).toMatchObject({ status: 200, body: { ok: true, user_id: "eve", matrix_user_id: "eve", status: "online" } });
		});

		it("takes the beacon's token from its body: a bad one is a 401 naming the field", async () => {
			const bad = await node.http("POST", "/api/presence/beacon", { body: { token: "not-a-real-token", device_id: "d" } });
			expect(bad).toMatchObject({ status: 401, body: { data: { field: "token" } } });
			const good = await node.http("POST", "/api/presence/beacon", { body: { token: node.tokenFor(user("eve")), device_id: "d" } });
			expect(good).toMatchObject({ status: 200, body: { user_id: "eve", leaving: true } });
		});

		it("lists a private room's presence only to those who may read the room (404 as in city)", async () => {
			await node.callAs(user("fay"), "city.createRoom", { id: "den", name: "Den", is_public: false });
			await expect(node.callAs(user("fay"), "presence.list", { room_id: "den" })).resolves.toMatchObject({ room_id: "den" });
			await expect(node.callAs(user("gus"), "presence.list", { room_id: "den" })).rejects.toMatchObject({ code: 404, type: "ROOM_NOT_FOUND" });
			expect((await node.http("GET", "/api/presence/counts")).status).toBe(401);
		});
	});
});
