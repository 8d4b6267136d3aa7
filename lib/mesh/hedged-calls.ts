/**
 * Hedged idempotent calls: a read still pending on a node after the action's own observed p99 is sent
 * once more, to another node, and whichever answers first answers the caller. This bounds what the
 * liveness probe cannot: the time before a death is visible at all (the kernel frees a killed process's
 * memory before it closes its socket: 10–100 ms for a large node) and a node that is alive but stopped
 * or saturated (the probe waits its 100 ms timeout before calling that a hang). docs/FAILOVER.md has the
 * measurements.
 *
 * Rules, each for a reason:
 * - only actions that declare `idempotent: true` (running one twice is harmless), never a call sending or
 *   receiving a stream (its bytes cannot be re-sent or merged), never twice for one call;
 * - after the action's p99 on this caller (sampled from one call in SAMPLE_EVERY), never before
 *   `minDelayMs`: a hedge answers the slowest 1 % of calls, not ordinary ones;
 * - within a budget: at most `budget` hedges per idempotent call sent (5 % by default), with a small burst,
 *   so that a slow mesh is not made slower by doubling its load; `HEDGE_BUDGET=0` turns hedging off;
 * - only to an available node that is not suspect and that this call has not failed on;
 * - the loser is not cancelled (Moleculer has no cancel on the wire): its answer arrives as an orphan
 *   response and is dropped. Counted in `mesh.hedge.total{outcome}`: won (the hedge answered first),
 *   lost (the first node answered first), failed (the hedge failed; the first call keeps waiting).
 *
 * The liveness probe's scan, which already walks the pending calls every 10 ms while there are any,
 * asks `consider()` about each: hedging adds no timer and no work per call beyond one counter and, for
 * one call in SAMPLE_EVERY, a latency sample.
 */
import type { Context, ServiceBroker } from "moleculer";
import { answerPendingRequest, isResponseStreaming, type PendingRequest } from "./moleculer-internals";
import { nodesThisCallFailedOn } from "./failover-policy";

export interface HedgeOptions {
	/** hedges allowed per idempotent call sent (0 = off) */
	budget: number;
	/** hedges that may be spent at once from an idle budget */
	burst: number;
	/** never hedge a call younger than this, whatever the action's p99 */
	minDelayMs: number;
	/** the hedge delay while an action has fewer samples than this */
	coldDelayMs: number;
	minSamples: number;
}

export const HEDGE_DEFAULTS: HedgeOptions = { budget: 0.05, burst: 20, minDelayMs: 30, coldDelayMs: 100, minSamples: 16 };

export const HEDGE_METRICS = { hedges: "mesh.hedge.total" };

/** One call in SAMPLE_EVERY (a power of two) is timed for its action's p99. */
const SAMPLE_EVERY = 8;
/** Samples kept per action (the p99 of the last SAMPLES × SAMPLE_EVERY calls, roughly). */
const SAMPLES = 128;
/** An action's p99 is recomputed at most this often. */
const P99_STALE_MS = 1_000;

type Outcome = "won" | "lost" | "failed";

/** A failed call is not a latency sample; its caller handles the failure on the call's own promise. */
function ignoreFailure(): void {}

/** The recent latencies of one action on this caller, and the hedge delay they give. */
export class ActionLatency {
	private readonly samples = new Float64Array(SAMPLES);
	private count = 0;
	private p99 = 0;
	private p99At = -Infinity;

	add(ms: number): void {
		this.samples[this.count++ % SAMPLES] = ms;
	}

	/** The hedge delay for this action now. */
	delayMs(opts: HedgeOptions, now: number): number {
		if (this.count < opts.minSamples) return opts.coldDelayMs;
		if (now - this.p99At > P99_STALE_MS) {
			const sorted = this.samples.slice(0, Math.min(this.count, SAMPLES)).sort();
			this.p99 = sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.99))];
			this.p99At = now;
		}
		return Math.max(opts.minDelayMs, this.p99);
	}
}

export class CallHedger {
	/** hedges sent, by outcome, since start (the metric has them by action too) */
	readonly stats: Record<Outcome, number> = { won: 0, lost: 0, failed: 0 };
	private readonly latency = new Map<string, ActionLatency>();
	private tokens: number;
	private sent = 0;
	private hedgesSent = 0;

