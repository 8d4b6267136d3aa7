/**
 * outbox: runs the outbox relay (lib/data/outbox/relay.ts) on exactly one node of the mesh — the holder
 * of the "outbox-relay" leader lease, NODE1 by preference — and reports on it. When the event stream
 * is unavailable the relay pauses with backoff (events stay pending); every node running this service
 * reports the stream as the `event_stream` dependency of /health, and the leader exports
 * outbox_pending, outbox_lag_seconds and outbox_relay_paused.
 */
import type { Context, Service, ServiceSchema, ServiceSettingSchema } from "moleculer";
import { NotFoundError } from "../lib/mesh/errors";
import { QueryTypes } from "sequelize";
import { isDatabaseFault } from "../lib/data/db-faults";
import { INTERNAL_ACCESS } from "../lib/http/auth";
import { requestLogger } from "../lib/runtime/logger";
import type { LeaderLease } from "../lib/data/leader-lease";
import type { NatsConnection } from "nats";
import { databaseOf, nodeContextOf } from "../lib/runtime/node-resources";
import { EventStreamState, probeEventStream, type Outage } from "../lib/data/event-stream";
import { declaredSubjects, ensureStream, OUTBOX_METRICS, outboxBacklog, OutboxRelay, PUBLISHES } from "../lib/data/outbox/relay";
import { actionPolicy } from "../lib/mesh/failover-policy";
import { OUTBOX_DUE_EVENT, ringOutbox } from "../lib/data/outbox/doorbell";
import { natsConnectionOf } from "../lib/mesh/moleculer-internals";
import { LeaderDutyMixin, type LeaderDuty } from "../mixins/leader-duty.mixin";

/**
 * Under a stream of events the leader waits this long after each claim, and the next takes what gathered meanwhile.
 * Claiming at once on every wake-up (the LISTEN/NOTIFY branch did) took the relay node from 21–26 % to 37–47 % of a
 * core at 100–300 events/s (docs/BENCHMARKS.md, "Outbox wake-up by LISTEN/NOTIFY"). An idle relay still answers a
 * ring at once.
 */
const CLAIM_SPACING_MS = 50;
/** How often a node that does not lead looks whether the lease came to it. */
const FOLLOWER_CHECK_MS = 200;
/**
 * Pause after an outage or a failed batch: doubles up to the maximum, back to the minimum on success. The
 * maximum bounds how late the relay notices a recovery; one probe per 10 s costs the stream nothing.
 */
const PAUSE_MIN_MS = 1_000;
const PAUSE_MAX_MS = 10_000;
/** How often every node running this service asks JetStream about the stream (its /health, replica gauges). */
const STREAM_PROBE_MS = 5_000;
const BATCH_SIZE = 500;
/**
 * Batches in flight at once (OutboxRelay.runBatches); each holds a pooled connection while in flight.
 * One: on a quiet machine more in flight did not drain faster inside a node and took pool connections
 * from the node's own writes (docs/BENCHMARKS.md, "Audit trail" and "Memory"); raise it only with a
 * measurement that says otherwise.
 */
const PIPELINE_DEPTH = 1;
/** Published rows are kept this long for audits and re-drives, then deleted by the leader. */
const KEEP_PUBLISHED_HOURS = 24;
/**
 * How often the leader deletes expired published rows, off the relay's path. The DELETE reads the whole
 * table (no index on published_at: one would cost every publish an index update). It used to run every
 * second between relay batches: with 24 h kept at 100 events/s that is a scan of ~8.6 M rows a second.
 * At 150,000 kept rows the lag A/B could not tell the two apart (docs/BENCHMARKS.md, "Memory → JetStream
 * lag"); the cost grows with the table, the retention does not need more than once a minute.
 */
const PRUNE_PUBLISHED_EVERY_MS = 60_000;

interface OutboxThis extends Service {
	lease: LeaderLease;
	relay: OutboxRelay | null;
	/** the subjects the stream was last brought to (a service declaring others makes the relay start afresh) */
	ensuredSubjects: string;
	mode: "jetstream" | "moleculer-events-only";
	stream: EventStreamState;
	nats: NatsConnection | null;
	startRelay(): Promise<void>;
	relayLoop(duty: LeaderDuty): Promise<void>;
	relayOnce(): Promise<boolean>;
	waitForWork(): Promise<void>;
	/** the relay loop's duty, for a ring to cut its idle wait short */
	duty: LeaderDuty | null;
	/** a write rang since the last claim began (lib/data/outbox/doorbell.ts) */
	rung: boolean;
	/** the loop sleeps until a ring or its fallback poll */
	waitingForRing: boolean;
	diagnose(err: Error): Promise<Outage | null>;
	reportBacklog(): Promise<void>;
	prunePublished(): void;
	/** the expired-rows DELETE in flight, if any */
	pruning: Promise<void> | null;
	probeStream(leading: boolean): Promise<void>;
}

