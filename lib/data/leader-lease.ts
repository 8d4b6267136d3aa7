/**
 * A leader lease in PostgreSQL for singleton duties (outbox relay, sweeps, schedulers): at most one
 * holder per lease name at any moment, automatic takeover when the holder dies or hangs, and hand-back
 * to the preferred node (NODE1) when it returns.
 *
 * Why no split-brain: the database decides who holds the lease (one atomic upsert that succeeds only
 * for the current holder or once the lease has expired by the database clock), and a holder stops
 * calling itself leader at `sent + ttl - margin` by its own monotonic clock, where `sent` is when it
 * *sent* the renewal, i.e. before the database stamped the expiry. A holder that hangs (SIGSTOP) or
 * loses the database stops acting before anyone else can acquire. Duties can also fence their writes
 * with `fencingToken` (see node-registry), which the database checks.
 */
import { EventEmitter } from "events";
import { QueryTypes, type Sequelize } from "sequelize";
import { isDatabaseFault } from "./db-faults";
import { databaseOf, nodeContextOf } from "../runtime/node-resources";

export interface LeaseOptions {
	sequelize: Sequelize;
	name: string;
	holder: string;
	/** how long a renewal holds the lease */
	ttlMs?: number;
	renewEveryMs?: number;
	/** a preferred node asks for the lease back once it has been up for handbackAfterMs */
	preferred?: boolean;
	handbackAfterMs?: number;
	log?: { info(...args: unknown[]): void; warn(...args: unknown[]): void };
}

export interface LeaderLease {
	readonly name: string;
	readonly holder: string;
	/** the lease generation this node holds, or null */
	readonly fencingToken: number | null;
	isLeader(): boolean;
	start(): Promise<void>;
	stop(): Promise<void>;
	on(event: "acquired" | "lost", listener: () => void): this;
}

interface LeaseRow {
	holder: string;
	fencing_token: string;
	handback_to: string | null;
}

const ACQUIRE_OR_RENEW = `
WITH lease AS (
	INSERT INTO leader_leases AS l (name, holder, fencing_token, acquired_at, renewed_at, expires_at)
	VALUES ($1, $2, 1, now(), now(), now() + $3 * interval '1 millisecond')
	ON CONFLICT (name) DO UPDATE SET
		fencing_token = CASE WHEN l.holder = EXCLUDED.holder THEN l.fencing_token ELSE l.fencing_token + 1 END,
		acquired_at = CASE WHEN l.holder = EXCLUDED.holder THEN l.acquired_at ELSE now() END,
		handback_to = CASE WHEN l.holder = EXCLUDED.holder THEN l.handback_to ELSE NULL END,
		holder = EXCLUDED.holder,
		renewed_at = now(),
		expires_at = EXCLUDED.expires_at
	-- an expired lease is free, except that one handed back stays reserved for its target for one ttl
	WHERE l.holder = EXCLUDED.holder
		OR (l.expires_at < now() AND (l.handback_to IS NULL OR l.handback_to = EXCLUDED.holder OR l.expires_at < now() - $3 * interval '1 millisecond'))
	RETURNING holder, fencing_token, handback_to, acquired_at = renewed_at AS fresh
), logged AS (
	INSERT INTO leader_lease_events (name, holder, fencing_token, event)
	SELECT $1, holder, fencing_token, 'acquired' FROM lease WHERE fresh
)
SELECT holder, fencing_token, handback_to FROM lease`;

const RELEASE = `
WITH released AS (
	UPDATE leader_leases SET expires_at = now() - interval '1 millisecond', handback_to = $4
	WHERE name = $1 AND holder = $2 RETURNING fencing_token
)
INSERT INTO leader_lease_events (name, holder, fencing_token, event, detail)
SELECT $1, $2, fencing_token, 'released', $3 FROM released`;

const REQUEST_HANDBACK = `UPDATE leader_leases SET handback_to = $2 WHERE name = $1 AND holder <> $2 AND handback_to IS DISTINCT FROM $2`;

const LOG_LOST = `INSERT INTO leader_lease_events (name, holder, fencing_token, event, detail) VALUES ($1, $2, $3, 'lost', $4)`;

class PgLeaderLease extends EventEmitter implements LeaderLease {
	readonly name: string;
	readonly holder: string;
	fencingToken: number | null = null;
	private readonly ttlMs: number;
	private readonly renewEveryMs: number;
	private readonly marginMs: number;
	private leaderUntil = 0;
	private leading = false;
	private timer: NodeJS.Timeout | null = null;
	private expiryTimer: NodeJS.Timeout | null = null;
	private readonly startedAt = performance.now();
	private ticking: Promise<void> | null = null;

