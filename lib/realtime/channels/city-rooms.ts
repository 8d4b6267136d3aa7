/**
 * /city/rooms/{room_id} (seed channel /ws/city/rooms/{room_id}): a room's messages as they are posted on
 * any node, and posting. A room namespace exists on a node only while sockets use it.
 */
import { auditSecurityDecision } from "../../data/audit-events";
import { nodeContextOf } from "../../runtime/node-resources";
import type { ChannelDefinition, MeshSocket, RealtimeGateway } from "../channel";
import { childKeyOf } from "../channel";
import { ROOM_ID_PATTERN } from "../room-id";
import { NO_TOKEN, type WsError } from "../socket-errors";

export const ROOM_PREFIX = "/city/rooms/";
export const ROOM_NAMESPACE = new RegExp(`^${ROOM_PREFIX}${ROOM_ID_PATTERN.source.slice(1)}`);
export const FANOUT_METRIC = "channel_ws_fanout_latency_seconds";

/** "does not exist" and "not yours" answer the same, so that names of private rooms cannot be probed. */
export function roomNotFound(roomId: string): WsError {
	return { code: 404, type: "ROOM_NOT_FOUND", message: `Room ${roomId} not found` };
}

export function noLongerMember(roomId: string) {
	return { code: 403, type: "NOT_A_MEMBER", message: `You are no longer a member of room ${roomId}`, room_id: roomId };
}

function pushToRoom(gateway: RealtimeGateway, event: string, message: Record<string, unknown>): void {
	const namespace = gateway.namespace(ROOM_PREFIX + String(message.room_id));
	if (!namespace || namespace.sockets.size === 0) return;
	namespace.emit(event, message);
	const { broker } = gateway;
	if (event === "message" && typeof message.created_at === "string" && broker.isMetricsEnabled()) {
		broker.metrics.observe(FANOUT_METRIC, Math.max(0, (Date.now() - Date.parse(message.created_at)) / 1000));
	}
}

export const CITY_ROOMS: ChannelDefinition = {
	name: "rooms",
	namespace: { prefix: ROOM_PREFIX, pattern: ROOM_NAMESPACE },
	describe: "/city/rooms/{room_id}",

	/** The token (or public reads), then the room: rooms that do not exist and rooms the user may not read both answer 404. */
	async authorize(gateway, socket, verified) {
		const user = verified?.user;
		if (!user && !nodeContextOf(gateway.broker).settings.wsPublicRead) throw NO_TOKEN;
		const roomId = childKeyOf(CITY_ROOMS, socket);
		let access: { read: boolean; post: boolean };
		try {
			access = (await gateway.broker.call("city.roomAccess", { room_id: roomId }, { meta: { user } })) as typeof access;
		} catch (err) {
			if ((err as { code?: number }).code === 404) throw roomNotFound(roomId);
			throw err;
		}
		if (!access.read && user) auditSecurityDecision(gateway.broker, null, { service: "socket", action: "authz_failed", client: socket.handshake.address, reason: "FORBIDDEN", actor: user.id, target: socket.nsp.name });
		if (!access.read) throw user ? roomNotFound(roomId) : NO_TOKEN;
		return { user, canPost: access.post, expiresAt: verified?.expiresAt };
	},

	events: {
		/** post a message (ack `{ok, message}`); over CITY_MAX_MESSAGE_CHARS → 413 from city */
		message: {
			params: { body: { type: "string", min: 1 }, $$strict: "remove" },
			async handler(gateway, socket, params) {
				if (!socket.data.canPost) throw socket.data.user ? { code: 403, type: "FORBIDDEN", message: "You may not post in this room" } : NO_TOKEN;
				const message = await gateway.broker.call("city.postMessage", { room_id: childKeyOf(CITY_ROOMS, socket), body: params.body }, { meta: { user: socket.data.user } });
				return { message };
			},
		},
	},

	pushes: {
		"city.message.created": (gateway, message) => pushToRoom(gateway, "message", message),
		"city.message.edited": (gateway, message) => pushToRoom(gateway, "message.edited", message),
		"city.message.deleted": (gateway, message) => pushToRoom(gateway, "message.deleted", message),
		/** A member left or was removed: their sockets in that room close at once, not at their next event. */
		"city.member.left"(gateway, { room_id, user_id }) {
			const room = gateway.namespace(ROOM_PREFIX + String(room_id));
			for (const socket of [...((room?.sockets ?? new Map()) as Map<string, MeshSocket>).values()]) {
				if (socket.data.user?.id !== user_id) continue;
				socket.emit("error_event", noLongerMember(String(room_id)));
				socket.disconnect();
			}
		},
	},

	metrics: [
		{
			name: FANOUT_METRIC,
			type: "histogram",
			// No room label: room ids are user-chosen (private ones too), one series each would be unbounded.
			buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
			description: "Seconds from a room message's commit to its push to this node's sockets",
		},
	],
};