const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms));

function registerMetrics(service: Service): void {
	const metrics = service.broker.metrics;
	if (!service.broker.isMetricsEnabled()) return;
	metrics.register({ name: OUTBOX_METRICS.pending, type: "gauge", description: "Outbox rows not yet published (reported by the relaying node, 0 elsewhere)" });
	metrics.register({ name: OUTBOX_METRICS.oldestPending, type: "gauge", description: "Age in seconds of the oldest unpublished outbox event (relaying node)" });
	metrics.register({ name: OUTBOX_METRICS.paused, type: "gauge", description: "1 while the relay is paused because the event stream is unavailable" });
	metrics.register({ name: OUTBOX_METRICS.dlq, type: "gauge", description: "Events in outbox_dlq (relaying node, 0 elsewhere)" });
	metrics.register({ name: OUTBOX_METRICS.replicasConfigured, type: "gauge", description: "Replicas the JetStream event stream is configured with" });
	metrics.register({ name: OUTBOX_METRICS.replicasOnline, type: "gauge", description: "Replicas of the event stream up to date now, leader included (below configured: a NATS server is down)" });
	metrics.register({ name: OUTBOX_METRICS.lag, type: "histogram", buckets: [0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 5, 30], description: "Seconds from commit to publish" });
	metrics.register({ name: OUTBOX_METRICS.published, type: "counter", labelNames: ["event_type"], description: "Outbox events published" });
	metrics.register({ name: OUTBOX_METRICS.failed, type: "counter", labelNames: ["event_type"], description: "Failed publish attempts" });
	metrics.register({ name: OUTBOX_METRICS.dead, type: "counter", labelNames: ["event_type"], description: "Outbox events moved to the DLQ" });
}

