/**
 * /city/presence (seed channel /ws/city/presence): who is online, pushed as it changes on any node; the
 * socket's heartbeats and page visibility drive its own user's status; `watch` narrows it to one room.
 */
import { ROOM_ID } from "../room-id";
import type { ChannelDefinition, MeshSocket } from "../channel";
import { NO_TOKEN } from "../socket-errors";
import { noLongerMember } from "./city-rooms";

export const PRESENCE_NAMESPACE = "/city/presence";

/** socket.io rooms inside the presence namespace: what a socket watches (everyone, or one city room). */
const EVERYONE = "watch:*";
const watching = (roomId: string) => `watch:room:${roomId}`;

function presenceOf(socket: MeshSocket) {
	return { user_id: socket.data.user?.id as string, device_id: socket.data.device as string };
}

export const PRESENCE: ChannelDefinition = {
	name: "presence",
	namespace: PRESENCE_NAMESPACE,
	describe: PRESENCE_NAMESPACE,

	authorize(_gateway, socket, verified) {
		if (!verified) throw NO_TOKEN;
		const requested = (socket.handshake.auth as { device?: unknown }).device;
		const device = typeof requested === "string" && /^[\w.:-]{1,100}$/.test(requested) ? requested : socket.id;
		return { user: verified.user, expiresAt: verified.expiresAt, device };
	},

	events: {
		heartbeat: {
			params: { active: { type: "boolean" }, $$strict: "remove" },
			async handler(gateway, socket, params) {
				return { presence: await gateway.broker.call("presence.heartbeat", { ...presenceOf(socket), node_id: gateway.broker.nodeID, active: params.active }) };
			},
		},
		/** {room_id}: that room's members only (presence checks read access: 404 otherwise); {room_id: null}: everyone. */
		watch: {
			params: { room_id: { ...ROOM_ID, nullable: true }, $$strict: "remove" },
			async handler(gateway, socket, params) {
				const roomId = params.room_id as string | null;
				const snapshot = await gateway.broker.call("presence.list", roomId ? { room_id: roomId } : {}, { meta: { user: socket.data.user } });
				for (const room of socket.rooms) if (room.startsWith("watch:")) socket.leave(room);
				socket.join(roomId ? watching(roomId) : EVERYONE);
				return { snapshot };
			},
		},
		visibility: {
			params: { state: { type: "enum", values: ["hidden", "visible"] }, $$strict: "remove" },
			async handler(gateway, socket, params) {
				const who = presenceOf(socket);
				const presence = params.state === "hidden" ? gateway.broker.call("presence.gone", who) : gateway.broker.call("presence.heartbeat", { ...who, node_id: gateway.broker.nodeID, active: true });
				return { presence: await presence };
			},
		},
	},

	async onJoin(gateway, socket) {
		socket.join(EVERYONE);
		await gateway.broker.call("presence.connect", { ...presenceOf(socket), node_id: gateway.broker.nodeID });
		socket.emit("presence.snapshot", await gateway.broker.call("presence.list", {}, { meta: { user: socket.data.user } }));
	},

	onLeave(gateway, socket) {
		gateway.broker.call("presence.gone", presenceOf(socket)).catch(err => gateway.logger.warn(`presence.gone failed: ${(err as Error).message}`));
	},

	pushes: {
		/**
		 * To sockets watching everyone, and to those watching one of the user's rooms (each socket once).
		 * The room list only routes: a watcher is not told which other rooms the user is in.
		 */
		"presence.changed"(gateway, { rooms, ...visible }) {
			const targets = [EVERYONE, ...((rooms as string[] | undefined) ?? []).map(watching)];
			gateway.namespace(PRESENCE_NAMESPACE)?.to(targets).emit("presence", visible);
		},
		/** A member left a private room: their sockets stop watching it. */
		"city.member.left"(gateway, { room_id, user_id, is_public }) {
			if (is_public) return;
			const roomId = String(room_id);
			const presence = gateway.namespace(PRESENCE_NAMESPACE);
			for (const socket of ((presence?.sockets ?? new Map()) as Map<string, MeshSocket>).values()) {
				if (socket.data.user?.id !== user_id || !socket.rooms.has(watching(roomId))) continue;
				socket.leave(watching(roomId));
				socket.emit("error_event", noLongerMember(roomId));
			}
		},
		/**
		 * `node.{id}.events` (joined, left, registered, status): signed-in pages refresh their node list at
		 * once instead of at their next poll. Only this namespace, whose sockets carry a token, as
		 * GET /api/v1/nodes asks for one; the node id and the kind of change, nothing else.
		 */
		"node.**"(gateway, { node_id, event }) {
			gateway.namespace(PRESENCE_NAMESPACE)?.emit("registry", { node_id: node_id ?? null, event: event ?? null });
		},
	},
};
