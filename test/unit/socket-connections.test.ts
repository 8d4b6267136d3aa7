/**
 * lib/realtime/socket-connections.ts against a real socket.io server and real clients: an open connection no
 * longer keeps its upgrade (or first polling) request alive, keeps only the named handshake headers,
 * and a verified socket keeps no token. The control case shows that socket.io alone does keep the request.
 */
import http, { type IncomingMessage } from "http";
import type { AddressInfo } from "net";
import v8 from "v8";
import vm from "vm";
import { Server, type Socket as ServerSocket } from "socket.io";
import { io, type Socket } from "socket.io-client";
import { signToken, verifyToken, verifyTokenClaims } from "../../lib/http/auth";
import { compactSocketListeners, ImplicitOwnRoomAdapter, keepSlimRequests, takeToken } from "../../lib/realtime/socket-connections";

v8.setFlagsFromString("--expose-gc");
const gc = vm.runInNewContext("gc") as () => void;
// V8's own answer to "is this object in fast mode?" (not a dictionary), for the listener records below.
v8.setFlagsFromString("--allow-natives-syntax");
const hasFastProperties = new Function("o", "return %HasFastProperties(o)") as (o: object) => boolean;

interface Running {
	io: Server;
	url: string;
	/** WeakRefs to every request that reached the HTTP server (upgrades and polling requests) */
	requests: Array<WeakRef<IncomingMessage>>;
	connected: Promise<ServerSocket>;
	close(): Promise<void>;
}

/** What compactSocketListeners reaches from a socket, by name, and engine.io's stand-in upgrade response. */
function socketEmitters(socket: ServerSocket, response: unknown): Record<string, { _events: object }> {
	const conn = socket.conn as unknown as { transport: { socket: { _socket: unknown; _receiver: unknown } } };
	const ws = conn.transport.socket;
	return { "socket.io socket": socket, "engine.io socket": conn, transport: conn.transport, WebSocket: ws, "TCP socket": ws._socket, receiver: ws._receiver, "upgrade response": response } as unknown as Record<string, { _events: object }>;
}

async function startServer(slim: boolean, adapter?: typeof ImplicitOwnRoomAdapter): Promise<Running> {
	const server = http.createServer();
	const requests: Array<WeakRef<IncomingMessage>> = [];
	const ioServer = new Server(server, { path: "/ws/socket.io", ...(adapter ? { adapter } : {}) });
	// After attaching: engine.io takes over the server's "request" listeners when it attaches.
	server.prependListener("upgrade", (req: IncomingMessage) => requests.push(new WeakRef(req)));
	server.prependListener("request", (req: IncomingMessage) => requests.push(new WeakRef(req)));
	if (slim) keepSlimRequests(ioServer.engine);
	(ioServer.engine as unknown as { use(fn: (req: unknown, res: unknown, next: () => void) => void): void }).use((_req, res, next) => {
		upgradeResponse = new WeakRef(res as object);
		next();
	});
	const connected = new Promise<ServerSocket>(resolve =>
		ioServer.of("/t").on("connection", socket => {
			if (slim) compactSocketListeners(socket);
			resolve(socket);
		}),
	);
	await new Promise<void>(resolve => server.listen(0, "127.0.0.1", resolve));
	const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
	return {
		io: ioServer,
		url,
		requests,
		connected,
		close: () => new Promise(resolve => ioServer.close(() => resolve())),
	};
}

/**
 * The last response engine.io handed its middlewares (for a websocket: its stand-in upgrade response, which the
 * connection keeps alive itself). Weakly held: a strong reference here would keep a polling request alive.
 */
let upgradeResponse: WeakRef<object> | null = null;

const clients: Socket[] = [];
function connect(url: string, transports: string[]): Socket {
	const client = io(`${url}/t`, { path: "/ws/socket.io", transports, forceNew: true, reconnection: false, extraHeaders: { "user-agent": "footprint-test", cookie: "session=secret" } });
	clients.push(client);
	return client;
}
afterEach(() => clients.splice(0).forEach(c => c.close()));

