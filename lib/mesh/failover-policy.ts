/**
 * Failover policy: how a caller chooses a node, notices a dead one, and routes around it.
 * docs/FAILOVER.md explains each number here and the measurements behind it.
 *
 * - FailoverStrategy: round-robin that skips *suspect* nodes (a heartbeat overdue, a liveness probe
 *   unanswered, or a heartbeat sent by the node's liveness worker for its stalled main loop:
 *   lib/mesh/liveness-probe.ts) and, on a retry, the node that just failed, long before
 *   Moleculer's heartbeat timeout removes them.
 * - FailureDetectorMiddleware: checks remote heartbeats every 250 ms instead of once per
 *   heartbeatTimeout, so a dead node leaves the registry at most ~250 ms after its timeout.
 * - actionPolicy(): what an action declares: whether it is idempotent (then callers retry it on
 *   another node) and its timeout class.
 * - FailoverEventsMiddleware: logs and counts nodes leaving/joining and circuit breaker changes.
 */
import type { Context, Middleware, ServiceBroker } from "moleculer";
import { Strategies } from "moleculer";
import { isDatabaseFault } from "../data/db-faults";
import { stalledNodesOf, suspectNodesOf } from "./liveness-probe";

/** Per-attempt timeouts. A caller waits on a dead node at most this long before retrying elsewhere. */
export const TIMEOUT_CLASSES = {
	/** reads and lookups answered from memory or one indexed query; 750 ms + a retry stays under 1 s */
	fast: 750,
	/** writes and multi-step reads */
	standard: 5_000,
	/** model inference and other work measured in seconds */
	slow: 60_000,
} as const;
export type TimeoutClass = keyof typeof TIMEOUT_CLASSES;

export interface ActionPolicy {
	/** Safe to run twice: callers retry it on another node after a timeout or a lost node. */
	idempotent: boolean;
	timeout: TimeoutClass;
	/** attempts after the first (idempotent actions only) */
	retries?: number;
}

export interface PolicyFields {
	idempotent: boolean;
	timeout: number;
	retryPolicy: { enabled: boolean; retries?: number };
}

/**
 * The fields an action spreads into its schema. Moleculer gossips unknown action properties with the
 * service catalogue, so the *caller's* timeout and retry middlewares read what the *callee* declared.
 */
export function actionPolicy(policy: ActionPolicy): PolicyFields {
	return {
		idempotent: policy.idempotent,
		timeout: TIMEOUT_CLASSES[policy.timeout],
		retryPolicy: policy.idempotent ? { enabled: true, retries: policy.retries ?? 2 } : { enabled: false },
	};
}

/** Broker-wide retry settings; enabled per action by actionPolicy() (writes are never retried blindly). */
export const RETRY_POLICY = {
	enabled: false,
	retries: 2,
	delay: 20,
	maxDelay: 400,
	factor: 4,
	// Not database faults: the database is the same from every node, and the node that met the fault
	// already retried the read as long as its timeout class allows (lib/data/db-guard.ts).
	check: (err: Error & { retryable?: boolean }) => !!err?.retryable && !isDatabaseFault(err),
};

export interface DetectorSettings {
	/** seconds between heartbeats (Moleculer adds ±0.5 s jitter per process) */
	heartbeatInterval: number;
	/** seconds without a heartbeat before a node is removed */
	heartbeatTimeout: number;
}

/** A node is suspect once its heartbeat is this overdue: still in the registry, but not chosen. */
export function suspectAfterSeconds(s: DetectorSettings): number {
	return Math.min(s.heartbeatInterval + 0.75, s.heartbeatTimeout * 0.7);
}

type Endpoint = Parameters<InstanceType<typeof Strategies.RoundRobin>["select"]>[0][number];
type Logger = ReturnType<ServiceBroker["getLogger"]>;

type RetryContext = Context & { _retryAttempts?: number; locals: Record<string, unknown> };

const AVOID = "failover:avoidNodes";

/** Every node this call has failed on so far: the earlier attempts' and the one that just failed. */
export function nodesThisCallFailedOn(ctx: Context): Set<string> {
	const failed = new Set((ctx as RetryContext).locals?.[AVOID] as Set<string> | undefined);
	// On a retry Moleculer copies the context, keeping nodeID = the node the failed attempt went to.
	if (ctx.nodeID) failed.add(ctx.nodeID);
	return failed;
}

