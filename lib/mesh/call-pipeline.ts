/**
 * The middleware chain every broker runs: Moleculer's internal middlewares in their own order, some
 * replaced or narrowed by leaner equivalents that keep their behaviour, names and metrics.
 *
 * - ServingGate (in Bulkhead's place) serves a local action through one wrapper that does what
 *   Bulkhead, ContextTracker, the request metrics, the circuit breaker and the project's QueryLimits did
 *   in five: the call is tracked for graceful stop, admitted or queued by the bulkhead, its error named
 *   (a database limit: a typed 503), metered and counted for its breaker. Moleculer's Bulkhead updated two gauges
 *   through the registry (a label hash each) four times per call.
 * - ContextTracker keeps Moleculer's (calls this node makes, events, waiting on stop) minus the
 *   served actions, which ServingGate tracks.
 * - Timeout does what Moleculer's did with fewer promises per call, and for served actions only
 *   times calls that started on this node. A call from another node is timed by its caller, which
 *   gives up and retries elsewhere on its own; a second timer here only produced an error answer
 *   nobody waits for.
 * - CallingGate (in the request metrics' place, outermost) is the whole chain a call to another node
 *   gets, in one wrapper and one promise: it tracks and meters the call (where ContextTracker and the
 *   metrics used two wrappers), counts it for its circuit breaker (CircuitBreaker's part), times it
 *   (Timeout's), retries it (Retry's), answers it with the caller's fallbackResponse (Fallback's) and hands
 *   a final failure to the broker's error handler (ErrorHandler's), in the order those middlewares had. Six
 *   wrappers were seven promises per call (docs/BENCHMARKS.md, "One promise for a call to another node").
 * - CircuitBreaker is Moleculer's with its state apart from its wrapper (lib/mesh/circuit-breaker.ts): the
 *   gates count each call in the promise reaction they have anyway.
 * - Retry does what Moleculer's did (same options, check, log line and metric) for calls that started on
 *   this node, and retries at once, not after its delay, a call known lost (its node gone, or its NATS
 *   connection reset) while another node offers the action (see retryDelayMs).
 * - Fallback and ErrorHandler wrap served actions (Fallback only for calls that started on this node:
 *   forLocalCallers) and events as Moleculer's do; CallingGate does their part for calls to other nodes.
 *
 * bench/mesh/cpu-per-call.ts measures what each costs per call (docs/BENCHMARKS.md).
 */
import * as moleculer from "moleculer";
import type { Context, Middleware, ServiceBroker } from "moleculer";
import { Errors } from "moleculer";
import { Stream } from "stream";
import { nodesThisCallFailedOn } from "./failover-policy";
import { abandonPendingRequest } from "./moleculer-internals";
import { circuitBreakersOf } from "./circuit-breaker";
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
function builtIn(broker: ServiceBroker, name: "Bulkhead" | "ContextTracker" | "Fallback" | "ErrorHandler"): Middleware & Record<string, unknown> {
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

/**
 * What a served action's error becomes before the breaker, the metrics and the caller see it (null: as it is).
 * The serving side's innermost wrapper is ServingGate, so the error it sees is the handler's.
 */
export type ServedErrorNaming = (err: unknown) => Error | null;

function gateAction(broker: ServiceBroker, next: Handler, action: ActionDef, nameError: ServedErrorNaming | undefined): Handler {
	const bulkhead: BulkheadOptions = { ...(broker.options.bulkhead as BulkheadOptions), ...action.bulkhead };
	const concurrency = bulkhead.enabled ? (bulkhead.concurrency ?? 3) : Infinity;
	const recorder = new CallRecorder(broker, action, "local");
	const breaker = circuitBreakersOf(broker).forAction(action);
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
		const entered = breaker ? breaker.entered(ctx) : null;
		const recording = recorder.begin(ctx);
		const { promise, admitted } = admitOrQueue(ctx);
		return promise.then(
			res => {
				release(admitted);
				recorder.succeeded(recording, ctx);
				if (breaker) breaker.succeeded(entered);
				return res;
			},
			err => {
				const failed = (nameError && nameError(err)) || err;
				release(admitted);
				recorder.failed(recording, ctx, failed);
				if (breaker) breaker.failed(entered, ctx, failed);
				throw failed;
			},
		);
	};
}

