/**
 * The middleware chain every broker runs: Moleculer's internal middlewares in their own order, some
 * replaced or narrowed by leaner equivalents that keep their behaviour, names and metrics.
 *
 * - ServingGate (in Bulkhead's place) serves a local action through one wrapper that does what
 *   Bulkhead, ContextTracker and the request metrics did in three: the call is tracked for graceful
 *   stop, admitted or queued by the bulkhead, and metered. Moleculer's Bulkhead updated two gauges
 *   through the registry (a label hash each) four times per call.
 * - ContextTracker keeps Moleculer's (calls this node makes, events, waiting on stop) minus the
 *   served actions, which ServingGate tracks.
 * - Timeout does what Moleculer's did with fewer promises per call, and for served actions only
 *   times calls that started on this node. A call from another node is timed by its caller, which
 *   gives up and retries elsewhere on its own; a second timer here only produced an error answer
 *   nobody waits for.
 * - CallingGate (in the request metrics' place, outermost) tracks and meters the calls this node
 *   makes, in one wrapper where ContextTracker and the metrics used two.
 * - Retry does what Moleculer's did (same options, check, log line and metric) for calls that started on
 *   this node, and retries at once, not after its delay, a call known lost (its node gone, or its NATS
 *   connection reset) while another node offers the action (see retryDelayMs).
 * - Fallback wraps a served action only for calls that started on this node (forLocalCallers).
 *
 * bench/mesh/cpu-per-call.ts measures what each costs per call (docs/BENCHMARKS.md).
 */
import * as moleculer from "moleculer";
import type { Context, Middleware, ServiceBroker } from "moleculer";
import { Errors } from "moleculer";
import { Stream } from "stream";
import { nodesThisCallFailedOn } from "./failover-policy";
import { abandonPendingRequest } from "./moleculer-internals";
import { gaugeItem, registerRequestMetrics, RequestMeter, type Series, type ValueItem } from "./request-metrics";

type Handler = (ctx: Context) => Promise<unknown>;
type ActionDef = { name: string; service?: { fullName: string }; bulkhead?: BulkheadOptions };
type MiddlewareFactory = (this: ServiceBroker, broker: ServiceBroker) => Middleware & Record<string, unknown>;

interface BulkheadOptions {
	enabled?: boolean;
	concurrency?: number;
	maxQueueSize?: number;
}

/** Where Moleculer's ContextTracker keeps a node's running calls (per service, or the broker's). */
interface TrackedContext {
	service?: { _trackedContexts: Context[] } | null;
	broker: { _trackedContexts: Context[] };
}

/** Moleculer exports its middleware factories at runtime; its typings do not declare them. */
const { Middlewares } = moleculer as unknown as { Middlewares: Record<string, MiddlewareFactory> };

const BULKHEAD_GAUGES = { inFlight: "moleculer.request.bulkhead.inflight", queueSize: "moleculer.request.bulkhead.queue.size" };

/** Moleculer's own middleware object for `name`, built the way the broker builds it. */
function builtIn(broker: ServiceBroker, name: "Bulkhead" | "ContextTracker" | "Fallback"): Middleware & Record<string, unknown> {
	return Middlewares[name].call(broker, broker);
}

/** The same lists Moleculer's ContextTracker uses, so its stop hooks wait for these calls too. */
function trackedList(ctx: Context): Context[] {
	const tracked = ctx as unknown as TrackedContext;
	return tracked.service ? tracked.service._trackedContexts : tracked.broker._trackedContexts;
}

/** A tracked call's index in its list, so that finishing it takes no search. */
const TRACKED_AT = Symbol("trackedAt");
type TrackedCall = Context & { [TRACKED_AT]?: number };

export function track(ctx: Context): void {
	const list = trackedList(ctx);
	(ctx as TrackedCall)[TRACKED_AT] = list.push(ctx) - 1;
}

/**
 * Removes a finished call by moving the list's last call into its slot: Moleculer's stop hooks read only the
 * list's length, never its order. A search (indexOf + splice, from the back and later from the front) was the
 * caller's largest function at 1,000 calls in flight: 14 % of its CPU, 5.5 µs per call (docs/BENCHMARKS.md,
 * "How the remote call grows"). The slot is checked before use: Moleculer empties the list when a stop times out.
 */
export function untrack(ctx: Context): void {
	const list = trackedList(ctx);
	let index = (ctx as TrackedCall)[TRACKED_AT] ?? -1;
	if (list[index] !== ctx) index = list.indexOf(ctx);
	if (index === -1) return;
	const last = list.pop() as TrackedCall;
	if (index < list.length) {
		list[index] = last;
		last[TRACKED_AT] = index;
	}
}

