/**
 * What a client may send on each socket.io namespace, and in what shape: one fastest-validator schema
 * per event, as an action declares `params`. The gateway (mixins/socket-io.mixin.ts) refuses any other
 * event name (404), and a payload that does not match (422, naming the field) before it authorizes or
 * calls anything; tests generate their bad-input cases from these tables.
 */
import { ROOM_ID } from "./room-id";

export type SocketChannel = "rooms" | "presence";

export const SOCKET_EVENTS = {
	/** namespace /city/rooms/{room_id} */
	rooms: {
		/** post a message (ack `{ok, message}`); over CITY_MAX_MESSAGE_CHARS → 413 from city */
		message: { body: { type: "string", min: 1 }, $$strict: "remove" },
	},
	/** namespace /city/presence */
	presence: {
		heartbeat: { active: { type: "boolean" }, $$strict: "remove" },
		/** one room's members (readable rooms only), or null for everyone */
		watch: { room_id: { ...ROOM_ID, nullable: true }, $$strict: "remove" },
		visibility: { state: { type: "enum", values: ["hidden", "visible"] }, $$strict: "remove" },
	},
} as const;

export type SocketEventName<C extends SocketChannel> = keyof (typeof SOCKET_EVENTS)[C] & string;