/**
 * Bulkhead + tracking + request metrics + the circuit breaker's count for served actions; Moleculer's Bulkhead still
 * guards events. The breaker counts after the rest, as it did wrapping this gate from outside.
 */
function ServingGate(nameError?: ServedErrorNaming): MiddlewareFactory {
	return function ServingGate(this: ServiceBroker, broker: ServiceBroker) {
		const moleculerBulkhead = builtIn(broker, "Bulkhead");
		return {
			name: "ServingGate",
			created: moleculerBulkhead.created,
			localEvent: moleculerBulkhead.localEvent,
			localAction(this: ServiceBroker, next: Handler, action: ActionDef) {
				return gateAction(this, next, action, nameError);
			},
		} as unknown as Middleware & Record<string, unknown>;
	};
}

/** Moleculer's ContextTracker for events and stopping; ServingGate and CallingGate track calls. */
function ContextTracker(this: ServiceBroker, broker: ServiceBroker): Middleware {
	const tracker = builtIn(broker, "ContextTracker");
	delete tracker.localAction;
	delete tracker.remoteAction;
	return tracker;
}

type ActionWithPolicies = ActionDef & { retryPolicy?: Partial<RetryOptions>; timeout?: number; visibility?: string; rawName?: string };
type RetriedContext = Context & { _retryAttempts?: number };

/**
 * A call to another node: what CallingGate, ErrorHandler, Fallback, Retry, Timeout and CircuitBreaker did there as
 * six wrappers (outermost first), now one, with one promise per call that succeeds. A failure takes the path it
 * took through them, innermost first: the breaker counts it, the timer is cleared, Retry may send the call again
 * (through the whole chain, as Moleculer's Retry does), a fallbackResponse may answer it, the broker's error
 * handler gets the rest, and the call is recorded as it ended.
 */
function gateCall(broker: ServiceBroker, next: Handler, action: ActionWithPolicies): Handler {
	const recorder = new CallRecorder(broker, action, "remote");
	const timeout = remoteTimeout(broker, action);
	const retry = retryOptionsOf(broker, action);
	const breaker = circuitBreakersOf(broker).forAction(action);

	function afterFailure(ctx: RetriedContext, err: Error): Promise<unknown> {
		const retried = retry ? retryOrReject(broker, retry, action, ctx, err) : Promise.reject(err);
		return retried.catch((failed: Error) => contextFallback(broker, ctx, failed)).catch((failed: unknown) => handleCallError(broker, ctx, failed));
	}

	// No closures named per call here: under tsx (esbuild keepNames) each costs a defineProperty.
	return function callingGate(ctx: RetriedContext): Promise<unknown> {
		const recording = recorder.begin(ctx);
		if (retry && ctx._retryAttempts == null) ctx._retryAttempts = 0;
		const ms = timeout.msFor(ctx);
		const entered = breaker ? breaker.entered(ctx) : null;
		const pending = callNext(next, ctx);
		const timer = ms > 0 ? setTimeout(timeout.expire, ms, ctx) : null;
		return pending.then(
			res => {
				if (breaker) breaker.succeeded(entered);
				if (timer) clearTimeout(timer);
				recorder.succeeded(recording, ctx);
				return res;
			},
			err => {
				if (breaker) breaker.failed(entered, ctx, err);
				if (timer) clearTimeout(timer);
				return afterFailure(ctx, err).then(
					res => {
						recorder.succeeded(recording, ctx);
						return res;
					},
					failed => {
						recorder.failed(recording, ctx, failed);
						throw failed;
					},
				);
			},
		);
	};
}

