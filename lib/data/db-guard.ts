/**
 * The one way calls reach PostgreSQL, made fault-aware. Installed on the node's Sequelize instance by
 * createSequelize, so every service, mixin, lease and relay gets it without code of its own:
 *
 * - every error of `sequelize.query`, `sequelize.transaction` and a pool acquire passes through
 *   asDatabaseFault: infrastructure faults become DatabaseUnavailableError (retryable 503), bugs stay;
 * - idempotent reads (a SELECT outside a transaction, typed QueryTypes.SELECT) are retried within
 *   READ_RETRY_BUDGET_MS, each retry waiting until the monitor has seen a healthy connection, then a
 *   jittered backoff, so a thousand waiting reads do not reconnect in one burst;
 * - a managed transaction (`sequelize.transaction(async t => …)`) that fails with a serialization
 *   failure or deadlock runs again from the start, up to TRANSACTION_RETRIES times: PostgreSQL rolled it
 *   back, so running it again is what the client would do, minus the round trip;
 * - writes are never retried here: a connection lost during COMMIT leaves the outcome unknown, and only
 *   the client, repeating its Idempotency-Key, can make the retry safe (mixins/idempotent-writes).
 *
 * DatabaseMonitor holds the fault state: down at the first unavailability fault, probing every
 * PROBE_EVERY_MS until a connection works again (which also refills the pool in the background), with
 * one log line per state change rather than one per failed request.
 */
import { EventEmitter } from "events";
import type { ServiceBroker } from "moleculer";
import type { Sequelize } from "sequelize";
import { isQueryableClient, markClientInvalid, poolCounters, replacePgClientClass, withPooledClient, wrapPoolAcquire, type AcquireConnection } from "./sequelize-internals";
import { asDatabaseFault, DatabaseUnavailableError, DB_FAULT_CLASSES, isDatabaseFault, isUnavailability, type DbFaultClass } from "./db-faults";

/** Reads are served in the `fast` class (750 ms per attempt): retrying longer would only meet its timeout. */
export const READ_RETRY_BUDGET_MS = 600;
export const TRANSACTION_RETRIES = 4;
export const PROBE_EVERY_MS = 200;
const BACKOFF_BASE_MS = 20;
const BACKOFF_CAP_MS = 200;

export const DB_METRICS = {
	available: "db.available",
	poolSize: "db.pool.size",
	poolIdle: "db.pool.idle",
	poolWaiting: "db.pool.waiting",
	errors: "db.errors.total",
	retries: "db.retries.total",
} as const;

type Logger = ReturnType<ServiceBroker["getLogger"]>;

const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms));

/** `work`, or a DatabaseUnavailableError once `ms` pass (the work goes on unobserved: it is a read). */
function withDeadline<T>(work: Promise<T>, ms: number): Promise<T> {
	let timer: NodeJS.Timeout | undefined;
	const expired = new Promise<never>((_, reject) => {
		timer = setTimeout(() => reject(new DatabaseUnavailableError("connection")), Math.max(ms, 0));
	});
	work.catch(() => undefined);
	return Promise.race([work, expired]).finally(() => clearTimeout(timer));
}

/** "Full jitter" exponential backoff: spreads the retries of many waiting callers over the window. */
export function backoffWithJitter(attempt: number, baseMs = BACKOFF_BASE_MS, capMs = BACKOFF_CAP_MS): number {
	return Math.random() * Math.min(capMs, baseMs * 2 ** attempt);
}