/** After a few GCs (some objects need two), how many of the requests are still alive. */
async function liveRequests(requests: Array<WeakRef<IncomingMessage>>): Promise<number> {
	for (let i = 0; i < 3; i++) {
		await new Promise(resolve => setImmediate(resolve));
		gc();
	}
	return requests.filter(r => r.deref() !== undefined).length;
}

describe("socket footprint", () => {
	it("control: bare socket.io keeps a websocket's upgrade request for as long as the socket is open", async () => {
		const server = await startServer(false);
		try {
			connect(server.url, ["websocket"]);
			const socket = await server.connected;
			expect(await liveRequests(server.requests)).toBe(1);
			expect(socket.handshake.headers.cookie).toBe("session=secret");
		} finally {
			await server.close();
		}
	});

	it("with keepSlimRequests the upgrade request is freed while the socket stays open, and only the kept headers remain", async () => {
		const server = await startServer(true);
		try {
			const client = connect(server.url, ["websocket"]);
			const socket = await server.connected;
			expect(server.requests.length).toBe(1);
			expect(await liveRequests(server.requests)).toBe(0);
			expect(socket.connected).toBe(true);
			expect(Object.keys(socket.handshake.headers).sort()).toEqual(["host", "user-agent"]);
			expect(socket.handshake).toMatchObject({ url: expect.stringContaining("/ws/socket.io/"), query: { transport: "websocket" }, secure: false });
			// Still a working connection both ways.
			const echoed = new Promise(resolve => client.once("echo", resolve));
			socket.emit("echo", { n: 1 });
			await expect(echoed).resolves.toEqual({ n: 1 });
		} finally {
			await server.close();
		}
	});

	it("control: bare socket.io keeps its emitters' listeners in dictionaries (not the streams': the TCP socket and ws's receiver pre-shape theirs)", async () => {
		const server = await startServer(false);
		try {
			connect(server.url, ["websocket"]);
			const { "TCP socket": tcp, receiver, ...emitters } = socketEmitters(await server.connected, upgradeResponse?.deref());
			expect([hasFastProperties(tcp._events), hasFastProperties(receiver._events)]).toEqual([true, true]);
			expect(Object.keys(emitters)).toHaveLength(5);
			for (const [name, emitter] of Object.entries(emitters)) expect([name, hasFastProperties(emitter._events)]).toEqual([name, false]);
		} finally {
			await server.close();
		}
	});

	it("compacted, every emitter an open websocket keeps holds its listeners in a fast object with nothing inherited, and all of them still run", async () => {
		const server = await startServer(true);
		try {
			const client = connect(server.url, ["websocket"]);
			const socket = await server.connected;
			const emitters = socketEmitters(socket, upgradeResponse?.deref());
			for (const [name, emitter] of Object.entries(emitters)) {
				expect([name, hasFastProperties(emitter._events), Object.getPrototypeOf(Object.getPrototypeOf(emitter._events))]).toEqual([name, true, null]);
			}
			// Events named like Object.prototype's members find no handler (as with Node's null-prototype record).
			const heard: string[] = [];
			socket.on("echo", (m: unknown) => void socket.emit("echo", m));
			for (const name of ["__proto__", "toString", "constructor", "hasOwnProperty", "valueOf"]) {
				expect(socket.listeners(name)).toEqual([]);
				client.emit(name, "x");
			}
			socket.once("once", () => heard.push("once"));
			client.emit("once");
			client.emit("once");
			const echoed = new Promise(resolve => client.once("echo", resolve));
			client.emit("echo", { n: 2 });
			await expect(echoed).resolves.toEqual({ n: 2 });
			expect(heard).toEqual(["once"]);
			expect(socket.connected).toBe(true);
			// Disconnecting still runs the library's own listeners down to the TCP socket.
			const gone = new Promise(resolve => socket.once("disconnect", resolve));
			client.close();
			await expect(gone).resolves.toBe("client namespace disconnect");
		} finally {
			await server.close();
		}
	});

	it("a session that starts with HTTP long-polling and upgrades keeps no request either", async () => {
		const server = await startServer(true);
		try {
			const client = connect(server.url, ["polling", "websocket"]);
			const socket = await server.connected;
			await new Promise<void>(resolve => (client.io.engine.transport.name === "websocket" ? resolve() : client.io.engine.once("upgrade", () => resolve())));
			expect(server.requests.length).toBeGreaterThan(1);
			expect(await liveRequests(server.requests)).toBe(0);
			expect(socket.handshake.headers.cookie).toBeUndefined();
			expect(socket.handshake.headers["user-agent"]).toBe("footprint-test");
			expect(socket.conn.transport.name).toBe("websocket");
		} finally {
			await server.close();
		}
	});
});

