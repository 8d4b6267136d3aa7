/**
 * city: rooms and their messages. Messages are numbered per room (a row lock on the room hands out
 * `seq`), persisted, published through the outbox (`message.{created|edited|deleted}.{room_id}`), and
 * broadcast on the mesh as `city.message.*` so every gateway pushes them to its room sockets at once.
 * Public rooms: any signed-in user reads and posts. Private rooms: members only, and a room's creator
 * (its owner) or an admin adds and removes members; the owner always keeps access. A private room the
 * caller may not read answers exactly as a room that does not exist (404), so its name cannot be probed.
 * Leaving or being removed is broadcast (`city.member.left`): gateways close that user's room sockets.
 */
import type { Context, Service, ServiceSchema, ServiceSettingSchema } from "moleculer";
import { ConflictError, ForbiddenError, NotFoundError, PayloadTooLargeError } from "../lib/mesh/errors";
import { QueryTypes, type Transaction } from "sequelize";
import { isAdmin, requireUser, type MeshUser } from "../lib/http/auth";
import { databaseOf, nodeContextOf } from "../lib/runtime/node-resources";
import { auditEvent } from "../lib/data/audit-events";
import { enqueueEvents, prefixedSubject } from "../lib/data/outbox/enqueue";
import { ringOutbox } from "../lib/data/outbox/doorbell";
import { ROOM_ID, USER_ID } from "../lib/realtime/room-id";
import { actionPolicy } from "../lib/mesh/failover-policy";
import { PUBLISHES } from "../lib/data/outbox/relay";

export interface Room {
	id: string;
	name: string;
	is_public: boolean;
	created_by: string;
	created_at: string;
}

export interface Message {
	id: string;
	room_id: string;
	seq: number;
	author_id: string;
	body: string;
	created_at: string;
	edited_at: string | null;
	deleted_at: string | null;
}

type CityContext<P> = Context<P, { user?: MeshUser }>;

const READ = actionPolicy({ idempotent: true, timeout: "fast" });
const WRITE = actionPolicy({ idempotent: false, timeout: "standard" });

/** The same answer for a room that does not exist and one the caller may not read. */
function roomNotFound(roomId: string): NotFoundError {
	return new NotFoundError(`Room ${roomId} not found`, "ROOM_NOT_FOUND", { room_id: roomId });
}

/**
 * A post as one statement: the room's next number (the UPDATE's row lock orders concurrent posts), the
 * message, and its outbox event, atomic without BEGIN/COMMIT. The room stays locked for this one
 * statement instead of five round trips (BEGIN, room FOR UPDATE, number, message, event, COMMIT), which
 * is what bounded posts to one busy room. No row back: the room is missing or the user may not post in
 * it (postInOneStatement then says which, as roomAllowing does). The event's payload is the message as
 * the action returns it (created_at as JSON renders a Date: UTC, milliseconds, truncated as pg's parser
 * does) and the room's id and visibility, as publish() builds it for edits and deletes; a test holds
 * the two equal.
 */
export const POST_MESSAGE = `WITH room AS (
	UPDATE city_rooms r SET last_seq = r.last_seq + 1
	WHERE r.id = $1 AND (r.is_public OR $3::boolean OR r.created_by = $2
		OR EXISTS (SELECT 1 FROM city_room_members m WHERE m.room_id = r.id AND m.user_id = $2))
	RETURNING r.id, r.is_public, r.last_seq
), created AS (
	INSERT INTO city_messages (room_id, seq, author_id, body) SELECT room.id, room.last_seq, $2, $4 FROM room RETURNING *
), event AS (
	INSERT INTO outbox (aggregate_type, aggregate_id, event_type, subject, payload)
	SELECT 'city_message', created.id::text, 'message.created', $5, jsonb_build_object(
		'message', jsonb_build_object('id', created.id, 'room_id', created.room_id, 'seq', created.seq, 'author_id', created.author_id,
			'body', created.body, 'created_at', to_char(created.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
			'edited_at', created.edited_at, 'deleted_at', created.deleted_at),
		'room', jsonb_build_object('id', room.id, 'is_public', room.is_public))
	FROM created, room
)
SELECT * FROM created`;

function normaliseMessage(row: Message): Message {
	return { ...row, seq: Number(row.seq) };
}

