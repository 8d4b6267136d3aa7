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
 * across the mesh and each gateway pushes them to its own sockets.
 *
 * Every event a client sends is an endpoint: it passes the socket's and the user's budget
 * (lib/realtime/socket-limits.ts), must be declared with a schema (lib/realtime/socket-events.ts) and
 * match it, and is authorized before anything is called. Refusals are an `error_event` and a failed
 * ack on that socket only; a socket that keeps flooding is disconnected. Handshakes are budgeted per
 * client address before any token check or query, room namespaces exist only while sockets use them,
 * and the root namespace is refused.
 */
import type { IncomingMessage } from "http";
import type { Context, Service, ServiceSchema, ServiceSettingSchema } from "moleculer";
import { Server, type Namespace, type Socket } from "socket.io";
import type { DefaultEventsMap } from "socket.io/dist/typed-events";
import { isAuthRefusal, verifyTokenClaims, type MeshUser, type VerifiedToken } from "../lib/http/auth";
import { socketErrorAnswer, type WsError } from "../lib/http/error-answer";
import { ForbiddenError, NotFoundError, UnauthorizedError } from "../lib/mesh/errors";
import { auditSecurityDecision } from "../lib/data/audit-events";
import { HTTP_METRICS } from "../lib/http/prometheus";
import { nodeContextOf } from "../lib/runtime/node-resources";
import { ROOM_ID_PATTERN } from "../lib/realtime/room-id";
import { SOCKET_EVENTS, type SocketChannel } from "../lib/realtime/socket-events";
import { HandshakeGuard, KeyedConcurrency, SocketEventBudget } from "../lib/realtime/socket-limits";
import { jwtSecretOf } from "../lib/runtime/settings";
import { ImplicitOwnRoomAdapter, keepSlimRequests, takeToken } from "../lib/realtime/socket-connections";

export const WS_PATH = "/ws/socket.io";
export const PRESENCE_NAMESPACE = "/city/presence";
const ROOM_PREFIX = "/city/rooms/";
export const ROOM_NAMESPACE = new RegExp(`^${ROOM_PREFIX}${ROOM_ID_PATTERN.source.slice(1)}`);
const MAX_SOCKET_PAYLOAD_BYTES = 64 * 1024;
const TOKEN_SWEEP_MS = 1_000;
/** A connection that joins no namespace is closed after this (socket.io's default is 45 s). */
const CONNECT_TIMEOUT_MS = 10_000;

/** socket.io rooms inside the presence namespace: what a socket watches (everyone, or one city room). */
const EVERYONE = "watch:*";
const watching = (roomId: string) => `watch:room:${roomId}`;

export const WS_METRICS = {
	fanout: "channel_ws_fanout_latency_seconds",
	sockets: "ws_sockets",
	namespaces: "ws_room_namespaces",
	events: "ws_events_total",
};

type SocketCounts = { rooms: number; presence: number; connections: number };

interface SocketData {
	user?: MeshUser;
	/** when the handshake token expires (ms since the epoch): the socket is closed then */
	expiresAt?: number | null;
	canPost?: boolean;
	device?: string;
}

type MeshSocket = Socket<DefaultEventsMap, DefaultEventsMap, DefaultEventsMap, SocketData>;
type Ack = ((answer: unknown) => void) | undefined;
type Checker = (params: unknown) => true | Array<{ field?: string; message?: string }>;
/** An event's work once budget, schema and authorization passed: what its ack carries besides `ok`. */
type EventHandler = (service: SocketIoThis, socket: MeshSocket, params: Record<string, unknown>) => Promise<Record<string, unknown>>;

/** Private socket.io state this gateway manages: the namespace map, a parent's children, sockets mid-handshake. */
type NamespaceMap = { _nsps: Map<string, Namespace> };
type ChildNamespace = { sockets: Map<string, unknown>; _preConnectSockets: Map<string, unknown> };

