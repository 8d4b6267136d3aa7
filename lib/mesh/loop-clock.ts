/**
 * The main event loop's clock, shared with the liveness probe's worker thread (lib/mesh/liveness-responder.ts):
 * one SharedArrayBuffer, read and written with Atomics, in process.hrtime nanoseconds (one monotonic clock for
 * every thread of the process).
 *
 * The main thread stamps it from a timer only while probes come in: an idle node wakes for nothing (a 50 ms timer
 * always on cost an idle node 3–9 ms of CPU per second, measured). The worker, on a probe that finds the timer off,
 * asks the main thread to start it and counts the silence from that request: a loop that does not start the timer
 * is silent from then on, one that does stamps within a millisecond.
 */

/** Slots of the shared clock */
const LAST_RAN = 0;
const LAST_PROBE = 1;
const STAMPING = 2;
/** when the main thread last sent the node's heartbeat (HeartbeatCover) */
const HEARTBEAT_SENT = 3;
const SLOTS = 4;

/** How often the main loop stamps while stamping: the answer's resolution, well under the 100 ms probe timeout. */
export const STAMP_EVERY_MS = 50;
/** The main loop stops stamping this long after the last probe. */
export const STAMP_IDLE_AFTER_MS = 2_000;

export function createLoopClock(): SharedArrayBuffer {
	const buffer = new SharedArrayBuffer(SLOTS * BigInt64Array.BYTES_PER_ELEMENT);
	// HEARTBEAT_SENT stays 0 until the main thread's first beat: nothing to cover before the node has joined.
	Atomics.store(new BigInt64Array(buffer), LAST_RAN, process.hrtime.bigint());
	return buffer;
}

/** The main thread's side: stamps while probes come in. */
export class LoopStamper {
	private readonly clock: BigInt64Array;
	private timer: NodeJS.Timeout | null = null;

	constructor(buffer: SharedArrayBuffer) {
		this.clock = new BigInt64Array(buffer);
	}

	/** The worker asked (a probe found the timer off). */
	start(): void {
		this.stamp();
		if (this.timer) return;
		Atomics.store(this.clock, STAMPING, 1n);
		this.timer = setInterval(() => this.tick(), STAMP_EVERY_MS);
		this.timer.unref();
	}

	stop(): void {
		if (this.timer) clearInterval(this.timer);
		this.timer = null;
		Atomics.store(this.clock, STAMPING, 0n);
	}

	private stamp(): void {
		Atomics.store(this.clock, LAST_RAN, process.hrtime.bigint());
	}

	private tick(): void {
		this.stamp();
		const sinceProbe = process.hrtime.bigint() - Atomics.load(this.clock, LAST_PROBE);
		if (sinceProbe > BigInt(STAMP_IDLE_AFTER_MS) * 1_000_000n) this.stop();
	}
}

/** The worker's side: how long the main loop has been silent, asking it to stamp when it does not. */
export class LoopSilence {
	private readonly clock: BigInt64Array;
	/** when this side asked the main thread to stamp, until a stamp at or after it shows the ask was heard */
	private askedAt: bigint | null = null;

	constructor(
		buffer: SharedArrayBuffer,
		private readonly askToStamp: () => void,
	) {
		this.clock = new BigInt64Array(buffer);
	}

	/** On a probe: the main loop's silence in ms. */
	probed(): number {
		const now = process.hrtime.bigint();
		Atomics.store(this.clock, LAST_PROBE, now);
		const lastRan = Atomics.load(this.clock, LAST_RAN);
		if (this.askedAt !== null && lastRan >= this.askedAt) this.askedAt = null;
		if (this.askedAt === null && Atomics.load(this.clock, STAMPING) === 0n) {
			this.askedAt = now;
			this.askToStamp();
		}
		const silentFrom = this.askedAt !== null && this.askedAt > lastRan ? this.askedAt : lastRan;
		return now > silentFrom ? Number((now - silentFrom) / 1_000_000n) : 0;
	}
}

/** The main thread's side of heartbeat cover: called as Moleculer sends each heartbeat. */
export function stampHeartbeatSent(buffer: SharedArrayBuffer, now = process.hrtime.bigint()): void {
	Atomics.store(new BigInt64Array(buffer), HEARTBEAT_SENT, now);
}

export interface HeartbeatCoverTiming {
	/** the main loop's beats are this late (interval + Moleculer's jitter) before the worker sends one */
	coverAfterMs: number;
	/** then one every this long (the heartbeat interval) */
	everyMs: number;
	/** no beat for a main loop silent this long: the node is left to the heartbeat timeout */
	leaveAfterMs: number;
}

/**
 * The worker's side of heartbeat cover: whether to send the node's heartbeat now, and how long the main thread has
 * gone without sending one. Pure over the clock, so a test can step it.
 */
export class HeartbeatCover {
	private readonly clock: BigInt64Array;
	private lastCovered = 0n;

	constructor(
		buffer: SharedArrayBuffer,
		private readonly timing: HeartbeatCoverTiming,
	) {
		this.clock = new BigInt64Array(buffer);
	}

	/** The main loop's silence in ms when a beat is due from here now, else null. */
	due(now = process.hrtime.bigint()): number | null {
		const lastSent = Atomics.load(this.clock, HEARTBEAT_SENT);
		if (lastSent === 0n) return null;
		const silentMs = Number((now - lastSent) / 1_000_000n);
		if (silentMs < this.timing.coverAfterMs || silentMs >= this.timing.leaveAfterMs) return null;
		if (this.lastCovered > lastSent && Number((now - this.lastCovered) / 1_000_000n) < this.timing.everyMs) return null;
		this.lastCovered = now;
		return silentMs;
	}
}
