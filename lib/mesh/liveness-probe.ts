/**
 * Liveness probe: a caller learns within tens of milliseconds that the node its call is waiting on
 * has died or hung, instead of waiting out a timeout class (750 ms for `fast` reads) or the heartbeat
 * timeout (2.5 s). docs/FAILOVER.md has the timelines and the measurements.
 *
 * How, over NATS:
 * - every node subscribes to `<prefix>.ALIVE.<nodeID>` on its own NATS connection and answers at once;
 *   it advertises this in its node metadata (`livenessProbe`), so nodes of an older version, or on
 *   another transporter, are never probed;
 * - a node advertising `livenessProbe: 2` also answers `<prefix>.ALIVE-LOOP.<nodeID>` from a worker thread
 *   with its own NATS connection (lib/mesh/liveness-responder.ts), with how long its main event loop has been
 *   silent; callers of this version probe that subject instead. A loop silent under `loopSilentBoundMs` is a
 *   busy node, not a hung one: it stays in rotation and its calls keep waiting (an overloaded node's loop is
 *   silent for a whole chunk of calls, ~400 ms, which the 100 ms probe timeout called a hang). Silent longer,
 *   it is treated as unresponsive (below). Callers of the older version see a truthy `livenessProbe` and
 *   probe `ALIVE`, which the main loop still answers: each side keeps the semantics it knows;
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
 *   probed every `suspectReprobeMs` and cleared by its first answer — on ALIVE, from its main loop, whatever its
 *   version: that answer comes only once the node has worked through what it had queued before it.
 *
 * Cost at steady state: nothing on an idle node (scans run only while calls are pending: arm()); while
 * calls are pending, a scan of them every `scanEveryMs`, and while one is overdue, at most one ~100-byte
 * request per node per `reprobeMs`. The probe worker: one thread and one NATS connection per node, and a stamp
 * timer on the main loop only while probes come in (lib/mesh/liveness-responder.ts).
 */
import type { Context, Middleware, ServiceBroker } from "moleculer";
import { Errors } from "moleculer";
import type { Msg, NatsConnection, Subscription } from "nats";
import {
	abandonPendingRequests,
	natsConnectionOf,
	natsTransporterOptionsOf,
	pendingRequestsOf,
	remoteNodeMetadata,
	subjectPrefixOf,
	usesNatsTransporter,
	type PendingRequest,
} from "./moleculer-internals";
import { natsConnectionEpoch } from "./nats-reconnect-guard";
import { CallHedger, HEDGE_DEFAULTS, registerHedgeMetrics, type HedgeOptions } from "./hedged-calls";
import { LivenessResponder } from "./liveness-responder";
import type { ResponderWorkerData } from "./liveness-responder.worker";

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
	/**
	 * a node whose worker answers that its main loop has been silent this long is hung (a stuck loop), not busy.
	 * Under the heartbeat suspicion (1.75 s overdue) so the probe still settles pending reads first, and 2.5×
	 * the longest loop silence measured on a saturated node (~400 ms)
	 */
	loopSilentBoundMs: number;
	/**
	 * the worker sends the node's heartbeats while its main loop is late with them, up to this long (0: never;
	 * MESH_STUCK_LEAVE_MS; lib/mesh/liveness-responder.ts)
	 */
	stuckLeaveMs: number;
}

export const LIVENESS_DEFAULTS: LivenessProbeOptions = {
	scanEveryMs: 10,
	probeAfterMs: 20,
	probeTimeoutMs: 100,
	recheckAfterMs: 10,
	reprobeMs: 25,
	suspectReprobeMs: 50,
	loopSilentBoundMs: 1_000,
	stuckLeaveMs: 10_000,
};

export const LIVENESS_METADATA_KEY = "livenessProbe";
/** `livenessProbe` of a node whose worker thread answers ALIVE-LOOP (`true`: only the main loop answers ALIVE) */
export const LOOP_PROBE_VERSION = 2;