/**
 * Calls this node makes (see gateCall): tracked for graceful stop, metered, timed, retried and error-handled, in
 * one wrapper. Outermost, so a call counts once however its attempts went; a retry re-enters the chain, as
 * Moleculer's Retry does.
 */
function CallingGate(this: ServiceBroker, broker: ServiceBroker): Middleware {
	return {
		name: "CallingGate",
		created: () => registerRequestMetrics(broker),
		remoteAction(this: ServiceBroker, next: Handler, action: ActionWithPolicies) {
			return gateCall(this, next, action);
		},
	} as unknown as Middleware;
}

/** Moleculer's `name` middleware for served actions and events only: CallingGate does its part for calls to other nodes. */
function servedOnly(name: "ErrorHandler"): MiddlewareFactory {
	const factory = function (this: ServiceBroker, broker: ServiceBroker) {
		const middleware = builtIn(broker, name);
		delete middleware.remoteAction;
		return middleware;
	};
	Object.defineProperty(factory, "name", { value: name });
	return factory as MiddlewareFactory;
}

/**
 * Moleculer's `name` middleware, whose served-action wrapper only runs for calls that started on this
 * node. Fallback has nothing to do for a call from another node unless the action declares a
 * `fallback`: for those calls the wrapper was one more promise per call and no behaviour. Calls to other
 * nodes get the caller's fallbackResponse from CallingGate (contextFallback).
 */