	constructor(private readonly opts: LeaseOptions) {
		super();
		this.name = opts.name;
		this.holder = opts.holder;
		this.ttlMs = opts.ttlMs ?? 5_000;
		this.renewEveryMs = opts.renewEveryMs ?? 1_000;
		// Clock-rate drift and scheduling slack between this process and the database.
		this.marginMs = Math.max(250, this.ttlMs / 5);
	}

	isLeader(): boolean {
		return this.leading && performance.now() < this.leaderUntil;
	}

	async start(): Promise<void> {
		await this.tick();
		this.timer = setInterval(() => void this.tick(), this.renewEveryMs);
		this.timer.unref();
	}

	async stop(): Promise<void> {
		if (this.timer) clearInterval(this.timer);
		this.timer = null;
		await this.ticking;
		if (this.leading) await this.release("node stopping");
	}

	private tick(): Promise<void> {
		this.ticking ??= this.renew().finally(() => (this.ticking = null));
		return this.ticking;
	}

	private async renew(): Promise<void> {
		const sentAt = performance.now();
		let row: LeaseRow | undefined;
		try {
			[row] = await this.opts.sequelize.query<LeaseRow>(ACQUIRE_OR_RENEW, { bind: [this.name, this.holder, this.ttlMs], type: QueryTypes.SELECT });
		} catch (err) {
			// Keep the lease until its local deadline; the expiry timer turns us into a follower then.
			// A database fault is logged once by the database monitor; a renewal every tick would repeat it.
			if (!isDatabaseFault(err)) this.opts.log?.warn(`Lease ${this.name}: renewal failed: ${(err as Error).message}`);
			return;
		}
		if (!row) return this.follow();
		this.hold(Number(row.fencing_token), sentAt);
		if (row.handback_to && row.handback_to !== this.holder) await this.release(`handed back to ${row.handback_to}`, row.handback_to);
	}

	private hold(token: number, sentAt: number): void {
		this.leaderUntil = sentAt + this.ttlMs - this.marginMs;
		this.fencingToken = token;
		if (this.expiryTimer) clearTimeout(this.expiryTimer);
		this.expiryTimer = setTimeout(() => this.lose("lease expired without renewal"), this.leaderUntil - performance.now());
		this.expiryTimer.unref();
		if (!this.leading) {
			this.leading = true;
			this.opts.log?.info(`Lease ${this.name}: acquired by ${this.holder} (fencing token ${token})`, { event: "lease.acquired", lease: this.name, fencing_token: token });
			this.emit("acquired");
		}
	}

	private async follow(): Promise<void> {
		if (this.leading) {
			await this.opts.sequelize.query(LOG_LOST, { bind: [this.name, this.holder, this.fencingToken, "another node holds it"] }).catch(() => undefined);
			this.lose("another node holds it");
		}
		const upFor = performance.now() - this.startedAt;
		if (this.opts.preferred && upFor >= (this.opts.handbackAfterMs ?? 10_000)) {
			await this.opts.sequelize.query(REQUEST_HANDBACK, { bind: [this.name, this.holder] }).catch(() => undefined);
		}
	}

	private lose(reason: string): void {
		if (this.expiryTimer) clearTimeout(this.expiryTimer);
		this.expiryTimer = null;
		this.leaderUntil = 0;
		if (!this.leading) return;
		this.leading = false;
		this.opts.log?.warn(`Lease ${this.name}: ${this.holder} is no longer leader: ${reason}`, { event: "lease.lost", lease: this.name, reason });
		this.emit("lost");
	}

	private async release(reason: string, handbackTo: string | null = null): Promise<void> {
		// Stop acting first, then let the database hand the lease on.
		this.lose(`released: ${reason}`);
		await this.opts.sequelize.query(RELEASE, { bind: [this.name, this.holder, reason, handbackTo] }).catch(err => {
			this.opts.log?.warn(`Lease ${this.name}: release failed (it will expire instead): ${(err as Error).message}`);
		});
	}
}

export function createLeaderLease(opts: LeaseOptions): LeaderLease {
	return new PgLeaderLease(opts);
}

/**
 * The lease for one singleton duty of this node's mesh (namespace-scoped name), with the project's
 * defaults: LEASE_TTL_MS, NODE1 preferred, hand-back after two lease periods.
 */
export function createDutyLease(broker: import("moleculer").ServiceBroker, duty: string, log: LeaseOptions["log"]): LeaderLease {
	const { settings } = nodeContextOf(broker);
	return createLeaderLease({
		sequelize: databaseOf(broker),
		name: `${broker.namespace}:${duty}`,
		holder: broker.nodeID,
		ttlMs: settings.leaseTtlMs,
		preferred: settings.role === "node1",
		// NODE1 asks for its duties back once it has been up for two lease periods (no flapping).
		handbackAfterMs: 2 * settings.leaseTtlMs,
		log,
	});
}
