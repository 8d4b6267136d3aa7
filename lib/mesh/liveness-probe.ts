/**
 * Liveness probe: a caller learns within tens of milliseconds that the node its call is waiting on
 * has died or hung, instead of waiting out a timeout class (750 ms for `fast` reads) or the heartbeat
 * timeout (2.5 s). docs/FAILOVER.md has the timelines and the measurements.
 *
 * How, over NATS:
 * - every node subscribes to `<prefix>.ALIVE.<nodeID>` on its own NATS connection and answers at once;
 *   it advertises this in its node metadata (`livenessProbe`), so nodes of an older version, or on
 *   another transporter, are never probed;
 * - a caller that has a call pending on a node for longer than `probeAfterMs` sends that node one probe
 *   (at most one in flight per node, and none within `reprobeMs` of the last answer);
 * - "no responders" means the NATS server holds no subscription for the node: its process is gone (the
 *   server drops a dead process's subscriptions the moment its TCP connection closes), or its NATS
 *   connection is being re-established after a NATS server died. Either way no call pending on it will
 *   be answered through this connection: every one is rejected with a retryable error (idempotent calls
 *   retry elsewhere, writes answer "retry" — at most once with an Idempotency-Key, as before) and the
 *   node becomes suspect. It is *not* removed from the registry: a node that was only reconnecting
 *   answers the next probe and is back in rotation at once; a dead one is removed by the heartbeat
 *   timeout as before;
 * - no answer within `probeTimeoutMs` means the process is alive but not running its event loop (SIGSTOP,
 *   a stuck loop, a frozen VM): the node becomes suspect and idempotent calls pending on it are rejected
 *   so they retry elsewhere at once. Writes keep waiting: the node may still apply them;
 * - a rejected call whose response is already streaming (its promise resolved, the request still pending
 *   until the last chunk) has its stream destroyed with an error, as Moleculer does for a node that left:
 *   once the probe has taken the call off the pending list, Moleculer's own clean-up never finds it;
 * - FailoverStrategy sends a suspect node no new call while another node can take it. A suspect node is
 *   probed every `suspectReprobeMs` and cleared by its first answer.
 *
 * Cost at steady state: nothing on an idle node (scans run only while calls are pending: arm()); while
 * calls are pending, a scan of them every `scanEveryMs`, and while one is overdue, at most one ~100-byte
 * request per node per `reprobeMs`.
 */
import type { Context, Middleware, ServiceBroker } from "moleculer";
import { Errors } from "moleculer";
import type { NatsConnection, Subscription } from "nats";
import {
	abandonPendingRequests,
	natsConnectionOf,
	pendingRequestsOf,
	remoteNodeMetadata,
	subjectPrefixOf,
	usesNatsTransporter,
	type PendingRequest,
} from "./moleculer-internals";
import { natsConnectionEpoch } from "./nats-reconnect-guard";
import { CallHedger, HEDGE_DEFAULTS, registerHedgeMetrics, type HedgeOptions } from "./hedged-calls";

export interface LivenessProbeOptions {
	/** how often pending calls are scanned */
	scanEveryMs: number;
	/** a call pending this long makes its node worth a probe */
	probeAfterMs: number;
	/** a probe unanswered this long makes the node suspect */
	probeTimeoutMs: number;
	/** the probe is asked again this often while it has no decisive answer (see probe()) */
	recheckAfterMs: number;
	/** no second probe of a node within this long of its last answer */
	reprobeMs: number;
	/** how often a suspect node is probed to clear it */
	suspectReprobeMs: number;
}

export const LIVENESS_DEFAULTS: LivenessProbeOptions = {
	scanEveryMs: 10,
	probeAfterMs: 20,
	probeTimeoutMs: 100,
	recheckAfterMs: 10,
	reprobeMs: 25,
	suspectReprobeMs: 50,
};

export const LIVENESS_METADATA_KEY = "livenessProbe";

export const LIVENESS_METRICS = {
	probes: "mesh.liveness.probes.total",
};

type ProbeOutcome = "alive" | "gone" | "unresponsive" | "unknown";

const probesByBroker = new WeakMap<ServiceBroker, LivenessProbe>();

/** Nodes a broker's probe found unresponsive; FailoverStrategy skips them while others are available. */
export function suspectNodesOf(broker: ServiceBroker): ReadonlySet<string> | undefined {
	return probesByBroker.get(broker)?.suspects;
}

/** Hedges this broker sent, by outcome (null when hedging is off or the probe is not running). */
export function hedgeStatsOf(broker: ServiceBroker): Readonly<Record<"won" | "lost" | "failed", number>> | null {
	return probesByBroker.get(broker)?.hedger?.stats ?? null;
}

/** Whether this broker's probe is scanning its pending calls now (it does only while there are any). */
export function livenessScanArmed(broker: ServiceBroker): boolean {
	return probesByBroker.get(broker)?.armed ?? false;
}

function livenessSubject(broker: ServiceBroker, nodeID: string): string {
	return `${subjectPrefixOf(broker)}.ALIVE.${nodeID}`;
}