export const LIVENESS_METRICS = {
	probes: "mesh.liveness.probes.total",
	coveredBeats: "mesh.heartbeat.covered.total",
};

/** Moleculer's jitter on each heartbeat: ±500 ms around the interval (its discoverer's beat timer). */
const HEARTBEAT_JITTER_MS = 500;

/** Marks the heartbeats a liveness worker sends for its node (heartbeat cover): the node's main loop is stalled. */
const STALLED_FIELD = "stalled";

/**
 * What the liveness worker needs to send this node's heartbeat for it: the packet as Moleculer would send it (its
 * serializer, protocol version and sender; no CPU figure, so receivers keep the last one; `stalled`, so they skip
 * the node: stalledNodesOf), its subject, and when.
 */
function heartbeatCoverOf(broker: ServiceBroker, leaveAfterMs: number): ResponderWorkerData["heartbeat"] {
	const everyMs = (broker.options.heartbeatInterval ?? 10) * 1_000;
	const serializer = (broker as unknown as { serializer: { serialize(payload: object, type: string): Uint8Array } }).serializer;
	return {
		subject: `${subjectPrefixOf(broker)}.HEARTBEAT`,
		packet: serializer.serialize({ ver: broker.PROTOCOL_VERSION, sender: broker.nodeID, [STALLED_FIELD]: true }, "HEARTBEAT"),
		coverAfterMs: everyMs + HEARTBEAT_JITTER_MS + 100,
		everyMs,
		leaveAfterMs,
	};
}

/** Calls `beforeEach` as Moleculer's transit sends each of this node's heartbeats. */
function onHeartbeatSent(broker: ServiceBroker, beforeEach: () => void): void {
	const transit = broker.transit as unknown as { sendHeartbeat(node: unknown): Promise<unknown> };
	const send = transit.sendHeartbeat.bind(transit);
	transit.sendHeartbeat = node => {
		beforeEach();
		return send(node);
	};
}

/**
 * alive; busy: alive, its main loop silent longer than the probe timeout but under the bound; stuck: its worker
 * answers but its main loop has been silent past the bound; gone: no responders; unresponsive: no answer at all.
 */
type ProbeOutcome = "alive" | "busy" | "stuck" | "gone" | "unresponsive" | "unknown";

const probesByBroker = new WeakMap<ServiceBroker, LivenessProbe>();

/** Nodes a broker's probe found unresponsive; FailoverStrategy skips them while others are available. */
export function suspectNodesOf(broker: ServiceBroker): ReadonlySet<string> | undefined {
	return probesByBroker.get(broker)?.suspects;
}

const stalledByBroker = new WeakMap<ServiceBroker, Set<string>>();

/**
 * Nodes whose last heartbeat came from their liveness worker, not their main loop: alive, in the registry, but
 * stalled. FailoverStrategy and the hedger skip them while others are available, as they skip suspects.
 */
export function stalledNodesOf(broker: ServiceBroker): ReadonlySet<string> | undefined {
	return stalledByBroker.get(broker);
}

/** Keeps stalledNodesOf(broker) from the heartbeats this broker receives. */
function watchStalledBeats(broker: ServiceBroker): void {
	type Discoverer = { heartbeatReceived(nodeID: string, payload: Record<string, unknown>): unknown };
	const discoverer = (broker.registry as unknown as { discoverer?: Discoverer }).discoverer;
	if (!discoverer) return;
	const stalled = new Set<string>();
	stalledByBroker.set(broker, stalled);
	const received = discoverer.heartbeatReceived.bind(discoverer);
	discoverer.heartbeatReceived = (nodeID, payload) => {
		if (payload[STALLED_FIELD] === true) stalled.add(nodeID);
		else stalled.delete(nodeID);
		return received(nodeID, payload);
	};
	broker.localBus.on("$node.disconnected", ({ node }: { node: { id: string } }) => stalled.delete(node.id));
}