function forLocalCallers(name: "Fallback"): MiddlewareFactory {
	const factory = function (this: ServiceBroker, broker: ServiceBroker) {
		const middleware = builtIn(broker, name);
		const wrapServed = middleware.localAction as (this: ServiceBroker, next: Handler, action: ActionDef) => Handler;
		delete middleware.remoteAction;
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

const FALLBACK_METRIC = "moleculer.request.fallback.total";

/**
 * Moleculer's Fallback for a call to another node: the caller's `fallbackResponse` (a value, or a function of the
 * context and error) answers a failed call, with Moleculer's log line and metric. A remote action's own `fallback`
 * is not called here: its function stays on the serving node (definitions travel without functions), where it
 * runs for calls started there; Moleculer looked a name up on the registry's service entry, which has no methods
 * of the service, and no action of this project declares one.
 */
function contextFallback(broker: ServiceBroker, ctx: Context, err: Error): unknown {
	const fallbackResponse = ctx.options.fallbackResponse as unknown;
	if (!fallbackResponse) return Promise.reject(err);
	broker.logger.warn(`The '${ctx.action!.name}' request is failed. Return fallback response.`, { requestID: ctx.requestID, err: err.message });
	if (broker.isMetricsEnabled()) broker.metrics.increment(FALLBACK_METRIC, { action: ctx.action!.name });
	(ctx as Context & { fallbackResult?: boolean }).fallbackResult = true;
	if (typeof fallbackResponse === "function") return fallbackResponse(ctx, err);
	return fallbackResponse;
}

/**
 * Moleculer's ErrorHandler for a call to another node: a thrown non-Error becomes a MoleculerError, the call leaves
 * the pending list (it may have failed before it was sent), the error gets its context, and the broker's error
 * handler decides (it rethrows unless the options give one).
 */
function handleCallError(broker: ServiceBroker, ctx: Context, thrown: unknown): unknown {
	const err = thrown instanceof Error ? thrown : new Errors.MoleculerError(thrown as string, 500);
	if (ctx.nodeID !== broker.nodeID) broker.transit?.removePendingRequest(ctx.id);
	broker.logger.debug(`The '${ctx.action!.name}' request is rejected.`, { requestID: ctx.requestID }, err);
	Object.defineProperty(err, "ctx", { value: ctx, writable: true, enumerable: false });
	return broker.errorHandler(err, { ctx, service: ctx.service!, action: ctx.action! });
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

/** The broker's retry policy merged with the action's, as Moleculer's Retry merges them; null when retries are off. */
function retryOptionsOf(broker: ServiceBroker, action: ActionWithPolicies): RetryOptions | null {
	const opts = { ...(broker.options.retryPolicy as RetryOptions), ...(action.retryPolicy ?? {}) } as RetryOptions;
	return opts.enabled ? opts : null;
}

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
 * Moleculer's Retry after a failed attempt: the call again (through the whole chain, on a copy of its context, after
 * retryDelayMs) when `check` accepts the error and attempts are left; otherwise the error, rejected. The same log
 * line, metric and span marks as Moleculer's.
 */
function retryOrReject(broker: ServiceBroker, opts: RetryOptions, action: ActionWithPolicies, ctx: RetriedContext, err: Error): Promise<unknown> {
	const attempts = typeof ctx.options.retries === "number" ? ctx.options.retries : opts.retries;
	if (!opts.check(err) || ctx._retryAttempts! >= attempts) return Promise.reject(err);
	if (broker.isMetricsEnabled()) broker.metrics.increment(RETRY_METRIC, { service: action.service?.fullName ?? null, action: action.name });
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
}

/**
 * Moleculer's Retry for served actions, only for calls that started on this node: a call from another node is
 * retried by its caller, which picks another node; here the wrapper was one more promise per call and no
 * behaviour. CallingGate retries calls to other nodes.
 */
function Retry(this: ServiceBroker, broker: ServiceBroker): Middleware {
	function wrap(next: Handler, action: ActionWithPolicies): Handler {
		const opts = retryOptionsOf(broker, action);
		if (!opts) return next;
		function retryMiddleware(ctx: RetriedContext): Promise<unknown> {
			if (ctx._retryAttempts == null) ctx._retryAttempts = 0;
			return next(ctx).catch((err: Error) => retryOrReject(broker, opts!, action, ctx, err));
		}
		return function localCallersOnly(ctx: Context) {
			return ctx.nodeID === broker.nodeID ? retryMiddleware(ctx) : next(ctx);
		};
	}

	return servedActionCounterMiddleware(broker, "Retry", { name: RETRY_METRIC, description: "Number of retries" }, wrap);
}

/**
 * A middleware that wraps served actions with `wrap` and counts something per action in a counter it registers:
 * Moleculer's Retry and Timeout, re-done here, have this shape (CallingGate does their part for calls to other nodes).
 */
function servedActionCounterMiddleware(broker: ServiceBroker, name: string, counter: { name: string; description: string }, wrap: (next: Handler, action: ActionDef) => Handler): Middleware {
	return {
		name,
		created() {
			if (broker.isMetricsEnabled()) broker.metrics.register({ ...counter, type: "counter", labelNames: ["service", "action"], rate: true });
		},
		localAction: (next: Handler, action: ActionDef) => wrap(next, action),
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

/** Moleculer's Timeout's defaults, log line, stream signal, metric and error, for one action. */
function timeoutOf(broker: ServiceBroker, action: ActionWithPolicies) {
	const log = broker.getLogger("timeout");
	const service = action.service?.fullName ?? null;
	return {
		/** The call's timeout in ms (0: none), written into its options as Moleculer's Timeout does: the request packet carries it. */
		msFor(ctx: Context): number {
			if (ctx.options.timeout == null) ctx.options.timeout = action.timeout ?? broker.options.requestTimeout;
			return ctx.options.timeout ?? 0;
		},
		timedOut(ctx: Context): Error {
			log.warn(`Request '${action.name}' is timed out.`, { requestID: ctx.requestID, nodeID: ctx.nodeID, timeout: ctx.options.timeout });
			if (ctx.params instanceof Stream) ctx.params.emit("moleculer-timeout-middleware", ctx.options.timeout);
			if (broker.isMetricsEnabled()) broker.metrics.increment(TIMEOUT_METRIC, { service, action: action.name });
			return new Errors.RequestTimeoutError({ action: action.name, nodeID: ctx.nodeID ?? "" });
		},
	};
}

/**
 * The timeout of a call to another node (CallingGate arms it): at expiry the call is given up on in Moleculer's
 * pending list (abandonPendingRequest: rejected with RequestTimeoutError, its streams destroyed, a late answer
 * dropped as an orphan). Wrapped in a promise of its own (until 2026-12-03), the call stayed in that list after its
 * caller had been told it timed out, until the late answer came or the node left, and the liveness probe's scans
 * still counted it as pending there.
 */
function remoteTimeout(broker: ServiceBroker, action: ActionWithPolicies) {
	const timeout = timeoutOf(broker, action);
	return {
		msFor: timeout.msFor,
		// Defined once per action: setTimeout passes the context.
		expire(ctx: Context): void {
			const err = timeout.timedOut(ctx);
			timeoutsGivenHere.add(err);
			abandonPendingRequest(broker, ctx.id, ctx.nodeID ?? "", err);
		},
	};
}

/**
 * Moleculer's Timeout (same defaults, error, log line and metric) for served actions, with a timer only for calls
 * that started on this node: a call from another node is timed by its caller, which gives up and retries elsewhere
 * on its own; a second timer here only produced an error answer nobody waits for. CallingGate times calls to other
 * nodes (remoteTimeout).
 */
function Timeout(this: ServiceBroker, broker: ServiceBroker): Middleware {
	function wrap(next: Handler, action: ActionWithPolicies): Handler {
		const timeout = timeoutOf(broker, action);
		// Run when the timer fires first; defined once per action (setTimeout passes the arguments).
		function expire(ctx: Context, reject: (err: Error) => void): void {
			reject(timeout.timedOut(ctx));
		}
		return function timeoutMiddleware(ctx: Context): Promise<unknown> {
			const ms = timeout.msFor(ctx);
			if (!(ms > 0)) return next(ctx);
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

	return servedActionCounterMiddleware(broker, "Timeout", { name: TIMEOUT_METRIC, description: "Number of timed out requests" }, wrap);
}

/**
 * The circuit breakers' store, window timer and metrics (lib/mesh/circuit-breaker.ts); the gates count the calls:
 * ServingGate for served actions, CallingGate for calls to other nodes.
 */
function CircuitBreaker(this: ServiceBroker, broker: ServiceBroker): Middleware {
	const breakers = circuitBreakersOf(broker);
	return {
		name: "CircuitBreaker",
		created: () => breakers.created(),
		stopped: () => breakers.stopped(),
	} as unknown as Middleware;
}

/**
 * A middleware factory as BrokerOptions lists it: Moleculer calls a function in `middlewares` with the
 * broker, but its typings list only objects and names.
 */
function listed(factory: MiddlewareFactory): Middleware {
	return factory as unknown as Middleware;
}

/**
 * The broker's middlewares after the project's own (it runs with internalMiddlewares: false). `servedError` names
 * a served action's error before anything else sees it (moleculer.config.ts: a database limit becomes a typed 503).
 */
export function meshInternalMiddlewares(opts: { servedError?: ServedErrorNaming } = {}): Array<string | Middleware> {
	return [
		"ActionHook",
		"Validator",
		listed(ServingGate(opts.servedError)),
		"Cacher",
		listed(ContextTracker as MiddlewareFactory),
		listed(CircuitBreaker as MiddlewareFactory),
		listed(Timeout as MiddlewareFactory),
		listed(Retry as MiddlewareFactory),
		listed(forLocalCallers("Fallback")),
		listed(servedOnly("ErrorHandler")),
		"Tracing",
		listed(CallingGate as MiddlewareFactory),
		"Debounce",
		"Throttle",
	];
}