/** nats.js rejects a request nobody is subscribed to with code "503" (NATS ≥ 2.2 servers). */
function outcomeOf(err: unknown): ProbeOutcome {
	const code = (err as { code?: string } | null)?.code;
	if (code === "503") return "gone";
	if (code === "TIMEOUT") return "unresponsive";
	return "unknown";
}

class LivenessProbe {
	private timer: NodeJS.Timeout | null = null;
	private subscription: Subscription | null = null;
	private readonly inFlight = new Set<string>();
	private readonly lastAnswer = new Map<string, number>();
	readonly suspects = new Set<string>();
	private readonly log: ReturnType<ServiceBroker["getLogger"]>;
	/** null when hedging is off (HEDGE_BUDGET=0) */
	readonly hedger: CallHedger | null;

	constructor(
		private readonly broker: ServiceBroker,
		private readonly nc: NatsConnection,
		private readonly opts: LivenessProbeOptions,
		hedge: HedgeOptions,
	) {
		this.log = broker.getLogger("liveness");
		probesByBroker.set(broker, this);
		const hedger = new CallHedger(broker, hedge, nodeID => this.suspects.has(nodeID));
		this.hedger = hedger.enabled ? hedger : null;
	}

	start(): void {
		this.subscription = this.nc.subscribe(livenessSubject(this.broker, this.broker.nodeID), {
			callback: (_err, msg) => msg.respond(),
		});
		this.broker.localBus.on("$node.disconnected", ({ node }: { node: { id: string } }) => this.forget(node.id));
	}

	/**
	 * Scans run only while there is something to watch: a call leaving this node arms them, and a scan that
	 * finds no pending call, no suspect and no probe in flight disarms them. An idle node used to wake
	 * every 10 ms for nothing: 31 ms of CPU per second against bare Moleculer's 12 (bench:call-cost).
	 */
	arm(): void {
		// Not before start() nor after stop(): the subscription is what a started probe has.
		if (this.timer || !this.subscription) return;
		this.timer = setInterval(() => this.scan(), this.opts.scanEveryMs);
		this.timer.unref();
	}

	private disarm(): void {
		if (this.timer) clearInterval(this.timer);
		this.timer = null;
	}

	/** Whether scans are running (for tests). */
	get armed(): boolean {
		return this.timer !== null;
	}

	stop(): void {
		this.disarm();
		this.subscription?.unsubscribe();
		this.subscription = null;
	}

	private forget(nodeID: string): void {
		this.suspects.delete(nodeID);
		this.lastAnswer.delete(nodeID);
	}

	/** Nodes with a call pending longer than probeAfterMs, and suspect nodes due for a re-probe; hedges. */
	private scan(): void {
		const pending = pendingRequestsOf(this.broker);
		if (!pending || (!pending.size && !this.suspects.size && !this.inFlight.size)) return this.disarm();
		const now = performance.now();
		const due = new Set<string>();
		for (const [id, req] of pending) {
			if (req.probeSeenAt === undefined) {
				req.probeSeenAt = now;
				continue;
			}
			const ageMs = now - req.probeSeenAt;
			if (ageMs >= this.opts.probeAfterMs) due.add(req.nodeID);
			this.hedger?.consider(id, req, ageMs, now);
		}
		for (const nodeID of this.suspects) due.add(nodeID);
		for (const nodeID of due) this.maybeProbe(nodeID, now);
	}

	private maybeProbe(nodeID: string, now: number): void {
		if (this.inFlight.has(nodeID)) return;
		const quiet = this.suspects.has(nodeID) ? this.opts.suspectReprobeMs : this.opts.reprobeMs;
		if (now - (this.lastAnswer.get(nodeID) ?? -Infinity) < quiet) return;
		const metadata = remoteNodeMetadata(this.broker, nodeID);
		if (!metadata?.[LIVENESS_METADATA_KEY]) return;
		// While this node's own NATS connection is down, or if it dropped during the probe, an unanswered
		// probe says nothing about the other node (lib/mesh/nats-reconnect-guard.ts handles those calls).
		const epoch = natsConnectionEpoch(this.broker);
		if (epoch === null) return;
		this.inFlight.add(nodeID);
		this.probe(nodeID)
			.then(outcome => {
				if (natsConnectionEpoch(this.broker) === epoch) this.settle(nodeID, outcome);
			})
			.finally(() => this.inFlight.delete(nodeID));
	}

