/**
 * outbox: runs the outbox relay (lib/outbox-relay.ts) on exactly one node of the mesh — the holder
 * of the "outbox-relay" leader lease, NODE1 by preference — and reports on it.
 */
import type { Context, Service, ServiceSchema } from "moleculer";
import { Errors } from "moleculer";
import { QueryTypes } from "sequelize";
import { defineActions, INTERNAL_ACCESS } from "../lib/auth";
import { requestLogger } from "../lib/logger";
import { createDutyLease, type LeaderLease } from "../lib/leader-lease";
import { natsConnectionOf } from "../lib/mesh/nats-connection";
import { databaseOf, nodeContextOf } from "../lib/node-context";
import { ensureStream, OUTBOX_METRICS, OutboxRelay } from "../lib/outbox-relay";
import { actionPolicy } from "../lib/resilience";

const IDLE_POLL_MS = 50;
const ERROR_PAUSE_MS = 1_000;
const BATCH_SIZE = 500;
/** Published rows are kept this long for audits and re-drives, then deleted by the leader. */
const KEEP_PUBLISHED_HOURS = 24;

interface OutboxThis extends Service {
	lease: LeaderLease;
	relay: OutboxRelay | null;
	running: boolean;
	loop: Promise<void> | null;
	mode: "jetstream" | "moleculer-events-only";
	startRelay(): Promise<void>;
	relayLoop(): Promise<void>;
}

const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms));

function registerMetrics(service: Service): void {
	const metrics = service.broker.metrics;
	if (!service.broker.isMetricsEnabled()) return;
	metrics.register({ name: OUTBOX_METRICS.pending, type: "gauge", description: "Outbox rows not yet published" });
	metrics.register({ name: OUTBOX_METRICS.lag, type: "histogram", buckets: [0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 5, 30], description: "Seconds from commit to publish" } as never);
	metrics.register({ name: OUTBOX_METRICS.published, type: "counter", labelNames: ["event_type"], description: "Outbox events published" });
	metrics.register({ name: OUTBOX_METRICS.failed, type: "counter", labelNames: ["event_type"], description: "Failed publish attempts" });
	metrics.register({ name: OUTBOX_METRICS.dead, type: "counter", labelNames: ["event_type"], description: "Outbox events moved to the DLQ" });
}

const OutboxService: ServiceSchema = {
	name: "outbox",

	actions: defineActions({
		status: {
			...actionPolicy({ idempotent: true, timeout: "fast" }),
			rest: "GET /status",
			access: INTERNAL_ACCESS,
			async handler(this: Service) {
				const self = this as OutboxThis;
				const [counts] = await databaseOf(this.broker).query<{ pending: string; dead: string; oldest_pending: Date | null }>(
					"SELECT (SELECT count(*) FROM outbox WHERE status = 'pending') AS pending, (SELECT count(*) FROM outbox_dlq) AS dead, (SELECT min(created_at) FROM outbox WHERE status = 'pending') AS oldest_pending",
					{ type: QueryTypes.SELECT },
				);
				return { node: this.broker.nodeID, leader: self.lease.isLeader(), mode: self.mode, pending: Number(counts.pending), dead: Number(counts.dead), oldest_pending: counts.oldest_pending };
			},
		},
		dlq: {
			...actionPolicy({ idempotent: true, timeout: "fast" }),
			rest: "GET /dlq",
			access: INTERNAL_ACCESS,
			params: { limit: { type: "number", integer: true, min: 1, max: 500, optional: true, convert: true }, $$strict: "remove" },
			async handler(this: Service, ctx: Context<{ limit?: number }>) {
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
			async handler(this: Service, ctx: Context<{ id: string }>) {
				const [moved] = await databaseOf(this.broker).query<{ id: string }>(
					`WITH dead AS (DELETE FROM outbox_dlq WHERE id = $1 RETURNING *)
					 INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, subject, payload, created_at)
					 SELECT id, aggregate_type, aggregate_id, event_type, subject, payload, created_at FROM dead RETURNING id`,
					{ bind: [ctx.params.id], type: QueryTypes.SELECT },
				);
				if (!moved) throw new Errors.MoleculerClientError(`No dead event ${ctx.params.id}`, 404, "NOT_FOUND", { id: ctx.params.id });
				requestLogger(this.logger, ctx).info(`Outbox event ${ctx.params.id} re-driven from the DLQ`, { event: "outbox.redrive" });
				return { id: moved.id, status: "pending" };
			},
		},
	}),

	methods: {
		async startRelay(this: OutboxThis) {
			const { settings } = nodeContextOf(this.broker);
			const nc = natsConnectionOf(this.broker);
			this.mode = nc ? "jetstream" : "moleculer-events-only";
			if (nc) await ensureStream(nc, settings.events);
			else this.logger.warn("Outbox relay: no NATS (TCP fallback), so events go out as Moleculer events only, not to JetStream");
			this.relay = new OutboxRelay({
				broker: this.broker,
				sequelize: databaseOf(this.broker),
				events: settings.events,
				jetstream: nc ? nc.jetstream() : null,
				batchSize: BATCH_SIZE,
				crashAfterPublish: process.env.OUTBOX_TEST_CRASH_AFTER_PUBLISH === "1",
			});
		},

		/** While leader: drain in batches; when idle, poll every 50 ms (cheap: a partial index). */
		async relayLoop(this: OutboxThis) {
			let lastHousekeeping = 0;
			while (this.running) {
				if (!this.lease.isLeader()) {
					await sleep(IDLE_POLL_MS * 4);
					continue;
				}
				try {
					if (!this.relay) await this.startRelay();
					const handled = await this.relay!.runBatch();
					if (Date.now() - lastHousekeeping > 1_000) {
						lastHousekeeping = Date.now();
						this.broker.metrics.set(OUTBOX_METRICS.pending, await this.relay!.pendingCount());
						await databaseOf(this.broker).query(`DELETE FROM outbox WHERE status = 'published' AND published_at < now() - interval '${KEEP_PUBLISHED_HOURS} hours'`);
					}
					if (handled < BATCH_SIZE) await sleep(IDLE_POLL_MS);
				} catch (err) {
					this.logger.warn(`Outbox relay batch failed: ${(err as Error).message}`);
					await sleep(ERROR_PAUSE_MS);
				}
			}
		},
	},

	created(this: Service) {
		registerMetrics(this);
	},

	async started(this: Service) {
		const self = this as OutboxThis;
		self.relay = null;
		self.mode = "jetstream";
		self.lease = createDutyLease(this.broker, "outbox-relay", this.logger);
		await self.lease.start();
		self.running = true;
		self.loop = self.relayLoop();
	},

	async stopped(this: Service) {
		const self = this as OutboxThis;
		self.running = false;
		await self.loop;
		await self.lease?.stop();
	},
};

export default OutboxService;
