/**
 * Moleculer's circuit breaker (middlewares/circuit-breaker.js, 0.15) with its state kept apart from its wrapper, so
 * that the gates that already wrap every call (lib/mesh/call-pipeline.ts: CallingGate for calls to other nodes,
 * ServingGate for served actions) count each call's outcome in the promise reaction they have anyway. Moleculer's
 * wrapper chained `.then` and `.catch` on every call, on both sides: two promises per call per side, and a bound
 * closure per action (docs/BENCHMARKS.md, "One promise for a call to another node").
 *
 * The behaviour is Moleculer's, step for step: the same options (broker-wide, merged with the action's), one state
 * per endpoint (action × node) in `broker.CircuitBreakerStore`, reset every `windowTime` seconds; a call counted as
 * failed when `check` accepts its error and the error came from the node called (no `nodeID`, or that one); the
 * breaker opens at `threshold` failures of at least `minRequestCount` calls, half-opens after `halfOpenTime` (one
 * call let through), closes on that call's success; the same `$circuit-breaker.*` events, log lines and metrics.
 */
import type { Context, ServiceBroker } from "moleculer";

type Logger = ReturnType<ServiceBroker["getLogger"]>;

const STATE = { close: "close", halfOpen: "half_open", halfOpenWait: "half_open_wait", open: "open" } as const;
type BreakerState = (typeof STATE)[keyof typeof STATE];

const METRICS = {
	openedActive: "moleculer.circuit-breaker.opened.active",
	openedTotal: "moleculer.circuit-breaker.opened.total",
	halfOpenedActive: "moleculer.circuit-breaker.half-opened.active",
};

export interface BreakerOptions {
	enabled?: boolean;
	threshold: number;
	minRequestCount: number;
	windowTime?: number;
	halfOpenTime: number;
	check?: (err: Error) => boolean;
}

/** What Moleculer's registry gives a call as `ctx.endpoint`: an action on one node. */
interface ActionEndpoint {
	id: string;
	name: string;
	state: boolean;
	action: { name: string };
}

/** One endpoint's state, as Moleculer keeps it (the same fields: the store is public as broker.CircuitBreakerStore). */
interface EndpointState {
	ep: ActionEndpoint;
	service: { fullName: string } | undefined;
	opts: BreakerOptions;
	count: number;
	failures: number;
	state: BreakerState;
	cbTimer: NodeJS.Timeout | null;
}

/** A broker's breakers: one store and one window timer, created with the broker's CircuitBreaker middleware. */
export class CircuitBreakers {
	private readonly store = new Map<string, EndpointState>();
	private windowTimer: NodeJS.Timeout | null = null;
	private logger: Logger | null = null;

	constructor(private readonly broker: ServiceBroker) {}

	/** What an action's calls are counted by, or null when its breaker is off (broker-wide or for this action). */
	forAction(action: { circuitBreaker?: Partial<BreakerOptions>; service?: { fullName: string } }): ActionBreaker | null {
		const opts = { ...(this.broker.options.circuitBreaker as BreakerOptions), ...(action.circuitBreaker ?? {}) } as BreakerOptions;
		return opts.enabled ? new ActionBreaker(this, opts, action.service) : null;
	}

	created(): void {
		this.logger = this.broker.getLogger("circuit-breaker");
		(this.broker as ServiceBroker & { CircuitBreakerStore?: Map<string, EndpointState> }).CircuitBreakerStore = this.store;
		const opts = this.broker.options.circuitBreaker as BreakerOptions | undefined;
		if (!opts?.enabled) return;
		if (!this.windowTimer) {
			this.windowTimer = setInterval(() => this.resetStore(), (opts.windowTime || 60) * 1000);
			this.windowTimer.unref();
		}
		if (!this.broker.isMetricsEnabled()) return;
		const labelNames = ["affectedNodeID", "service", "action"];
		this.broker.metrics.register({ name: METRICS.openedActive, type: "gauge", labelNames, description: "Number of active opened circuit-breakers" });
		this.broker.metrics.register({ name: METRICS.openedTotal, type: "counter", labelNames, description: "Number of opened circuit-breakers" });
		this.broker.metrics.register({ name: METRICS.halfOpenedActive, type: "gauge", labelNames, description: "Number of active half-opened circuit-breakers" });
	}

	stopped(): void {
		if (this.windowTimer) clearInterval(this.windowTimer);
		this.windowTimer = null;
		delete (this.broker as ServiceBroker & { CircuitBreakerStore?: unknown }).CircuitBreakerStore;
	}

	/** The endpoint's state, created on its first call (and again after a window in which it had none). */
	stateOf(ep: ActionEndpoint, service: EndpointState["service"], opts: BreakerOptions): EndpointState {
		let item = this.store.get(ep.name);
		if (!item) {
			item = { ep, service, opts, count: 0, failures: 0, state: STATE.close, cbTimer: null };
			this.store.set(ep.name, item);
		}
		return item;
	}

	private resetStore(): void {
		if (!this.logger) return;
		this.logger.debug("Reset circuit-breaker endpoint states...");
		this.store.forEach((item, key) => {
			if (item.count === 0) {
				this.logger!.debug(`Remove '${key}' endpoint state because it is not used`);
				this.store.delete(key);
				return;
			}
			this.logger!.debug(`Clean '${key}' endpoint state.`);
			item.count = 0;
			item.failures = 0;
		});
	}