/** Nodes a retried call must not go back to (kept in its locals, which every retry's copy carries on). */
function nodesToAvoid(ctx: RetryContext | undefined): Set<string> | null {
	if (!ctx || !ctx._retryAttempts) return null;
	const avoid = nodesThisCallFailedOn(ctx);
	ctx.locals[AVOID] = avoid;
	return avoid;
}

export class FailoverStrategy extends Strategies.RoundRobin {
	private readonly suspectAfter: number;

	constructor(...args: ConstructorParameters<typeof Strategies.RoundRobin>) {
		super(...args);
		const broker = args[1];
		this.suspectAfter = suspectAfterSeconds(broker.options as unknown as DetectorSettings);
	}

	select(list: Endpoint[], ctx?: Context): Endpoint {
		const avoid = nodesToAvoid(ctx as RetryContext | undefined);
		const unresponsive = suspectNodesOf(this.broker);
		const stalled = stalledNodesOf(this.broker);
		const now = process.uptime();
		// A retry never goes back to a node this call already failed on while another node offers the action.
		const untried = avoid ? list.filter(ep => !avoid.has(ep.id)) : list;
		const healthy = untried.filter(ep => {
			if (unresponsive?.has(ep.id) || stalled?.has(ep.id)) return false;
			if (ep.local) return true;
			const last = (ep.node as { lastHeartbeatTime?: number }).lastHeartbeatTime;
			return last == null || now - last <= this.suspectAfter;
		});
		// Every candidate suspect: a late heartbeat or a slow probe answer is a hint, not proof; keep serving.
		return super.select(healthy.length ? healthy : untried.length ? untried : list);
	}
}

/** Moleculer's default heartbeat interval: how fresh the CPU figure in a heartbeat is without this mesh's faster beat. */
export const CPU_SAMPLE_EVERY_MS = 10_000;

/**
 * The machine CPU figure each heartbeat carries (mesh.nodes shows it) is sampled at most every `everyMs`; the
 * beats in between carry the last sample. Moleculer samples before every beat — os.cpus() three times, 100 ms
 * apart, each a read of /proc that took 0.1–1 ms here — so the 1 s heartbeat failure detection needs made that
 * 10× Moleculer's default: 2–3 ms of CPU per second per node, busy or idle (docs/BENCHMARKS.md, "Where a remote
 * call's CPU goes"). A failed sample is not kept: the next beat samples again.
 */
export function sampleCpuAtMostEvery(broker: ServiceBroker, everyMs = CPU_SAMPLE_EVERY_MS): void {
	const sample = broker.getCpuUsage.bind(broker);
	let last: { at: number; usage: ReturnType<ServiceBroker["getCpuUsage"]> } | null = null;
	// Moleculer passes this function around unbound (localNode.updateLocalInfo(broker.getCpuUsage)).
	broker.getCpuUsage = () => {
		const now = performance.now();
		if (!last || now - last.at >= everyMs) {
			const usage = sample();
			const taken = { at: now, usage };
			usage.catch(() => {
				if (last === taken) last = null;
			});
			last = taken;
		}
		return last.usage;
	};
}

/**
 * Checks remote heartbeats often; Moleculer alone checks once per heartbeatTimeout (up to 2× late). The
 * heartbeats themselves are frequent (HEARTBEAT_INTERVAL), so their CPU figure is sampled less often.
 */
export function FailureDetectorMiddleware(checkEveryMs = 250): Middleware {
	let timer: NodeJS.Timeout | null = null;
	return {
		name: "FailureDetector",
		created(broker: ServiceBroker) {
			sampleCpuAtMostEvery(broker);
		},
		started(broker: ServiceBroker) {
			const discoverer = (broker.registry as unknown as { discoverer: { checkRemoteNodes(): void } }).discoverer;
			if (!broker.transit) return;
			timer = setInterval(() => discoverer.checkRemoteNodes(), checkEveryMs);
			timer.unref();
		},
		stopped() {
			if (timer) clearInterval(timer);
			timer = null;
		},
	} as unknown as Middleware;
}

interface NodeEventPayload {
	node: { id: string; metadata?: { role?: string } };
	unexpected?: boolean;
	reconnected?: boolean;
}

interface BreakerEventPayload {
	nodeID: string;
	action: string;
	failures?: number;
	count?: number;
	rate?: number;
}

