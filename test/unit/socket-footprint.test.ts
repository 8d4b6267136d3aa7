/**
 * lib/socket-footprint.ts against a real socket.io server and real clients: an open connection no
 * longer keeps its upgrade (or first polling) request alive, keeps only the named handshake headers,
 * and a verified socket keeps no token. The control case shows that socket.io alone does keep the request.
 */
import http, { type IncomingMessage } from "http";
import type { AddressInfo } from "net";
import v8 from "v8";
import vm from "vm";
import { Server, type Socket as ServerSocket } from "socket.io";
import { io, type Socket } from "socket.io-client";
import { signToken, verifyToken } from "../../lib/auth";
import { keepSlimRequests, takeToken } from "../../lib/socket-footprint";

v8.setFlagsFromString("--expose-gc");
const gc = vm.runInNewContext("gc") as () => void;

interface Running {
	io: Server;
	url: string;
	/** WeakRefs to every request that reached the HTTP server (upgrades and polling requests) */
	requests: Array<WeakRef<IncomingMessage>>;
	connected: Promise<ServerSocket>;
	close(): Promise<void>;
}

async function startServer(slim: boolean): Promise<Running> {
	const server = http.createServer();
	const requests: Array<WeakRef<IncomingMessage>> = [];
	const ioServer = new Server(server, { path: "/ws/socket.io" });
	// After attaching: engine.io takes over the server's "request" listeners when it attaches.
	server.prependListener("upgrade", (req: IncomingMessage) => requests.push(new WeakRef(req)));
	server.prependListener("request", (req: IncomingMessage) => requests.push(new WeakRef(req)));
	if (slim) keepSlimRequests(ioServer.engine);
	const connected = new Promise<ServerSocket>(resolve => ioServer.of("/t").on("connection", resolve));
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

describe("verifyToken with cache: false", () => {
	it("verifies every time (a new user object per call), where the default answers repeats from its cache", () => {
		const secret = "s".repeat(32);
		const token = signToken(secret, { id: "socket-user", roles: [], teams: [] });
		expect(verifyToken(secret, token, { cache: false })).not.toBe(verifyToken(secret, token, { cache: false }));
		expect(verifyToken(secret, token)).toBe(verifyToken(secret, token));
	});
});