	succeeded(item: EndpointState): void {
		item.count++;
		if (item.state === STATE.halfOpenWait) this.close(item);
		else this.checkThreshold(item);
	}

	failed(item: EndpointState): void {
		item.count++;
		item.failures++;
		this.checkThreshold(item);
	}

	/** Half-open: the first call goes through and the endpoint waits for its outcome (Moleculer's anti-stick timer). */
	letOneCallThrough(item: EndpointState): void {
		item.state = STATE.halfOpenWait;
		item.ep.state = false;
		item.cbTimer = setTimeout(() => this.halfOpen(item), item.opts.halfOpenTime);
		item.cbTimer.unref();
	}

	private checkThreshold(item: EndpointState): void {
		if (item.count >= item.opts.minRequestCount && item.failures / item.count >= item.opts.threshold) this.trip(item);
	}

	private labels(item: EndpointState) {
		return { affectedNodeID: item.ep.id, service: item.service?.fullName, action: item.ep.action.name };
	}

	private setGauge(name: string, value: number, item: EndpointState): void {
		if (this.broker.isMetricsEnabled()) this.broker.metrics.set(name, value, this.labels(item));
	}

	private clearTimer(item: EndpointState): void {
		if (item.cbTimer) clearTimeout(item.cbTimer);
		item.cbTimer = null;
	}

	private trip(item: EndpointState): void {
		if (item.state === STATE.open) return;
		item.state = STATE.open;
		item.ep.state = false;
		this.clearTimer(item);
		item.cbTimer = setTimeout(() => this.halfOpen(item), item.opts.halfOpenTime);
		item.cbTimer.unref();
		const { affectedNodeID: nodeID, service, action } = this.labels(item);
		const rate = item.count > 0 ? item.failures / item.count : 0;
		this.logger?.debug(`Circuit breaker has been opened on '${item.ep.name}' endpoint.`, { nodeID, service, action, failures: item.failures, count: item.count, rate });
		this.broker.broadcast("$circuit-breaker.opened", { nodeID, service, action, failures: item.failures, count: item.count, rate });
		this.setGauge(METRICS.openedActive, 1, item);
		if (this.broker.isMetricsEnabled()) this.broker.metrics.increment(METRICS.openedTotal, this.labels(item));
	}

	private halfOpen(item: EndpointState): void {
		item.state = STATE.halfOpen;
		item.ep.state = true;
		const { affectedNodeID: nodeID, service, action } = this.labels(item);
		this.logger?.debug(`Circuit breaker has been half-opened on '${item.ep.name}' endpoint.`, { nodeID, service, action });
		this.broker.broadcast("$circuit-breaker.half-opened", { nodeID, service, action });
		this.setGauge(METRICS.openedActive, 0, item);
		this.setGauge(METRICS.halfOpenedActive, 1, item);
		this.clearTimer(item);
	}

	private close(item: EndpointState): void {
		item.state = STATE.close;
		item.ep.state = true;
		item.failures = 0;
		item.count = 0;
		const { affectedNodeID: nodeID, service, action } = this.labels(item);
		this.logger?.debug(`Circuit breaker has been closed on '${item.ep.name}' endpoint.`, { nodeID, service, action });
		this.broker.broadcast("$circuit-breaker.closed", { nodeID, service, action });
		this.setGauge(METRICS.openedActive, 0, item);
		this.setGauge(METRICS.halfOpenedActive, 0, item);
		this.clearTimer(item);
	}
}

/**
 * One action's breaker, as a gate uses it: `entered` when the call starts (it returns the endpoint's state, or null
 * for a call with no endpoint), then `succeeded` or `failed` with what `entered` returned.
 */
export class ActionBreaker {
	constructor(
		private readonly breakers: CircuitBreakers,
		private readonly opts: BreakerOptions,
		private readonly service: { fullName: string } | undefined,
	) {}

	entered(ctx: Context): EndpointState | null {
		const ep = ctx.endpoint as unknown as ActionEndpoint | null;
		if (!ep) return null;
		const item = this.breakers.stateOf(ep, this.service, this.opts);
		if (item.state === STATE.halfOpen) this.breakers.letOneCallThrough(item);
		return item;
	}

	/** The state is looked up again: the window may have dropped it meanwhile, as Moleculer's wrapper allows for. */
	succeeded(entered: EndpointState | null): void {
		if (entered) this.breakers.succeeded(this.breakers.stateOf(entered.ep, this.service, this.opts));
	}

	failed(entered: EndpointState | null, ctx: Context, err: Error & { nodeID?: string }): void {
		if (!entered || !this.opts.check?.(err)) return;
		// Not counted against this endpoint when the error came from a third node (this one only relayed it).
		if (!err.nodeID || err.nodeID == ctx.nodeID) this.breakers.failed(this.breakers.stateOf(entered.ep, this.service, this.opts));
	}
}

const breakersByBroker = new WeakMap<ServiceBroker, CircuitBreakers>();

/** The broker's breakers (one set per broker, whichever gate or hook asks first). */
export function circuitBreakersOf(broker: ServiceBroker): CircuitBreakers {
	let breakers = breakersByBroker.get(broker);
	if (!breakers) breakersByBroker.set(broker, (breakers = new CircuitBreakers(broker)));
	return breakers;
}
