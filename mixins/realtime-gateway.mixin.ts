/**
 * The realtime gateway: socket.io on the gateway's own HTTP server (moleculer-io does not install beside
 * Moleculer 0.15), serving channels declared as tables (lib/realtime/channel.ts; the channels themselves
 * are lib/realtime/channels/). Seed channels `/ws/<service>/<channel>` map onto socket.io as: the engine
 * listens at `/ws/socket.io`, and each channel is a namespace, e.g.
 * `io("https://node1:9300/city/rooms/lobby", { path: "/ws/socket.io", auth: { token } })` (docs/REALTIME.md).
 *
 * What every channel gets alike:
 * - connections: a handshake budget and a cap on open connections per client address (engine.io
 *   `allowRequest`), before any token check or query; a connection joining no namespace is closed;
 * - handshakes: the address's budget again per namespace, then the token (the same JWT as HTTP: `auth.token`
 *   or an Authorization header), then the channel's own `authorize`; the root namespace is refused;
 * - events: the socket's and the user's budget (lib/realtime/socket-limits.ts), a declared name, a payload
 *   matching its schema, then the channel's handler, at most WS_USER_CONCURRENCY of a user's at once;
 *   refusals are an `error_event` (or the event's own reply) and a failed ack on that socket only, and a
 *   socket that keeps flooding is disconnected;
 * - lifecycle: dynamic namespaces (a room each) exist only while sockets use them; sockets close when their
 *   token expires; stopping the server closes every connection; metrics per channel (bounded labels).
 */
import type { IncomingMessage, Server as HttpServer } from "http";
import type { Context, ServiceSchema, ServiceSettingSchema, Service } from "moleculer";
import { Server, type Namespace } from "socket.io";
import { isAuthRefusal, verifyTokenClaims, type VerifiedToken } from "../lib/http/auth";
import { auditSecurityDecision } from "../lib/data/audit-events";
import { HTTP_METRICS } from "../lib/http/prometheus";
import { nodeContextOf } from "../lib/runtime/node-resources";
import { jwtSecretOf } from "../lib/runtime/settings";
import type { ChannelDefinition, MeshSocket, RealtimeGateway, SocketEventSpec } from "../lib/realtime/channel";
import { compactSocketListeners, ImplicitOwnRoomAdapter, keepSlimRequests, takeToken } from "../lib/realtime/socket-connections";
import { HandshakeGuard, KeyedConcurrency, SocketEventBudget } from "../lib/realtime/socket-limits";
import { asWsError, connectError, type WsError } from "../lib/realtime/socket-errors";

export const WS_PATH = "/ws/socket.io";
const MAX_SOCKET_PAYLOAD_BYTES = 64 * 1024;
const TOKEN_SWEEP_MS = 1_000;
/** A connection that joins no namespace is closed after this (socket.io's default is 45 s). */
const CONNECT_TIMEOUT_MS = 10_000;

export const WS_METRICS = {
	sockets: "ws_sockets",
	namespaces: "ws_room_namespaces",
	events: "ws_events_total",
};

type Ack = ((answer: unknown) => void) | undefined;
type Checker = (params: unknown) => true | Array<{ field?: string; message?: string }>;
type EngineConnection = { request: IncomingMessage; once(event: "close", fn: () => void): void };

/** Private socket.io state this gateway manages: the namespace map, a parent's children, sockets mid-handshake. */
type NamespaceMap = { _nsps: Map<string, Namespace> };
type ChildNamespace = { sockets: Map<string, unknown>; _preConnectSockets: Map<string, unknown> };
type ParentNamespace = { children: Set<Namespace> };

/** A channel as served: its definition, its compiled event schemas, and (dynamic ones) the parent namespace. */
interface ServedChannel {
	definition: ChannelDefinition;
	checkers: Record<string, Checker>;
	parent: Namespace | null;
}

interface GatewayThis extends Service, RealtimeGateway {
	io: Server | null;
	channels: ServedChannel[];
	socketCounts: Record<string, number>;
	budget: SocketEventBudget;
	lanes: KeyedConcurrency;
	handshakes: HandshakeGuard;
	tokenSweep: NodeJS.Timeout | null;
	server: HttpServer;
	attachSocketIo(): void;
	serveChannel(io: Server, channel: ServedChannel): void;
	admitHandshake(channel: ServedChannel, socket: MeshSocket): Promise<void>;
	admitConnection(req: IncomingMessage, answer: (message: string | null, ok: boolean) => void): void;
	trackConnection(connection: EngineConnection): void;
	dropIfIdle(channel: ServedChannel, namespace: Namespace): void;
	socketToken(socket: MeshSocket): VerifiedToken | undefined;
	closeExpiredSockets(): void;
	closeSocketConnections(): void;
	onSocketEvent(socket: MeshSocket, channel: ServedChannel, packet: unknown[]): void;
	countSocket(channel: string, delta: number): void;
	countNamespaces(): void;
}