interface SocketIoThis extends Service {
	/** the gateway's HTTP server (moleculer-web's): socket.io shares it */
	server: import("http").Server;
	io: Server | null;
	roomParent: Namespace | null;
	socketCounts: SocketCounts;
	budget: SocketEventBudget;
	lanes: KeyedConcurrency;
	handshakes: HandshakeGuard;
	checkers: Record<SocketChannel, Record<string, Checker>>;
	tokenSweep: NodeJS.Timeout | null;
	attachSocketIo(): void;
	admitConnection(req: IncomingMessage, answer: (message: string | null, ok: boolean) => void): void;
	trackConnection(connection: { request: IncomingMessage; once(event: "close", fn: () => void): void }): void;
	authorizeRoomSocket(socket: MeshSocket): Promise<void>;
	dropIfIdle(namespace: Namespace): void;
	socketToken(socket: MeshSocket): VerifiedToken | undefined;
	closeExpiredSockets(): void;
	closeSocketConnections(): void;
	closeMembership(roomId: string, userId: string, isPublic: boolean): void;
	pushToRoom(roomId: string, event: string, message: { created_at?: string; room_id?: string }): void;
	onSocketEvent(socket: MeshSocket, channel: SocketChannel, packet: unknown[]): void;
	servePresenceSocket(socket: MeshSocket): Promise<void>;
	countSocket(channel: keyof SocketCounts, delta: number): void;
	countNamespaces(): void;
}

/** A room socket's room, from its namespace: not stored per socket. */
function roomIdOf(socket: MeshSocket): string {
	return socket.nsp.name.slice(ROOM_PREFIX.length);
}

function connectError(problem: WsError): Error & { data: WsError } {
	return Object.assign(new Error(problem.message), { data: problem });
}

/** Any error as the small JSON shape sockets get (lib/http/error-answer.ts). */
export const asWsError = socketErrorAnswer;