/** Calls `next`, turning a synchronous throw into a rejection, as the promise chain expects. */
function callNext(next: Handler, ctx: Context): Promise<unknown> {
	try {
		return next(ctx);
	} catch (err) {
		return Promise.reject(err);
	}
}

/** What one call's recorder noted when it began. */
interface Recording {
	series: Series | undefined;
	startedAt: number;
	tracked: boolean;
}

/**
 * What both gates do around a call: track it in Moleculer's lists for graceful stop, and meter it
 * (RequestMeter, type "local" for served calls, "remote" for calls this node makes).
 */
class CallRecorder {
	private readonly trackingOn: boolean;
	private readonly meter: RequestMeter | null;

	constructor(broker: ServiceBroker, action: ActionDef, type: "local" | "remote") {
		this.trackingOn = !!broker.options.tracking?.enabled;
		this.meter = broker.isMetricsEnabled() ? new RequestMeter(broker, action, type) : null;
	}

	begin(ctx: Context): Recording {
		const tracked = this.trackingOn && (ctx.options.tracking ?? true);
		if (tracked) track(ctx);
		return { series: this.meter?.start(ctx), startedAt: this.meter ? performance.now() : 0, tracked };
	}

	succeeded(recording: Recording, ctx: Context): void {
		if (recording.tracked) untrack(ctx);
		if (recording.series) this.meter!.done(recording.series, recording.startedAt);
	}

	failed(recording: Recording, ctx: Context, err: Error): void {
		if (recording.tracked) untrack(ctx);
		if (recording.series) this.meter!.failed(recording.series, recording.startedAt, ctx, err);
	}
}

interface QueuedCall {
	ctx: Context;
	resolve: (value: unknown) => void;
	reject: (err: unknown) => void;
}

function gateAction(broker: ServiceBroker, next: Handler, action: ActionDef): Handler {
	const bulkhead: BulkheadOptions = { ...(broker.options.bulkhead as BulkheadOptions), ...action.bulkhead };
	const concurrency = bulkhead.enabled ? (bulkhead.concurrency ?? 3) : Infinity;
	const recorder = new CallRecorder(broker, action, "local");
	const gaugeLabels = { action: action.name, service: action.service?.fullName };
	const metered = bulkhead.enabled && broker.isMetricsEnabled();
	// Looked up at the first call: internal services are wrapped before the gauges are registered.
	let inFlightGauge: ValueItem | null = null;
	let queueGauge: ValueItem = { value: 0 };
	const queue: QueuedCall[] = [];
	let inFlight = 0;

	function gauges(): ValueItem {
		if (!metered) return (inFlightGauge = { value: 0 });
		queueGauge = gaugeItem(broker, BULKHEAD_GAUGES.queueSize, gaugeLabels);
		return (inFlightGauge = gaugeItem(broker, BULKHEAD_GAUGES.inFlight, gaugeLabels));
	}

	function invoke(ctx: Context): Promise<unknown> {
		inFlight++;
		(inFlightGauge ?? gauges()).value = inFlight;
		return callNext(next, ctx);
	}

	function admitQueued(): void {
		while (queue.length && inFlight < concurrency) {
			const call = queue.shift()!;
			queueGauge.value = queue.length;
			invoke(call.ctx).then(call.resolve, call.reject);
		}
	}

	function admitOrQueue(ctx: Context): { promise: Promise<unknown>; admitted: boolean } {
		if (inFlight < concurrency) return { promise: invoke(ctx), admitted: true };
		if (bulkhead.maxQueueSize && queue.length >= bulkhead.maxQueueSize) {
			return { promise: Promise.reject(new Errors.QueueIsFullError({ action: action.name, nodeID: ctx.nodeID })), admitted: false };
		}
		const promise = new Promise((resolve, reject) => queue.push({ ctx, resolve, reject }));
		queueGauge.value = queue.length;
		return { promise, admitted: true };
	}

	function release(admitted: boolean): void {
		if (!admitted) return;
		inFlight--;
		inFlightGauge!.value = inFlight;
		admitQueued();
	}

	// No closures named per call here: under tsx (esbuild keepNames) each costs a defineProperty.
	return function servingGate(ctx: Context): Promise<unknown> {
		const recording = recorder.begin(ctx);
		const { promise, admitted } = admitOrQueue(ctx);
		return promise.then(
			res => {
				release(admitted);
				recorder.succeeded(recording, ctx);
				return res;
			},
			err => {
				release(admitted);
				recorder.failed(recording, ctx, err);
				throw err;
			},
		);
	};
}