describe("takeToken", () => {
	const handshake = (auth: Record<string, unknown>, authorization?: string) => ({ handshake: { headers: authorization ? { authorization } : {}, auth } }) as unknown as Parameters<typeof takeToken>[0];

	it("returns auth.token and leaves the handshake without it, other auth fields kept", () => {
		const socket = handshake({ token: "abc", device: "d1" });
		expect(takeToken(socket)).toBe("abc");
		expect(socket.handshake.auth).toEqual({ device: "d1" });
	});
	it("falls back to the Authorization header and clears it", () => {
		const socket = handshake({}, "Bearer xyz");
		expect(takeToken(socket)).toBe("xyz");
		expect(socket.handshake.headers.authorization).toBeUndefined();
		expect(takeToken(handshake({}))).toBeUndefined();
	});
});

describe("verifyTokenClaims", () => {
	it("verifies every time (a new user per call) and gives the expiry, where verifyToken answers repeats from its cache", () => {
		const secret = "s".repeat(32);
		const token = signToken(secret, { id: "socket-user", roles: [], teams: [] }, 60);
		const claims = verifyTokenClaims(secret, token);
		expect(claims.user).not.toBe(verifyTokenClaims(secret, token).user);
		expect(claims.expiresAt).toBeGreaterThan(Date.now() + 55_000);
		expect(claims.expiresAt).toBeLessThanOrEqual(Date.now() + 60_000);
		expect(verifyToken(secret, token)).toBe(verifyToken(secret, token));
	});
});

