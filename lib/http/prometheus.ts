/**
 * Metrics: Moleculer's built-in metric registry, exposed in Prometheus text format on the gateway's
 * own /metrics, plus the HTTP metrics the seeds name.
 *
 * Why not the stock PrometheusReporter output: it opens a second HTTP port, and its text fails
 * `promtool check metrics` (histograms get _sum/_count only when quantiles are on, and extra
 * _rate/_min/_mean series are written under a `histogram` TYPE). This reporter keeps Moleculer's
 * registry and label handling but renders valid exposition and serves it through the gateway.
 * (The old `moleculer-prometheus` package targets Moleculer 0.12/0.13 and does not work with ≥0.14.)
 */
import { MetricReporters, type MetricRegistry, type Middleware, type ServiceBroker } from "moleculer";

export const HTTP_METRICS = {
	requests: "http_requests_total",
	duration: "http_request_duration_seconds",
	activeConnections: "active_connections",
	serviceHealth: "service_health",
} as const;

export const HTTP_DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

interface SnapshotItem {
	labels: Record<string, unknown>;
	value?: unknown;
	count?: number;
	sum?: number;
	buckets?: Record<string, number>;
}

function metricName(name: string, type: string): string {
	const base = name.replace(/[^a-zA-Z0-9_:]/g, "_");
	// Prometheus conventions (checked by promtool's lint): counters end in _total, nothing else does.
	if (type === "counter") return base.endsWith("_total") ? base : `${base}_total`;
	return base.endsWith("_total") ? base.slice(0, -"_total".length) : base;
}

/** nodeID → node_id: Prometheus label names are snake_case. */
export function labelName(name: string): string {
	return name
		.replace(/([a-z0-9])([A-Z])/g, "$1_$2")
		.replace(/[^a-zA-Z0-9_]/g, "_")
		.toLowerCase();
}

function escapeLabelValue(value: unknown): string {
	return String(value ?? "")
		.replace(/\\/g, "\\\\")
		.replace(/"/g, '\\"')
		.replace(/\n/g, "\\n");
}

function labelString(labels: Record<string, unknown>): string {
	const parts = Object.entries(labels)
		.filter(([, v]) => v !== undefined)
		.map(([k, v]) => `${labelName(k)}="${escapeLabelValue(v)}"`);
	return parts.length ? `{${parts.join(",")}}` : "";
}

function numberText(value: unknown): string {
	return typeof value === "number" && Number.isFinite(value) ? String(value) : "NaN";
}

function renderSeries(name: string, type: string, item: SnapshotItem, base: Record<string, unknown>): string[] {
	const labels = { ...base, ...item.labels };
	if (type === "info") return [`${name}${labelString({ ...labels, value: item.value })} 1`];
	if (type !== "histogram") return [`${name}${labelString(labels)} ${numberText(item.value)}`];
	const lines: string[] = [];
	for (const [le, count] of Object.entries(item.buckets ?? {})) {
		lines.push(`${name}_bucket${labelString({ ...labels, le })} ${numberText(count)}`);
	}
	lines.push(`${name}_bucket${labelString({ ...labels, le: "+Inf" })} ${numberText(item.count)}`);
	lines.push(`${name}_sum${labelString(labels)} ${numberText(item.sum)}`);
	lines.push(`${name}_count${labelString(labels)} ${numberText(item.count)}`);
	return lines;
}

/**
 * Moleculer's process and OS series that describe the machine and its users rather than the mesh:
 * the command line (script path), pid, hostname, OS user name, uid and home directory, network
 * interface addresses and MAC addresses, OS type and release, wall-clock time. Never rendered.
 */
export const IDENTIFYING_METRICS = ["process.arguments", "process.pid", "process.ppid", "os.hostname", "os.user.*", "os.network.*", "os.type", "os.release", "os.datetime.*"];

/**
 * Hands the gateway's reporter to the broker's metric registry as the broker is created. Moleculer
 * accepts a reporter instance in `metrics.reporter`, but its typings know reporters by name only; a
 * middleware's `created` hook runs after the registry exists, so the options stay plain BrokerOptions.
 */
export function GatewayReporterMiddleware(reporter: GatewayPrometheusReporter): Middleware {
	return {
		name: "GatewayReporter",
		created(broker: ServiceBroker) {
			if (!broker.metrics.isEnabled()) return;
			reporter.init(broker.metrics);
			broker.metrics.reporter = [...(broker.metrics.reporter ?? []), reporter];
		},
	};
}

/** A metrics reporter without a server of its own: the gateway asks it for the text. */
export class GatewayPrometheusReporter extends MetricReporters.Base {
	private baseLabels: Record<string, unknown> = {};

	constructor(opts: { excludes?: string[] } = {}) {
		super({ ...opts, excludes: [...IDENTIFYING_METRICS, ...(opts.excludes ?? [])] });
	}

	init(registry: MetricRegistry): void {
		super.init(registry);
		this.baseLabels = { nodeID: this.registry.broker.nodeID };
	}

	render(): string {
		const out: string[] = [];
		for (const metric of this.registry.store.values()) {
			if (!this.matchMetricName(metric.name)) continue;
			const snapshot = metric.snapshot();
			if (snapshot.length === 0) continue;
			const name = metricName(metric.name, metric.type);
			const promType = metric.type === "info" ? "gauge" : metric.type;
			const help = (metric.description ?? metric.name).replace(/\\/g, "\\\\").replace(/\n/g, " ");
			out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${promType}`);
			for (const item of snapshot) out.push(...renderSeries(name, metric.type, item, this.baseLabels));
		}
		return out.join("\n") + "\n";
	}
}

/** Registers the seed's HTTP metrics in the broker's registry (idempotent across service restarts). */
export function registerHttpMetrics(broker: ServiceBroker): void {
	const metrics = broker.metrics;
	if (!metrics.isEnabled() || metrics.getMetric(HTTP_METRICS.requests)) return;
	metrics.register({
		name: HTTP_METRICS.requests,
		type: "counter",
		labelNames: ["method", "route", "status"],
		description: "HTTP requests answered by the gateway",
	});
	metrics.register({
		name: HTTP_METRICS.duration,
		type: "histogram",
		labelNames: ["method", "route"],
		buckets: HTTP_DURATION_BUCKETS,
		description: "HTTP request duration in seconds",
	});
	metrics.register({
		name: HTTP_METRICS.activeConnections,
		type: "gauge",
		labelNames: ["kind"],
		description: "Open client connections (http sockets, websockets)",
	});
	metrics.register({
		name: HTTP_METRICS.serviceHealth,
		type: "gauge",
		labelNames: ["dependency"],
		description: "1 when the dependency (or the node, dependency=\"node\") is healthy, 0 when not",
	});
}
