/**
 * Request metrics at a fraction of the cost of Moleculer's built-in Metrics middleware, which does
 * ~13 registry updates per remote call (each building a label hash string) and was the largest single
 * cost of a call in bench/mesh (docs/BENCHMARKS.md: 29k → 41k calls/s without it).
 *
 * Same metric names and labels as Moleculer's (moleculer_request_total, _active, _error_total,
 * moleculer_request_time histogram in ms), but each handler keeps the series objects of its callers
 * and updates them in place, with no label hashing per call. Per-packet transit/transporter counters
 * are left out (the NATS server reports traffic itself); event counters stay on the registry.
 *
 * Updating series in place relies on the shape of Moleculer 0.15's metric items ({value} for counters
 * and gauges; {sum, count, bucketValues} for histograms); test/unit/lean-metrics.test.ts pins it.
 */
import type { Context, Middleware, ServiceBroker } from "moleculer";

const NAMES = {
	total: "moleculer.request.total",
	active: "moleculer.request.active",
	errors: "moleculer.request.error.total",
	time: "moleculer.request.time",
};
const LABELS = ["service", "action", "type", "caller"];
export const REQUEST_TIME_BUCKETS_MS = [0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 60_000];

interface ValueItem {
	value: number;
}
interface HistogramItem {
	sum: number;
	count: number;
	bucketValues: Record<number, number>;
}
interface Series {
	total: ValueItem;
	active: ValueItem;
	time: HistogramItem;
}

interface MetricLike {
	values: Map<string, unknown>;
	hashingLabels(labels: object): string;
}

function register(broker: ServiceBroker): void {
	const m = broker.metrics;
	m.register({ name: NAMES.total, type: "counter", labelNames: LABELS, unit: "request", description: "Number of requests" });
	m.register({ name: NAMES.active, type: "gauge", labelNames: LABELS, unit: "request", description: "Number of active requests" });
	m.register({
		name: NAMES.errors,
		type: "counter",
		labelNames: [...LABELS, "errorName", "errorCode", "errorType"],
		unit: "request",
		description: "Number of request errors",
	});
	m.register({ name: NAMES.time, type: "histogram", labelNames: LABELS, unit: "millisecond", buckets: REQUEST_TIME_BUCKETS_MS, description: "Request times in milliseconds" } as never);
}

/** The registry's item for these labels, created at zero if new (one hash, once per series). */
function item<T>(broker: ServiceBroker, name: string, labels: Record<string, unknown>, create: () => void): T {
	const metric = broker.metrics.getMetric(name) as unknown as MetricLike;
	const hash = metric.hashingLabels(labels);
	if (!metric.values.has(hash)) create();
	return metric.values.get(hash) as T;
}

function counterItem(broker: ServiceBroker, name: string, labels: Record<string, unknown>): ValueItem {
	return item(broker, name, labels, () => broker.metrics.increment(name, labels, 0));
}

/** A histogram series at zero: created by one placeholder observation, which is then taken back out. */
function histogramItem(broker: ServiceBroker, name: string, labels: Record<string, unknown>, buckets: number[]): HistogramItem {
	let placeholder = false;
	const histogram = item<HistogramItem>(broker, name, labels, () => {
		broker.metrics.observe(name, 0, labels);
		placeholder = true;
	});
	if (placeholder) {
		histogram.count--;
		for (const bucket of buckets) histogram.bucketValues[bucket]--;
	}
	return histogram;
}

function seriesFor(broker: ServiceBroker, labels: Record<string, unknown>): Series {
	return {
		total: counterItem(broker, NAMES.total, labels),
		active: item(broker, NAMES.active, labels, () => broker.metrics.set(NAMES.active, 0, labels)),
		time: histogramItem(broker, NAMES.time, labels, REQUEST_TIME_BUCKETS_MS),
	};
}

function observe(time: HistogramItem, observed: number, buckets: number[]): void {
	time.sum += observed;
	time.count++;
	for (const bucket of buckets) if (observed <= bucket) time.bucketValues[bucket]++;
}

/**
 * Counter and histogram series by label set, created once through the registry and then updated in
 * place: for per-request metrics on hot paths (the gateway's HTTP metrics).
 */
export class InPlaceSeries {
	private readonly counters = new Map<string, ValueItem>();
	private readonly histograms = new Map<string, HistogramItem>();

	constructor(
		private readonly broker: ServiceBroker,
		private readonly buckets: number[],
	) {}

	increment(name: string, key: string, labels: Record<string, unknown>): void {
		let counter = this.counters.get(key);
		if (!counter) this.counters.set(key, (counter = counterItem(this.broker, name, labels)));
		counter.value++;
	}

	observe(name: string, key: string, labels: Record<string, unknown>, observed: number): void {
		let histogram = this.histograms.get(key);
		if (!histogram) this.histograms.set(key, (histogram = histogramItem(this.broker, name, labels, this.buckets)));
		observe(histogram, observed, this.buckets);
	}
}

function wrap(broker: ServiceBroker, type: "local" | "remote") {
	return (next: (ctx: Context) => Promise<unknown>, action: { name: string; service?: { fullName: string } }) => {
		const service = action.service?.fullName ?? null;
		const byCaller = new Map<string, Series>();
		return function leanMetrics(ctx: Context) {
			const caller = ctx.caller ?? null;
			let series = byCaller.get(caller ?? "");
			if (!series) {
				series = seriesFor(broker, { service, action: action.name, type, caller });
				byCaller.set(caller ?? "", series);
			}
			const s = series;
			s.total.value++;
			s.active.value++;
			const started = performance.now();
			return next(ctx).then(
				res => {
					s.active.value--;
					observe(s.time, performance.now() - started, REQUEST_TIME_BUCKETS_MS);
					return res;
				},
				(err: Error & { code?: number; type?: string }) => {
					s.active.value--;
					observe(s.time, performance.now() - started, REQUEST_TIME_BUCKETS_MS);
					broker.metrics.increment(NAMES.errors, {
						service,
						action: action.name,
						type,
						caller,
						errorName: err?.name ?? null,
						errorCode: err?.code ?? null,
						errorType: err?.type ?? null,
					});
					throw err;
				},
			);
		};
	};
}

/** Moleculer calls middleware hooks with the broker as `this` (internal services are wrapped before `created`). */
export function LeanMetricsMiddleware(): Middleware {
	return {
		name: "LeanMetrics",
		created(broker: ServiceBroker) {
			if (broker.isMetricsEnabled()) register(broker);
		},
		localAction(this: ServiceBroker, next: never, action: never) {
			return this.isMetricsEnabled() ? wrap(this, "local")(next, action) : next;
		},
		remoteAction(this: ServiceBroker, next: never, action: never) {
			return this.isMetricsEnabled() ? wrap(this, "remote")(next, action) : next;
		},
	} as unknown as Middleware;
}

/**
 * Moleculer's internal middlewares in their own order, with LeanMetrics in place of "Metrics"
 * (the broker runs with internalMiddlewares: false and this list instead).
 */
export function internalMiddlewaresWithLeanMetrics(): Array<string | Middleware> {
	return [
		"ActionHook",
		"Validator",
		"Bulkhead",
		"Cacher",
		"ContextTracker",
		"CircuitBreaker",
		"Timeout",
		"Retry",
		"Fallback",
		"ErrorHandler",
		"Tracing",
		LeanMetricsMiddleware(),
		"Debounce",
		"Throttle",
	];
}
