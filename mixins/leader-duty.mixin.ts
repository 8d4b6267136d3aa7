/**
 * A singleton duty of the mesh (outbox relay, audit writer, sweeps, the membership history): work that
 * exactly one node does at a time, the holder of the duty's leader lease (lib/data/leader-lease.ts:
 * why no split-brain, fencing tokens, hand-back to NODE1).
 *
 * The lifecycle every such service shares lives here once:
 *   created  the lease object exists (not yet running), under `this[leaseKey]`, so the service's own
 *            `created` can build what needs it (a writer fenced by its token);
 *   started  the lease runs, then the duty starts: either `run` every `everyMs` — called only while this
 *            node leads, never twice at once — or `loop`, started once, which checks
 *            `duty.lease.isLeader()` itself and returns once `duty.running` turns false;
 *   stopped  the duty ends first (the timer cleared and a run in flight awaited, or the loop returned),
 *            then the lease is released, so no node acts after it let go.
 *
 * A service may hold several duties (audit: its writer and its idempotency sweep): each names its own
 * `leaseKey`. Fencing is the duty's to do (the token is on the lease); log lines of the lease itself
 * (lease.acquired / lease.lost) come from the lease.
 */
import type { Service, ServiceSchema, ServiceSettingSchema } from "moleculer";
import { isDatabaseFault } from "../lib/data/db-faults";
import { createDutyLease, type LeaderLease } from "../lib/data/leader-lease";

/** What a looping duty sees: its lease, whether the service still runs, and a pause that stopping cuts short. */
export interface LeaderDuty {
	readonly lease: LeaderLease;
	readonly running: boolean;
	/** Resolves after `ms`, or as soon as the service stops (SIGTERM must not wait out a backoff). */
	pause(ms: number): Promise<void>;
	/** Ends the pauses under way now: the duty has news (the outbox relay, when a write rings it). */
	wake(): void;
}

interface DutyCommon {
	/** lease name within the mesh; a function where it depends on the service ("idempotency-sweep:memory") */
	duty: string | ((service: Service) => string);
	/** the service property that holds the lease (default "lease") */
	leaseKey?: string;
}

export interface PeriodicDutyOptions<S extends Service = Service> extends DutyCommon {
	everyMs: number | ((service: S) => number);
	/** one round of the duty; runs only while this node leads */
	run: (this: S) => Promise<unknown>;
	/** what failed, for the log line `${what} failed: ${message}` (database faults are logged once per outage elsewhere) */
	what: string;
}

export interface LoopDutyOptions<S extends Service = Service> extends DutyCommon {
	/** runs from start to stop on every node; acts only while `duty.lease.isLeader()` */
	loop: (this: S, duty: LeaderDuty) => Promise<void>;
}

export type LeaderDutyOptions<S extends Service = Service> = PeriodicDutyOptions<S> | LoopDutyOptions<S>;

/** Per-duty state kept on the service, by lease key. */
interface DutyState extends LeaderDuty {
	running: boolean;
	timer: NodeJS.Timeout | null;
	inFlight: Promise<void> | null;
	loop: Promise<void> | null;
	wakeups: Set<() => void>;
}

type DutyHost = Service & { $leaderDuties?: Map<string, DutyState> } & Record<string, unknown>;

function dutyState(service: DutyHost, key: string): DutyState {
	const state = service.$leaderDuties?.get(key);
	if (!state) throw new Error(`Leader duty "${key}" of ${service.name} was not created`);
	return state;
}

function createState(lease: LeaderLease): DutyState {
	const state: DutyState = {
		lease,
		running: false,
		timer: null,
		inFlight: null,
		loop: null,
		wakeups: new Set(),
		pause(ms: number) {
			if (!state.running) return Promise.resolve();
			return new Promise<void>(resolve => {
				const done = () => {
					clearTimeout(timer);
					state.wakeups.delete(done);
					resolve();
				};
				const timer = setTimeout(done, ms);
				state.wakeups.add(done);
			});
		},
		wake() {
			for (const done of [...state.wakeups]) done();
		},
	};
	return state;
}

function startPeriodic<S extends Service>(service: S, state: DutyState, options: PeriodicDutyOptions<S>): void {
	const everyMs = typeof options.everyMs === "function" ? options.everyMs(service) : options.everyMs;
	const round = () => {
		// A round still running (a slow database) is not joined by a second one.
		if (!state.running || state.inFlight || !state.lease.isLeader()) return;
		state.inFlight = options.run
			.call(service)
			.then(
				() => undefined,
				(err: Error) => {
					if (!isDatabaseFault(err)) service.logger.warn(`${options.what} failed: ${err.message}`);
				},
			)
			.finally(() => (state.inFlight = null));
	};
	state.timer = setInterval(round, everyMs);
	// A node that just took the duty over catches up at once rather than up to `everyMs` later (the
	// registry records a dead leader's departure as soon as its successor holds the lease).
	state.lease.on("acquired", round);
}

/**
 * `LeaderDutyMixin({ duty: "presence-sweeper", everyMs: 500, what: "presence sweep", run() {…} })` or
 * `LeaderDutyMixin({ duty: "outbox-relay", loop(duty) {…} })`.
 */
export function LeaderDutyMixin<S extends Service = Service>(options: LeaderDutyOptions<S>): ServiceSchema {
	const key = options.leaseKey ?? "lease";
	const schema: ServiceSchema<ServiceSettingSchema, Record<string, never>, Record<string, never>, S & DutyHost> = {
		name: `leader-duty:${key}`,

		created() {
			const name = typeof options.duty === "function" ? options.duty(this) : options.duty;
			const lease = createDutyLease(this.broker, name, this.logger);
			this.$leaderDuties ??= new Map();
			this.$leaderDuties.set(key, createState(lease));
			// The lease under its field name (`lease`, or `leaseKey`) for the host's own code (fencing tokens).
			Object.assign(this, { [key]: lease });
		},

		async started() {
			const state = dutyState(this, key);
			await state.lease.start();
			state.running = true;
			if ("loop" in options) state.loop = options.loop.call(this, state);
			else startPeriodic(this, state, options);
		},

		async stopped() {
			const state = dutyState(this, key);
			state.running = false;
			if (state.timer) clearInterval(state.timer);
			state.timer = null;
			state.wake();
			await state.loop;
			await state.inFlight;
			await state.lease.stop();
		},
	};
	// Typed for its host (`S`) inside; Moleculer's `mixins` takes the untyped schema.
	return schema as unknown as ServiceSchema;
}
