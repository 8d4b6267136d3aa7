/**
 * Request metrics at a fraction of the cost of Moleculer's built-in Metrics middleware, which updates
 * the registry many times per remote call (each update building a label hash string) and was the largest
 * single cost of a call in bench/mesh (docs/BENCHMARKS.md, "Mesh foundation — where the cost goes").
 *
 * Same metric names and labels as Moleculer's (moleculer_request_total, _active, _error_total,
 * moleculer_request_time histogram in ms), but each action's RequestMeter keeps the series objects of
 * its callers and updates them in place, with no label hashing per call. ServingGate and CallingGate
 * (lib/mesh/call-pipeline.ts) use it for served and outgoing calls. Per-packet transit/transporter counters
 * are left out (the NATS server reports traffic itself); event counters stay on the registry.
 *
 * Updating series in place relies on the shape of Moleculer 0.15's metric items ({value} for counters
 * and gauges; {sum, count, bucketValues} for histograms); test/unit/request-metrics.test.ts pins it.
 */
import type { Context, ServiceBroker } from "moleculer";

const NAMES = {
	total: "moleculer.request.total",
	active: "moleculer.request.active",
	errors: "moleculer.request.error.total",
	time: "moleculer.request.time",
};
const LABELS = ["service", "action", "type", "caller"];
export const REQUEST_TIME_BUCKETS_MS = [0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 60_000];

export interface ValueItem {
	value: number;
}
interface HistogramItem {
	sum: number;
	count: number;
	bucketValues: Record<string, number>;
}
export interface Series {
	total: ValueItem;
	active: ValueItem;
	time: FastHistogram;
}

interface MetricLike {
	values: Map<string, unknown>;
	hashingLabels(labels: object): string;
	generateSnapshot(): unknown;
	snapshot(): unknown;
	setDirty(): void;
}

/** Registers the request metrics (Moleculer's names) that RequestMeter updates in place. */
export function registerRequestMetrics(broker: ServiceBroker): void {
	if (!broker.isMetricsEnabled()) return;
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
	m.register({ name: NAMES.time, type: "histogram", labelNames: LABELS, unit: "millisecond", buckets: REQUEST_TIME_BUCKETS_MS, description: "Request times in milliseconds" });
}

/**
 * A histogram series observed in place. Moleculer keeps cumulative bucket counts in an object keyed
 * by bucket bound, which V8 stores as sparse dictionary elements (bounds like 60000 are array
 * indices): incrementing all of them made each observation slow (docs/BENCHMARKS.md, "where the cost
 * goes"). This counts each observation once,
 * in its own bucket of a typed array, and adds the counts into Moleculer's item when the metric is read.
 */
export class FastHistogram {
	private readonly pending: Float64Array;
	private readonly keys: string[];

	constructor(
		private readonly item: HistogramItem,
		private readonly buckets: number[],
	) {
		this.pending = new Float64Array(buckets.length);
		this.keys = buckets.map(String);
	}

	observe(value: number): void {
		this.item.sum += value;
		this.item.count++;
		const buckets = this.buckets;
		let i = 0;
		while (i < buckets.length && value > buckets[i]) i++;
		if (i < buckets.length) this.pending[i]++;
	}

	/** Adds the pending counts into the item's cumulative buckets (called when the metric is read). */
	flush(): void {
		let below = 0;
		for (let i = 0; i < this.keys.length; i++) {
			below += this.pending[i];
			this.item.bucketValues[this.keys[i]] += below;
		}
		this.pending.fill(0);
	}
}

const histogramsByMetric = new WeakMap<MetricLike, FastHistogram[]>();

/**
 * The registry's metric, made safe to update in place: Moleculer caches a metric's snapshot until a
 * registry call marks it dirty, and in-place updates make no such call, so reads always regenerate
 * it (after flushing pending histogram counts). Reads are scrapes, not hot paths.
 */
function liveMetric(broker: ServiceBroker, name: string): MetricLike {
	const metric = broker.metrics.getMetric(name) as unknown as MetricLike;
	if (!histogramsByMetric.has(metric)) {
		histogramsByMetric.set(metric, []);
		metric.snapshot = () => {
			for (const histogram of histogramsByMetric.get(metric) ?? []) histogram.flush();
			metric.setDirty();
			return metric.generateSnapshot();
		};
	}
	return metric;
}