/** Hedges this broker sent, by outcome (null when hedging is off or the probe is not running). */
export function hedgeStatsOf(broker: ServiceBroker): Readonly<Record<"won" | "lost" | "failed", number>> | null {
	return probesByBroker.get(broker)?.hedger?.stats ?? null;
}

/** Whether this broker's probe is scanning its pending calls now (it does only while there are any). */
export function livenessScanArmed(broker: ServiceBroker): boolean {
	return probesByBroker.get(broker)?.armed ?? false;
}

/** Probes this broker sent, by outcome, since start (for tests; the metric has them too). */
export function probeOutcomesOf(broker: ServiceBroker): Readonly<Partial<Record<ProbeOutcome, number>>> | null {
	return probesByBroker.get(broker)?.outcomes ?? null;
}

function livenessSubject(broker: ServiceBroker, nodeID: string): string {
	return `${subjectPrefixOf(broker)}.ALIVE.${nodeID}`;
}

function loopProbeSubject(broker: ServiceBroker, nodeID: string): string {
	return `${subjectPrefixOf(broker)}.ALIVE-LOOP.${nodeID}`;
}

const decoder = new TextDecoder();
const encodedZero = new TextEncoder().encode("0");

/** An ALIVE-LOOP answer carries the main loop's silence in ms; an ALIVE answer is empty. */
function answerOutcome(msg: Msg, opts: LivenessProbeOptions): ProbeOutcome {
	if (!msg.data.length) return "alive";
	const silentMs = Number(decoder.decode(msg.data));
	if (!Number.isFinite(silentMs)) return "alive";
	if (silentMs >= opts.loopSilentBoundMs) return "stuck";
	return silentMs > opts.probeTimeoutMs ? "busy" : "alive";
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
	private loopSubscription: Subscription | null = null;
	private readonly inFlight = new Set<string>();
	private readonly lastAnswer = new Map<string, number>();
	readonly suspects = new Set<string>();
	readonly outcomes: Partial<Record<ProbeOutcome, number>> = {};
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
		const hedger = new CallHedger(broker, hedge, nodeID => this.suspects.has(nodeID) || !!stalledNodesOf(broker)?.has(nodeID));
		this.hedger = hedger.enabled ? hedger : null;
	}

	start(): void {
		this.subscription = this.nc.subscribe(livenessSubject(this.broker, this.broker.nodeID), {
			callback: (_err, msg) => msg.respond(),
		});
		this.broker.localBus.on("$node.disconnected", ({ node }: { node: { id: string } }) => this.forget(node.id));
	}

	/**
	 * The probe worker died: this node still advertises ALIVE-LOOP, and a subject without a responder reads as
	 * "process gone" to every caller. Answered from the main loop instead ("silent 0 ms"), as ALIVE is.
	 */
	answerLoopProbesHere(): void {
		if (this.loopSubscription) return;
		this.loopSubscription = this.nc.subscribe(loopProbeSubject(this.broker, this.broker.nodeID), {
			callback: (_err, msg) => msg.respond(encodedZero),
		});
	}

	/**
	 * Scans run only while there is something to watch: a call leaving this node arms them, and a scan that
	 * finds no pending call, no suspect and no probe in flight disarms them. An idle node used to wake
	 * every 10 ms for nothing: 31 ms of CPU per second against bare Moleculer's 12 (bench:call-cost).
	 */
	arm(): void {
		// Not before start() nor after stop(): the subscription is what a started probe has.
		if (this.timer || !this.subscription) return;
		// The scan itself waits for the check phase: after this loop stalled (a long GC, no core), libuv runs the
		// overdue interval before it reads the sockets, and the scan would take calls whose answers already arrived
		// for slow ones (a hedge and a probe each: 20 of 20 calls hedged after a 150 ms stall, test/integration).
		this.timer = setInterval(this.scanAfterPoll, this.opts.scanEveryMs);
		this.timer.unref();
	}

	private readonly scanAfterPoll = (): void => {
		setImmediate(this.scanNow);
	};
	/** Not after disarm() or stop(): a scan queued just before either would otherwise still probe and hedge. */
	private readonly scanNow = (): void => {
		if (this.timer) this.scan();
	};

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
		this.loopSubscription?.unsubscribe();
		this.loopSubscription = null;
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
		const version = metadata?.[LIVENESS_METADATA_KEY];
		if (!version) return;
		// A suspect node is cleared only by its main loop (ALIVE, which every version answers there): that answer
		// waited behind everything the node had queued before it. The worker answers at once, so a node resumed
		// after SIGSTOP with seconds of backlog read as "busy" and took new calls mid-backlog (bench:failover:
		// slowest request around the SIGSTOP 198 ms, p99 96 ms, against 68 / 29 before the worker).
		const loopAnswers = typeof version === "number" && version >= LOOP_PROBE_VERSION && !this.suspects.has(nodeID);
		const subject = loopAnswers ? loopProbeSubject(this.broker, nodeID) : livenessSubject(this.broker, nodeID);
		// While this node's own NATS connection is down, or if it dropped during the probe, an unanswered
		// probe says nothing about the other node (lib/mesh/nats-reconnect-guard.ts handles those calls).
		const epoch = natsConnectionEpoch(this.broker);
		if (epoch === null) return;
		this.inFlight.add(nodeID);
		this.probe(subject)
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
	private async probe(subject: string): Promise<ProbeOutcome> {
		const started = performance.now();
		const ask = (timeout: number) => this.ask(subject, Math.max(1, Math.round(timeout)));
		const first = ask(this.opts.probeTimeoutMs);
		// Once an answer is decisive or the first probe has its outcome, no more asks go out.
		let over = false;
		const decisive = new Promise<ProbeOutcome>(resolve => {
			const consider = (o: ProbeOutcome) => {
				if (!over && o !== "unresponsive" && o !== "unknown") {
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

	/**
	 * One request, "unresponsive" after `timeoutMs`: but only once this node has read its socket since the timer
	 * fired. A caller whose own loop was busy past the timeout runs its timers before it reads the answers that
	 * arrived meanwhile; setImmediate runs after that read (libuv: timers, then poll, then check).
	 */
	private ask(subject: string, timeoutMs: number): Promise<ProbeOutcome> {
		return new Promise(resolve => {
			let done = false;
			const finish = (o: ProbeOutcome) => {
				if (done) return;
				done = true;
				clearTimeout(timer);
				resolve(o);
			};
			const timer = setTimeout(() => setImmediate(() => finish("unresponsive")), timeoutMs);
			// nats.js's own timeout only frees the request; ours above decides.
			this.nc.request(subject, undefined, { timeout: timeoutMs + this.opts.probeTimeoutMs }).then(
				msg => finish(answerOutcome(msg, this.opts)),
				err => finish(outcomeOf(err)),
			);
		});
	}

	private settle(nodeID: string, outcome: ProbeOutcome): void {
		this.lastAnswer.set(nodeID, performance.now());
		this.broker.metrics?.increment(LIVENESS_METRICS.probes, { outcome });
		this.outcomes[outcome] = (this.outcomes[outcome] ?? 0) + 1;
		if (outcome === "alive" || outcome === "busy") {
			if (this.suspects.delete(nodeID)) this.log.info(`Node ${nodeID} answers again; no longer suspect`, { event: "node.unsuspected", node_id: nodeID });
		} else if (outcome === "gone") {
			this.markSuspect(nodeID, "no NATS subscription (process gone, or reconnecting to NATS)", "node.lost");
			this.rejectCallsOn(nodeID, () => true, true);
		} else if (outcome === "unresponsive") {
			this.markSuspect(nodeID, `no answer to a liveness probe within ${this.opts.probeTimeoutMs} ms`, "node.suspect");
			this.rejectCallsOn(nodeID, isIdempotent, false);
		} else if (outcome === "stuck") {
			this.markSuspect(nodeID, `its main event loop has been silent for over ${this.opts.loopSilentBoundMs} ms (its probe worker answers)`, "node.suspect");
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
	broker.metrics.register({
		name: LIVENESS_METRICS.coveredBeats,
		type: "counter",
		description: "Heartbeats the liveness worker sent for this node while its main event loop was late with them",
	});
}

/** `hedge`: hedged idempotent calls, driven by the same scan (lib/mesh/hedged-calls.ts); `{ budget: 0 }` turns them off. */
export function LivenessProbeMiddleware(options: Partial<LivenessProbeOptions> = {}, hedge: Partial<HedgeOptions> = {}): Middleware {
	const opts = { ...LIVENESS_DEFAULTS, ...options };
	const hedgeOpts = { ...HEDGE_DEFAULTS, ...hedge };
	let probe: LivenessProbe | null = null;
	let responder: LivenessResponder | null = null;
	/** settles once the worker is ready or has failed to start (never rejects) */
	let responderReady: Promise<void> | null = null;
	let responderLost = false;
	return {
		name: "LivenessProbe",
		created(broker: ServiceBroker) {
			registerLivenessMetrics(broker);
			registerHedgeMetrics(broker);
			if (broker.transit) onHeartbeatSent(broker, () => responder?.heartbeatSent());
			watchStalledBeats(broker);
			// Gossiped with INFO: callers probe only nodes that answer probes.
			if (usesNatsTransporter(broker)) (broker.metadata as Record<string, unknown>)[LIVENESS_METADATA_KEY] = true;
		},
		/**
		 * The worker boots (a fresh isolate loading nats.js, its own connection: ~0.4 s) while the transit connects
		 * and the services start; serviceStarted holds every local service's start until it is ready, so the
		 * worker's subscription is on the server, and the metadata says so, before transit.ready() sends the INFO
		 * that advertises it. Awaited here, the boot added ~0.4 s to a node's start-up (bench:startup).
		 */
		async starting(broker: ServiceBroker) {
			const natsOptions = natsTransporterOptionsOf(broker);
			if (!natsOptions) return;
			const log = broker.getLogger("liveness");
			const onLost = (why: string) => {
				log.error(`The liveness probe worker stopped (${why}); probes are answered from the main loop`, { event: "liveness.worker-lost" });
				responderLost = true;
				probe?.answerLoopProbesHere();
			};
			// Counted and logged once the main loop runs again: while the worker beats for it, it does not.
			const onCovered = (silentMs: number) => {
				log.warn(`The main event loop had sent no heartbeat for ${silentMs} ms; the liveness worker sent one for it`, { event: "heartbeat.covered", silentMs });
				if (broker.isMetricsEnabled()) broker.metrics.increment(LIVENESS_METRICS.coveredBeats);
			};
			const heartbeat = opts.stuckLeaveMs > 0 ? heartbeatCoverOf(broker, opts.stuckLeaveMs) : null;
			responderReady = (async () => {
				const started = await LivenessResponder.start(natsOptions, loopProbeSubject(broker, broker.nodeID), onLost, heartbeat, onCovered).catch((err: Error) => ({
					error: err.message,
				}));
				if ("error" in started) {
					log.warn(`No liveness probe worker (${started.error}): probes are answered from the main loop only`, { event: "liveness.worker-failed" });
					return;
				}
				responder = started;
				// The same object as the local node's metadata: the INFO sent by transit.ready() carries it.
				(broker.metadata as Record<string, unknown>)[LIVENESS_METADATA_KEY] = LOOP_PROBE_VERSION;
			})();
		},
		async serviceStarted() {
			await responderReady;
		},
		async started(broker: ServiceBroker) {
			const nc = natsConnectionOf(broker);
			if (!nc) return;
			probe = new LivenessProbe(broker, nc, opts, hedgeOpts);
			probe.start();
			if (responderLost) probe.answerLoopProbesHere();
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
			await responderReady;
			responderReady = null;
			await responder?.stop();
			responder = null;
		},
	} as Middleware;
}
