/**
 * socket.io on the gateway's own HTTP server (moleculer-io does not install beside Moleculer 0.15).
 *
 * Seed channels `/ws/<service>/<channel>` map onto socket.io like this: the engine listens at
 * `/ws/socket.io`, and each channel is a namespace —
 *   /ws/city/rooms/{room_id}  →  namespace `/city/rooms/{room_id}`  (events: message, message.edited, message.deleted)
 *   /ws/city/presence         →  namespace `/city/presence`         (events: presence, presence.snapshot; `watch` narrows to one room)
 * e.g. `io("https://node1:9300/city/rooms/lobby", { path: "/ws/socket.io", auth: { token } })`.
 *
 * The handshake carries the same JWT as HTTP (`auth.token`, or an Authorization header). Clients on any
 * node see changes made on every node: services broadcast `city.message.*` and `presence.changed`
 * across the mesh and each gateway pushes them to its own sockets. Bad input on a socket gets an
 * `error_event` (and a failed ack) on that socket only; the connection stays up.
 */
import type { Context, Service, ServiceSchema } from "moleculer";
import { Server, type Namespace, type Socket } from "socket.io";
import type { DefaultEventsMap } from "socket.io/dist/typed-events";
import { AuthError, verifyTokenClaims, type MeshUser, type VerifiedToken } from "../lib/auth";
import { HTTP_METRICS } from "../lib/metrics";
import { nodeContextOf } from "../lib/node-context";
import { jwtSecretOf } from "../lib/settings";
import { ImplicitOwnRoomAdapter, keepSlimRequests, takeToken } from "../lib/socket-footprint";

export const WS_PATH = "/ws/socket.io";
export const PRESENCE_NAMESPACE = "/city/presence";
export const ROOM_NAMESPACE = /^\/city\/rooms\/[a-z0-9][a-z0-9_-]{0,62}$/;
const ROOM_PREFIX = "/city/rooms/";
const MAX_SOCKET_PAYLOAD_BYTES = 64 * 1024;
const TOKEN_SWEEP_MS = 1_000;

/** socket.io rooms inside the presence namespace: what a socket watches (everyone, or one city room). */
const EVERYONE = "watch:*";
const watching = (roomId: string) => `watch:room:${roomId}`;
const ROOM_ID_PATTERN = /^[a-z0-9][a-z0-9_-]{0,62}$/;

export const WS_METRICS = {
	fanout: "channel_ws_fanout_latency_seconds",
	sockets: "ws_sockets",
};

interface WsError {
	code: number;
	type: string;
	message: string;
	field?: string;
	/** set on 5xx faults worth sending again (the database restarting, a node lost) */
	retryable?: boolean;
}

interface SocketData {
	user?: MeshUser;
	/** when the handshake token expires (ms since the epoch): the socket is closed then */
	expiresAt?: number | null;
	canPost?: boolean;
	device?: string;
}

type MeshSocket = Socket<DefaultEventsMap, DefaultEventsMap, DefaultEventsMap, SocketData>;
type Ack = ((answer: unknown) => void) | undefined;

interface SocketIoThis extends Service {
	io: Server | null;
	socketCounts: { rooms: number; presence: number };
	attachSocketIo(): void;
	tokenSweep: NodeJS.Timeout | null;
	socketToken(socket: MeshSocket): VerifiedToken | undefined;
	closeExpiredSockets(): void;
	closeSocketConnections(): void;
	pushToRoom(roomId: string, event: string, message: { created_at?: string; room_id?: string }): void;
	postFromRoomSocket(socket: MeshSocket, payload: unknown, ack: Ack): void;
	servePresenceSocket(socket: MeshSocket): Promise<void>;
	countSocket(channel: "rooms" | "presence", delta: number): void;
}

/** A room socket's room, from its namespace: not stored per socket. */
function roomIdOf(socket: MeshSocket): string {
	return socket.nsp.name.slice(ROOM_PREFIX.length);
}

/**
 * One pair of listeners for all of a node's room sockets (socket.io calls them with `this` = the
 * socket): closures per socket would be ~150 B of each idle socket's heap (docs/BENCHMARKS.md).
 */
function roomSocketListeners(service: SocketIoThis) {
	return {
		disconnect(this: MeshSocket) {
			service.countSocket("rooms", -1);
		},
		message(this: MeshSocket, payload: unknown, ack: Ack) {
			service.postFromRoomSocket(this, payload, ack);
		},
	};
}