	constructor(
		private readonly broker: ServiceBroker,
		private readonly opts: HedgeOptions,
		private readonly isSuspect: (nodeID: string) => boolean,
	) {
		this.tokens = opts.burst;
	}

	get enabled(): boolean {
		return this.opts.budget > 0;
	}

	/**
	 * Called for every remote call this node sends: earns budget for idempotent calls, and times one in
	 * SAMPLE_EVERY of them (the others go through untouched: no promise, no clock read).
	 */
	watch(ctx: Context, next: (ctx: Context) => Promise<unknown>): Promise<unknown> {
		const action = ctx.action as { name?: string; idempotent?: boolean } | undefined;
		if (!action?.idempotent || !action.name) return next(ctx);
		this.tokens = Math.min(this.opts.burst, this.tokens + this.opts.budget);
		if ((++this.sent & (SAMPLE_EVERY - 1)) !== 0) return next(ctx);
		const latency = this.latencyOf(action.name);
		const started = performance.now();
		const pending = next(ctx);
		// Timed on a side branch, and the caller gets the call's own promise: chained here, a sampled call
		// would reach its caller one microtask later than the others, so the next calls it triggers would
		// miss the socket write nats.js makes for the rest of the turn (two writes per NATS read instead of one).
		pending.then(() => latency.add(performance.now() - started), ignoreFailure);
		return pending;
	}

	private latencyOf(name: string): ActionLatency {
		let latency = this.latency.get(name);
		if (!latency) this.latency.set(name, (latency = new ActionLatency()));
		return latency;
	}

	/** From the probe's scan: `ageMs` is how long `req` has been pending (to the scan's resolution). */
	consider(id: string, req: PendingRequest, ageMs: number, now: number): void {
		if (req.hedged || !req.action?.idempotent || !req.action.name || req.stream || !req.ctx) return;
		if (ageMs < this.latencyOf(req.action.name).delayMs(this.opts, now)) return;
		if (this.tokens < 1 || isResponseStreaming(this.broker, id)) return;
		const nodeID = this.otherNode(req.action.name, req.nodeID, req.ctx);
		if (!nodeID) return;
		req.hedged = true;
		this.tokens -= 1;
		this.hedge(id, req, req.ctx, nodeID);
	}

	/**
	 * An available, unsuspected node offering the action, other than the one the call waits on; taking turns
	 * when there are several, so that hedges from one slow node do not all land on the same other one.
	 */
	private otherNode(action: string, waitingOn: string, ctx: Context): string | null {
		const endpoints = this.broker.registry.getActionEndpoints(action) as unknown as { endpoints?: Array<{ state: boolean; node: { id: string } }> } | undefined;
		const failed = nodesThisCallFailedOn(ctx);
		const candidates = (endpoints?.endpoints ?? []).filter(e => e.state && e.node.id !== waitingOn && !failed.has(e.node.id) && !this.isSuspect(e.node.id));
		if (!candidates.length) return null;
		return candidates[this.hedgesSent++ % candidates.length].node.id;
	}

	private hedge(id: string, req: PendingRequest, ctx: Context, nodeID: string): void {
		const name = req.action!.name!;
		// The hedge gets the action's own timeout class (the Timeout middleware); the caller's wait stays
		// bounded by the first call's timer, which is still running.
		this.broker
			.call(name, ctx.params, { nodeID, meta: ctx.meta, requestID: ctx.requestID ?? undefined, retries: 0 })
			.then(
				// Lost: the first node answered (or the call was given up on) first, and this answer is dropped.
				result => this.count(name, answerPendingRequest(this.broker, id, req, result) ? "won" : "lost"),
				() => this.count(name, "failed"),
			);
	}

	private count(action: string, outcome: Outcome): void {
		this.stats[outcome]++;
		this.broker.metrics?.increment(HEDGE_METRICS.hedges, { action, outcome });
	}
}

export function registerHedgeMetrics(broker: ServiceBroker): void {
	if (!broker.isMetricsEnabled()) return;
	broker.metrics.register({
		name: HEDGE_METRICS.hedges,
		type: "counter",
		labelNames: ["action", "outcome"],
		description: "Idempotent calls sent a second time to another node after their action's p99, by outcome (won, lost, failed)",
	});
}