const READ = /^\s*select\b/i;
/** Reads with side effects or locks are not idempotent reads. */
const NOT_A_PLAIN_READ = /\bfor\s+(update|share|no\s+key\s+update|key\s+share)\b|\bnextval\s*\(|\bsetval\s*\(|\bpg_advisory|\bpg_terminate_backend|\bpg_cancel_backend/i;

/** A SELECT on its own (no transaction, no lock, no side effect), typed as a read by its caller. */
export function isIdempotentRead(sql: unknown, options: { type?: unknown; transaction?: unknown } | undefined): boolean {
	const text = typeof sql === "string" ? sql : (sql as { query?: string } | null)?.query;
	if (!options || options.transaction || options.type !== "SELECT" || typeof text !== "string") return false;
	return READ.test(text) && !NOT_A_PLAIN_READ.test(text);
}

export class DatabaseMonitor extends EventEmitter {
	state: "up" | "down" = "up";
	private downSince = 0;
	private failedWhileDown = 0;
	private probing: NodeJS.Timeout | null = null;
	private log: Logger | null = null;

	constructor(private readonly probe: () => Promise<void>) {
		super();
		this.setMaxListeners(0);
	}

	attachLogger(log: Logger): void {
		this.log = log;
	}

	/** An unavailability fault: the first one turns the state down (one WARN line) and starts probing. */
	reportFault(fault: DbFaultClass, err: unknown): void {
		if (this.state === "down") {
			this.failedWhileDown++;
			return;
		}
		this.state = "down";
		this.downSince = Date.now();
		this.failedWhileDown = 1;
		const cause = err as { message?: string; code?: unknown };
		this.log?.warn(`Database unavailable (${fault}): answering retryable 503s until it is back`, {
			event: "db.down",
			fault,
			err: { name: (err as Error)?.name, message: cause?.message, code: cause?.code },
		});
		this.emit("down", fault);
		this.startProbing();
	}

	/** Any successful round trip proves the database is back. */
	reportHealthy(): void {
		if (this.state === "up") return;
		this.state = "up";
		this.stopProbing();
		const downMs = Date.now() - this.downSince;
		this.log?.info(`Database available again after ${downMs} ms (${this.failedWhileDown} calls failed meanwhile)`, {
			event: "db.up",
			down_ms: downMs,
			failed_calls: this.failedWhileDown,
		});
		this.emit("up");
	}

	/** Resolves true as soon as the database is up, false when `withinMs` passes first. */
	waitUntilUp(withinMs: number): Promise<boolean> {
		if (this.state === "up") return Promise.resolve(true);
		if (withinMs <= 0) return Promise.resolve(false);
		return new Promise(resolve => {
			const onUp = () => {
				clearTimeout(timer);
				resolve(true);
			};
			const timer = setTimeout(() => {
				this.off("up", onUp);
				resolve(false);
			}, withinMs);
			this.once("up", onUp);
		});
	}

	private startProbing(): void {
		if (this.probing) return;
		const tick = () => {
			this.probe()
				.then(() => this.reportHealthy())
				.catch(() => undefined)
				.finally(() => {
					if (this.state === "down" && this.probing) this.probing = setTimeout(tick, PROBE_EVERY_MS);
				});
		};
		this.probing = setTimeout(tick, 0);
		this.probing.unref?.();
	}

	private stopProbing(): void {
		if (this.probing) clearTimeout(this.probing);
		this.probing = null;
	}

	close(): void {
		this.stopProbing();
		this.removeAllListeners();
	}
}

export class DatabaseGuard {
	readonly monitor: DatabaseMonitor;
	private broker: ServiceBroker | null = null;
	private gaugeTimer: NodeJS.Timeout | null = null;
	private readonly faultListeners: Array<(fault: DbFaultClass) => void> = [];
	/** The pool's own acquire, unwrapped: probes failing while down are not counted as failed calls. */
	rawAcquire: AcquireConnection | null = null;

	constructor(private readonly sequelize: Sequelize) {
		this.monitor = new DatabaseMonitor(() => this.probe());
	}

	/** Called for each unavailability fault (the primary locator forgets its primary on these). */
	onUnavailable(listener: (fault: DbFaultClass) => void): void {
		this.faultListeners.push(listener);
	}

	/**
	 * The typed error for `err`, counted once (an error converted at the pool and seen again by the
	 * query around it is not counted twice) and reported to the monitor.
	 */
	fault(err: unknown): unknown {
		if (isDatabaseFault(err)) return err;
		const converted = asDatabaseFault(err);
		// A bug stays itself; a database limit (databaseLimitError) is typed but says nothing about availability.
		if (!isDatabaseFault(converted)) return converted;
		const fault = converted.fault;
		this.broker?.metrics?.increment(DB_METRICS.errors, { class: fault });
		if (isUnavailability(fault)) {
			for (const listener of this.faultListeners) listener(fault);
			this.monitor.reportFault(fault, err);
		}
		return converted;
	}

	/**
	 * An idempotent read: retried on database faults within the read budget (see the header). Once in
	 * trouble (a retry, or the database known down), an attempt that outlives the budget is abandoned
	 * with a 503, so the caller gets its answer inside its timeout class, not a 504 from the mesh.
	 */
	async read<T>(attempt: () => Promise<T>, budgetMs = READ_RETRY_BUDGET_MS): Promise<T> {
		const deadline = Date.now() + budgetMs;
		for (let n = 0; ; n++) {
			try {
				const result = n === 0 && this.monitor.state === "up" ? await attempt() : await withDeadline(attempt(), deadline - Date.now());
				this.monitor.reportHealthy();
				return result;
			} catch (err) {
				const converted = this.fault(err);
				if (!isDatabaseFault(converted) || Date.now() >= deadline) throw converted;
				await this.monitor.waitUntilUp(deadline - Date.now());
				await sleep(backoffWithJitter(n));
				if (Date.now() >= deadline) throw converted;
				this.broker?.metrics?.increment(DB_METRICS.retries, { kind: "read" });
			}
		}
	}

	/** A whole transaction, run again after a serialization failure or deadlock (nothing else). */
	async transaction<T>(run: () => Promise<T>, retries = TRANSACTION_RETRIES): Promise<T> {
		for (let n = 0; ; n++) {
			try {
				return await run();
			} catch (err) {
				const converted = this.fault(err);
				const lostRace = isDatabaseFault(converted) && !isUnavailability(converted.fault);
				if (!lostRace || n >= retries) throw converted;
				this.broker?.metrics?.increment(DB_METRICS.retries, { kind: "transaction" });
				await sleep(backoffWithJitter(n, 5, 100));
			}
		}
	}

	/** Any other call: its error typed, its success noted. */
	async call<T>(run: () => Promise<T>): Promise<T> {
		try {
			const result = await run();
			this.monitor.reportHealthy();
			return result;
		} catch (err) {
			throw this.fault(err);
		}
	}

	/** One round trip on a pooled connection; a fresh one when the pool is empty (the background refill). */
	private async probe(): Promise<void> {
		await withPooledClient(this.sequelize, client => client.query("SELECT 1"), this.rawAcquire ?? undefined);
	}

	poolStats(): { size: number; idle: number; waiting: number } {
		return poolCounters(this.sequelize);
	}

	/** Metrics and log lines go to this broker; pool gauges are sampled every second. */
	observe(broker: ServiceBroker): void {
		this.broker = broker;
		this.monitor.attachLogger(broker.getLogger("database"));
		if (!broker.isMetricsEnabled()) return;
		const metrics = broker.metrics;
		metrics.register({ name: DB_METRICS.available, type: "gauge", description: "1 while the database answers, 0 while this node sees it unavailable" });
		metrics.register({ name: DB_METRICS.poolSize, type: "gauge", description: "Connections open in the pool" });
		metrics.register({ name: DB_METRICS.poolIdle, type: "gauge", description: "Pool connections idle" });
		metrics.register({ name: DB_METRICS.poolWaiting, type: "gauge", description: "Callers waiting for a pool connection" });
		metrics.register({ name: DB_METRICS.errors, type: "counter", labelNames: ["class"], description: "Database infrastructure faults by class" });
		metrics.register({ name: DB_METRICS.retries, type: "counter", labelNames: ["kind"], description: "Reads and transactions retried after a database fault" });
		// Every class exists from the start at 0, so rate() works on the first fault.
		for (const fault of DB_FAULT_CLASSES) metrics.increment(DB_METRICS.errors, { class: fault }, 0);
		for (const kind of ["read", "transaction"]) metrics.increment(DB_METRICS.retries, { kind }, 0);
		const sample = () => {
			const stats = this.poolStats();
			metrics.set(DB_METRICS.available, this.monitor.state === "up" ? 1 : 0);
			metrics.set(DB_METRICS.poolSize, stats.size);
			metrics.set(DB_METRICS.poolIdle, stats.idle);
			metrics.set(DB_METRICS.poolWaiting, stats.waiting);
		};
		sample();
		// db_available follows the state at once (a scrape right after recovery must not read the old value).
		this.monitor.on("up", () => metrics.set(DB_METRICS.available, 1));
		this.monitor.on("down", () => metrics.set(DB_METRICS.available, 0));
		this.gaugeTimer = setInterval(sample, 1_000);
		this.gaugeTimer.unref();
	}

	close(): void {
		if (this.gaugeTimer) clearInterval(this.gaugeTimer);
		this.gaugeTimer = null;
		this.monitor.close();
	}
}

const guards = new WeakMap<Sequelize, DatabaseGuard>();

export function databaseGuardOf(sequelize: Sequelize): DatabaseGuard | undefined {
	return guards.get(sequelize);
}

type AnyFn = (...args: unknown[]) => Promise<unknown>;

/**
 * Every pg client Sequelize makes gets an 'error' listener from birth. Sequelize adds its own only once
 * a connection is fully set up; a backend terminated in between (pg_terminate_backend, a restart during
 * connection setup) emitted 'error' on a client nobody listened to, and Node ended the whole process —
 * measured: pg_terminate_backend under load killed a node. Such a client is marked invalid, so the pool
 * drops it if it ever gets it.
 *
 * The listener also keeps the SQLSTATE the server ended the session with: PostgreSQL ending a session
 * idle in a transaction (25P03) reaches pg as such an event, and the transaction's next query fails
 * with only "not queryable". That error gets the SQLSTATE as its `code`, so db-faults tells the
 * idle-in-transaction limit apart from a lost connection.
 */
function listenForStrayErrors(sequelize: Sequelize): void {
	replacePgClientClass(sequelize, Base => class ListenedClient extends Base {
		private endedBy: string | undefined;

		constructor(...args: unknown[]) {
			super(...args);
			this.on("error", (err: { code?: unknown } | undefined) => {
				markClientInvalid(this);
				if (typeof err?.code === "string") this.endedBy ??= err.code;
			});
		}

		query(...args: unknown[]): unknown {
			const endedBy = this.endedBy;
			if (isQueryableClient(this) || !endedBy) return super.query(...args);
			const withCode = (err: unknown) => {
				const e = err as { code?: unknown } | null;
				if (e && typeof e === "object" && e.code === undefined) e.code = endedBy;
				return err;
			};
			const last = args.length - 1;
			const callback = args[last];
			if (typeof callback === "function") args[last] = (err: unknown, ...rest: unknown[]) => callback(err ? withCode(err) : err, ...rest);
			const result = super.query(...args);
			return result instanceof Promise ? result.catch(err => Promise.reject(withCode(err))) : result;
		}
	});
}

/**
 * Wraps the instance's query, transaction and pool acquire (own properties shadowing the prototype's,
 * so Sequelize's internals calling `this.sequelize.query` — models, commits — go through it too).
 */
export function guardSequelize(sequelize: Sequelize): DatabaseGuard {
	const existing = guards.get(sequelize);
	if (existing) return existing;
	const guard = new DatabaseGuard(sequelize);
	guards.set(sequelize, guard);

	const query = sequelize.query.bind(sequelize) as unknown as AnyFn;
	(sequelize as unknown as { query: AnyFn }).query = (sql: unknown, options?: unknown) => {
		const run = () => query(sql, options);
		return isIdempotentRead(sql, options as { type?: unknown }) ? guard.read(run) : guard.call(run);
	};

	const transaction = sequelize.transaction.bind(sequelize) as unknown as AnyFn;
	(sequelize as unknown as { transaction: AnyFn }).transaction = (optionsOrRun?: unknown, maybeRun?: unknown) => {
		const run = typeof optionsOrRun === "function" ? optionsOrRun : maybeRun;
		const options = typeof optionsOrRun === "function" ? {} : (optionsOrRun ?? {});
		// Unmanaged (no callback): the caller owns commit and rollback, so it owns the retry too.
		if (typeof run !== "function") return guard.call(() => transaction(options));
		return guard.transaction(() => transaction(options, run));
	};

	listenForStrayErrors(sequelize);

	// Closing the pool stops the probes and the gauges too.
	const close = sequelize.close.bind(sequelize);
	sequelize.close = () => {
		guard.close();
		return close();
	};

	guard.rawAcquire = wrapPoolAcquire(sequelize, acquire => options => acquire(options).catch(err => Promise.reject(guard.fault(err))));
	return guard;
}