interface CityMethods {
	findRoom(roomId: string, t?: Transaction): Promise<Room>;
	access(room: Room, user: MeshUser | undefined, t?: Transaction): Promise<{ read: boolean; post: boolean }>;
	roomAllowing(roomId: string, user: MeshUser, need: "read" | "post", t?: Transaction): Promise<Room>;
	roomManagedBy(roomId: string, user: MeshUser): Promise<Room>;
	checkBody(body: string): void;
	publish(t: Transaction, room: Room, action: "created" | "edited" | "deleted", message: Message): Promise<void>;
	postInOneStatement(roomId: string, user: MeshUser, body: string): Promise<Message>;
	findMessage(roomId: string, messageId: string, t: Transaction): Promise<Message>;
}
interface CitySettings extends ServiceSettingSchema {
	/** the longest message body, in characters (413 MESSAGE_TOO_LARGE above it); CITY_MAX_MESSAGE_CHARS */
	maxMessageChars: number;
}

type CityThis = Service<CitySettings> & CityMethods;

const CityService: ServiceSchema<CitySettings, Record<string, never>, Record<string, never>, CityThis> = {
	name: "city",
	settings: { maxMessageChars: 4_000 },
	/** Published through the outbox (the event stream captures it): message.{created|edited|deleted}.{room_id}, and its audit events. */
	metadata: { [PUBLISHES]: ["message.>", "audit.>"] },

	actions: {
		createRoom: {
			...WRITE,
			rest: "POST /rooms",
			access: "user",
			params: { id: ROOM_ID, name: { type: "string", min: 1, max: 100 }, is_public: { type: "boolean", optional: true, default: true }, $$strict: "remove" },
			async handler(ctx: CityContext<{ id: string; name: string; is_public: boolean }>) {
				const user = requireUser(ctx);
				const sequelize = databaseOf(this.broker);
				return sequelize.transaction(async t => {
					const [room] = await sequelize.query<Room>(
						"INSERT INTO city_rooms (id, name, is_public, created_by) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING RETURNING id, name, is_public, created_by, created_at",
						{ bind: [ctx.params.id, ctx.params.name, ctx.params.is_public, user.id], type: QueryTypes.SELECT, transaction: t },
					);
					if (!room) throw new ConflictError(`Room ${ctx.params.id} already exists`, "ROOM_EXISTS", { field: "id" });
					await sequelize.query("INSERT INTO city_room_members (room_id, user_id) VALUES ($1, $2)", { bind: [room.id, user.id], transaction: t });
					await auditEvent(this.broker, ctx, { service: "city", action: "room_created", actor: user.id, target: room.id, details: { is_public: room.is_public } }, t);
					return room;
				});
			},
		},

		listRooms: {
			...READ,
			rest: "GET /rooms",
			access: "user",
			async handler(ctx: CityContext<unknown>) {
				const user = requireUser(ctx);
				return databaseOf(this.broker).query<Room>(
					`SELECT r.id, r.name, r.is_public, r.created_by, r.created_at FROM city_rooms r
					 WHERE r.is_public OR $2::boolean OR EXISTS (SELECT 1 FROM city_room_members m WHERE m.room_id = r.id AND m.user_id = $1)
					 ORDER BY r.created_at, r.id`,
					{ bind: [user.id, isAdmin(user)], type: QueryTypes.SELECT },
				);
			},
		},

		getRoom: {
			...READ,
			rest: "GET /rooms/:room_id",
			access: "user",
			params: { room_id: ROOM_ID, $$strict: "remove" },
			async handler(ctx: CityContext<{ room_id: string }>) {
				const room = await this.roomAllowing(ctx.params.room_id, requireUser(ctx), "read");
				const members = await databaseOf(this.broker).query<{ user_id: string }>("SELECT user_id FROM city_room_members WHERE room_id = $1 ORDER BY joined_at", {
					bind: [room.id],
					type: QueryTypes.SELECT,
				});
				return { ...room, members: members.map(m => m.user_id) };
			},
		},

		/** For gateways deciding about a socket: does the room exist, may this (maybe anonymous) user read or post? */
		roomAccess: {
			...READ,
			params: { room_id: ROOM_ID, $$strict: "remove" },
			async handler(ctx: CityContext<{ room_id: string }>) {
				const room = await this.findRoom(ctx.params.room_id);
				return { room, ...(await this.access(room, ctx.meta.user)) };
			},
		},

		join: {
			...WRITE,
			rest: "POST /rooms/:room_id/join",
			access: "user",
			params: { room_id: ROOM_ID, $$strict: "remove" },
			async handler(ctx: CityContext<{ room_id: string }>) {
				const user = requireUser(ctx);
				// Private rooms are joined by invitation (POST …/members): to anyone else they do not exist.
				const room = await this.roomAllowing(ctx.params.room_id, user, "read");
				const [inserted] = await databaseOf(this.broker).query<{ room_id: string }>(
					"INSERT INTO city_room_members (room_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING room_id",
					{ bind: [room.id, user.id], type: QueryTypes.SELECT },
				);
				// A new member's presence now matters to the room's watchers: presence (one instance, a
				// balanced event) announces it, as it would at the member's next status change.
				if (inserted) ctx.emit("city.member.joined", { room_id: room.id, user_id: user.id });
				if (inserted) await auditEvent(this.broker, ctx, { service: "city", action: "member_joined", actor: user.id, target: room.id });
				return { room_id: room.id, user_id: user.id, member: true };
			},
		},

		leave: {
			...WRITE,
			rest: "POST /rooms/:room_id/leave",
			access: "user",
			params: { room_id: ROOM_ID, $$strict: "remove" },
			async handler(ctx: CityContext<{ room_id: string }>) {
				const user = requireUser(ctx);
				const room = await this.roomAllowing(ctx.params.room_id, user, "read");
				if (room.created_by === user.id) throw new ConflictError("The room's owner stays a member", "OWNER_STAYS", { field: "room_id" });
				const [left] = await databaseOf(this.broker).query<{ room_id: string }>("DELETE FROM city_room_members WHERE room_id = $1 AND user_id = $2 RETURNING room_id", {
					bind: [room.id, user.id],
					type: QueryTypes.SELECT,
				});
				if (left) {
					ctx.broadcast("city.member.left", { room_id: room.id, user_id: user.id, is_public: room.is_public });
					await auditEvent(this.broker, ctx, { service: "city", action: "member_left", actor: user.id, target: room.id });
				}
				return { room_id: room.id, user_id: user.id, member: false };
			},
		},

		members: {
			...READ,
			rest: "GET /rooms/:room_id/members",
			access: "user",
			params: { room_id: ROOM_ID, $$strict: "remove" },
			async handler(ctx: CityContext<{ room_id: string }>) {
				const room = await this.roomAllowing(ctx.params.room_id, requireUser(ctx), "read");
				const members = await databaseOf(this.broker).query<{ user_id: string; joined_at: string }>("SELECT user_id, joined_at FROM city_room_members WHERE room_id = $1 ORDER BY joined_at, user_id", {
					bind: [room.id],
					type: QueryTypes.SELECT,
				});
				return { room_id: room.id, owner: room.created_by, is_public: room.is_public, members };
			},
		},

		/** The owner or an admin adds a member (the only way into a private room). */
		addMember: {
			...WRITE,
			rest: "POST /rooms/:room_id/members",
			access: "user",
			params: { room_id: ROOM_ID, user_id: USER_ID, $$strict: "remove" },
			async handler(ctx: CityContext<{ room_id: string; user_id: string }>) {
				const room = await this.roomManagedBy(ctx.params.room_id, requireUser(ctx));
				const [inserted] = await databaseOf(this.broker).query<{ room_id: string }>(
					"INSERT INTO city_room_members (room_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING room_id",
					{ bind: [room.id, ctx.params.user_id], type: QueryTypes.SELECT },
				);
				if (inserted) ctx.emit("city.member.joined", { room_id: room.id, user_id: ctx.params.user_id });
				return { room_id: room.id, user_id: ctx.params.user_id, member: true };
			},
		},

		/** The owner or an admin removes a member; their open sockets in the room close at once (city.member.left). */
		removeMember: {
			...WRITE,
			rest: "DELETE /rooms/:room_id/members/:user_id",
			access: "user",
			params: { room_id: ROOM_ID, user_id: USER_ID, $$strict: "remove" },
			async handler(ctx: CityContext<{ room_id: string; user_id: string }>) {
				const room = await this.roomManagedBy(ctx.params.room_id, requireUser(ctx));
				if (ctx.params.user_id === room.created_by) throw new ConflictError("The room's owner stays a member", "OWNER_STAYS", { field: "user_id" });
				const [removed] = await databaseOf(this.broker).query<{ room_id: string }>("DELETE FROM city_room_members WHERE room_id = $1 AND user_id = $2 RETURNING room_id", {
					bind: [room.id, ctx.params.user_id],
					type: QueryTypes.SELECT,
				});
				if (removed) ctx.broadcast("city.member.left", { room_id: room.id, user_id: ctx.params.user_id, is_public: room.is_public });
				return { room_id: room.id, user_id: ctx.params.user_id, member: false };
			},
		},

		/** For presence: the rooms a user is a member of (to route their status to those rooms' watchers). */
		roomsOf: {
			...READ,
			params: { user_id: USER_ID, $$strict: "remove" },
			async handler(ctx: Context<{ user_id: string }>) {
				const rows = await databaseOf(this.broker).query<{ room_id: string }>("SELECT room_id FROM city_room_members WHERE user_id = $1 ORDER BY room_id", {
					bind: [ctx.params.user_id],
					type: QueryTypes.SELECT,
				});
				return rows.map(r => r.room_id);
			},
		},

		postMessage: {
			...WRITE,
			rest: "POST /rooms/:room_id/messages",
			access: "user",
			params: { room_id: ROOM_ID, body: { type: "string", min: 1 }, $$strict: "remove" },
			async handler(ctx: CityContext<{ room_id: string; body: string }>) {
				const user = requireUser(ctx);
				this.checkBody(ctx.params.body);
				const message = await this.postInOneStatement(ctx.params.room_id, user, ctx.params.body);
				// After commit: the realtime path to every gateway (the outbox carries the durable copy).
				ctx.broadcast("city.message.created", message);
				return message;
			},
		},

		listMessages: {
			...READ,
			rest: "GET /rooms/:room_id/messages",
			access: "user",
			params: {
				room_id: ROOM_ID,
				before: { type: "number", integer: true, min: 1, optional: true, convert: true },
				limit: { type: "number", integer: true, min: 1, max: 200, optional: true, convert: true },
				$$strict: "remove",
			},
			async handler(ctx: CityContext<{ room_id: string; before?: number; limit?: number }>) {
				const room = await this.roomAllowing(ctx.params.room_id, requireUser(ctx), "read");
				const limit = ctx.params.limit ?? 50;
				const rows = await databaseOf(this.broker).query<Message>(
					"SELECT * FROM city_messages WHERE room_id = $1 AND deleted_at IS NULL AND ($2::bigint IS NULL OR seq < $2) ORDER BY seq DESC LIMIT $3",
					{ bind: [room.id, ctx.params.before ?? null, limit + 1], type: QueryTypes.SELECT },
				);
				const page = rows.slice(0, limit).map(normaliseMessage).reverse();
				// Cursor: pass next_before to get the page of older messages.
				return { messages: page, next_before: rows.length > limit ? page[0].seq : null };
			},
		},

		editMessage: {
			...WRITE,
			rest: "PATCH /rooms/:room_id/messages/:message_id",
			access: "user",
			params: { room_id: ROOM_ID, message_id: { type: "uuid" }, body: { type: "string", min: 1 }, $$strict: "remove" },
			async handler(ctx: CityContext<{ room_id: string; message_id: string; body: string }>) {
				const user = requireUser(ctx);
				this.checkBody(ctx.params.body);
				const sequelize = databaseOf(this.broker);
				const edited = await sequelize.transaction(async t => {
					const room = await this.roomAllowing(ctx.params.room_id, user, "read", t);
					const message = await this.findMessage(room.id, ctx.params.message_id, t);
					if (message.author_id !== user.id) throw new ForbiddenError("Only the author edits a message", "FORBIDDEN");
					const [row] = await sequelize.query<Message>("UPDATE city_messages SET body = $2, edited_at = now() WHERE id = $1 RETURNING *", {
						bind: [message.id, ctx.params.body],
						type: QueryTypes.SELECT,
						transaction: t,
					});
					await this.publish(t, room, "edited", normaliseMessage(row));
					await auditEvent(this.broker, ctx, { service: "city", action: "message_edited", actor: user.id, target: message.id, details: { room_id: room.id } }, t);
					return normaliseMessage(row);
				});
				ctx.broadcast("city.message.edited", edited);
				return edited;
			},
		},

		deleteMessage: {
			...WRITE,
			rest: "DELETE /rooms/:room_id/messages/:message_id",
			access: "user",
			params: { room_id: ROOM_ID, message_id: { type: "uuid" }, $$strict: "remove" },
			async handler(ctx: CityContext<{ room_id: string; message_id: string }>) {
				const user = requireUser(ctx);
				const sequelize = databaseOf(this.broker);
				const deleted = await sequelize.transaction(async t => {
					const room = await this.roomAllowing(ctx.params.room_id, user, "read", t);
					const message = await this.findMessage(room.id, ctx.params.message_id, t);
					if (message.author_id !== user.id && !isAdmin(user)) throw new ForbiddenError("Only the author or an admin deletes a message", "FORBIDDEN");
					const [row] = await sequelize.query<Message>("UPDATE city_messages SET deleted_at = now(), body = '' WHERE id = $1 RETURNING *", {
						bind: [message.id],
						type: QueryTypes.SELECT,
						transaction: t,
					});
					await this.publish(t, room, "deleted", normaliseMessage(row));
					await auditEvent(this.broker, ctx, { service: "city", action: "message_deleted", actor: user.id, target: message.id, details: { room_id: room.id, author_id: message.author_id, moderated: message.author_id !== user.id } }, t);
					return normaliseMessage(row);
				});
				ctx.broadcast("city.message.deleted", deleted);
				return { id: deleted.id, room_id: deleted.room_id, deleted: true };
			},
		},
	},

	methods: {
		async findRoom(roomId: string, t?: Transaction): Promise<Room> {
			const [room] = await databaseOf(this.broker).query<Room>(`SELECT id, name, is_public, created_by, created_at FROM city_rooms WHERE id = $1${t ? " FOR UPDATE" : ""}`, {
				bind: [roomId],
				type: QueryTypes.SELECT,
				transaction: t,
			});
			if (!room) throw roomNotFound(roomId);
			return room;
		},

		async findMessage(roomId: string, messageId: string, t: Transaction): Promise<Message> {
			const [message] = await databaseOf(this.broker).query<Message>("SELECT * FROM city_messages WHERE id = $1 AND room_id = $2 AND deleted_at IS NULL FOR UPDATE", {
				bind: [messageId, roomId],
				type: QueryTypes.SELECT,
				transaction: t,
			});
			if (!message) throw new NotFoundError(`Message ${messageId} not found in ${roomId}`, "MESSAGE_NOT_FOUND");
			return message;
		},

		/** The room, provided this user may read it (else 404, as for a missing room) and, for "post", post in it (else 403). */
		async roomAllowing(roomId: string, user: MeshUser, need: "read" | "post", t?: Transaction): Promise<Room> {
			const room = await this.findRoom(roomId, t);
			const access = await this.access(room, user, t);
			if (!access.read) throw roomNotFound(roomId);
			if (!access[need]) throw new ForbiddenError("You may not post in this room", "FORBIDDEN");
			return room;
		},

		/** The room, provided this user manages its members: its owner or an admin (404 if unreadable, 403 if only a member). */
		async roomManagedBy(roomId: string, user: MeshUser): Promise<Room> {
			const room = await this.roomAllowing(roomId, user, "read");
			if (room.created_by !== user.id && !isAdmin(user)) throw new ForbiddenError("Only the room's owner or an admin manages its members", "FORBIDDEN");
			return room;
		},

		async access(room: Room, user: MeshUser | undefined, t?: Transaction) {
			if (!user) return { read: room.is_public && nodeContextOf(this.broker).settings.wsPublicRead, post: false };
			// The owner cannot lock themselves out of their own room (by leaving it, say).
			if (room.is_public || isAdmin(user) || room.created_by === user.id) return { read: true, post: true };
			const [member] = await databaseOf(this.broker).query("SELECT 1 FROM city_room_members WHERE room_id = $1 AND user_id = $2", {
				bind: [room.id, user.id],
				type: QueryTypes.SELECT,
				transaction: t,
			});
			return { read: !!member, post: !!member };
		},

		checkBody(body: string) {
			const max = this.settings.maxMessageChars;
			if (body.length > max) throw new PayloadTooLargeError(`body is ${body.length} characters; the limit is ${max}`, "MESSAGE_TOO_LARGE", { field: "body", limit: max });
		},

		async postInOneStatement(roomId: string, user: MeshUser, body: string): Promise<Message> {
			const { settings } = nodeContextOf(this.broker);
			const sequelize = databaseOf(this.broker);
			const [row] = await sequelize.query<Message>(POST_MESSAGE, {
				bind: [roomId, user.id, isAdmin(user), body, prefixedSubject(settings.events, `message.created.${roomId}`)],
				type: QueryTypes.SELECT,
			});
			if (row) {
				ringOutbox(sequelize);
				return normaliseMessage(row);
			}
			// Nothing written: the same 404 or 403 the room's access rules give (or a room that changed meanwhile).
			await this.roomAllowing(roomId, user, "post");
			throw new ConflictError(`Room ${roomId} changed while posting; post again`, "ROOM_CHANGED", { room_id: roomId });
		},

		async publish(t: Transaction, room: Room, action: "created" | "edited" | "deleted", message: Message) {
			const { settings } = nodeContextOf(this.broker);
			await enqueueEvents(databaseOf(this.broker), t, settings.events, [
				{
					aggregateType: "city_message",
					aggregateId: message.id,
					eventType: `message.${action}`,
					subject: `message.${action}.${room.id}`,
					payload: { message: { ...message, body: action === "deleted" ? "" : message.body }, room: { id: room.id, is_public: room.is_public } },
				},
			]);
		},
	},
};

export default CityService;