function connectError(problem: WsError): Error & { data: WsError } {
	return Object.assign(new Error(problem.message), { data: problem });
}

/** Moleculer and auth errors as the small JSON shape sockets get. */
export function asWsError(err: unknown): WsError {
	const e = err as { code?: number; type?: string; message?: string; data?: unknown };
	const field = Array.isArray(e.data) ? (e.data[0] as { field?: string })?.field : (e.data as { field?: string } | undefined)?.field;
	const code = typeof e.code === "number" && e.code >= 400 && e.code < 600 ? e.code : 500;
	// A database fault (or a lost node, a timeout) is retryable: the socket client may send again.
	const retryable = (err as { retryable?: boolean }).retryable === true && code >= 500;
	return {
		code,
		type: e.type ?? (code === 500 ? "INTERNAL" : "ERROR"),
		message: code === 500 ? "Internal error" : (e.message ?? "error"),
		...(field ? { field } : {}),
		...(retryable ? { retryable } : {}),
	};
}

function refuse(socket: MeshSocket, ack: Ack, problem: WsError): void {
	socket.emit("error_event", problem);
	if (typeof ack === "function") ack({ ok: false, error: problem });
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
	return typeof value === "object" && value !== null && !Array.isArray(value);
}

export const SocketIoMixin: ServiceSchema = {
	name: "socket-io",

	events: {
		"city.message.created"(this: Service, ctx: Context<{ room_id: string; created_at: string }>) {
			(this as SocketIoThis).pushToRoom(ctx.params.room_id, "message", ctx.params);
		},
		"city.message.edited"(this: Service, ctx: Context<{ room_id: string }>) {
			(this as SocketIoThis).pushToRoom(ctx.params.room_id, "message.edited", ctx.params);
		},
		"city.message.deleted"(this: Service, ctx: Context<{ room_id: string }>) {
			(this as SocketIoThis).pushToRoom(ctx.params.room_id, "message.deleted", ctx.params);
		},
		/** To sockets watching everyone, and to those watching one of the user's rooms (each socket once). */
		"presence.changed"(this: Service, ctx: Context<{ rooms?: string[] }>) {
			const targets = [EVERYONE, ...(ctx.params.rooms ?? []).map(watching)];
			(this as SocketIoThis).io?.of(PRESENCE_NAMESPACE).to(targets).emit("presence", ctx.params);
		},
	},

	methods: {
		attachSocketIo(this: SocketIoThis) {
			const { settings } = nodeContextOf(this.broker);
			const server = (this as unknown as { server: import("http").Server }).server;
			const io = new Server(server, {
				path: WS_PATH,
				adapter: ImplicitOwnRoomAdapter,
				maxHttpBufferSize: MAX_SOCKET_PAYLOAD_BYTES,
				cors: settings.corsOrigins.length ? { origin: settings.corsOrigins } : undefined,
			});
			this.io = io;
			keepSlimRequests(io.engine);
			// An HTTP server closes only when every connection has ended, websockets included: moleculer-web's
			// stop (server.close) would wait for them for ever, so closing the server closes them first.
			const closeServer = server.close.bind(server);
			server.close = (callback?: (err?: Error) => void) => {
				this.closeSocketConnections();
				return closeServer(callback);
			};
			const rooms = io.of(ROOM_NAMESPACE);
			rooms.use((socket, next) => {
				const s = socket as MeshSocket;
				const roomId = roomIdOf(s);
				let verified: VerifiedToken | undefined;
				try {
					verified = this.socketToken(s);
				} catch (err) {
					return next(connectError(asWsError(err)));
				}
				const user = verified?.user;
				this.broker
					.call("city.roomAccess", { room_id: roomId }, { meta: { user } })
					.then(answer => {
						const access = answer as { read: boolean; post: boolean };
						if (!access.read) return next(connectError(user ? { code: 403, type: "FORBIDDEN", message: "Not a member of this room" } : { code: 401, type: "NO_TOKEN", message: "A token is required" }));
						s.data = { user, canPost: access.post, expiresAt: verified?.expiresAt };
						next();
					})
					.catch(err => next(connectError(asWsError(err))));
			});
			const roomListeners = roomSocketListeners(this);
			rooms.on("connection", socket => {
				this.countSocket("rooms", 1);
				socket.on("disconnect", roomListeners.disconnect);
				socket.on("message", roomListeners.message);
			});

			const presence = io.of(PRESENCE_NAMESPACE);
			presence.use((socket, next) => {
				try {
					const verified = this.socketToken(socket as MeshSocket);
					if (!verified) return next(connectError({ code: 401, type: "NO_TOKEN", message: "A token is required" }));
					(socket as MeshSocket).data = { user: verified.user, expiresAt: verified.expiresAt };
					next();
				} catch (err) {
					next(connectError(asWsError(err)));
				}
			});
			presence.on("connection", socket => {
				this.servePresenceSocket(socket as MeshSocket).catch(err => this.logger.warn(`presence socket failed: ${(err as Error).message}`));
			});
			this.tokenSweep = setInterval(() => this.closeExpiredSockets(), TOKEN_SWEEP_MS);
			this.tokenSweep.unref();
		},

		/**
		 * A token is checked once per connection, so a socket would outlive its token: each one is closed
		 * (after an error_event TOKEN_EXPIRED, so the client knows to get a new token) within
		 * TOKEN_SWEEP_MS of its token's expiry, as HTTP requests with that token are refused from then on.
		 */
		closeExpiredSockets(this: SocketIoThis) {
			const now = Date.now();
			for (const namespace of (this.io as unknown as { _nsps: Map<string, Namespace> })._nsps.values()) {
				for (const socket of (namespace.sockets as Map<string, MeshSocket>).values()) {
					const { expiresAt } = socket.data;
					if (!expiresAt || expiresAt > now) continue;
					socket.emit("error_event", { code: 401, type: "TOKEN_EXPIRED", message: "Token expired: connect again with a new token" });
					// Not disconnect(true): other namespaces may share the connection (a page multiplexes its sockets).
					socket.disconnect();
				}
			}
		},

		/**
		 * Ends every socket.io connection of this node without a DISCONNECT packet: clients see "transport
		 * close" and reconnect by themselves (after "io server disconnect" socket.io clients stay away), to
		 * this node when it is back or, behind a load balancer, to another. Idempotent.
		 */
		closeSocketConnections(this: SocketIoThis) {
			if (this.tokenSweep) clearInterval(this.tokenSweep);
			this.tokenSweep = null;
			// Not io.close(): that would close moleculer-web's HTTP server under it.
			this.io?.engine.close();
		},

		/** The handshake token's user and expiry; undefined when no token was sent. */
		socketToken(socket: MeshSocket): VerifiedToken | undefined {
			const token = takeToken(socket);
			if (!token) return undefined;
			try {
				return verifyTokenClaims(jwtSecretOf(nodeContextOf(this.broker).settings), token);
			} catch (err) {
				if (err instanceof AuthError) throw Object.assign(err, { code: 401 });
				throw err;
			}
		},

		postFromRoomSocket(this: SocketIoThis, socket: MeshSocket, payload: unknown, ack: Ack) {
			if (!isPlainObject(payload) || typeof payload.body !== "string") {
				return refuse(socket, ack, { code: 422, type: "VALIDATION_ERROR", message: "Expected {body: string}", field: "body" });
			}
			if (!socket.data.canPost) return refuse(socket, ack, { code: socket.data.user ? 403 : 401, type: "FORBIDDEN", message: "You may not post in this room" });
			this.broker
				.call("city.postMessage", { room_id: roomIdOf(socket), body: payload.body }, { meta: { user: socket.data.user } })
				.then(message => typeof ack === "function" && ack({ ok: true, message }))
				.catch(err => refuse(socket, ack, asWsError(err)));
		},

		async servePresenceSocket(this: SocketIoThis, socket: MeshSocket) {
			const user = socket.data.user as MeshUser;
			const requested = (socket.handshake.auth as { device?: unknown }).device;
			const device = typeof requested === "string" && /^[\w.:-]{1,100}$/.test(requested) ? requested : socket.id;
			socket.data.device = device;
			this.countSocket("presence", 1);
			const who = { user_id: user.id, device_id: device };
			socket.on("disconnect", () => {
				this.countSocket("presence", -1);
				this.broker.call("presence.gone", who).catch(err => this.logger.warn(`presence.gone failed: ${(err as Error).message}`));
			});
			socket.on("heartbeat", (payload: unknown, ack: Ack) => {
				if (!isPlainObject(payload) || typeof payload.active !== "boolean") {
					return refuse(socket, ack, { code: 422, type: "VALIDATION_ERROR", message: "Expected {active: boolean}", field: "active" });
				}
				this.broker
					.call("presence.heartbeat", { ...who, node_id: this.broker.nodeID, active: payload.active })
					.then(answer => typeof ack === "function" && ack({ ok: true, presence: answer }))
					.catch(err => refuse(socket, ack, asWsError(err)));
			});
			// watch {room_id}: only changes of that room's members (and their snapshot); {room_id: null}: everyone.
			socket.on("watch", (payload: unknown, ack: Ack) => {
				const roomId = isPlainObject(payload) ? payload.room_id : undefined;
				if (roomId !== null && (typeof roomId !== "string" || !ROOM_ID_PATTERN.test(roomId))) {
					return refuse(socket, ack, { code: 422, type: "VALIDATION_ERROR", message: "Expected {room_id: string | null}", field: "room_id" });
				}
				for (const room of socket.rooms) if (room.startsWith("watch:")) socket.leave(room);
				socket.join(roomId ? watching(roomId) : EVERYONE);
				this.broker
					.call("presence.list", roomId ? { room_id: roomId } : {}, { meta: { user } })
					.then(snapshot => typeof ack === "function" && ack({ ok: true, snapshot }))
					.catch(err => refuse(socket, ack, asWsError(err)));
			});
			socket.on("visibility", (payload: unknown, ack: Ack) => {
				const state = isPlainObject(payload) ? payload.state : undefined;
				if (state !== "hidden" && state !== "visible") {
					return refuse(socket, ack, { code: 422, type: "VALIDATION_ERROR", message: "Expected {state: 'hidden' | 'visible'}", field: "state" });
				}
				const call = state === "hidden" ? this.broker.call("presence.gone", who) : this.broker.call("presence.heartbeat", { ...who, node_id: this.broker.nodeID, active: true });
				call.then(answer => typeof ack === "function" && ack({ ok: true, presence: answer })).catch(err => refuse(socket, ack, asWsError(err)));
			});
			socket.join(EVERYONE);
			await this.broker.call("presence.connect", { ...who, node_id: this.broker.nodeID });
			socket.emit("presence.snapshot", await this.broker.call("presence.list", {}, { meta: { user } }));
		},

		pushToRoom(this: SocketIoThis, roomId: string, event: string, message: { created_at?: string; room_id?: string }) {
			const namespace = (this.io as unknown as { _nsps: Map<string, Namespace> } | null)?._nsps.get(ROOM_PREFIX + roomId);
			if (!namespace || namespace.sockets.size === 0) return;
			namespace.emit(event, message);
			if (event === "message" && message.created_at && this.broker.isMetricsEnabled()) {
				this.broker.metrics.observe(WS_METRICS.fanout, Math.max(0, (Date.now() - Date.parse(message.created_at)) / 1000), { channel_id: roomId });
			}
		},

		countSocket(this: SocketIoThis, channel: "rooms" | "presence", delta: number) {
			this.socketCounts[channel] += delta;
			if (!this.broker.isMetricsEnabled()) return;
			this.broker.metrics.set(WS_METRICS.sockets, this.socketCounts[channel], { channel });
			this.broker.metrics.set(HTTP_METRICS.activeConnections, this.socketCounts.rooms + this.socketCounts.presence, { kind: "ws" });
		},
	},

	created(this: Service) {
		const self = this as SocketIoThis;
		self.io = null;
		self.tokenSweep = null;
		self.socketCounts = { rooms: 0, presence: 0 };
		if (!this.broker.isMetricsEnabled()) return;
		this.broker.metrics.register({
			name: WS_METRICS.fanout,
			type: "histogram",
			labelNames: ["channel_id"],
			buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
			description: "Seconds from a room message's commit to its push to this node's sockets",
		} as never);
		this.broker.metrics.register({ name: WS_METRICS.sockets, type: "gauge", labelNames: ["channel"], description: "Open socket.io connections on this node" });
	},

	started(this: Service) {
		(this as SocketIoThis).attachSocketIo();
	},

	stopped(this: Service) {
		(this as SocketIoThis).closeSocketConnections();
	},
};
