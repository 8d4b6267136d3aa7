/**
 * presence: who is online, away or offline, per device and per user (a user is as present as their
 * most present device). Devices report through the gateway's /city/presence socket (connect,
 * heartbeats carrying activity, hidden/visible, disconnect) or over HTTP. Every change of a user's
 * status is broadcast as `presence.changed`; gateways push it to their presence sockets.
 *
 * Timers that must run once per mesh (away after inactivity, offline after the reconnect grace or
 * missed heartbeats) run on the holder of the "presence-sweeper" lease. A node that dies takes its
 * sockets with it: every node marks that node's devices offline as soon as it leaves the mesh.
 */
import type { Context, Service, ServiceSchema, ServiceSettingSchema } from "moleculer";
import { Errors } from "moleculer";
import { UnauthorizedError } from "../lib/mesh/errors";
import { QueryTypes, type Transaction } from "sequelize";
import { INTERNAL_ACCESS, isAdmin, requireUser, verifyToken, type MeshUser } from "../lib/http/auth";
import { auditEvent } from "../lib/data/audit-events";
import { requestLogger } from "../lib/runtime/logger";
import { databaseOf, nodeContextOf } from "../lib/runtime/node-resources";
import { ROOM_ID, USER_ID } from "../lib/realtime/room-id";
import { actionPolicy } from "../lib/mesh/failover-policy";
import { jwtSecretOf } from "../lib/runtime/settings";
import { LeaderDutyMixin } from "../mixins/leader-duty.mixin";
import { PUBLISHES } from "../lib/data/outbox/relay";

export type PresenceStatus = "online" | "away" | "offline";

export interface UserPresence {
	user_id: string;
	status: PresenceStatus;
	last_active_at: string | null;
	last_seen_at: string | null;
}

type PresenceContext<P> = Context<P, { user?: MeshUser }>;
const SWEEP_EVERY_MS = 500;
const READ = actionPolicy({ idempotent: true, timeout: "fast" });
const WRITE = actionPolicy({ idempotent: false, timeout: "fast" });
const DEVICE = { type: "string", min: 1, max: 100, optional: true } as const;

/** Statuses a service may report: the Matrix names (unavailable = away) and this mesh's own. */
const REPORTED_STATUS: Record<string, PresenceStatus> = { online: "online", unavailable: "away", away: "away", offline: "offline" };

/** One device reported away or offline by a service (online goes through heartbeat: it also marks activity). */
const SET_DEVICE_STATUS = `INSERT INTO presence_devices (user_id, device_id, status, node_id) VALUES ($1, $2, $3, 'http')
	ON CONFLICT (user_id, device_id) DO UPDATE SET status = $3, node_id = 'http', last_heartbeat_at = now(),
		disconnected_at = CASE WHEN $3 = 'offline' THEN COALESCE(presence_devices.disconnected_at, now()) ELSE NULL END,
		last_seen_at = now(), updated_at = now()`;

/** A user is as present as their most present device (aggregate over presence_devices rows). */
const USER_PRESENCE_COLUMNS = `
	CASE WHEN bool_or(status = 'online') THEN 'online' WHEN bool_or(status = 'away') THEN 'away' ELSE 'offline' END AS status,
	max(last_active_at) AS last_active_at, max(last_seen_at) AS last_seen_at`;

const USER_STATUS = `SELECT $1::text AS user_id, ${USER_PRESENCE_COLUMNS} FROM presence_devices WHERE user_id = $1`;

const STATUS_COUNTS = `SELECT status, count(*)::int AS users FROM (SELECT ${USER_PRESENCE_COLUMNS} FROM presence_devices GROUP BY user_id) per_user GROUP BY status`;
export const PRESENCE_USERS_METRIC = "presence_users";
/** Unix time of the last completed sweep on this node (0 where it never swept): the "sweeper not running" alert reads its max. */
export const PRESENCE_SWEEP_METRIC = "presence.sweep.last.timestamp.seconds";
/** After a status change anywhere in the mesh, the counts gauge is read again this much later (changes in between share one query). */
const COUNTS_AFTER_CHANGE_MS = 1_000;

interface PresenceSettings extends ServiceSettingSchema {
	/** no activity for this long → away (seed: 5 minutes); PRESENCE_AWAY_AFTER_MS */
	awayAfterMs: number;
	/** a closed or hidden socket stays present this long, in case it reconnects; PRESENCE_GRACE_MS */
	graceMs: number;
	/** how often clients send heartbeats; three missed → offline; PRESENCE_HEARTBEAT_MS */
	heartbeatMs: number;
}

