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
import type { Context, Service, ServiceSchema } from "moleculer";
import { Errors } from "moleculer";
import { QueryTypes, type Transaction } from "sequelize";
import { AuthError, defineActions, INTERNAL_ACCESS, requireUser, verifyToken, type MeshUser } from "../lib/auth";
import { auditEvent } from "../lib/data/audit-events";
import { requestLogger } from "../lib/logger";
import { createDutyLease, type LeaderLease } from "../lib/leader-lease";
import { databaseOf, nodeContextOf } from "../lib/node-context";
import { actionPolicy } from "../lib/resilience";
import { jwtSecretOf } from "../lib/settings";
import { ROOM_ID } from "./city.service";

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

/** A user is as present as their most present device (aggregate over presence_devices rows). */
const USER_PRESENCE_COLUMNS = `
	CASE WHEN bool_or(status = 'online') THEN 'online' WHEN bool_or(status = 'away') THEN 'away' ELSE 'offline' END AS status,
	max(last_active_at) AS last_active_at, max(last_seen_at) AS last_seen_at`;

const USER_STATUS = `SELECT $1::text AS user_id, ${USER_PRESENCE_COLUMNS} FROM presence_devices WHERE user_id = $1`;

const STATUS_COUNTS = `SELECT status, count(*)::int AS users FROM (SELECT ${USER_PRESENCE_COLUMNS} FROM presence_devices GROUP BY user_id) per_user GROUP BY status`;
export const PRESENCE_USERS_METRIC = "presence_users";
/** After a status change anywhere in the mesh, the counts gauge is read again this much later (changes in between share one query). */
const COUNTS_AFTER_CHANGE_MS = 1_000;