function refuse(socket: MeshSocket, ack: Ack, problem: WsError, reply?: () => void): void {
	if (reply) reply();
	else socket.emit("error_event", problem);
	if (typeof ack === "function") ack({ ok: false, error: problem });
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
	return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** The user's budget key: anonymous (public-read) sockets share one per client address. */
function budgetKey(socket: MeshSocket): string {
	return socket.data.user ? `user:${socket.data.user.id}` : `address:${socket.handshake.address}`;
}

/**
 * One handler per mesh event, calling every channel that pushes on it, after the current turn of the event
 * loop: a broadcast (ctx.broadcast("city.message.created")) calls this node's handlers synchronously, while its
 * copies to the other gateways leave only when the NATS client flushes, in a microtask after that. Pushed at
 * once, a message to thousands of local sockets held every other gateway's push back by its whole duration
 * (the gateways fanned out one after the other, not side by side: docs/BENCHMARKS.md). setImmediate keeps the
 * pushes in the order their events came; a push that throws is logged, as Moleculer logs a failed handler.
 */
export function pushHandlers(channels: ChannelDefinition[]): ServiceSchema["events"] {
	const byEvent = new Map<string, Array<NonNullable<ChannelDefinition["pushes"]>[string]>>();
	for (const channel of channels) {
		for (const [event, push] of Object.entries(channel.pushes ?? {})) byEvent.set(event, [...(byEvent.get(event) ?? []), push]);
	}
	return Object.fromEntries(
		[...byEvent].map(([event, pushes]) => [
			event,
			function (this: Service & RealtimeGateway, ctx: Context<Record<string, unknown>>) {
				setImmediate(() => {
					for (const push of pushes) {
						try {
							push(this, ctx.params);
						} catch (err) {
							this.logger.error(`${event}: push to sockets failed: ${(err as Error).message}`);
						}
					}
				});
			},
		]),
	);
}

/**
 * Shared disconnect listeners, one per channel (socket.io calls them with `this` = the socket): closures
 * per socket would be kept in each idle socket's heap (docs/BENCHMARKS.md, "Heap per idle socket").
 */
function leaveListener(gateway: GatewayThis, channel: ServedChannel) {
	return function (this: MeshSocket) {
		gateway.countSocket(channel.definition.name, -1);
		channel.definition.onLeave?.(gateway, this);
		if (channel.parent) gateway.dropIfIdle(channel, this.nsp);
	};
}

export function RealtimeGatewayMixin(channels: ChannelDefinition[]): ServiceSchema {
	const schema: ServiceSchema<ServiceSettingSchema, Record<string, never>, Record<string, never>, GatewayThis> = {
		name: "realtime-gateway",

		events: pushHandlers(channels),

		methods: {
			namespace(this: GatewayThis, name: string) {
				return (this.io as unknown as NamespaceMap | null)?._nsps.get(name);
			},

			attachSocketIo(this: GatewayThis) {
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
				io.engine.on("connection", (connection: EngineConnection) => this.trackConnection(connection));
				// An HTTP server closes only when every connection has ended, websockets included: moleculer-web's
				// stop (server.close) would wait for them for ever, so closing the server closes them first.
				const closeServer = server.close.bind(server);
				server.close = (callback?: (err?: Error) => void) => {
					this.closeSocketConnections();
					return closeServer(callback);
				};
				// Nothing is served on the root namespace: without this it accepted anyone, for ever, uncounted.
				const where = this.channels.map(c => c.definition.describe).join(", ");
				io.of("/").use((_socket, next) => next(connectError({ code: 404, type: "NAMESPACE_NOT_FOUND", message: `Connect to one of ${where}` })));
				io.of("/").on("new_namespace", () => this.countNamespaces());
				for (const channel of this.channels) this.serveChannel(io, channel);
				this.tokenSweep = setInterval(() => this.closeExpiredSockets(), TOKEN_SWEEP_MS);
				this.tokenSweep.unref();
			},

			serveChannel(this: GatewayThis, io: Server, channel: ServedChannel) {
				const { definition } = channel;
				const namespace = io.of(typeof definition.namespace === "string" ? definition.namespace : definition.namespace.pattern);
				if (typeof definition.namespace !== "string") channel.parent = namespace;
				const onLeave = leaveListener(this, channel);
				namespace.use((socket, next) => {
					const s = socket as MeshSocket;
					// A dynamic child namespace exists from the handshake on: one that ends up with no socket is dropped.
					const done = (err?: Error) => {
						next(err);
						if (channel.parent) setImmediate(() => this.dropIfIdle(channel, s.nsp));
					};
					this.admitHandshake(channel, s).then(
						() => done(),
						err => done(connectError(asWsError(err))),
					);
				});
				namespace.on("connection", socket => {
					const s = socket as MeshSocket;
					this.countSocket(definition.name, 1);
					s.on("disconnect", onLeave);
					s.use(packet => this.onSocketEvent(s, channel, packet));
					compactSocketListeners(s);
					if (!definition.onJoin) return;
					Promise.resolve(definition.onJoin(this, s)).catch(err => this.logger.warn(`${definition.name} socket failed: ${(err as Error).message}`));
				});
			},

			/** The address's handshake budget, then the token, then the channel's own rule: what the socket keeps. */
			async admitHandshake(this: GatewayThis, channel: ServedChannel, socket: MeshSocket) {
				const refusal = this.handshakes.handshake(socket.handshake.address);
				if (refusal) throw refusal;
				const verified = this.socketToken(socket);
				socket.data = await channel.definition.authorize(this, socket, verified);
			},

			/** engine.io `allowRequest`: a new connection's address is within its handshake budget and connection cap. */
			admitConnection(this: GatewayThis, req: IncomingMessage, answer: (message: string | null, ok: boolean) => void) {
				const refusal = this.handshakes.connection(req.socket.remoteAddress ?? "unknown");
				if (refusal) return answer(refusal.message, false);
				answer(null, true);
			},

			/** Every open connection is counted (ws_sockets{channel="connections"}) and held against its address's cap. */
			trackConnection(this: GatewayThis, connection: EngineConnection) {
				const address = connection.request.socket?.remoteAddress ?? "unknown";
				this.handshakes.opened(address);
				this.countSocket("connections", 1);
				connection.once("close", () => {
					this.handshakes.closed(address);
					this.countSocket("connections", -1);
				});
			},

			/**
			 * Forgets a dynamic namespace no socket uses or is joining: socket.io keeps every child namespace it
			 * creates (one per name ever asked for, even refused ones), and its own cleanup option ignores
			 * sockets still in their handshake. Runs after a handshake ends and after a socket leaves.
			 */
			dropIfIdle(this: GatewayThis, channel: ServedChannel, namespace: Namespace) {
				const io = this.io as unknown as NamespaceMap | null;
				const child = namespace as unknown as ChildNamespace;
				if (!io || !channel.parent || child.sockets.size > 0 || child._preConnectSockets.size > 0) return;
				if (io._nsps.get(namespace.name) !== namespace) return;
				io._nsps.delete(namespace.name);
				(channel.parent as unknown as ParentNamespace).children.delete(namespace);
				void namespace.adapter.close();
				this.countNamespaces();
			},

			/**
			 * Budget, declared event, schema, then the handler (which authorizes): socket.use sees every
			 * event packet before any listener, including names nothing listens to.
			 */
			onSocketEvent(this: GatewayThis, socket: MeshSocket, channel: ServedChannel, packet: unknown[]) {
				// Packets read in the same batch as the one that got the socket cut still arrive here: drop them.
				if (!socket.connected) return;
				const [event, ...args] = packet as [string, ...unknown[]];
				const ack = typeof args[args.length - 1] === "function" ? (args.pop() as Ack) : undefined;
				const verdict = this.budget.take(socket.id, budgetKey(socket));
				const label = channel.definition.name;
				const count = (outcome: string) => this.broker.isMetricsEnabled() && this.broker.metrics.increment(WS_METRICS.events, { channel: label, outcome });
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
				const declared = typeof event === "string" && Object.hasOwn(channel.definition.events, event) && Object.hasOwn(channel.checkers, event);
				const spec: SocketEventSpec | undefined = declared ? channel.definition.events[event] : undefined;
				if (!spec) return count("unknown"), refuse(socket, ack, { code: 404, type: "UNKNOWN_EVENT", message: `No event "${String(event).slice(0, 40)}" on this channel`, field: "event" });
				const params = isPlainObject(args[0]) ? args[0] : {};
				const reply = (problem: WsError) => (spec.onError ? () => spec.onError?.(socket, problem, params) : undefined);
				const problems = channel.checkers[event](params);
				if (problems !== true) {
					count("invalid");
					const field = problems[0]?.field;
					const problem = { code: 422, type: "VALIDATION_ERROR", message: problems[0]?.message ?? "Invalid payload", ...(field ? { field } : {}) };
					return refuse(socket, ack, problem, reply(problem));
				}
				count("accepted");
				const run = () => spec.handler(this, socket, params);
				(spec.lane === false ? run() : this.lanes.run(budgetKey(socket), run))
					.then(answer => typeof ack === "function" && ack({ ok: true, ...answer }))
					.catch(err => {
						const problem = asWsError(err);
						refuse(socket, ack, problem, reply(problem));
					});
			},

			/**
			 * A token is checked once per connection, so a socket would outlive its token: each one is closed
			 * (after an error_event TOKEN_EXPIRED, so the client knows to get a new token) within
			 * TOKEN_SWEEP_MS of its token's expiry, as HTTP requests with that token are refused from then on.
			 */
			closeExpiredSockets(this: GatewayThis) {
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

			/**
			 * Ends every socket.io connection of this node without a DISCONNECT packet: clients see "transport
			 * close" and reconnect by themselves (after "io server disconnect" socket.io clients stay away), to
			 * this node when it is back or, behind a load balancer, to another. Idempotent.
			 */
			closeSocketConnections(this: GatewayThis) {
				if (this.tokenSweep) clearInterval(this.tokenSweep);
				this.tokenSweep = null;
				// Not io.close(): that would close moleculer-web's HTTP server under it.
				this.io?.engine.close();
			},

			/** The handshake token's user and expiry; undefined when no token was sent. A malformed header is a 401. */
			socketToken(this: GatewayThis, socket: MeshSocket): VerifiedToken | undefined {
				try {
					const token = takeToken(socket);
					if (!token) return undefined;
					return verifyTokenClaims(jwtSecretOf(nodeContextOf(this.broker).settings), token);
				} catch (err) {
					if (isAuthRefusal(err)) auditSecurityDecision(this.broker, null, { service: "socket", action: "authn_failed", client: socket.handshake.address, reason: err.type, target: socket.nsp.name });
					throw err;
				}
			},

			countSocket(this: GatewayThis, channel: string, delta: number) {
				this.socketCounts[channel] = (this.socketCounts[channel] ?? 0) + delta;
				if (!this.broker.isMetricsEnabled()) return;
				this.broker.metrics.set(WS_METRICS.sockets, this.socketCounts[channel], { channel });
				this.broker.metrics.set(HTTP_METRICS.activeConnections, this.socketCounts.connections ?? 0, { kind: "ws" });
			},

			countNamespaces(this: GatewayThis) {
				if (!this.broker.isMetricsEnabled()) return;
				let children = 0;
				for (const { parent } of this.channels) if (parent) children += (parent as unknown as ParentNamespace).children.size;
				this.broker.metrics.set(WS_METRICS.namespaces, children);
			},
		},

		created(this: GatewayThis) {
			this.io = null;
			this.tokenSweep = null;
			this.socketCounts = { connections: 0 };
			const { socketLimits } = nodeContextOf(this.broker).settings;
			this.budget = new SocketEventBudget(socketLimits);
			this.lanes = new KeyedConcurrency(socketLimits.userConcurrency);
			this.handshakes = new HandshakeGuard(socketLimits);
			const validator = this.broker.validator as unknown as { compile(schema: object): Checker };
			this.channels = channels.map(definition => ({
				definition,
				checkers: Object.fromEntries(Object.entries(definition.events).map(([event, spec]) => [event, validator.compile(spec.params)])),
				parent: null,
			}));
			if (!this.broker.isMetricsEnabled()) return;
			const metrics = this.broker.metrics;
			for (const channel of channels) {
				for (const metric of channel.metrics ?? []) {
					if (metrics.getMetric(metric.name)) continue;
					if (metric.type === "counter") metrics.register({ ...metric, type: "counter" });
					else if (metric.type === "gauge") metrics.register({ ...metric, type: "gauge" });
					else metrics.register({ ...metric, type: "histogram" });
				}
			}
			metrics.register({ name: WS_METRICS.sockets, type: "gauge", labelNames: ["channel"], description: `Open socket.io sockets on this node per channel (${channels.map(c => c.name).join(", ")}), and open connections (connections)` });
			metrics.register({ name: WS_METRICS.namespaces, type: "gauge", description: "Room namespaces this node holds (one per room with sockets here)" });
			metrics.register({
				name: WS_METRICS.events,
				type: "counter",
				labelNames: ["channel", "outcome"],
				description: "Socket events received, by outcome: accepted, rate_limited (over budget), disconnected (over budget, socket cut for flooding), invalid (422), unknown (no such event)",
			});
		},

		started(this: GatewayThis) {
			this.attachSocketIo();
		},

		stopped(this: GatewayThis) {
			this.closeSocketConnections();
		},
	};
	// Mixed into a service whose own schema types `this` (moleculer-web's gateway): the two meet here.
	return schema as unknown as ServiceSchema;
}
