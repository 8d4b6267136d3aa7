/**
 * What an idle socket.io connection keeps in memory, trimmed to what this mesh reads: socket.io,
 * engine.io and ws alone hold kilobytes per idle websocket, and a node may hold thousands. Measured with
 * bench/presence and bench/presence/heap-census.ts (docs/BENCHMARKS.md, "Heap per idle socket").
 */
import { IncomingMessage, type IncomingHttpHeaders } from "http";
import type { Server, Socket } from "socket.io";
import { Adapter, type BroadcastOptions, type Room, type SocketId } from "socket.io-adapter";
import type { Duplex } from "stream";
import { bearerToken } from "../http/auth";

/**
 * What engine.io and socket.io read from a connection's first request (headers, url, query, TLS flag),
 * without the IncomingMessage: engine.io keeps that request for the connection's whole life, and for a
 * websocket also through a "close" listener on the raw TCP socket: the largest single item of an idle
 * socket's heap (docs/BENCHMARKS.md, "Heap per idle socket"). Idempotent.
 */
export function slimRequest(req: IncomingMessage): IncomingMessage {
	if (!(req instanceof IncomingMessage)) return req;
	const { method, url, headers, httpVersion, socket } = req;
	return { method, url, headers, httpVersion, socket, connection: socket, _query: (req as { _query?: unknown })._query } as unknown as IncomingMessage;
}

/**
 * The handshake headers an open connection keeps (`socket.handshake.headers`): who and where from.
 * Not the transport's own (sec-websocket-*, connection, upgrade), nor cookies, which nothing here
 * reads; the Authorization header only until the handshake has read it (takeToken).
 */
export const KEPT_HANDSHAKE_HEADERS = ["host", "origin", "user-agent", "x-forwarded-for", "x-forwarded-proto", "x-real-ip", "x-request-id", "authorization"] as const;

function keptHandshakeHeaders(headers: IncomingHttpHeaders): IncomingHttpHeaders {
	const kept: Record<string, string | string[]> = {};
	for (const name of KEPT_HANDSHAKE_HEADERS) {
		const value = headers[name];
		if (value !== undefined) kept[name] = value;
	}
	return kept;
}

type UpgradeHandler = (req: IncomingMessage, socket: Duplex, head: Buffer) => void;

/**
 * Websockets reach engine.io through its public `handleUpgrade`, which we hand the slim request (ws
 * still reads the full headers to complete the upgrade); once a connection is open, whether it came by
 * websocket or by HTTP long-polling, its kept request is slim and holds only the kept headers.
 */
export function keepSlimRequests(engine: Server["engine"]): void {
	const handleUpgrade = (engine.handleUpgrade as unknown as UpgradeHandler).bind(engine);
	(engine as unknown as { handleUpgrade: UpgradeHandler }).handleUpgrade = (req, socket, head) => handleUpgrade(slimRequest(req), socket, head);
	// engine.io's stand-in response for an upgrade lives as long as the connection (a "close" listener on the TCP
	// socket calls it), with an empty listener dictionary of its own; middlewares are where it is handed out.
	engine.use((_req: IncomingMessage, res: unknown, next: () => void) => {
		compactListeners(res);
		next();
	});
	engine.on("connection", (connection: { request: IncomingMessage }) => {
		const request = slimRequest(connection.request);
		request.headers = keptHandshakeHeaders(request.headers);
		connection.request = request;
	});
}

/**
 * A record with nothing inherited, in V8's fast mode. Node's EventEmitter keeps its listeners (`_events`) in a
 * null-prototype object, which V8 holds in dictionary mode: ~230 B each by the heap census, and an idle websocket
 * has five such emitters (socket.io's socket, engine.io's socket, transport and stand-in upgrade response, ws's
 * WebSocket; Node's streams pre-shape their own, so the TCP socket's and ws's receiver's are fast already). An
 * instance of this constructor is an ordinary fast object whose prototype has no prototype, so a lookup by any name
 * ("toString", "__proto__", "constructor") finds nothing inherited, as with Node's own (Node used this constructor
 * for `_events` itself before v12). A key deleted later (a `once` listener that fired)
 * makes that one object a dictionary again, as before: only the heap changes, never what a lookup finds.
 */
function NothingInherited(): void {}
NothingInherited.prototype = Object.create(null);

type AnyRecord = Record<string | symbol, unknown>;

/** `record`'s own keys and values in a fast object with nothing inherited, if it has no prototype; anything else as it is. */
function compactRecord<T>(record: T): T {
	if (!record || typeof record !== "object" || Object.getPrototypeOf(record) !== null) return record;
	const compact = new (NothingInherited as unknown as new () => AnyRecord)();
	for (const key of Reflect.ownKeys(record)) compact[key] = (record as AnyRecord)[key];
	return compact as T;
}