function refuse(socket: MeshSocket, ack: Ack, problem: WsError): void {
	socket.emit("error_event", problem);
	if (typeof ack === "function") ack({ ok: false, error: problem });
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
	return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** "does not exist" and "not yours" answer the same, so that names of private rooms cannot be probed. */
function roomNotFound(roomId: string): NotFoundError {
	return new NotFoundError(`Room ${roomId} not found`, "ROOM_NOT_FOUND");
}

const noToken = () => new UnauthorizedError("A token is required", "NO_TOKEN");

/** The user's budget key: anonymous (public-read) sockets share one per client address. */
function budgetKey(socket: MeshSocket): string {
	return socket.data.user ? `user:${socket.data.user.id}` : `address:${socket.handshake.address}`;
}

function presenceOf(socket: MeshSocket) {
	return { user_id: (socket.data.user as MeshUser).id, device_id: socket.data.device as string };
}

const HANDLERS: { [C in SocketChannel]: Record<keyof (typeof SOCKET_EVENTS)[C], EventHandler> } = {
	rooms: {
		async message(service, socket, params) {
			if (!socket.data.canPost) throw socket.data.user ? new ForbiddenError("You may not post in this room") : noToken();
			const message = await service.broker.call("city.postMessage", { room_id: roomIdOf(socket), body: params.body }, { meta: { user: socket.data.user } });
			return { message };
		},
	},
	presence: {
		async heartbeat(service, socket, params) {
			return { presence: await service.broker.call("presence.heartbeat", { ...presenceOf(socket), node_id: service.broker.nodeID, active: params.active }) };
		},
		// {room_id}: that room's members only (presence checks read access: 404 otherwise); {room_id: null}: everyone.
		async watch(service, socket, params) {
			const roomId = params.room_id as string | null;
			const snapshot = await service.broker.call("presence.list", roomId ? { room_id: roomId } : {}, { meta: { user: socket.data.user } });
			for (const room of socket.rooms) if (room.startsWith("watch:")) socket.leave(room);
			socket.join(roomId ? watching(roomId) : EVERYONE);
			return { snapshot };
		},
		async visibility(service, socket, params) {
			const who = presenceOf(socket);
			const presence = params.state === "hidden" ? service.broker.call("presence.gone", who) : service.broker.call("presence.heartbeat", { ...who, node_id: service.broker.nodeID, active: true });
			return { presence: await presence };
		},
	},
};

/**
 * Shared listeners (socket.io calls them with `this` = the socket): closures per socket would be
 * ~150 B of each idle socket's heap (docs/BENCHMARKS.md).
 */
function socketListeners(service: SocketIoThis) {
	return {
		roomDisconnect(this: MeshSocket) {
			service.countSocket("rooms", -1);
			service.dropIfIdle(this.nsp);
		},
		presenceDisconnect(this: MeshSocket) {
			service.countSocket("presence", -1);
			service.broker.call("presence.gone", presenceOf(this)).catch(err => service.logger.warn(`presence.gone failed: ${(err as Error).message}`));
		},
	};
}

const socketIoSchema: ServiceSchema<ServiceSettingSchema, Record<string, never>, Record<string, never>, SocketIoThis> = {
	name: "socket-io",

	events: {
		"city.message.created"(ctx: Context<{ room_id: string; created_at: string }>) {
			this.pushToRoom(ctx.params.room_id, "message", ctx.params);
		},
		"city.message.edited"(ctx: Context<{ room_id: string }>) {
			this.pushToRoom(ctx.params.room_id, "message.edited", ctx.params);
		},
		"city.message.deleted"(ctx: Context<{ room_id: string }>) {
			this.pushToRoom(ctx.params.room_id, "message.deleted", ctx.params);
		},
		/** A member left or was removed: their sockets in that room close at once (and stop watching it if private). */
		"city.member.left"(ctx: Context<{ room_id: string; user_id: string; is_public: boolean }>) {
			this.closeMembership(ctx.params.room_id, ctx.params.user_id, ctx.params.is_public);
		},
		/**
		 * To sockets watching everyone, and to those watching one of the user's rooms (each socket once).
		 * The room list only routes: a watcher is not told which other rooms the user is in.
		 */
		"presence.changed"(ctx: Context<{ rooms?: string[] }>) {
			const { rooms, ...visible } = ctx.params;
			const targets = [EVERYONE, ...(rooms ?? []).map(watching)];
			this.io?.of(PRESENCE_NAMESPACE).to(targets).emit("presence", visible);
		},
	},

	methods: {
		attachSocketIo(this: SocketIoThis) {
			const { settings } = nodeContextOf(this.broker);
			const server = this.server;
			const io = new Server(server, {
				path: WS_PATH,
				adapter: ImplicitOwnRoomAdapter,
				maxHttpBufferSize: MAX_SOCKET_PAYLOAD_BYTES,
				connectTimeout: CONNECT_TIMEOUT_MS,
				allowRequest: (req, answer) => this.admitConnection(req, answer),
				cors: settings.corsOrigins.length ? { origin: settings.corsOrigins } : undefined,
			});
			this.io = io;
			keepSlimRequests(io.engine);
			io.engine.on("connection", (connection: Parameters<SocketIoThis["trackConnection"]>[0]) => this.trackConnection(connection));
			// An HTTP server closes only when every connection has ended, websockets included: moleculer-web's
			// stop (server.close) would wait for them for ever, so closing the server closes them first.
			const closeServer = server.close.bind(server);
			server.close = (callback?: (err?: Error) => void) => {
				this.closeSocketConnections();
				return closeServer(callback);
			};
			// Nothing is served on the root namespace: without this it accepted anyone, for ever, uncounted.
			io.of("/").use((_socket, next) => next(connectError({ code: 404, type: "NAMESPACE_NOT_FOUND", message: "Connect to /city/presence or /city/rooms/{room_id}" })));

			const listeners = socketListeners(this);
			const rooms = io.of(ROOM_NAMESPACE);
			this.roomParent = rooms;
			io.of("/").on("new_namespace", () => this.countNamespaces());
			rooms.use((socket, next) => {
				const s = socket as MeshSocket;
				// A child namespace exists from the handshake on: one that ends up with no socket is dropped.
				const done = (err?: Error) => {
					next(err);
					setImmediate(() => this.dropIfIdle(s.nsp));
				};
				this.authorizeRoomSocket(s).then(() => done(), err => done(connectError(asWsError(err))));
			});
			rooms.on("connection", socket => {
				this.countSocket("rooms", 1);
				socket.on("disconnect", listeners.roomDisconnect);
				socket.use(packet => this.onSocketEvent(socket as MeshSocket, "rooms", packet));
			});

			const presence = io.of(PRESENCE_NAMESPACE);
			presence.use((socket, next) => {
				try {
					const refusal = this.handshakes.handshake(socket.handshake.address);
					if (refusal) return next(connectError(refusal));
					const verified = this.socketToken(socket as MeshSocket);
					if (!verified) return next(connectError(asWsError(noToken())));
					(socket as MeshSocket).data = { user: verified.user, expiresAt: verified.expiresAt };
					next();
				} catch (err) {
					next(connectError(asWsError(err)));
				}
			});
			presence.on("connection", socket => {
				const s = socket as MeshSocket;
				const requested = (s.handshake.auth as { device?: unknown }).device;
				s.data.device = typeof requested === "string" && /^[\w.:-]{1,100}$/.test(requested) ? requested : s.id;
				this.countSocket("presence", 1);
				s.on("disconnect", listeners.presenceDisconnect);
				s.use(packet => this.onSocketEvent(s, "presence", packet));
				this.servePresenceSocket(s).catch(err => this.logger.warn(`presence socket failed: ${(err as Error).message}`));
			});
			this.tokenSweep = setInterval(() => this.closeExpiredSockets(), TOKEN_SWEEP_MS);
			this.tokenSweep.unref();
		},

		/** engine.io `allowRequest`: a new connection's address is within its handshake budget and connection cap. */
		admitConnection(this: SocketIoThis, req: IncomingMessage, answer: (message: string | null, ok: boolean) => void) {
			const refusal = this.handshakes.connection(req.socket.remoteAddress ?? "unknown");
			if (refusal) return answer(refusal.message, false);
			answer(null, true);
		},

		/** Every open connection is counted (ws_sockets{channel="connections"}) and held against its address's cap. */
		trackConnection(this: SocketIoThis, connection: Parameters<SocketIoThis["trackConnection"]>[0]) {
			const address = connection.request.socket?.remoteAddress ?? "unknown";
			this.handshakes.opened(address);
			this.countSocket("connections", 1);
			connection.once("close", () => {
				this.handshakes.closed(address);
				this.countSocket("connections", -1);
			});
		},

		/**
		 * A room handshake: the address's budget first, then the token, then (only for a token, or public
		 * reads) the room. Rooms that do not exist and rooms the user may not read both answer 404.
		 */
		async authorizeRoomSocket(this: SocketIoThis, socket: MeshSocket) {
			const refusal = this.handshakes.handshake(socket.handshake.address);
			if (refusal) throw refusal;
			const verified = this.socketToken(socket);
			const user = verified?.user;
			if (!user && !nodeContextOf(this.broker).settings.wsPublicRead) throw noToken();
			const roomId = roomIdOf(socket);
			let access: { read: boolean; post: boolean };
			try {
				access = (await this.broker.call("city.roomAccess", { room_id: roomId }, { meta: { user } })) as typeof access;
			} catch (err) {
				if ((err as { code?: number }).code === 404) throw roomNotFound(roomId);
				throw err;
			}
			if (!access.read && user) auditSecurityDecision(this.broker, null, { service: "socket", action: "authz_failed", client: socket.handshake.address, reason: "FORBIDDEN", actor: user.id, target: socket.nsp.name });
			if (!access.read) throw user ? roomNotFound(roomId) : noToken();
			socket.data = { user, canPost: access.post, expiresAt: verified?.expiresAt };
		},

		/**
		 * Forgets a room namespace no socket uses or is joining: socket.io keeps every child namespace it
		 * creates (one per name ever asked for, even refused ones), and its own cleanup option ignores
		 * sockets still in their handshake. Runs after a handshake ends and after a room socket leaves.
		 */
		dropIfIdle(this: SocketIoThis, namespace: Namespace) {
			const io = this.io as unknown as NamespaceMap | null;
			const child = namespace as unknown as ChildNamespace;
			if (!io || !namespace.name.startsWith(ROOM_PREFIX) || child.sockets.size > 0 || child._preConnectSockets.size > 0) return;
			if (io._nsps.get(namespace.name) !== namespace) return;
			io._nsps.delete(namespace.name);
			(this.roomParent as unknown as { children: Set<Namespace> }).children.delete(namespace);
			void namespace.adapter.close();
			this.countNamespaces();
		},

		/**
		 * Budget, declared event, schema, then the handler (which authorizes): socket.use sees every
		 * event packet before any listener, including names nothing listens to.
		 */
		onSocketEvent(this: SocketIoThis, socket: MeshSocket, channel: SocketChannel, packet: unknown[]) {
			// Packets read in the same batch as the one that got the socket cut still arrive here: drop them.
			if (!socket.connected) return;
			const [event, ...args] = packet as [string, ...unknown[]];
			const ack = typeof args[args.length - 1] === "function" ? (args.pop() as Ack) : undefined;
			const verdict = this.budget.take(socket.id, budgetKey(socket));
			const count = (outcome: string) => this.broker.isMetricsEnabled() && this.broker.metrics.increment(WS_METRICS.events, { channel, outcome });
			if (!verdict.allowed) {
				count(verdict.flooding ? "disconnected" : "rate_limited");
				refuse(socket, ack, { code: 429, type: "RATE_LIMITED", message: "Too many socket events, slow down", retryAfter: verdict.retryAfterSeconds });
				if (verdict.flooding) {
					this.logger.warn(`socket ${socket.id} of ${budgetKey(socket)} disconnected: it kept sending past its event budget`, { event: "ws.flood" });
					socket.disconnect(true);
				}
				return;
			}
			// Own properties only: "constructor" or "toString" are not events.
			const declared = typeof event === "string" && Object.hasOwn(HANDLERS[channel], event) && Object.hasOwn(this.checkers[channel], event);
			const handler = declared ? (HANDLERS[channel] as Record<string, EventHandler>)[event] : undefined;
			const check = declared ? this.checkers[channel][event] : undefined;
			if (!handler || !check) return count("unknown"), refuse(socket, ack, { code: 404, type: "UNKNOWN_EVENT", message: `No event "${String(event).slice(0, 40)}" on this channel`, field: "event" });
			const params = isPlainObject(args[0]) ? args[0] : {};
			const problems = check(params);
			if (problems !== true) {
				count("invalid");
				const field = problems[0]?.field;
				return refuse(socket, ack, { code: 422, type: "VALIDATION_ERROR", message: problems[0]?.message ?? "Invalid payload", ...(field ? { field } : {}) });
			}
			count("accepted");
			this.lanes
				.run(budgetKey(socket), () => handler(this, socket, params))
				.then(answer => typeof ack === "function" && ack({ ok: true, ...answer }))
				.catch(err => refuse(socket, ack, asWsError(err)));
		},

		/**
		 * A token is checked once per connection, so a socket would outlive its token: each one is closed
		 * (after an error_event TOKEN_EXPIRED, so the client knows to get a new token) within
		 * TOKEN_SWEEP_MS of its token's expiry, as HTTP requests with that token are refused from then on.
		 */
		closeExpiredSockets(this: SocketIoThis) {
			const now = Date.now();
			for (const namespace of (this.io as unknown as NamespaceMap)._nsps.values()) {
				for (const socket of (namespace.sockets as Map<string, MeshSocket>).values()) {
					const { expiresAt } = socket.data;
					if (!expiresAt || expiresAt > now) continue;
					socket.emit("error_event", { code: 401, type: "TOKEN_EXPIRED", message: "Token expired: connect again with a new token" });
					// Not disconnect(true): other namespaces may share the connection (a page multiplexes its sockets).
					socket.disconnect();
				}
			}
		},

		/** Membership ended: the user's sockets in the room close now (not at their next event), and stop watching a private room. */
		closeMembership(this: SocketIoThis, roomId: string, userId: string, isPublic: boolean) {
			const io = this.io as unknown as NamespaceMap | null;
			const problem = { code: 403, type: "NOT_A_MEMBER", message: `You are no longer a member of room ${roomId}`, room_id: roomId };
			const room = io?._nsps.get(ROOM_PREFIX + roomId);
			for (const socket of [...((room?.sockets ?? new Map()) as Map<string, MeshSocket>).values()]) {
				if (socket.data.user?.id !== userId) continue;
				socket.emit("error_event", problem);
				socket.disconnect();
			}
			if (isPublic) return;
			const presence = io?._nsps.get(PRESENCE_NAMESPACE);
			for (const socket of ((presence?.sockets ?? new Map()) as Map<string, MeshSocket>).values()) {
				if (socket.data.user?.id !== userId || !socket.rooms.has(watching(roomId))) continue;
				socket.leave(watching(roomId));
				socket.emit("error_event", problem);
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

		/** The handshake token's user and expiry; undefined when no token was sent. A malformed header is a 401. */
		socketToken(socket: MeshSocket): VerifiedToken | undefined {
			try {
				const token = takeToken(socket);
				if (!token) return undefined;
				return verifyTokenClaims(jwtSecretOf(nodeContextOf(this.broker).settings), token);
			} catch (err) {
				if (isAuthRefusal(err)) auditSecurityDecision(this.broker, null, { service: "socket", action: "authn_failed", client: socket.handshake.address, reason: err.type, target: socket.nsp.name });
				throw err;
			}
		},

		async servePresenceSocket(this: SocketIoThis, socket: MeshSocket) {
			socket.join(EVERYONE);
			await this.broker.call("presence.connect", { ...presenceOf(socket), node_id: this.broker.nodeID });
			socket.emit("presence.snapshot", await this.broker.call("presence.list", {}, { meta: { user: socket.data.user } }));
		},

		pushToRoom(this: SocketIoThis, roomId: string, event: string, message: { created_at?: string; room_id?: string }) {
			const namespace = (this.io as unknown as NamespaceMap | null)?._nsps.get(ROOM_PREFIX + roomId);
			if (!namespace || namespace.sockets.size === 0) return;
			namespace.emit(event, message);
			if (event === "message" && message.created_at && this.broker.isMetricsEnabled()) {
				this.broker.metrics.observe(WS_METRICS.fanout, Math.max(0, (Date.now() - Date.parse(message.created_at)) / 1000));
			}
		},

		countSocket(this: SocketIoThis, channel: keyof SocketCounts, delta: number) {
			this.socketCounts[channel] += delta;
			if (!this.broker.isMetricsEnabled()) return;
			this.broker.metrics.set(WS_METRICS.sockets, this.socketCounts[channel], { channel });
			this.broker.metrics.set(HTTP_METRICS.activeConnections, this.socketCounts.connections, { kind: "ws" });
		},

		countNamespaces(this: SocketIoThis) {
			if (!this.broker.isMetricsEnabled() || !this.roomParent) return;
			this.broker.metrics.set(WS_METRICS.namespaces, (this.roomParent as unknown as { children: Set<Namespace> }).children.size);
		},
	},

	created() {
		this.io = null;
		this.roomParent = null;
		this.tokenSweep = null;
		this.socketCounts = { rooms: 0, presence: 0, connections: 0 };
		const { socketLimits } = nodeContextOf(this.broker).settings;
		this.budget = new SocketEventBudget(socketLimits);
		this.lanes = new KeyedConcurrency(socketLimits.userConcurrency);
		this.handshakes = new HandshakeGuard(socketLimits);
		const validator = this.broker.validator as unknown as { compile(schema: object): Checker };
		const compile = (schema: object) => validator.compile(schema);
		this.checkers = {
			rooms: Object.fromEntries(Object.entries(SOCKET_EVENTS.rooms).map(([event, schema]) => [event, compile(schema)])),
			presence: Object.fromEntries(Object.entries(SOCKET_EVENTS.presence).map(([event, schema]) => [event, compile(schema)])),
		};
		if (!this.broker.isMetricsEnabled()) return;
		this.broker.metrics.register({
			name: WS_METRICS.fanout,
			type: "histogram",
			// No room label: room ids are user-chosen (private ones too), one series each would be unbounded.
			buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
			description: "Seconds from a room message's commit to its push to this node's sockets",
		});
		this.broker.metrics.register({ name: WS_METRICS.sockets, type: "gauge", labelNames: ["channel"], description: "Open socket.io sockets on this node per channel (rooms, presence), and open connections (connections)" });
		this.broker.metrics.register({ name: WS_METRICS.namespaces, type: "gauge", description: "Room namespaces this node holds (one per room with sockets here)" });
		this.broker.metrics.register({
			name: WS_METRICS.events,
			type: "counter",
			labelNames: ["channel", "outcome"],
			description: "Socket events received, by outcome: accepted, rate_limited (over budget), disconnected (over budget, socket cut for flooding), invalid (422), unknown (no such event)",
		});
	},

	started() {
		this.attachSocketIo();
	},

	stopped() {
		this.closeSocketConnections();
	},
};

/**
 * Moleculer types `mixins` as schemas whose `this` is any service; the gateway that lists this mixin
 * gains the fields and methods SocketIoThis declares.
 */
export const SocketIoMixin = socketIoSchema as Partial<ServiceSchema>;