export const FAILOVER_METRICS = {
	nodeLeft: "mesh.node.left.total",
	nodeJoined: "mesh.node.joined.total",
	breakerTransitions: "mesh.circuit-breaker.transitions.total",
	/** breakers of this node (as a caller) now open or half-open: a state for alerts, not only transitions */
	breakersOpen: "mesh.circuit-breaker.open",
};

function registerFailoverMetrics(broker: ServiceBroker): void {
	if (!broker.isMetricsEnabled()) return;
	broker.metrics.register({
		name: FAILOVER_METRICS.nodeLeft,
		type: "counter",
		labelNames: ["nodeID", "reason"],
		description: "Nodes that left the mesh, by reason (graceful, heartbeat-timeout)",
	});
	broker.metrics.register({
		name: FAILOVER_METRICS.nodeJoined,
		type: "counter",
		labelNames: ["nodeID", "reconnected"],
		description: "Nodes that joined or rejoined the mesh",
	});
	broker.metrics.register({
		name: FAILOVER_METRICS.breakerTransitions,
		type: "counter",
		labelNames: ["affectedNodeID", "action", "state"],
		description: "Circuit breaker state changes seen by this node as a caller",
	});
	broker.metrics.register({ name: FAILOVER_METRICS.breakersOpen, type: "gauge", description: "Circuit breakers of this node (as a caller) open or half-open now" });
	broker.metrics.set(FAILOVER_METRICS.breakersOpen, 0);
}

/** Why a node left: Moleculer flags removals it did not get a DISCONNECT packet for as unexpected. */
export function leaveReason(unexpected: boolean | undefined): "heartbeat-timeout" | "graceful" {
	return unexpected ? "heartbeat-timeout" : "graceful";
}

function onNodeEvents(broker: ServiceBroker, log: Logger): void {
	broker.localBus.on("$node.disconnected", (payload: NodeEventPayload) => {
		const reason = leaveReason(payload.unexpected);
		const role = payload.node.metadata?.role ?? "?";
		const message = `Node ${payload.node.id} (${role}) left the mesh: ${reason}; its endpoints are out of rotation`;
		if (payload.unexpected) log.warn(message, { event: "node.left", node_id: payload.node.id, reason });
		else log.info(message, { event: "node.left", node_id: payload.node.id, reason });
		broker.metrics?.increment(FAILOVER_METRICS.nodeLeft, { nodeID: payload.node.id, reason });
	});
	broker.localBus.on("$node.connected", (payload: NodeEventPayload) => {
		const reconnected = !!payload.reconnected;
		log.info(`Node ${payload.node.id} (${payload.node.metadata?.role ?? "?"}) ${reconnected ? "rejoined" : "joined"} the mesh`, {
			event: "node.joined",
			node_id: payload.node.id,
			reconnected,
		});
		broker.metrics?.increment(FAILOVER_METRICS.nodeJoined, { nodeID: payload.node.id, reconnected: String(reconnected) });
	});
}

function onBreakerEvents(broker: ServiceBroker, log: Logger): void {
	const notClosed = new Set<string>();
	for (const state of ["opened", "half-opened", "closed"] as const) {
		// Moleculer broadcasts these mesh-wide, but only the caller whose breaker changed sees them on
		// its localBus: the counter is "breakers of this node as a caller".
		broker.localBus.on(`$circuit-breaker.${state}`, (payload: BreakerEventPayload) => {
			const level = state === "opened" ? "warn" : "info";
			log[level](`Circuit breaker ${state} for ${payload.action} on ${payload.nodeID}`, {
				event: "circuit-breaker",
				state,
				affected_node_id: payload.nodeID,
				action: payload.action,
				failures: payload.failures,
			});
			broker.metrics?.increment(FAILOVER_METRICS.breakerTransitions, { affectedNodeID: payload.nodeID, action: payload.action, state });
			const key = `${payload.nodeID}:${payload.action}`;
			if (state === "closed") notClosed.delete(key);
			else notClosed.add(key);
			broker.metrics?.set(FAILOVER_METRICS.breakersOpen, notClosed.size);
		});
	}
}

export function FailoverEventsMiddleware(): Middleware {
	return {
		name: "FailoverEvents",
		created(broker: ServiceBroker) {
			registerFailoverMetrics(broker);
			const log = broker.getLogger("failover");
			onNodeEvents(broker, log);
			onBreakerEvents(broker, log);
		},
	} as Middleware;
}