function compactListeners(emitter: unknown): void {
	const holder = emitter as { _events?: AnyRecord } | null | undefined;
	if (holder?._events) holder._events = compactRecord(holder._events);
}

/** The emitters an open websocket keeps, from socket.io's socket down to the TCP socket; idempotent. */
export function compactSocketListeners(socket: Socket): void {
	const conn = socket.conn as unknown as { transport?: { socket?: { _socket?: unknown; _receiver?: unknown } } };
	const ws = conn.transport?.socket;
	for (const emitter of [socket, conn, conn.transport, ws, ws?._socket, ws?._receiver]) compactListeners(emitter);
}

const NO_AUTH = Object.freeze({});

/**
 * The handshake's token (auth.token, else an Authorization header), taken out of the handshake: a
 * verified socket needs its user, not its credential, for as long as it stays open.
 */
export function takeToken(socket: Pick<Socket, "handshake">): string | undefined {
	const { headers } = socket.handshake;
	const headerToken = bearerToken(headers.authorization);
	if (headers.authorization !== undefined) headers.authorization = undefined;
	const auth = socket.handshake.auth as { token?: unknown } | undefined;
	if (typeof auth?.token !== "string") return headerToken;
	const { token, ...rest } = auth;
	socket.handshake.auth = Object.keys(rest).length ? rest : NO_AUTH;
	return token as string;
}

/**
 * socket.io's in-memory adapter with every socket's own room (the room named by its id, which
 * socket.io joins on connect so that `to(socket.id)` works) left implicit: the default keeps two Sets
 * and two Map entries per socket for it, a measurable part of each idle socket (docs/BENCHMARKS.md), and a
 * room socket here is in no other room. Observable behaviour is the default adapter's (tested side by
 * side in test/unit/socket-connections.test.ts), except that no create-room/join-room events fire for
 * own rooms and `socket.leave(socket.id)` does nothing. The namespace's socket map is the list of who
 * is connected.
 */
export class ImplicitOwnRoomAdapter extends Adapter {
	override addAll(id: SocketId, rooms: Set<Room>): void {
		if (!rooms.has(id)) return void super.addAll(id, rooms);
		const explicit = new Set(rooms);
		explicit.delete(id);
		if (explicit.size) void super.addAll(id, explicit);
	}

	override del(id: SocketId, room: Room): void {
		void super.del(id, room);
		if (this.sids.get(id)?.size === 0) this.sids.delete(id);
	}

	override socketRooms(id: SocketId): Set<Room> | undefined {
		if (!connectedSockets(this).has(id)) return this.sids.get(id);
		return new Set([id, ...(this.sids.get(id) ?? [])]);
	}
}

function connectedSockets(adapter: Adapter): Map<SocketId, unknown> {
	return (adapter.nsp as { sockets: Map<SocketId, unknown> }).sockets;
}

/** The explicit members of a room, and the socket whose own room it is. */
function* membersOf(adapter: Adapter, room: Room): Iterable<SocketId> {
	if (connectedSockets(adapter).has(room)) yield room;
	yield* adapter.rooms.get(room) ?? [];
}

// Every broadcast, fetch and join/leave/disconnect of many sockets goes through these two. They are
// private in socket.io-adapter's typings (not in its code), which TypeScript does not let a subclass
// override by name.
Object.assign(ImplicitOwnRoomAdapter.prototype, {
	apply(this: ImplicitOwnRoomAdapter, opts: BroadcastOptions, callback: (socket: unknown) => void): void {
		const connected = connectedSockets(this);
		const except = exceptSids(this, opts.except);
		if (opts.rooms.size === 0) {
			for (const [id, socket] of connected) if (!except.has(id)) callback(socket);
			return;
		}
		const reached = new Set<SocketId>();
		for (const room of opts.rooms) {
			for (const id of membersOf(this, room)) {
				const socket = connected.get(id);
				if (socket === undefined || reached.has(id) || except.has(id)) continue;
				reached.add(id);
				callback(socket);
			}
		}
	},
	computeExceptSids(this: ImplicitOwnRoomAdapter, exceptRooms?: Set<Room>): Set<SocketId> {
		return exceptSids(this, exceptRooms);
	},
});

function exceptSids(adapter: Adapter, exceptRooms?: Set<Room>): Set<SocketId> {
	const except = new Set<SocketId>();
	for (const room of exceptRooms ?? []) for (const id of membersOf(adapter, room)) except.add(id);
	return except;
}