/** The registry's item for these labels, created at zero if new (one hash, once per series). */
function item<T>(broker: ServiceBroker, name: string, labels: Record<string, unknown>, create: () => void): T {
	const metric = liveMetric(broker, name);
	const hash = metric.hashingLabels(labels);
	if (!metric.values.has(hash)) create();
	return metric.values.get(hash) as T;
}

function counterItem(broker: ServiceBroker, name: string, labels: Record<string, unknown>): ValueItem {
	return item(broker, name, labels, () => broker.metrics.increment(name, labels, 0));
}

/** A histogram series at zero: created by one placeholder observation, which is then taken back out. */
function fastHistogram(broker: ServiceBroker, name: string, labels: Record<string, unknown>, buckets: number[]): FastHistogram {
	let placeholder = false;
	const histogram = item<HistogramItem>(broker, name, labels, () => {
		broker.metrics.observe(name, 0, labels);
		placeholder = true;
	});
	if (placeholder) {
		histogram.count--;
		for (const bucket of buckets) histogram.bucketValues[String(bucket)]--;
	}
	const fast = new FastHistogram(histogram, buckets);
	histogramsByMetric.get(liveMetric(broker, name))!.push(fast);
	return fast;
}

export function gaugeItem(broker: ServiceBroker, name: string, labels: Record<string, unknown>): ValueItem {
	return item(broker, name, labels, () => broker.metrics.set(name, 0, labels));
}

function seriesFor(broker: ServiceBroker, labels: Record<string, unknown>): Series {
	return {
		total: counterItem(broker, NAMES.total, labels),
		active: gaugeItem(broker, NAMES.active, labels),
		time: fastHistogram(broker, NAMES.time, labels, REQUEST_TIME_BUCKETS_MS),
	};
}

/**
 * Counter and histogram series by label set, created once through the registry and then updated in
 * place: for per-request metrics on hot paths (the gateway's HTTP metrics).
 */
export class InPlaceSeries {
	private readonly counters = new Map<string, ValueItem>();
	private readonly gauges = new Map<string, ValueItem>();
	private readonly histograms = new Map<string, FastHistogram>();

	constructor(
		private readonly broker: ServiceBroker,
		private readonly buckets: number[],
	) {}

	increment(name: string, key: string, labels: Record<string, unknown>, by = 1): void {
		let counter = this.counters.get(key);
		if (!counter) this.counters.set(key, (counter = counterItem(this.broker, name, labels)));
		counter.value += by;
	}

	set(name: string, key: string, labels: Record<string, unknown>, value: number): void {
		let gauge = this.gauges.get(key);
		if (!gauge) this.gauges.set(key, (gauge = gaugeItem(this.broker, name, labels)));
		gauge.value = value;
	}

	observe(name: string, key: string, labels: Record<string, unknown>, observed: number): void {
		let histogram = this.histograms.get(key);
		if (!histogram) this.histograms.set(key, (histogram = fastHistogram(this.broker, name, labels, this.buckets)));
		histogram.observe(observed);
	}
}

/** Request metrics of one action as seen from one side (local: served here; remote: called from here). */
export class RequestMeter {
	private readonly byCaller = new Map<string, Series>();
	private readonly labels: { service: string | null; action: string; type: "local" | "remote" };

	constructor(
		private readonly broker: ServiceBroker,
		action: { name: string; service?: { fullName: string } },
		type: "local" | "remote",
	) {
		this.labels = { service: action.service?.fullName ?? null, action: action.name, type };
	}

	/** Counts a call as started; hand the result to done() or failed() when it settles. */
	start(ctx: Context): Series {
		const caller = ctx.caller ?? null;
		let series = this.byCaller.get(caller ?? "");
		if (!series) {
			series = seriesFor(this.broker, { ...this.labels, caller });
			this.byCaller.set(caller ?? "", series);
		}
		series.total.value++;
		series.active.value++;
		return series;
	}

	done(series: Series, startedAt: number): void {
		series.active.value--;
		series.time.observe(performance.now() - startedAt);
	}

	failed(series: Series, startedAt: number, ctx: Context, err: Error & { code?: number; type?: string }): void {
		this.done(series, startedAt);
		this.broker.metrics.increment(NAMES.errors, {
			...this.labels,
			caller: ctx.caller ?? null,
			errorName: err?.name ?? null,
			errorCode: err?.code ?? null,
			errorType: err?.type ?? null,
		});
	}
}