/** Bulkhead + tracking + request metrics for served actions; Moleculer's Bulkhead still guards events. */
function ServingGate(this: ServiceBroker, broker: ServiceBroker): Middleware {
	const moleculerBulkhead = builtIn(broker, "Bulkhead");
	return {
		name: "ServingGate",
		created: moleculerBulkhead.created,
		localEvent: moleculerBulkhead.localEvent,
		localAction(this: ServiceBroker, next: Handler, action: ActionDef) {
			return gateAction(this, next, action);
		},
	} as unknown as Middleware;
}

/** Moleculer's ContextTracker for events and stopping; ServingGate and CallingGate track calls. */
function ContextTracker(this: ServiceBroker, broker: ServiceBroker): Middleware {
	const tracker = builtIn(broker, "ContextTracker");
	delete tracker.localAction;
	delete tracker.remoteAction;
	return tracker;
}

function gateCall(broker: ServiceBroker, next: Handler, action: ActionDef): Handler {
	const recorder = new CallRecorder(broker, action, "remote");
	return function callingGate(ctx: Context): Promise<unknown> {
		const recording = recorder.begin(ctx);
		return callNext(next, ctx).then(
			res => {
				recorder.succeeded(recording, ctx);
				return res;
			},
			err => {
				recorder.failed(recording, ctx, err);
				throw err;
			},
		);
	};
}

/**
 * Calls this node makes: tracked for graceful stop and metered, in one wrapper (Moleculer's
 * ContextTracker and the request metrics used two). Outermost, so a call counts once however its
 * attempts went; Moleculer's Retry re-enters the chain for each retry, as before.
 */
function CallingGate(this: ServiceBroker, broker: ServiceBroker): Middleware {
	return {
		name: "CallingGate",
		created: () => registerRequestMetrics(broker),
		remoteAction(this: ServiceBroker, next: Handler, action: ActionDef) {
			return gateCall(this, next, action);
		},
	} as unknown as Middleware;
}

/**
 * Moleculer's `name` middleware, whose served-action wrapper only runs for calls that started on this
 * node. Fallback has nothing to do for a call from another node unless the action declares a
 * `fallback`: for those calls the wrapper was one more promise per call and no behaviour.
 */
function forLocalCallers(name: "Fallback"): MiddlewareFactory {
	const factory = function (this: ServiceBroker, broker: ServiceBroker) {
		const middleware = builtIn(broker, name);
		const wrapServed = middleware.localAction as (this: ServiceBroker, next: Handler, action: ActionDef) => Handler;
		return {
			...middleware,
			localAction(this: ServiceBroker, next: Handler, action: ActionDef & { fallback?: unknown }) {
				const wrapped = wrapServed.call(this, next, action);
				if (wrapped === next || action.fallback) return wrapped;
				return function localCallersOnly(ctx: Context) {
					return ctx.nodeID === broker.nodeID ? wrapped(ctx) : next(ctx);
				};
			},
		} as unknown as Middleware;
	};
	Object.defineProperty(factory, "name", { value: name });
	return factory as MiddlewareFactory;
}

const RETRY_METRIC = "moleculer.request.retry.attempts.total";

interface RetryOptions {
	enabled: boolean;
	retries: number;
	delay: number;
	maxDelay: number;
	factor: number;
	check(err: Error): boolean;
}

type RetriedContext = Context & { _retryAttempts?: number };

/**
 * How long a retry waits. The delay is for faults that may pass (a timeout, a full queue, a node
 * briefly unreachable). A call marked `lost` will not be answered where it went, however long one
 * waits: the liveness probe found its node gone — the NATS server holds no subscription for it
 * (lib/mesh/liveness-probe.ts) — or a NATS connection on its path was reset (lib/mesh/nats-reconnect-guard.ts).
 * The retry goes to another node (FailoverStrategy excludes the failed one), so it leaves at once: on a
 * SIGKILL the delay was a fifth of the slowest read's latency. With no untried node to go to, the usual
 * delay gives a node that was only reconnecting to NATS its chance to come back.
 */
export function retryDelayMs(broker: ServiceBroker, opts: RetryOptions, actionName: string, ctx: RetriedContext, err: Error & { data?: { lost?: boolean } }): number {
	if (err.data?.lost === true && anUntriedNodeOffers(broker, actionName, ctx)) return 0;
	return Math.min(opts.delay * Math.pow(opts.factor, (ctx._retryAttempts ?? 1) - 1), opts.maxDelay);
}