const OutboxService: ServiceSchema<ServiceSettingSchema, Record<string, never>, Record<string, never>, OutboxThis> = {
	name: "outbox",
	/** ops.alert.warning when an event goes to the DLQ */
	metadata: { [PUBLISHES]: ["ops.>"] },
	mixins: [LeaderDutyMixin<OutboxThis>({ duty: "outbox-relay", loop(duty) { return this.relayLoop(duty); } })],

	actions: {
		status: {
			...actionPolicy({ idempotent: true, timeout: "fast" }),
			rest: "GET /status",
			access: INTERNAL_ACCESS,
			async handler() {
				const [counts] = await databaseOf(this.broker).query<{ pending: string; dead: string; oldest_pending: Date | null }>(
					"SELECT (SELECT count(*) FROM outbox WHERE status = 'pending') AS pending, (SELECT count(*) FROM outbox_dlq) AS dead, (SELECT min(created_at) FROM outbox WHERE status = 'pending') AS oldest_pending",
					{ type: QueryTypes.SELECT },
				);
				return { node: this.broker.nodeID, leader: this.lease.isLeader(), mode: this.mode, pending: Number(counts.pending), dead: Number(counts.dead), oldest_pending: counts.oldest_pending };
			},
		},
		dlq: {
			...actionPolicy({ idempotent: true, timeout: "fast" }),
			rest: "GET /dlq",
			access: INTERNAL_ACCESS,
			params: { limit: { type: "number", integer: true, min: 1, max: 500, optional: true, convert: true }, $$strict: "remove" },
			async handler(ctx: Context<{ limit?: number }>) {
				return databaseOf(this.broker).query("SELECT id, event_type, subject, attempts, last_error, created_at, failed_at FROM outbox_dlq ORDER BY failed_at DESC LIMIT $1", {
					bind: [ctx.params.limit ?? 100],
					type: QueryTypes.SELECT,
				});
			},
		},
		/** Operators, after fixing the cause: send a dead event again (same id, so JetStream still dedups it). */
		redrive: {
			...actionPolicy({ idempotent: true, timeout: "fast" }),
			rest: "POST /dlq/:id/redrive",
			access: INTERNAL_ACCESS,
			params: { id: { type: "uuid" }, $$strict: "remove" },
			async handler(ctx: Context<{ id: string }>) {
				const sequelize = databaseOf(this.broker);
				const [moved] = await sequelize.query<{ id: string }>(
					`WITH dead AS (DELETE FROM outbox_dlq WHERE id = $1 RETURNING *)
					 INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, subject, payload, created_at)
					 SELECT id, aggregate_type, aggregate_id, event_type, subject, payload, created_at FROM dead RETURNING id`,
					{ bind: [ctx.params.id], type: QueryTypes.SELECT },
				);
				if (!moved) throw new NotFoundError(`No dead event ${ctx.params.id}`, "NOT_FOUND", { id: ctx.params.id });
				ringOutbox(sequelize);
				requestLogger(this.logger, ctx).info(`Outbox event ${ctx.params.id} re-driven from the DLQ`, { event: "outbox.redrive" });
				return { id: moved.id, status: "pending" };
			},
		},
	},

	events: {
		/**
		 * A write committed outbox rows (lib/data/outbox/doorbell.ts). Only the leader acts on it, and at most once
		 * per CLAIM_SPACING_MS however often it comes: a node that rings without cause costs a claim, not more.
		 */
		[OUTBOX_DUE_EVENT](this: OutboxThis) {
			this.rung = true;
			if (this.waitingForRing) this.duty?.wake();
		},
	},

	methods: {
		async startRelay(this: OutboxThis) {
			const { settings } = nodeContextOf(this.broker);
			this.mode = this.nats ? "jetstream" : "moleculer-events-only";
			const subjects = declaredSubjects(this.broker, this.metadata);
			this.ensuredSubjects = subjects.join(" ");
			if (this.nats) {
				const changed = await ensureStream(this.nats, settings.events, subjects);
				if (changed) this.logger.info(`Outbox relay: ${changed}`, { event: "outbox.stream" });
			} else this.logger.warn("Outbox relay: no NATS (TCP fallback), so events go out as Moleculer events only, not to JetStream");
			this.relay = new OutboxRelay({
				broker: this.broker,
				sequelize: databaseOf(this.broker),
				events: settings.events,
				nats: this.nats,
				batchSize: BATCH_SIZE,
			});
		},

		/** After a failure: is the stream the cause (pause, events stay pending) or something else? */
		async diagnose(this: OutboxThis, err: Error) {
			if (!this.nats) return null;
			const { outage } = await probeEventStream(this.nats, nodeContextOf(this.broker).settings.events.stream);
			// ensureStream met a stream it could not create or update (e.g. R3 asked of a single server).
			return outage ?? (this.relay ? null : { code: "stream_unavailable", reason: `The event stream could not be set up: ${err.message}` });
		},

		/** One step while leading; true when the caller should pause (outage or failure). */
		async relayOnce(this: OutboxThis) {
			const { settings } = nodeContextOf(this.broker);
			if (this.stream.paused && this.nats && this.relay) {
				// Paused: ask the stream first instead of timing out a whole batch again.
				const { outage } = await probeEventStream(this.nats, settings.events.stream);
				this.stream.set(outage);
				if (outage) return true;
			}
			// A service that joined the mesh may publish subjects the stream does not capture yet.
			if (!this.relay || declaredSubjects(this.broker, this.metadata).join(" ") !== this.ensuredSubjects) await this.startRelay();
			const rung = this.rung;
			this.rung = false;
			const { outage } = await this.relay!.poll(PIPELINE_DEPTH, rung);
			this.stream.set(outage);
			if (outage) return true;
			if (this.relay!.tookEverythingDue) await this.waitForWork();
			return false;
		},

		/**
		 * After a claim that did not fill its batch, which took every row due then: what commits later rings.
		 * The next claim comes CLAIM_SPACING_MS after this one ended at the earliest, and on an idle mesh only once a
		 * write rings, when a retry this relay scheduled falls due, or after the fallback poll (OUTBOX_IDLE_POLL_MS)
		 * for rows no ring announced (a lost ring, a retry scheduled by a leader before this one). The wait is cut
		 * short by a ring or by the node stopping, never by anything else: a backoff after an outage is not.
		 */
		async waitForWork(this: OutboxThis) {
			await sleep(CLAIM_SPACING_MS);
			if (this.rung || !this.duty?.running) return;
			this.waitingForRing = true;
			try {
				const fallbackMs = nodeContextOf(this.broker).settings.events.outboxIdlePollMs;
				await this.duty.pause(Math.min(fallbackMs, this.relay?.msUntilRetry() ?? fallbackMs));
			} finally {
				this.waitingForRing = false;
			}
		},

		async reportBacklog(this: OutboxThis) {
			const { pending, oldestSeconds, dead } = await outboxBacklog(databaseOf(this.broker));
			this.broker.metrics.set(OUTBOX_METRICS.pending, pending);
			this.broker.metrics.set(OUTBOX_METRICS.dlq, dead);
			this.broker.metrics.set(OUTBOX_METRICS.oldestPending, oldestSeconds);
			this.broker.metrics.set(OUTBOX_METRICS.paused, this.stream.paused ? 1 : 0);
		},

		/** Off the relay's path: started, not awaited, at most one at a time. */
		prunePublished(this: OutboxThis) {
			if (this.pruning) return;
			this.pruning = databaseOf(this.broker)
				.query(`DELETE FROM outbox WHERE status = 'published' AND published_at < now() - interval '${KEEP_PUBLISHED_HOURS} hours'`)
				.then(
					() => undefined,
					(err: Error) => {
						if (!isDatabaseFault(err)) this.logger.warn(`Outbox: deleting expired published rows failed: ${err.message}`);
					},
				)
				.finally(() => (this.pruning = null));
		},

		/**
		 * Every few seconds: the replica gauges, and the stream state for /health. On the relaying node an
		 * outage found here pauses the relay even when no event is waiting; its recovery is the relay's to see.
		 */
		async probeStream(this: OutboxThis, leading: boolean) {
			if (!this.nats) return;
			const probe = await probeEventStream(this.nats, nodeContextOf(this.broker).settings.events.stream);
			if (probe.replicas) {
				this.broker.metrics.set(OUTBOX_METRICS.replicasConfigured, probe.replicas.configured);
				this.broker.metrics.set(OUTBOX_METRICS.replicasOnline, probe.replicas.online);
			}
			if (!leading || probe.outage) this.stream.set(probe.outage);
		},

		/** While leader: drain in batches; when idle, wait for a write's ring (waitForWork). */
		async relayLoop(this: OutboxThis, duty: LeaderDuty) {
			this.duty = duty;
			// The transporter is connected by now (services start after it), not yet when the service was created.
			this.nats = natsConnectionOf(this.broker);
			if (this.nats) nodeContextOf(this.broker).eventStream = () => this.stream.dependency();
			let lastHousekeeping = 0;
			let lastPrune = 0;
			let lastStreamProbe = 0;
			let pauseMs = PAUSE_MIN_MS;
			let lastError = "";
			let leading = false;
			while (duty.running) {
				if (Date.now() - lastStreamProbe > STREAM_PROBE_MS) {
					lastStreamProbe = Date.now();
					await this.probeStream(this.lease.isLeader()).catch(() => undefined);
				}
				if (!this.lease.isLeader()) {
					if (leading) {
						leading = false;
						this.relay = null;
						for (const name of [OUTBOX_METRICS.pending, OUTBOX_METRICS.oldestPending, OUTBOX_METRICS.paused, OUTBOX_METRICS.dlq]) this.broker.metrics.set(name, 0);
					}
					await sleep(FOLLOWER_CHECK_MS);
					continue;
				}
				leading = true;
				let pause = false;
				try {
					pause = await this.relayOnce();
					lastError = "";
				} catch (err) {
					const outage = await this.diagnose(err as Error);
					this.stream.set(outage);
					// Not the stream: one line per distinct error, not one per retry; database faults are logged
					// once per outage by the database monitor (lib/data/db-guard.ts).
					if (!outage && !isDatabaseFault(err) && (err as Error).message !== lastError) this.logger.warn(`Outbox relay batch failed, retrying with backoff: ${(err as Error).message}`);
					lastError = (err as Error).message;
					pause = true;
				}
				if (Date.now() - lastHousekeeping > 1_000) {
					lastHousekeeping = Date.now();
					await this.reportBacklog().catch(() => undefined);
				}
				if (Date.now() - lastPrune > PRUNE_PUBLISHED_EVERY_MS) {
					lastPrune = Date.now();
					this.prunePublished();
				}
				if (pause) {
					// Cut short by a stopping node: SIGTERM must not wait out a backoff.
					await duty.pause(pauseMs);
					pauseMs = Math.min(pauseMs * 2, PAUSE_MAX_MS);
				} else pauseMs = PAUSE_MIN_MS;
			}
		},
	},

	created() {
		registerMetrics(this);
		this.duty = null;
		this.rung = false;
		this.waitingForRing = false;
		this.relay = null;
		this.ensuredSubjects = "";
		this.mode = "jetstream";
		this.nats = null;
		this.pruning = null;
		this.stream = new EventStreamState(this.logger);
	},

	async stopped() {
		nodeContextOf(this.broker).eventStream = undefined;
		await this.pruning;
	},
};

export default OutboxService;
