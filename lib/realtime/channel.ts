/**
 * A realtime channel as a table, the way moleculer-io maps socket events to mesh actions: a namespace,
 * who may join it, the events a client may send (each a schema and a few lines that call the mesh), what
 * happens on join and leave, and which mesh events it pushes to its sockets. The gateway
 * (mixins/realtime-gateway.mixin.ts) does the rest for every channel alike: engine, handshake budget,
 * token, event budgets, schema check, namespace lifecycle, error replies, metrics.
 */
import type { Namespace, Server, Socket } from "socket.io";
import type { DefaultEventsMap } from "socket.io/dist/typed-events";
import type { Logger, ServiceBroker } from "moleculer";
import type { MeshUser, VerifiedToken } from "../http/auth";
import type { WsError } from "./socket-errors";

export interface SocketData {
	user?: MeshUser;
	/** when the handshake token expires (ms since the epoch): the socket is closed then */
	expiresAt?: number | null;
	/** what the channel keeps per socket (a room's post right, a presence device, open agent runs) */
	[key: string]: unknown;
}

export type MeshSocket = Socket<DefaultEventsMap, DefaultEventsMap, DefaultEventsMap, SocketData>;

/** What a channel's code may use of the gateway. */
export interface RealtimeGateway {
	broker: ServiceBroker;
	logger: Logger;
	io: Server | null;
	/** the namespace of that exact name when it exists on this node (a dynamic child only while it has sockets) */
	namespace(name: string): Namespace | undefined;
}

export interface SocketEventSpec {
	/** fastest-validator schema of the payload (422 naming the field when it does not match) */
	params: Record<string, unknown>;
	/** the event's work once budget and schema passed: authorizes, calls the mesh; resolves to what the ack carries besides `ok` */
	handler(gateway: RealtimeGateway, socket: MeshSocket, params: Record<string, unknown>): Promise<Record<string, unknown>>;
	/**
	 * false: does not wait in its user's lane (WS_USER_CONCURRENCY), for events that hold no database
	 * connection and must not queue behind the user's other events (cancelling a run).
	 */
	lane?: false;
	/** replaces the `error_event` of a refusal by this event (the ack still says `{ok: false, error}`) */
	onError?(socket: MeshSocket, problem: WsError, params: Record<string, unknown>): void;
}

export interface ChannelDefinition {
	/** the metrics label (ws_sockets{channel}, ws_events_total{channel}); bounded, never a user-chosen id */
	name: string;
	/** a namespace name, or a pattern whose children exist only while sockets use them (rooms) */
	namespace: string | { prefix: string; pattern: RegExp };
	/** how clients reach it, for the refusal on the root namespace */
	describe: string;
	/**
	 * The handshake, after the address's handshake budget and the token check: what the socket keeps
	 * (throw a WsError or a mesh error to refuse). `verified` is undefined when no token was sent.
	 */
	authorize(gateway: RealtimeGateway, socket: MeshSocket, verified: VerifiedToken | undefined): Promise<SocketData> | SocketData;
	events: Record<string, SocketEventSpec>;
	onJoin?(gateway: RealtimeGateway, socket: MeshSocket): Promise<void> | void;
	/** called with `this` unbound and the socket as argument, once per socket, on disconnect */
	onLeave?(gateway: RealtimeGateway, socket: MeshSocket): void;
	/** mesh events this channel pushes to its sockets (several channels may react to one event) */
	pushes?: Record<string, (gateway: RealtimeGateway, payload: Record<string, unknown>) => void>;
	/** metrics of its own, registered once when metrics are on */
	metrics?: ChannelMetric[];
}

/** A metric a channel keeps (ws_agent_runs_total, the fan-out histogram); labels are bounded, never user-chosen. */
export interface ChannelMetric {
	name: string;
	type: "counter" | "gauge" | "histogram";
	labelNames?: string[];
	buckets?: number[];
	description: string;
}

/** A dynamic channel's room id (or other key) from a socket's namespace name. */
export function childKeyOf(channel: ChannelDefinition, socket: MeshSocket): string {
	return typeof channel.namespace === "string" ? "" : socket.nsp.name.slice(channel.namespace.prefix.length);
}