function anUntriedNodeOffers(broker: ServiceBroker, actionName: string, ctx: Context): boolean {
	const endpoints = broker.registry.getActionEndpoints(actionName)?.endpoints;
	const failed = nodesThisCallFailedOn(ctx);
	return !!endpoints?.some(ep => ep.isAvailable && !failed.has(ep.id));
}

/**
 * Moleculer's Retry: the same merged options, `check`, log line and metric, and a served action is
 * wrapped only for calls that started on this node — a call from another node is retried by its caller,
 * which picks another node; here the wrapper was one more promise per call and no behaviour.
 */
function Retry(this: ServiceBroker, broker: ServiceBroker): Middleware {
	function wrap(next: Handler, action: ActionDef & { retryPolicy?: Partial<RetryOptions>; visibility?: string; rawName?: string }, onlyLocalCallers: boolean): Handler {
		const opts = { ...(broker.options.retryPolicy as RetryOptions), ...(action.retryPolicy ?? {}) } as RetryOptions;
		if (!opts.enabled) return next;
		const service = action.service?.fullName ?? null;
		function retryMiddleware(ctx: RetriedContext): Promise<unknown> {
			const attempts = typeof ctx.options.retries === "number" ? ctx.options.retries : opts.retries;
			if (ctx._retryAttempts == null) ctx._retryAttempts = 0;
			return next(ctx).catch((err: Error) => {
				if (!opts.check(err) || ctx._retryAttempts! >= attempts) return Promise.reject(err);
				if (broker.isMetricsEnabled()) broker.metrics.increment(RETRY_METRIC, { service, action: action.name });
				ctx._retryAttempts!++;
				if (ctx.span) {
					ctx.span.setError(err);
					ctx.span.addTags({ retryAttempts: ctx._retryAttempts });
					ctx.finishSpan(ctx.span);
				}
				const delay = retryDelayMs(broker, opts, action.name, ctx, err);
				broker.logger.warn(`Retry to call '${action.name}' action after ${delay} ms...`, { requestID: ctx.requestID, attempts: ctx._retryAttempts });
				const again = () => {
					const retry = ctx.copy() as RetriedContext;
					retry._retryAttempts = ctx._retryAttempts;
					if (action.visibility === "private") return (ctx.service!.actions as Record<string, (p: unknown, o: object) => Promise<unknown>>)[action.rawName!](ctx.params, { ctx: retry });
					return broker.call(action.name, ctx.params, { ctx: retry });
				};
				return delay > 0 ? new Promise(resolve => setTimeout(resolve, delay)).then(again) : again();
			});
		}
		if (!onlyLocalCallers) return retryMiddleware;
		return function localCallersOnly(ctx: Context) {
			return ctx.nodeID === broker.nodeID ? retryMiddleware(ctx) : next(ctx);
		};
	}

	return perActionCounterMiddleware(broker, "Retry", { name: RETRY_METRIC, description: "Number of retries" }, wrap);
}

/**
 * A middleware that wraps served actions (for calls started here: `onlyLocalCallers`) and calls to other
 * nodes with `wrap`, and counts something per action in a counter it registers: Moleculer's Retry and
 * Timeout, re-done here, have this shape.
 */
function perActionCounterMiddleware(
	broker: ServiceBroker,
	name: string,
	counter: { name: string; description: string },
	wrap: (next: Handler, action: ActionDef, onlyLocalCallers: boolean) => Handler,
): Middleware {
	return {
		name,
		created() {
			if (broker.isMetricsEnabled()) broker.metrics.register({ ...counter, type: "counter", labelNames: ["service", "action"], rate: true });
		},
		localAction: (next: Handler, action: ActionDef) => wrap(next, action, true),
		remoteAction: (next: Handler, action: ActionDef) => wrap(next, action, false),
	} as unknown as Middleware;
}

const TIMEOUT_METRIC = "moleculer.request.timeout.total";

/** Timeouts this node's Timeout gave: not a verdict on the node called (see timedOutHere). */
const timeoutsGivenHere = new WeakSet<Error>();

/**
 * Whether `err` is a timeout this node's Timeout gave a call to another node. The breaker leaves these out, as it
 * did when the Timeout wrapped it from outside and it never saw them: a slow answer is the timeout class's to
 * judge, a node that does not answer at all is the liveness probe's (lib/mesh/liveness-probe.ts).
 */
export function timedOutHere(err: unknown): boolean {
	return err instanceof Error && timeoutsGivenHere.has(err);
}