// Service, not Service<PresenceSettings>: LeaderDutyMixin takes hosts typed as Service; the narrower field says the same.
interface PresenceThis extends Service {
	settings: PresenceSettings;
	countsTimer: NodeJS.Timeout | null;
	/** applies `change` to one device and broadcasts if the user's status changed */
	changeDevice(userId: string, change: (t: Transaction) => Promise<unknown>): Promise<UserPresence>;
	userStatus(userId: string, t?: Transaction): Promise<UserPresence>;
	announce(userIds: string[]): Promise<void>;
	publishChange(now: UserPresence, previous?: PresenceStatus): Promise<void>;
	sweep(): Promise<void>;
	nodeLeft(nodeID: string): Promise<void>;
	statusCounts(): Promise<Record<PresenceStatus, number>>;
	refreshCountsSoon(): void;
	refreshCounts(): Promise<void>;
}

const PresenceService: ServiceSchema<PresenceSettings, Record<string, never>, Record<string, never>, PresenceThis> = {
	name: "presence",
	settings: { awayAfterMs: 5 * 60_000, graceMs: 3_000, heartbeatMs: 10_000 },
	/** Published through the outbox (the event stream captures it): its audit events; presence.> stays captured as before. */
	metadata: { [PUBLISHES]: ["presence.>", "audit.>"] },
	mixins: [LeaderDutyMixin<PresenceThis>({ duty: "presence-sweeper", everyMs: SWEEP_EVERY_MS, what: "presence sweep", run() { return this.sweep(); } })],

	actions: {
		/** Socket opened (gateway → here). */
		connect: {
			...WRITE,
			params: { user_id: "string", device_id: "string", node_id: "string", $$strict: "remove" },
			async handler(ctx: Context<{ user_id: string; device_id: string; node_id: string }>) {
				const { user_id, device_id, node_id } = ctx.params;
				return this.changeDevice(user_id, t =>
					databaseOf(this.broker).query(
						`INSERT INTO presence_devices (user_id, device_id, status, node_id, transport) VALUES ($1, $2, 'online', $3, 'socket')
						 ON CONFLICT (user_id, device_id) DO UPDATE SET status = 'online', node_id = $3, transport = 'socket', last_active_at = now(),
							last_heartbeat_at = now(), disconnected_at = NULL, last_seen_at = now(), updated_at = now()`,
						{ bind: [user_id, device_id, node_id], transaction: t },
					),
				);
			},
		},

		/** A heartbeat; `active` = the user did something since the last one. */
		heartbeat: {
			...WRITE,
			params: { user_id: "string", device_id: "string", node_id: "string", active: "boolean", $$strict: "remove" },
			async handler(ctx: Context<{ user_id: string; device_id: string; node_id: string; active: boolean }>) {
				const { user_id, device_id, node_id, active } = ctx.params;
				const { awayAfterMs } = this.settings;
				return this.changeDevice(user_id, t =>
					databaseOf(this.broker).query(
						`INSERT INTO presence_devices (user_id, device_id, status, node_id) VALUES ($1, $2, 'online', $3)
						 ON CONFLICT (user_id, device_id) DO UPDATE SET
							last_active_at = CASE WHEN $4 THEN now() ELSE presence_devices.last_active_at END,
							status = CASE WHEN $4 OR presence_devices.last_active_at > now() - $5 * interval '1 millisecond' THEN 'online' ELSE 'away' END,
							node_id = $3, last_heartbeat_at = now(), disconnected_at = NULL, last_seen_at = now(), updated_at = now()`,
						{ bind: [user_id, device_id, node_id, active, awayAfterMs], transaction: t },
					),
				);
			},
		},

		/** Socket closed, page hidden or closed: offline after the grace period unless it comes back. */
		gone: {
			...WRITE,
			params: { user_id: "string", device_id: "string", $$strict: "remove" },
			async handler(ctx: Context<{ user_id: string; device_id: string }>) {
				await databaseOf(this.broker).query(
					"UPDATE presence_devices SET disconnected_at = COALESCE(disconnected_at, now()), updated_at = now() WHERE user_id = $1 AND device_id = $2 AND status <> 'offline'",
					{ bind: [ctx.params.user_id, ctx.params.device_id] },
				);
				return { user_id: ctx.params.user_id, device_id: ctx.params.device_id, leaving: true };
			},
		},

		/** HTTP presence for clients without a socket: online until heartbeats stop. */
		online: {
			...WRITE,
			rest: "POST /online",
			access: "user",
			params: { device_id: DEVICE, $$strict: "remove" },
			async handler(ctx: PresenceContext<{ device_id?: string }>) {
				const user = requireUser(ctx);
				return ctx.call("presence.heartbeat", { user_id: user.id, device_id: ctx.params.device_id ?? "http", node_id: "http", active: true });
			},
		},

		/**
		 * The seed's internal endpoint (POST /internal/matrix/presence/online), for services. Takes the
		 * original caller's body `{matrix_user_id, access_token, status: online|unavailable|offline,
		 * status_msg?}` (unavailable = away; the Matrix access token and status message are accepted and
		 * dropped: this mesh neither calls Synapse nor keeps them) and this mesh's `{user_id, device_id?,
		 * status?}`; `status` defaults to online.
		 */
		internalOnline: {
			...WRITE,
			access: INTERNAL_ACCESS,
			params: {
				user_id: { ...USER_ID, optional: true },
				matrix_user_id: { ...USER_ID, optional: true },
				device_id: DEVICE,
				status: { type: "enum", values: Object.keys(REPORTED_STATUS), optional: true },
				access_token: { type: "string", max: 4096, optional: true },
				status_msg: { type: "string", max: 1000, optional: true },
				$$strict: "remove",
			},
			async handler(ctx: Context<{ user_id?: string; matrix_user_id?: string; device_id?: string; status?: string }, { user?: MeshUser }>) {
				const { user_id, matrix_user_id, device_id = "matrix", status = "online" } = ctx.params;
				const userId = user_id ?? matrix_user_id;
				if (!userId) throw new Errors.ValidationError("user_id (or matrix_user_id) is required", "VALIDATION_ERROR", [{ field: "user_id", type: "required", message: "user_id or matrix_user_id is required" }]);
				if (user_id && matrix_user_id && user_id !== matrix_user_id) {
					throw new Errors.ValidationError("user_id and matrix_user_id name different users", "VALIDATION_ERROR", [{ field: "matrix_user_id", type: "mismatch", message: "must equal user_id when both are given" }]);
				}
				const deviceStatus = REPORTED_STATUS[status];
				const presence =
					deviceStatus === "online"
						? await ctx.call<UserPresence, object>("presence.heartbeat", { user_id: userId, device_id, node_id: "http", active: true })
						: await this.changeDevice(userId, t => databaseOf(this.broker).query(SET_DEVICE_STATUS, { bind: [userId, device_id, deviceStatus], transaction: t }));
				await auditEvent(this.broker, ctx, { service: "presence", action: `marked_${deviceStatus}`, actor: ctx.meta.user?.id ?? "mesh", target: userId });
				return { ok: true, ...presence, ...(matrix_user_id ? { matrix_user_id } : {}), device_id, device_status: deviceStatus };
			},
		},

		/** navigator.sendBeacon on pagehide cannot send headers: the token travels in the body. */
		beacon: {
			...WRITE,
			rest: "POST /beacon",
			access: "public",
			params: { token: { type: "string", min: 10 }, device_id: { type: "string", min: 1, max: 100 }, $$strict: "remove" },
			async handler(ctx: Context<{ token: string; device_id: string }>) {
				let user: MeshUser;
				try {
					user = verifyToken(jwtSecretOf(nodeContextOf(this.broker).settings), ctx.params.token);
				} catch (err) {
					// The token came in the body: the refusal names that field.
					if (err instanceof UnauthorizedError) throw new UnauthorizedError(err.message, "INVALID_TOKEN", { field: "token" });
					throw err;
				}
				return ctx.call("presence.gone", { user_id: user.id, device_id: ctx.params.device_id });
			},
		},

		/** A user's status; their devices (ids, nodes) only to themselves and admins. */
		user: {
			...READ,
			rest: "GET /users/:user_id",
			access: "user",
			params: { user_id: USER_ID, $$strict: "remove" },
			async handler(ctx: PresenceContext<{ user_id: string }>) {
				const caller = requireUser(ctx);
				const status = await this.userStatus(ctx.params.user_id);
				if (caller.id !== ctx.params.user_id && !isAdmin(caller)) return status;
				const devices = await databaseOf(this.broker).query(
					"SELECT device_id, status, node_id, last_active_at, last_seen_at FROM presence_devices WHERE user_id = $1 ORDER BY device_id",
					{ bind: [ctx.params.user_id], type: QueryTypes.SELECT },
				);
				return { ...status, devices };
			},
		},

		/** Users per status across the mesh: GET /api/presence/counts → {online, away, offline}. */
		counts: {
			...READ,
			rest: "GET /counts",
			access: "user",
			params: { $$strict: "remove" },
			async handler() {
				return this.statusCounts();
			},
		},

		/**
		 * Everyone's status, or one room's members' (GET /api/presence?room_id=): the room's members come
		 * from city under the caller's rights, so a room the caller may not read is a 404 as in city.
		 */
		list: {
			...READ,
			rest: "GET /",
			access: "user",
			params: { room_id: { ...ROOM_ID, optional: true }, $$strict: "remove" },
			async handler(ctx: PresenceContext<{ room_id?: string }>) {
				requireUser(ctx);
				let members: string[] | null = null;
				if (ctx.params.room_id) {
					const room = await ctx.call<{ members: Array<{ user_id: string }> }, { room_id: string }>("city.members", { room_id: ctx.params.room_id });
					members = room.members.map(m => m.user_id);
				}
				const rows = await databaseOf(this.broker).query<UserPresence>(
					`SELECT user_id, ${USER_PRESENCE_COLUMNS}
					 FROM presence_devices
					 WHERE $1::text[] IS NULL OR user_id = ANY($1::text[])
					 GROUP BY user_id ORDER BY user_id`,
					{ bind: [members], type: QueryTypes.SELECT },
				);
				return { room_id: ctx.params.room_id ?? null, users: rows };
			},
		},
	},

	events: {
		"city.member.joined"(ctx: Context<{ room_id: string; user_id: string }>) {
			this.announce([ctx.params.user_id]).catch(err => requestLogger(this.logger, ctx).warn(`presence: announcing ${ctx.params.user_id} to room ${ctx.params.room_id} failed: ${(err as Error).message}`));
		},
		/** Every change, from any node, moves the counts: read them again shortly (one query per burst). */
		"presence.changed"() {
			this.refreshCountsSoon();
		},
		"$node.disconnected"(ctx: Context<{ node: { id: string } }>) {
			this.nodeLeft(ctx.params.node.id).catch(err => requestLogger(this.logger, ctx).warn(`presence: marking ${ctx.params.node.id}'s devices offline failed: ${(err as Error).message}`));
		},
	},

	methods: {
		async userStatus(this: PresenceThis, userId: string, t?: Transaction): Promise<UserPresence> {
			const [row] = await databaseOf(this.broker).query<UserPresence>(USER_STATUS, { bind: [userId], type: QueryTypes.SELECT, transaction: t });
			return row;
		},

		async changeDevice(this: PresenceThis, userId: string, change: (t: Transaction) => Promise<unknown>): Promise<UserPresence> {
			const sequelize = databaseOf(this.broker);
			const [before, after] = await sequelize.transaction(async t => {
				// One user's devices change one at a time, so "before" and "after" are exact.
				await sequelize.query("SELECT pg_advisory_xact_lock(hashtext($1))", { bind: [`presence:${userId}`], transaction: t });
				const previous = await this.userStatus(userId, t);
				await change(t);
				return [previous, await this.userStatus(userId, t)];
			});
			if (before.status !== after.status) await this.publishChange(after, before.status);
			return after;
		},

		/**
		 * Broadcasts the current status of users whose devices changed outside changeDevice (sweeps, node
		 * loss) or who joined a room. The status is read under the user's lock, as changeDevice changes it:
		 * read without it, a new member's announce raced their first connect (its transaction not yet
		 * committed) and broadcast "offline" while changeDevice broadcast "online" — the two broadcasts come
		 * from different nodes, and when the stale one arrived last the room's watchers kept the member offline.
		 * A user with no device at all has no presence to announce (room snapshots leave them out too):
		 * their first connect broadcasts it, with their rooms.
		 */
		async announce(this: PresenceThis, userIds: string[]) {
			const sequelize = databaseOf(this.broker);
			for (const userId of new Set(userIds)) {
				const now = await sequelize.transaction(async t => {
					await sequelize.query("SELECT pg_advisory_xact_lock(hashtext($1))", { bind: [`presence:${userId}`], transaction: t });
					return this.userStatus(userId, t);
				});
				if (now.last_seen_at === null) continue;
				await this.publishChange(now);
			}
		},

		/**
		 * Broadcasts a user's new status with the rooms they belong to, asked of city over the mesh:
		 * gateways only route by them (room watchers) and do not pass them on to clients.
		 */
		async publishChange(this: PresenceThis, now: UserPresence, previous?: PresenceStatus) {
			// Without city the change still goes to those watching everyone; room watchers miss it.
			const rooms = await this.broker.call<string[], { user_id: string }>("city.roomsOf", { user_id: now.user_id }).catch(err => {
				this.logger.warn(`presence: the rooms of ${now.user_id} are unknown (city.roomsOf failed: ${(err as Error).message}); their change reaches room watchers only with the next one`);
				return [] as string[];
			});
			this.broker.broadcast("presence.changed", { ...now, ...(previous ? { previous } : {}), rooms, changed_at: new Date().toISOString() });
		},

		/** The leader's round (LeaderDutyMixin): away after inactivity, offline after the grace or missed heartbeats. */
		async sweep(this: PresenceThis) {
			const { awayAfterMs, graceMs, heartbeatMs } = this.settings;
			const changed = await databaseOf(this.broker).query<{ user_id: string }>(
				`UPDATE presence_devices SET
					status = CASE
						WHEN disconnected_at < now() - $1 * interval '1 millisecond' OR last_heartbeat_at < now() - $3 * interval '1 millisecond' THEN 'offline'
						ELSE 'away' END,
					updated_at = now()
				 WHERE status <> 'offline' AND (
					disconnected_at < now() - $1 * interval '1 millisecond'
					OR last_heartbeat_at < now() - $3 * interval '1 millisecond'
					OR (status = 'online' AND last_active_at < now() - $2 * interval '1 millisecond'))
				 RETURNING user_id`,
				{ bind: [graceMs, awayAfterMs, 3 * heartbeatMs], type: QueryTypes.SELECT },
			);
			this.broker.metrics?.set(PRESENCE_SWEEP_METRIC, Date.now() / 1000);
			if (changed.length) await this.announce(changed.map(r => r.user_id));
		},

		async statusCounts(this: PresenceThis): Promise<Record<PresenceStatus, number>> {
			const rows = await databaseOf(this.broker).query<{ status: PresenceStatus; users: number }>(STATUS_COUNTS, { type: QueryTypes.SELECT });
			const counts = { online: 0, away: 0, offline: 0 };
			for (const row of rows) counts[row.status] = row.users;
			return counts;
		},

		refreshCountsSoon(this: PresenceThis) {
			if (this.countsTimer || !this.broker.isMetricsEnabled()) return;
			this.countsTimer = setTimeout(() => {
				this.countsTimer = null;
				void this.refreshCounts();
			}, COUNTS_AFTER_CHANGE_MS);
		},

		/** The presence_users gauge: mesh-wide, so every node running presence reports the same figures. Never rejects. */
		async refreshCounts(this: PresenceThis) {
			if (!this.broker.isMetricsEnabled()) return;
			try {
				const counts = await this.statusCounts();
				for (const [status, users] of Object.entries(counts)) this.broker.metrics.set(PRESENCE_USERS_METRIC, users, { status });
			} catch (err) {
				this.logger.warn(`presence: reading the status counts failed: ${(err as Error).message}`);
			}
		},

		/** The node's sockets died with it: its devices are offline now, not after a grace period. */
		async nodeLeft(this: PresenceThis, nodeID: string) {
			const changed = await databaseOf(this.broker).query<{ user_id: string }>(
				"UPDATE presence_devices SET status = 'offline', disconnected_at = COALESCE(disconnected_at, now()), updated_at = now() WHERE node_id = $1 AND status <> 'offline' RETURNING user_id",
				{ bind: [nodeID], type: QueryTypes.SELECT },
			);
			if (!changed.length) return;
			this.logger.info(`presence: ${changed.length} device(s) of node ${nodeID} are offline (node left the mesh)`, { event: "presence.node-left", node_id: nodeID });
			await this.announce(changed.map(r => r.user_id));
		},
	},

	created() {
		this.countsTimer = null;
		if (!this.broker.isMetricsEnabled()) return;
		this.broker.metrics.register({
			name: PRESENCE_USERS_METRIC,
			type: "gauge",
			labelNames: ["status"],
			description: "Users per presence status across the mesh (a user is as present as their most present device); every node reports the same figures",
		});
		this.broker.metrics.register({ name: PRESENCE_SWEEP_METRIC, type: "gauge", description: "Unix time of the last presence sweep on this node (0: never; only the lease holder sweeps)" });
		this.broker.metrics.set(PRESENCE_SWEEP_METRIC, 0);
	},

	started() {
		void this.refreshCounts();
	},

	stopped() {
		if (this.countsTimer) clearTimeout(this.countsTimer);
	},
};

export default PresenceService;