interface PresenceThis extends Service {
	lease: LeaderLease;
	sweepTimer: NodeJS.Timeout | null;
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

const PresenceService: ServiceSchema = {
	name: "presence",

	actions: defineActions({
		/** Socket opened (gateway → here). */
		connect: {
			...WRITE,
			params: { user_id: "string", device_id: "string", node_id: "string", $$strict: "remove" },
			async handler(this: Service, ctx: Context<{ user_id: string; device_id: string; node_id: string }>) {
				const { user_id, device_id, node_id } = ctx.params;
				return (this as PresenceThis).changeDevice(user_id, t =>
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
			async handler(this: Service, ctx: Context<{ user_id: string; device_id: string; node_id: string; active: boolean }>) {
				const { user_id, device_id, node_id, active } = ctx.params;
				const { awayAfterMs } = nodeContextOf(this.broker).settings.presence;
				return (this as PresenceThis).changeDevice(user_id, t =>
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
			async handler(this: Service, ctx: Context<{ user_id: string; device_id: string }>) {
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
			async handler(this: Service, ctx: PresenceContext<{ device_id?: string }>) {
				const user = requireUser(ctx);
				return ctx.call("presence.heartbeat", { user_id: user.id, device_id: ctx.params.device_id ?? "http", node_id: "http", active: true });
			},
		},

		/** The seed's internal endpoint (POST /internal/matrix/presence/online), for services. */
		internalOnline: {
			...WRITE,
			access: INTERNAL_ACCESS,
			params: { user_id: { type: "string", min: 1, max: 200 }, device_id: DEVICE, $$strict: "remove" },
			async handler(this: Service, ctx: Context<{ user_id: string; device_id?: string }, { user?: MeshUser }>) {
				const result = await ctx.call("presence.heartbeat", { user_id: ctx.params.user_id, device_id: ctx.params.device_id ?? "matrix", node_id: "http", active: true });
				await auditEvent(this.broker, ctx, { service: "presence", action: "marked_online", actor: ctx.meta.user?.id ?? "mesh", target: ctx.params.user_id });
				return result;
			},
		},

		/** navigator.sendBeacon on pagehide cannot send headers: the token travels in the body. */
		beacon: {
			...WRITE,
			rest: "POST /beacon",
			access: "public",
			params: { token: { type: "string", min: 10 }, device_id: { type: "string", min: 1, max: 100 }, $$strict: "remove" },
			async handler(this: Service, ctx: Context<{ token: string; device_id: string }>) {
				let user: MeshUser;
				try {
					user = verifyToken(jwtSecretOf(nodeContextOf(this.broker).settings), ctx.params.token);
				} catch (err) {
					if (err instanceof AuthError) throw new Errors.MoleculerClientError(err.message, 401, "INVALID_TOKEN", { field: "token" });
					throw err;
				}
				return ctx.call("presence.gone", { user_id: user.id, device_id: ctx.params.device_id });
			},
		},

		user: {
			...READ,
			rest: "GET /users/:user_id",
			access: "user",
			params: { user_id: { type: "string", min: 1, max: 200 }, $$strict: "remove" },
			async handler(this: Service, ctx: Context<{ user_id: string }>) {
				const self = this as PresenceThis;
				const devices = await databaseOf(this.broker).query(
					"SELECT device_id, status, node_id, last_active_at, last_seen_at FROM presence_devices WHERE user_id = $1 ORDER BY device_id",
					{ bind: [ctx.params.user_id], type: QueryTypes.SELECT },
				);
				return { ...(await self.userStatus(ctx.params.user_id)), devices };
			},
		},

		/** Users per status across the mesh: GET /api/presence/counts → {online, away, offline}. */
		counts: {
			...READ,
			rest: "GET /counts",
			access: "user",
			params: { $$strict: "remove" },
			async handler(this: Service) {
				return (this as PresenceThis).statusCounts();
			},
		},

		list: {
			...READ,
			rest: "GET /",
			access: "user",
			params: { room_id: { ...ROOM_ID, optional: true }, $$strict: "remove" },
			async handler(this: Service, ctx: Context<{ room_id?: string }>) {
				const rows = await databaseOf(this.broker).query<UserPresence>(
					`SELECT user_id, ${USER_PRESENCE_COLUMNS}
					 FROM presence_devices
					 WHERE $1::text IS NULL OR user_id IN (SELECT user_id FROM city_room_members WHERE room_id = $1)
					 GROUP BY user_id ORDER BY user_id`,
					{ bind: [ctx.params.room_id ?? null], type: QueryTypes.SELECT },
				);
				return { room_id: ctx.params.room_id ?? null, users: rows };
			},
		},
	}),

	events: {
		"city.member.joined"(this: Service, ctx: Context<{ room_id: string; user_id: string }>) {
			(this as PresenceThis).announce([ctx.params.user_id]).catch(err => requestLogger(this.logger, ctx).warn(`presence: announcing ${ctx.params.user_id} to room ${ctx.params.room_id} failed: ${(err as Error).message}`));
		},
		/** Every change, from any node, moves the counts: read them again shortly (one query per burst). */
		"presence.changed"(this: Service) {
			(this as PresenceThis).refreshCountsSoon();
		},
		"$node.disconnected"(this: Service, ctx: Context<{ node: { id: string } }>) {
			(this as PresenceThis).nodeLeft(ctx.params.node.id).catch(err => requestLogger(this.logger, ctx).warn(`presence: marking ${ctx.params.node.id}'s devices offline failed: ${(err as Error).message}`));
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

		/** Broadcasts the current status of users whose devices changed outside changeDevice (sweeps, node loss). */
		async announce(this: PresenceThis, userIds: string[]) {
			for (const userId of new Set(userIds)) {
				await this.publishChange(await this.userStatus(userId));
			}
		},

		/** Broadcasts a user's new status with the rooms they belong to (gateways route it to room watchers). */
		async publishChange(this: PresenceThis, now: UserPresence, previous?: PresenceStatus) {
			const rooms = await databaseOf(this.broker).query<{ room_id: string }>("SELECT room_id FROM city_room_members WHERE user_id = $1", {
				bind: [now.user_id],
				type: QueryTypes.SELECT,
			});
			this.broker.broadcast("presence.changed", { ...now, ...(previous ? { previous } : {}), rooms: rooms.map(r => r.room_id), changed_at: new Date().toISOString() });
		},

		async sweep(this: PresenceThis) {
			if (!this.lease.isLeader()) return;
			const { awayAfterMs, graceMs, heartbeatMs } = nodeContextOf(this.broker).settings.presence;
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

	created(this: Service) {
		(this as PresenceThis).countsTimer = null;
		if (!this.broker.isMetricsEnabled()) return;
		this.broker.metrics.register({
			name: PRESENCE_USERS_METRIC,
			type: "gauge",
			labelNames: ["status"],
			description: "Users per presence status across the mesh (a user is as present as their most present device); every node reports the same figures",
		});
	},

	async started(this: Service) {
		const self = this as PresenceThis;
		void self.refreshCounts();
		self.lease = createDutyLease(this.broker, "presence-sweeper", this.logger);
		await self.lease.start();
		self.sweepTimer = setInterval(() => self.sweep().catch(err => this.logger.warn(`presence sweep failed: ${(err as Error).message}`)), SWEEP_EVERY_MS);
	},

	async stopped(this: Service) {
		const self = this as PresenceThis;
		if (self.sweepTimer) clearInterval(self.sweepTimer);
		if (self.countsTimer) clearTimeout(self.countsTimer);
		await self.lease?.stop();
	},
};

export default PresenceService;