/** A side branch's settle handler that only clears the call's timer. */
function clearTimerOf(timer: NodeJS.Timeout): () => void {
	return () => clearTimeout(timer);
}

/**
 * Moleculer's Timeout (same defaults, error, log line and metric) with fewer promises per call and, for served
 * actions, a timer only for calls that started on this node.
 *
 * A call to another node gets a timer and nothing else on its way: the caller is handed the call's own promise,
 * the timer is cleared from a side branch, and at expiry the call is given up on in Moleculer's pending list
 * (abandonPendingRequest: rejected with RequestTimeoutError, its streams destroyed, a late answer dropped as an
 * orphan). Wrapped in a promise of its own (until 2026-12-03), the call stayed in that list after its caller had
 * been told it timed out, until the late answer came or the node left, and the liveness probe's scans still
 * counted it as pending there. Every answer also reached its caller two microtasks later; what that cost end to
 * end is below what bench:call-cost resolves (docs/BENCHMARKS.md, "The remote timeout without a promise").
 */
function Timeout(this: ServiceBroker, broker: ServiceBroker): Middleware {
	const log = broker.getLogger("timeout");

	function wrap(next: Handler, action: ActionDef & { timeout?: number }, onlyLocalCallers: boolean): Handler {
		const service = action.service?.fullName ?? null;
		function timedOut(ctx: Context): Error {
			log.warn(`Request '${action.name}' is timed out.`, { requestID: ctx.requestID, nodeID: ctx.nodeID, timeout: ctx.options.timeout });
			if (ctx.params instanceof Stream) ctx.params.emit("moleculer-timeout-middleware", ctx.options.timeout);
			if (broker.isMetricsEnabled()) broker.metrics.increment(TIMEOUT_METRIC, { service, action: action.name });
			return new Errors.RequestTimeoutError({ action: action.name, nodeID: ctx.nodeID ?? "" });
		}
		// Run when the timer fires first; defined once per action (setTimeout passes the arguments).
		function expire(ctx: Context, reject: (err: Error) => void): void {
			reject(timedOut(ctx));
		}
		function expireRemote(ctx: Context): void {
			const err = timedOut(ctx);
			timeoutsGivenHere.add(err);
			abandonPendingRequest(broker, ctx.id, ctx.nodeID ?? "", err);
		}
		return function timeoutMiddleware(ctx: Context): Promise<unknown> {
			if (ctx.options.timeout == null) ctx.options.timeout = action.timeout ?? broker.options.requestTimeout;
			const ms = ctx.options.timeout ?? 0;
			if (!(ms > 0)) return next(ctx);
			if (!onlyLocalCallers) {
				const pending = next(ctx);
				const clear = clearTimerOf(setTimeout(expireRemote, ms, ctx));
				pending.then(clear, clear);
				return pending;
			}
			// Calls made while serving this one get the rest of its budget (distributed timeouts). Only a
			// served call's context makes calls of its own: the context of a call sent to another node is
			// never asked for the rest (Moleculer's Timeout stamped it anyway).
			if (!ctx.startHrTime) ctx.startHrTime = process.hrtime();
			if (ctx.nodeID !== broker.nodeID) return next(ctx);
			const pending = next(ctx);
			return new Promise((resolve, reject) => {
				const timer = setTimeout(expire, ms, ctx, reject);
				pending.then(
					value => {
						clearTimeout(timer);
						resolve(value);
					},
					err => {
						clearTimeout(timer);
						reject(err);
					},
				);
			});
		};
	}

	return perActionCounterMiddleware(broker, "Timeout", { name: TIMEOUT_METRIC, description: "Number of timed out requests" }, wrap);
}

/**
 * A middleware factory as BrokerOptions lists it: Moleculer calls a function in `middlewares` with the
 * broker, but its typings list only objects and names.
 */
function listed(factory: MiddlewareFactory): Middleware {
	return factory as unknown as Middleware;
}

/** The broker's middlewares after the project's own (it runs with internalMiddlewares: false). */
export function meshInternalMiddlewares(): Array<string | Middleware> {
	return [
		"ActionHook",
		"Validator",
		listed(ServingGate as MiddlewareFactory),
		"Cacher",
		listed(ContextTracker as MiddlewareFactory),
		"CircuitBreaker",
		listed(Timeout as MiddlewareFactory),
		listed(Retry as MiddlewareFactory),
		listed(forLocalCallers("Fallback")),
		"ErrorHandler",
		"Tracing",
		listed(CallingGate as MiddlewareFactory),
		"Debounce",
		"Throttle",
	];
}
