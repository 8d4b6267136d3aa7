/**
 * city and presence over socket.io across two real node processes (real NATS, real PostgreSQL in a
 * database of its own): presence online → away → online → offline seen from the other node, room
 * messages from NODE1 arriving in order on NODE2, bad socket input answered without harm, the HTTP
 * presence endpoints, and a SIGKILLed node's users going offline everywhere within 5 s.
 */
import { signToken } from "../../lib/http/auth";
import { getJson, startNodeProcess, stopAll, uniqueNamespace, waitFor, waitForMesh, type NodeProcess } from "../helpers/cluster";
import { dropFreshDatabases, freshDatabase, isolatedMeshEnv } from "../helpers/databases";
import { describeWithNatsAndPostgres } from "../helpers/requirements";
import { io } from "socket.io-client";
import { connectSocket, record, WS_OPTIONS, type Recorder } from "../helpers/sockets";

jest.setTimeout(60_000);
const JWT_SECRET = "integration-secret-0123456789abcdef";
const token = (id: string, roles: string[] = []) => signToken(JWT_SECRET, { id, roles, teams: [] });
const AWAY_AFTER_MS = 1_500;

describeWithNatsAndPostgres("city and presence over socket.io across two nodes", () => {
	const namespace = uniqueNamespace("realtime");
	let node1: NodeProcess;
	let node2: NodeProcess;
	const sockets: Recorder[] = [];
	const track = (r: Recorder) => (sockets.push(r), r);
	let env: Record<string, string>;

	beforeAll(async () => {
		const databaseUrl = await freshDatabase("realtime");
		env = {
			...isolatedMeshEnv(namespace, databaseUrl, JWT_SECRET),
			PRESENCE_AWAY_AFTER_MS: String(AWAY_AFTER_MS),
			PRESENCE_GRACE_MS: "500",
			PRESENCE_HEARTBEAT_MS: "60000",
			// Budgets are test/integration/realtime-security.test.ts's subject, not this file's. Alice posts 20
			// messages back to back, then (a test later, well under a second on an idle machine) sends 4 bad
			// events from her next socket, and every event, accepted or not, takes a token from her per-user
			// bucket (10/s): a burst of exactly 20 left the bad-input test its refill only, a 429 when fast.
			WS_USER_EVENT_BURST: "50",
		};
		[node1, node2] = await Promise.all([startNodeProcess({ ...env, NODE_ID: "rt-node1", NODE_ROLE: "node1" }), startNodeProcess({ ...env, NODE_ID: "rt-node2", NODE_ROLE: "node2" })]);
		await Promise.all([waitForMesh(node1, ["city", "presence"], 2, 40_000, "/api/city/rooms"), waitForMesh(node2, ["city", "presence"], 2, 40_000, "/api/city/rooms")]);
	});
	afterAll(async () => {
		sockets.forEach(s => s.close());
		await stopAll([node1, node2]);
		await dropFreshDatabases();
	});

	const presenceOf = (r: Recorder, user: string, status: string, timeoutMs?: number) => r.next("presence", d => d.user_id === user && d.status === status, timeoutMs);

	/** presence_users{status} as a node's /metrics shows it, once it equals `expected` (it follows changes within ~1 s). */
	const presenceGauge = (node: NodeProcess, expected: Record<string, number>) =>
		waitFor(
			`presence_users on ${node.url} to be ${JSON.stringify(expected)}`,
			async () => {
				const text = await (await fetch(`${node.url}/metrics`)).text();
				const shown = Object.fromEntries([...text.matchAll(/^presence_users\{[^}]*status="(\w+)"[^}]*\} (\d+)$/gm)].map(m => [m[1], Number(m[2])]));
				return Object.keys(shown).length === Object.keys(expected).length && Object.entries(expected).every(([status, users]) => shown[status] === users) && shown;
			},
			5_000,
			200,
		);

	it("A on NODE1 sees B on NODE2 go online → away → online on activity → offline on disconnect", async () => {
		const alice = track(await connectSocket(node1.url, "/city/presence", { token: token("alice"), device: "alice-laptop" }));
		await alice.next("presence.snapshot");
		const bob = track(await connectSocket(node2.url, "/city/presence", { token: token("bob"), device: "bob-phone" }));
		await presenceOf(alice, "bob", "online");

		const wentAway = Date.now();
		await presenceOf(alice, "bob", "away", 10_000);
		// Away only after the inactivity period (measured from when A heard "online"; slack for delivery).
		expect(Date.now() - wentAway).toBeGreaterThanOrEqual(AWAY_AFTER_MS - 500);

		// Users per status, mesh-wide: the same on both nodes, and from the REST endpoint. Alice sends no
		// activity either and connected first, so she is away by now too.
		await Promise.all([node1, node2].map(node => presenceGauge(node, { online: 0, away: 2, offline: 0 })));
		expect((await getJson(`${node2.url}/api/presence/counts`, { headers: { authorization: `Bearer ${token("alice")}` } })).body).toEqual({ online: 0, away: 2, offline: 0 });

		const ack = await bob.socket.emitWithAck("heartbeat", { active: true });
		expect(ack).toMatchObject({ ok: true, presence: { user_id: "bob", status: "online" } });
		await alice.next("presence", d => d.user_id === "bob" && d.status === "online" && d.previous === "away");

		bob.close();
		await presenceOf(alice, "bob", "offline", 5_000);
		// Bob's devices are his (and admins') to see; others see his status only.
		const { body } = await getJson(`${node1.url}/api/presence/users/bob`, { headers: { authorization: `Bearer ${token("bob")}` } });
		expect(body).toMatchObject({ user_id: "bob", status: "offline", devices: [{ device_id: "bob-phone", status: "offline", node_id: "rt-node2" }] });
		const asAlice = await getJson(`${node1.url}/api/presence/users/bob`, { headers: { authorization: `Bearer ${token("alice")}` } });
		expect(asAlice.body).toMatchObject({ user_id: "bob", status: "offline" });
		expect(asAlice.body).not.toHaveProperty("devices");
		await presenceGauge(node1, { online: 0, away: 1, offline: 1 });
	});

	it("a room message posted on NODE1 reaches NODE2's subscribers, in order, and the history pages by cursor", async () => {
		const room = `lobby-${Date.now()}`;
		const created = await getJson(`${node1.url}/api/city/rooms`, {
			method: "POST",
			headers: { authorization: `Bearer ${token("alice")}`, "content-type": "application/json" },
			body: JSON.stringify({ id: room, name: "Lobby" }),
		});
		expect(created.status).toBe(200);
		const listener = track(await connectSocket(node2.url, `/city/rooms/${room}`, { token: token("bob") }));
		const poster = track(await connectSocket(node1.url, `/city/rooms/${room}`, { token: token("alice") }));
		for (let i = 1; i <= 20; i++) {
			const ack = await poster.socket.emitWithAck("message", { body: `hello ${i}` });
			expect(ack).toMatchObject({ ok: true, message: { seq: i, body: `hello ${i}`, author_id: "alice" } });
		}
		await listener.next("message", m => m.seq === 20);
		const received = listener.events.filter(e => e.event === "message").map(e => e.data);
		expect(received.map(m => m.seq)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
		expect(received.map(m => m.body)).toEqual(Array.from({ length: 20 }, (_, i) => `hello ${i + 1}`));

		const page = await getJson(`${node2.url}/api/city/rooms/${room}/messages?limit=5`, { headers: { authorization: `Bearer ${token("bob")}` } });
		expect(page.body.messages.map((m: { seq: number }) => m.seq)).toEqual([16, 17, 18, 19, 20]);
		const older = await getJson(`${node2.url}/api/city/rooms/${room}/messages?limit=5&before=${page.body.next_before}`, { headers: { authorization: `Bearer ${token("bob")}` } });
		expect(older.body.messages.map((m: { seq: number }) => m.seq)).toEqual([11, 12, 13, 14, 15]);
	});

	it("edits and deletes reach other nodes' sockets; only the author edits, the author or an admin deletes", async () => {
		const room = `edits-${Date.now()}`;
		const as = (who: string, roles: string[] = []) => ({ authorization: `Bearer ${token(who, roles)}`, "content-type": "application/json" });
		await getJson(`${node1.url}/api/city/rooms`, { method: "POST", headers: as("alice"), body: JSON.stringify({ id: room, name: "Edits" }) });
		const watcher = track(await connectSocket(node2.url, `/city/rooms/${room}`, { token: token("bob") }));
		const posted = await getJson(`${node1.url}/api/city/rooms/${room}/messages`, { method: "POST", headers: as("alice"), body: JSON.stringify({ body: "first draft" }) });
		expect(posted.status).toBe(200);
		const url = `${node1.url}/api/city/rooms/${room}/messages/${posted.body.id}`;

		expect((await getJson(url, { method: "PATCH", headers: as("bob"), body: JSON.stringify({ body: "hijacked" }) })).status).toBe(403);
		const edited = await getJson(url, { method: "PATCH", headers: as("alice"), body: JSON.stringify({ body: "final text" }) });
		expect(edited.body).toMatchObject({ body: "final text", edited_at: expect.any(String) });
		await watcher.next("message.edited", m => m.id === posted.body.id && m.body === "final text");

		expect((await getJson(url, { method: "DELETE", headers: as("bob") })).status).toBe(403);
		expect((await getJson(url, { method: "DELETE", headers: as("moderator", ["admin"]) })).status).toBe(200);
		await watcher.next("message.deleted", m => m.id === posted.body.id);
		expect((await getJson(url, { method: "DELETE", headers: as("alice") })).status).toBe(404);
		const history = await getJson(`${node2.url}/api/city/rooms/${room}/messages`, { headers: as("bob") });
		expect(history.body.messages).toEqual([]);
	});

	it("bad socket input gets an error event; the connection and the other clients carry on", async () => {
		const room = `errors-${Date.now()}`;
		await getJson(`${node1.url}/api/city/rooms`, {
			method: "POST",
			headers: { authorization: `Bearer ${token("alice")}`, "content-type": "application/json" },
			body: JSON.stringify({ id: room, name: "Errors" }),
		});
		const sender = track(await connectSocket(node1.url, `/city/rooms/${room}`, { token: token("alice") }));
		const bystander = track(await connectSocket(node2.url, `/city/rooms/${room}`, { token: token("bob") }));

		expect(await sender.socket.emitWithAck("message", "just a string")).toMatchObject({ ok: false, error: { code: 422, field: "body" } });
		expect(await sender.socket.emitWithAck("message", { body: 42 })).toMatchObject({ ok: false, error: { code: 422, field: "body" } });
		expect(await sender.socket.emitWithAck("message", { body: "x".repeat(4_001) })).toMatchObject({ ok: false, error: { code: 413, type: "MESSAGE_TOO_LARGE", field: "body" } });
		expect(await sender.socket.emitWithAck("message", { body: "" })).toMatchObject({ ok: false, error: { code: 422, field: "body" } });
		await sender.next("error_event", e => e.code === 413);

		await expect(connectSocket(node1.url, "/city/rooms/no-such-room", { token: token("alice") })).rejects.toMatchObject({ data: { code: 404, type: "ROOM_NOT_FOUND" } });
		await expect(connectSocket(node1.url, `/city/rooms/${room}`, { token: "not-a-jwt" })).rejects.toMatchObject({ data: { code: 401 } });
		await expect(connectSocket(node1.url, `/city/rooms/${room}`, {})).rejects.toMatchObject({ data: { code: 401 } });
		await expect(connectSocket(node1.url, "/city/presence", { token: "not-a-jwt" })).rejects.toMatchObject({ data: { code: 401 } });

		expect(sender.socket.connected).toBe(true);
		expect(await sender.socket.emitWithAck("message", { body: "still here" })).toMatchObject({ ok: true });
		await bystander.next("message", m => m.body === "still here");
		expect(bystander.events.filter(e => e.event === "message")).toHaveLength(1);
	});

	it("a socket is closed when its token expires (error_event TOKEN_EXPIRED first); its user goes offline; others stay", async () => {
		const room = `expiry-${Date.now()}`;
		await getJson(`${node1.url}/api/city/rooms`, { method: "POST", headers: { authorization: `Bearer ${token("alice")}`, "content-type": "application/json" }, body: JSON.stringify({ id: room, name: "Expiry" }) });
		const watcher = track(await connectSocket(node1.url, "/city/presence", { token: token("expiry-watcher"), device: "w" }));
		const staying = track(await connectSocket(node1.url, `/city/rooms/${room}`, { token: token("alice") }));
		const shortLived = signToken(JWT_SECRET, { id: "frank", roles: [], teams: [] }, 2);
		const frankPresence = track(await connectSocket(node2.url, "/city/presence", { token: shortLived, device: "frank-tab" }));
		const frankRoom = track(await connectSocket(node1.url, `/city/rooms/${room}`, { token: shortLived }));
		const closedBy = (r: Recorder) => new Promise<string>(resolve => r.socket.once("disconnect", resolve));
		const closed = [closedBy(frankPresence), closedBy(frankRoom)];
		await presenceOf(watcher, "frank", "online");

		for (const socket of [frankPresence, frankRoom]) {
			expect(await socket.next("error_event", e => e.type === "TOKEN_EXPIRED", 5_000)).toMatchObject({ code: 401, type: "TOKEN_EXPIRED" });
		}
		expect(await Promise.all(closed)).toEqual(["io server disconnect", "io server disconnect"]);
		await presenceOf(watcher, "frank", "offline", 5_000);
		await expect(connectSocket(node2.url, "/city/presence", { token: shortLived, device: "frank-tab" })).rejects.toMatchObject({ data: { code: 401, type: "TOKEN_EXPIRED" } });
		expect((await getJson(`${node1.url}/api/presence/users/frank`, { headers: { authorization: `Bearer ${shortLived}` } })).body).toMatchObject({ type: "TOKEN_EXPIRED" });
		expect(staying.socket.connected && watcher.socket.connected).toBe(true);
		expect(await staying.socket.emitWithAck("message", { body: "after frank left" })).toMatchObject({ ok: true });
	});

	it("HTTP presence: online by token, the seed's internal endpoint for services, per-room lists", async () => {
		const carol = { authorization: `Bearer ${token("carol")}`, "content-type": "application/json" };
		expect((await getJson(`${node2.url}/api/presence/online`, { method: "POST", headers: carol, body: JSON.stringify({ device_id: "carol-cli" }) })).body).toMatchObject({ user_id: "carol", status: "online" });
		const internal = `${node1.url}/internal/matrix/presence/online`;
		expect((await getJson(internal, { method: "POST", headers: carol, body: JSON.stringify({ user_id: "dave" }) })).status).toBe(403);
		const asService = { authorization: `Bearer ${token("matrix-bridge", ["service"])}`, "content-type": "application/json" };
		expect((await getJson(internal, { method: "POST", headers: asService, body: JSON.stringify({ user_id: "dave" }) })).body).toMatchObject({ user_id: "dave", status: "online" });
		expect((await getJson(internal, { method: "POST", headers: asService, body: JSON.stringify({}) })).body.data[0].field).toBe("user_id");

		const room = `members-${Date.now()}`;
		await getJson(`${node1.url}/api/city/rooms`, { method: "POST", headers: carol, body: JSON.stringify({ id: room, name: "Members" }) });
		const list = await getJson(`${node1.url}/api/presence?room_id=${room}`, { headers: carol });
		expect(list.body).toEqual({ room_id: room, users: [expect.objectContaining({ user_id: "carol", status: "online" })] });
		expect((await getJson(`${node1.url}/api/presence?room_id=Bad Room`, { headers: carol })).status).toBe(422);
	});

	it("a presence socket can watch one room: its snapshot and changes cover that room's members only", async () => {
		const room = `watched-${Date.now()}`;
		const as = (who: string) => ({ authorization: `Bearer ${token(who)}`, "content-type": "application/json" });
		await getJson(`${node1.url}/api/city/rooms`, { method: "POST", headers: as("gina"), body: JSON.stringify({ id: room, name: "Watched" }) });
		const watcher = track(await connectSocket(node1.url, "/city/presence", { token: token("room-watcher"), device: "rw" }));
		await watcher.next("presence.snapshot");
		expect(await watcher.socket.emitWithAck("watch", { room_id: "Not A Room" })).toMatchObject({ ok: false, error: { code: 422, field: "room_id" } });
		const watched = await watcher.socket.emitWithAck("watch", { room_id: room });
		expect(watched).toMatchObject({ ok: true, snapshot: { room_id: room } });
		expect(watched.snapshot.users.map((u: { user_id: string }) => u.user_id)).toEqual([]);

		track(await connectSocket(node2.url, "/city/presence", { token: token("hank"), device: "h" })); // not a member
		track(await connectSocket(node2.url, "/city/presence", { token: token("gina"), device: "g" }));
		await presenceOf(watcher, "gina", "online");
		await new Promise(r => setTimeout(r, 300));
		expect(watcher.events.filter(e => e.event === "presence" && e.data.user_id === "hank")).toEqual([]);

		// Hank, online already, joins the room on the other node: the room's watchers learn he is online
		// (before, they heard of him only at his next status change).
		expect((await getJson(`${node2.url}/api/city/rooms/${room}/join`, { method: "POST", headers: as("hank") })).status).toBe(200);
		await presenceOf(watcher, "hank", "online");
	});

	it("a pagehide beacon (token in the body) turns that device offline after the grace period; a bad token is 401", async () => {
		const watcher = track(await connectSocket(node1.url, "/city/presence", { token: token("beacon-watcher"), device: "bw" }));
		await watcher.next("presence.snapshot");
		const frank = track(await connectSocket(node2.url, "/city/presence", { token: token("frank"), device: "frank-tab" }));
		await presenceOf(watcher, "frank", "online");
		const beacon = (body: unknown) => getJson(`${node2.url}/api/presence/beacon`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
		expect((await beacon({ token: "forged.token.value", device_id: "frank-tab" })).status).toBe(401);
		expect((await beacon({ token: token("frank"), device_id: "frank-tab" })).status).toBe(200);
		await presenceOf(watcher, "frank", "offline", 5_000);
		frank.close();
	});

	it("SIGKILL a node with connected clients: its users are offline on the other node within 5 s, and online again on reconnect", async () => {
		const watcher = track(await connectSocket(node1.url, "/city/presence", { token: token("watcher"), device: "w" }));
		await watcher.next("presence.snapshot");
		track(await connectSocket(node2.url, "/city/presence", { token: token("erin"), device: "erin-tab" }));
		await presenceOf(watcher, "erin", "online");

		const killedAt = Date.now();
		node2.child.kill("SIGKILL");
		await presenceOf(watcher, "erin", "offline", 5_000);
		const offlineAfterMs = Date.now() - killedAt;
		process.stdout.write(`[realtime] erin offline ${offlineAfterMs} ms after SIGKILL of her node\n`);
		expect(offlineAfterMs).toBeLessThanOrEqual(5_000);

		track(await connectSocket(node1.url, "/city/presence", { token: token("erin"), device: "erin-tab" }));
		await watcher.next("presence", d => d.user_id === "erin" && d.status === "online" && Date.now() > killedAt + offlineAfterMs - 1);
	});

	it("a node that stops (SIGTERM) closes its sockets' connections, so clients reconnect by themselves when it is back", async () => {
		const port = String(node2.port);
		const watcher = track(await connectSocket(node1.url, "/city/presence", { token: token("drain-watcher"), device: "w" }));
		let restarted = await startNodeProcess({ ...env, NODE_ID: "rt-node2", NODE_ROLE: "node2", PORT: port });
		node2 = restarted; // stopped by afterAll
		await waitForMesh(restarted, ["presence"], 2, 40_000, "/api/city/rooms");
		// A client as a browser has it: reconnecting on its own (socket.io does not after "io server disconnect").
		const gina = record(io(`${restarted.url}/city/presence`, { ...WS_OPTIONS, reconnection: true, reconnectionDelay: 200, reconnectionDelayMax: 500, auth: { token: token("gina"), device: "gina-tab" } }));
		sockets.push(gina);
		await presenceOf(watcher, "gina", "online");
		const reasons: string[] = [];
		gina.socket.on("disconnect", reason => reasons.push(reason));

		// An open websocket used to keep the HTTP server, and so the node, from stopping at all.
		const stopped = await Promise.race([restarted.kill("SIGTERM"), new Promise(resolve => setTimeout(() => resolve("still running 10 s after SIGTERM"), 10_000).unref())]);
		expect(stopped).toBe(0);
		await presenceOf(watcher, "gina", "offline", 5_000);
		expect(reasons).toEqual(["transport close"]);

		const reconnected = new Promise<void>(resolve => gina.socket.io.once("reconnect", () => resolve()));
		restarted = await startNodeProcess({ ...env, NODE_ID: "rt-node2", NODE_ROLE: "node2", PORT: port });
		node2 = restarted; // stopped by afterAll
		await watcher.next("presence", d => d.user_id === "gina" && d.status === "online" && d.previous === "offline", 30_000);
		await reconnected;
		expect(reasons).toEqual(["transport close"]);
	});
});