/** Rejects, naming what was awaited, when it takes longer than 2 s (a broken adapter loses packets). */
function within<T>(what: string, promise: Promise<T>): Promise<T> {
	let timer: NodeJS.Timeout | undefined;
	const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: nothing within 2 s`)), 2_000)));
	return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/**
 * One scenario of rooms and broadcasts, played on a real server with the given adapter; what each
 * client received per step, and what the server saw, with socket ids replaced by client names.
 */
async function roomScenario(adapter?: typeof ImplicitOwnRoomAdapter) {
	const server = await startServer(false, adapter);
	const nsp = server.io.of("/t");
	const url = `${server.url}/t`;
	const names = ["a", "b", "c"] as const;
	const received: Record<string, string[]> = { a: [], b: [], c: [] };
	const byName: Record<string, ServerSocket> = {};
	const fenced: Array<(n: number) => void> = [];
	try {
		for (const name of names) {
			const serverSide = new Promise<ServerSocket>(resolve => nsp.once("connection", resolve));
			const client = io(url, { path: "/ws/socket.io", transports: ["websocket"], forceNew: true, reconnection: false });
			clients.push(client);
			client.on("step", (label: string) => received[name].push(label));
			client.on("fence", (n: number) => fenced.forEach(f => f(n)));
			byName[name] = await within(`connection of ${name}`, serverSide);
		}
		const nameOf = (id: string) => names.find(n => byName[n].id === id) ?? id;
		const { a, b, c } = byName;
		// Each client has seen everything sent to it in step n once it has the fence of step n.
		let step = 0;
		const fence = async () => {
			const n = ++step;
			const arrived = Promise.all(names.map(() => new Promise<void>(resolve => fenced.push(m => m === n && resolve()))));
			nsp.emit("fence", n);
			await within(`fence ${n}`, arrived);
			fenced.length = 0;
		};
		const rooms = () => Object.fromEntries(names.map(n => [n, [...byName[n].rooms].map(nameOf).sort()]));

		b.join("r1");
		c.join(["r1", "r2"]);
		const roomsAfterJoin = rooms();
		nsp.emit("step", "everyone");
		nsp.to("r1").emit("step", "r1");
		nsp.to(a.id).emit("step", "own room of a");
		nsp.to(["r1", a.id, c.id]).emit("step", "r1 + a + c, once each");
		nsp.except("r2").emit("step", "all but r2");
		nsp.to("r1").except(c.id).emit("step", "r1 but c");
		b.broadcast.emit("step", "broadcast from b");
		b.to("r2").emit("step", "b to r2");
		await fence();
		const inR1 = (await nsp.in("r1").fetchSockets()).map(s => nameOf(s.id)).sort();
		const all = [...(await nsp.allSockets())].map(nameOf).sort();
		nsp.in("r1").socketsLeave("r1");
		nsp.to("r1").emit("step", "r1 after socketsLeave");
		nsp.in(c.id).socketsJoin("r3");
		nsp.to("r3").emit("step", "r3, joined by id");
		await fence();
		const roomsAfterLeave = rooms();
		const closed = new Promise(resolve => c.once("disconnect", resolve));
		nsp.in("r3").disconnectSockets(true);
		await within("disconnect of c", closed);
		const afterDisconnect = [...(await nsp.allSockets())].map(nameOf).sort();
		for (const s of [a, b]) s.disconnect(true);
		await new Promise(resolve => setImmediate(resolve));
		return { received, roomsAfterJoin, inR1, all, roomsAfterLeave, afterDisconnect, leftRooms: nsp.adapter.rooms.size, leftSids: nsp.adapter.sids.size };
	} finally {
		await server.close();
	}
}

describe("ImplicitOwnRoomAdapter", () => {
	it("behaves like socket.io's default adapter: broadcasts, own rooms, except, fetch, joins and leaves by query, disconnects", async () => {
		const withDefault = await roomScenario();
		const withImplicit = await roomScenario(ImplicitOwnRoomAdapter);
		expect(withImplicit).toEqual(withDefault);
		// The scenario itself says something: a control against a scenario that proves nothing.
		expect(withDefault.received).toEqual({
			a: ["everyone", "own room of a", "r1 + a + c, once each", "all but r2", "broadcast from b"],
			b: ["everyone", "r1", "r1 + a + c, once each", "all but r2", "r1 but c"],
			c: ["everyone", "r1", "r1 + a + c, once each", "broadcast from b", "b to r2", "r3, joined by id"],
		});
		expect(withDefault.roomsAfterJoin).toEqual({ a: ["a"], b: ["b", "r1"], c: ["c", "r1", "r2"] });
		expect(withDefault.roomsAfterLeave).toEqual({ a: ["a"], b: ["b"], c: ["c", "r2", "r3"] });
		expect(withDefault).toMatchObject({ inR1: ["b", "c"], all: ["a", "b", "c"], afterDisconnect: ["a", "b"], leftRooms: 0, leftSids: 0 });
	});

	it("keeps nothing per socket for a socket in no room but its own (the default adapter keeps a room and a socket entry)", async () => {
		const held = async (adapter?: typeof ImplicitOwnRoomAdapter) => {
			const server = await startServer(false, adapter);
			try {
				connect(server.url, ["websocket"]);
				const { adapter: used } = (await server.connected).nsp;
				return { rooms: used.rooms.size, sids: used.sids.size };
			} finally {
				await server.close();
			}
		};
		expect(await held(ImplicitOwnRoomAdapter)).toEqual({ rooms: 0, sids: 0 });
		expect(await held()).toEqual({ rooms: 1, sids: 1 });
	});
});