	/**
	 * A probe, asked again every `recheckAfterMs` until a decisive answer (alive or gone) or
	 * `probeTimeoutMs`. A probe that reached the server while it still held a just-killed process's
	 * subscription is never answered, and the server holds it until the kernel closes the dead process's
	 * socket — after the process's memory is released, tens of milliseconds for a large heap — so one
	 * second ask is not enough: the first ask sent after the socket closed gets "no responders" at once.
	 * Without a decisive answer the first probe's outcome stands (unresponsive: a hung node).
	 */
	private async probe(nodeID: string): Promise<ProbeOutcome> {
		const started = performance.now();
		const ask = (timeout: number): Promise<ProbeOutcome> =>
			this.nc.request(livenessSubject(this.broker, nodeID), undefined, { timeout: Math.max(1, Math.round(timeout)) }).then(
				() => "alive" as const,
				err => outcomeOf(err),
			);
		const first = ask(this.opts.probeTimeoutMs);
		// Once an answer is decisive or the first probe has its outcome, no more asks go out.
		let over = false;
		const decisive = new Promise<ProbeOutcome>(resolve => {
			const consider = (o: ProbeOutcome) => {
				if (!over && (o === "alive" || o === "gone")) {
					over = true;
					resolve(o);
				}
			};
			void first.then(consider);
			const recheck = () => {
				const left = this.opts.probeTimeoutMs - (performance.now() - started);
				if (over || left <= this.opts.recheckAfterMs / 2) return;
				void ask(left).then(consider);
				setTimeout(recheck, this.opts.recheckAfterMs).unref();
			};
			setTimeout(recheck, this.opts.recheckAfterMs).unref();
		});
		// No decisive answer by the first probe's outcome (its timeout, or an error): that outcome stands.
		return Promise.race([decisive, first.finally(() => (over = true))]);
	}

	private settle(nodeID: string, outcome: ProbeOutcome): void {
		this.lastAnswer.set(nodeID, performance.now());
		this.broker.metrics?.increment(LIVENESS_METRICS.probes, { outcome });
		if (outcome === "alive") {
			if (this.suspects.delete(nodeID)) this.log.info(`Node ${nodeID} answers again; no longer suspect`, { event: "node.unsuspected", node_id: nodeID });
		} else if (outcome === "gone") {
			this.markSuspect(nodeID, "no NATS subscription (process gone, or reconnecting to NATS)", "node.lost");
			this.rejectCallsOn(nodeID, () => true, true);
		} else if (outcome === "unresponsive") {
			this.markSuspect(nodeID, `no answer to a liveness probe within ${this.opts.probeTimeoutMs} ms`, "node.suspect");
			this.rejectCallsOn(nodeID, isIdempotent, false);
		}
	}

	private markSuspect(nodeID: string, why: string, event: string): void {
		if (this.suspects.has(nodeID)) return;
		this.suspects.add(nodeID);
		this.log.warn(`Node ${nodeID} is suspect: ${why}; out of rotation until it answers`, { event, node_id: nodeID });
	}

	/** `lost`: the node is known gone (no subscription), so the calls are lost and a retry need not wait (call-pipeline retryDelayMs). */
	private rejectCallsOn(nodeID: string, which: (req: PendingRequest) => boolean, lost: boolean): void {
		// A call already streaming its response is ended too: its stream errors instead of waiting forever.
		abandonPendingRequests(
			this.broker,
			req => req.nodeID === nodeID && which(req),
			req => new Errors.RequestRejectedError({ action: req.action?.name, nodeID, lost }),
		);
	}
}

/** Idempotent calls waiting on an unresponsive node are safe to run elsewhere now; writes wait. */
function isIdempotent(req: PendingRequest): boolean {
	return req.action?.idempotent === true;
}

function registerLivenessMetrics(broker: ServiceBroker): void {
	if (!broker.isMetricsEnabled()) return;
	broker.metrics.register({
		name: LIVENESS_METRICS.probes,
		type: "counter",
		labelNames: ["outcome"],
		description: "Liveness probes sent to nodes with overdue calls, by outcome (alive, gone, unresponsive, unknown)",
	});
}

/** `hedge`: hedged idempotent calls, driven by the same scan (lib/mesh/hedged-calls.ts); `{ budget: 0 }` turns them off. */
export function LivenessProbeMiddleware(options: Partial<LivenessProbeOptions> = {}, hedge: Partial<HedgeOptions> = {}): Middleware {
	const opts = { ...LIVENESS_DEFAULTS, ...options };
	const hedgeOpts = { ...HEDGE_DEFAULTS, ...hedge };
	let probe: LivenessProbe | null = null;
	return {
		name: "LivenessProbe",
		created(broker: ServiceBroker) {
			registerLivenessMetrics(broker);
			registerHedgeMetrics(broker);
			// Gossiped with INFO: callers probe only nodes that answer probes.
			if (usesNatsTransporter(broker)) (broker.metadata as Record<string, unknown>)[LIVENESS_METADATA_KEY] = true;
		},
		async started(broker: ServiceBroker) {
			const nc = natsConnectionOf(broker);
			if (!nc) return;
			probe = new LivenessProbe(broker, nc, opts, hedgeOpts);
			probe.start();
		},
		remoteAction(next: (ctx: Context) => Promise<unknown>) {
			return function armLivenessScan(ctx: Context) {
				if (!probe) return next(ctx);
				probe.arm();
				return probe.hedger ? probe.hedger.watch(ctx, next) : next(ctx);
			};
		},
		async stopped() {
			probe?.stop();
			probe = null;
		},
	} as Middleware;
}
