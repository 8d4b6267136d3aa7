/**
 * audit: the append-only, tamper-evident audit trail (docs/AUDIT.md).
 *
 * Every actor reports `audit.{service}.{action}` events through the outbox (lib/data/audit-events.ts);
 * the relay publishes them to JetStream. Exactly one node — the holder of the "audit-writer" leader
 * lease, NODE1 by preference — consumes them from a durable JetStream consumer and appends them to
 * audit_log as one hash chain (lib/data/audit-writer.ts: fenced by the lease in SQL, deduplicated by
 * event id), acking only after the commit. A writer that dies leaves its unacked events to be
 * redelivered to the next leader, which skips what was already stored.
 *
 * On the TCP fallback (development without NATS) there is no JetStream: the leader reads audit events
 * straight from the outbox table instead, with the same dedupe.
 *
 * Router decisions (services/router.service.ts, when present) arrive as `audit.router.{action}` like
 * any other source: no list of sources to extend here.
 */
import type { Context, Service, ServiceSchema, ServiceSettingSchema } from "moleculer";
import { AckPolicy, DeliverPolicy, nanos, type ConsumerMessages, type JsMsg } from "nats";
import { QueryTypes } from "sequelize";
import { INTERNAL_ACCESS, type MeshUser } from "../lib/http/auth";
import { checkLinks, EMPTY_CHAIN, normaliseEntry, type AuditEntry } from "../lib/data/audit-chain";
import { auditOutboxEvent, type AuditOutcome } from "../lib/data/audit-events";
import { AuditWriter, FencedOutError, type IncomingAuditEvent } from "../lib/data/audit-writer";
import type { LeaderLease } from "../lib/data/leader-lease";
import { requestLogger } from "../lib/runtime/logger";
import { natsConnectionOf } from "../lib/mesh/moleculer-internals";
import { databaseOf, nodeContextOf } from "../lib/runtime/node-resources";
import { enqueueEvents, prefixedSubject } from "../lib/data/outbox/enqueue";
import { declaredSubjects, ensureStream, PUBLISHES } from "../lib/data/outbox/relay";
import { actionPolicy } from "../lib/mesh/failover-policy";
import { IdempotentWritesMixin, type IdempotencyMeta, type IdempotentWriteMethods } from "../mixins/idempotent-writes.mixin";
import { LeaderDutyMixin, type LeaderDuty } from "../mixins/leader-duty.mixin";

/** JetStream durable consumer of audit.> (per stream, so per mesh). */
const CONSUMER = "audit-writer";
const BATCH_SIZE = 500;
/** An idle leader looks at its buffer this often at most; a delivery wakes it at once. */
const IDLE_WAIT_MS = 100;
const OUTBOX_TABLE_POLL_MS = 50;
const COALESCE_MS = 10;
const ERROR_PAUSE_MS = 1_000;
/** Unacked events go to the next leader after this long (a SIGKILLed writer cannot nak them). */
const ACK_WAIT_MS = 5_000;
const VERIFY_PAGE = 5_000;

const OUTBOX_AUDIT_BATCH = `SELECT o.id::text AS event_id, o.event_type AS type, o.payload FROM outbox o
WHERE o.event_type LIKE 'audit.%' AND NOT EXISTS (SELECT 1 FROM audit_log a WHERE a.event_id = o.id::text)
ORDER BY o.created_at LIMIT $1`;

export const AUDIT_METRICS = { appended: "audit.appended.total", duplicates: "audit.duplicates.total", lag: "audit.append.lag.seconds" };

interface EventsParams {
	service?: string;
	action?: string;
	actor?: string;
	request_id?: string;
	from?: Date;
	to?: Date;
	limit?: number;
	cursor?: string;
}

interface NoteParams {
	action: string;
	subject: string;
	details?: Record<string, unknown>;
}

interface AuditThis extends Service, IdempotentWriteMethods {
	lease: LeaderLease;
	writer: AuditWriter;
	mode: "jetstream" | "outbox-table";
	buffer: JsMsg[];
	/** resolves the idle wait when a message arrives */
	wake: (() => void) | null;
	messages: ConsumerMessages | null;
	stats: { appended: number; duplicates: number; rejected: number; lastError: string | null };
	writeLoop(duty: LeaderDuty): Promise<void>;
	idle(ms: number): Promise<void>;
	startConsuming(): Promise<void>;
	stopConsuming(): Promise<void>;
	flushJetStream(): Promise<number>;
	flushOutboxTable(): Promise<number>;
	appendBatch(events: IncomingAuditEvent[]): Promise<number>;
}

type AuditContext<P> = Context<P, IdempotencyMeta & { user?: MeshUser }>;

const READ = actionPolicy({ idempotent: true, timeout: "standard" });
const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms));
const SERVICE_NAME = { type: "string", min: 1, max: 40, pattern: /^[a-z][a-z0-9_-]*$/, optional: true } as const;

function registerMetrics(service: Service): void {
	if (!service.broker.isMetricsEnabled()) return;
	const metrics = service.broker.metrics;
	metrics.register({ name: AUDIT_METRICS.appended, type: "counter", description: "Audit events appended to audit_log" });
	metrics.register({ name: AUDIT_METRICS.duplicates, type: "counter", description: "Audit event deliveries skipped as already stored" });
	metrics.register({ name: AUDIT_METRICS.lag, type: "histogram", buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 5, 30], description: "Seconds from the audited action to its audit_log row" });
}

function incoming(msg: JsMsg): IncomingAuditEvent | null {
	try {
		const data = msg.json<Record<string, unknown>>();
		const id = typeof data.id === "string" ? data.id : msg.headers?.get("Nats-Msg-Id");
		if (!id || typeof data.type !== "string") return null;
		return { event_id: id, type: data.type, payload: data };
	} catch {
		return null;
	}
}

const AuditService: ServiceSchema<ServiceSettingSchema, Record<string, never>, Record<string, never>, AuditThis> = {
	name: "audit",
	/** audit.{service}.{action}: every actor reports through the outbox; this service owns the subject and consumes it. */
	metadata: { [PUBLISHES]: ["audit.>"] },
	mixins: [IdempotentWritesMixin, LeaderDutyMixin<AuditThis>({ duty: "audit-writer", loop(duty) { return this.writeLoop(duty); } })],

	actions: {
		/** An operator's note (deploy started, incident opened…): one more source of audit_log rows. */
		record: {
			...actionPolicy({ idempotent: false, timeout: "standard" }),
			rest: "POST /records",
			access: ["admin", "operator", "service"],
			params: {
				action: { type: "string", min: 1, max: 80, pattern: /^[a-z][a-z0-9_.-]*$/ },
				subject: { type: "string", min: 1, max: 300 },
				details: { type: "object", optional: true },
				$$strict: "remove",
			},
			async handler(ctx: AuditContext<NoteParams>) {
				const actor = ctx.meta.user?.id ?? "mesh";
				const { settings } = nodeContextOf(this.broker);
				return this.idempotentWrite(ctx, `audit.record:${actor}`, async t => {
					const event = auditOutboxEvent(ctx.requestID, this.broker.nodeID, {
						service: "operator",
						action: ctx.params.action,
						actor,
						target: ctx.params.subject,
						details: ctx.params.details ?? {},
					});
					await enqueueEvents(databaseOf(this.broker), t, settings.events, [event]);
					return { accepted: true, type: event.eventType, actor, target: ctx.params.subject, node: this.broker.nodeID, request_id: ctx.requestID ?? null };
				});
			},
		},

		/** For sources on nodes without a database (a gateway-only node's authentication failures). */
		report: {
			...actionPolicy({ idempotent: false, timeout: "standard" }),
			visibility: "public",
			params: {
				type: { type: "string", pattern: /^audit\.[a-z][a-z0-9_-]*\.[a-z][a-z0-9_.-]*$/, max: 120 },
				actor: { type: "string", min: 1, max: 200 },
				target: { type: "string", max: 300, optional: true, nullable: true },
				outcome: { type: "enum", values: ["success", "denied", "failure"] },
				node: { type: "string", min: 1, max: 200 },
				details: { type: "object", optional: true },
				$$strict: "remove",
			},
			async handler(ctx: Context<{ type: string; actor: string; target?: string | null; outcome: AuditOutcome; node: string; details?: Record<string, unknown> }>) {
				const [, service, ...action] = ctx.params.type.split(".");
				const event = auditOutboxEvent(ctx.requestID, ctx.params.node, { ...ctx.params, service, action: action.join(".") });
				const sequelize = databaseOf(this.broker);
				await sequelize.transaction(t => enqueueEvents(sequelize, t, nodeContextOf(this.broker).settings.events, [event]));
				return { accepted: true };
			},
		},

		events: {
			...READ,
			rest: "GET /events",
			access: INTERNAL_ACCESS,
			params: {
				service: SERVICE_NAME,
				action: { type: "string", min: 1, max: 80, optional: true },
				actor: { type: "string", min: 1, max: 200, optional: true },
				request_id: { type: "string", min: 1, max: 200, optional: true },
				from: { type: "date", convert: true, optional: true },
				to: { type: "date", convert: true, optional: true },
				limit: { type: "number", integer: true, min: 1, max: 500, optional: true, convert: true },
				cursor: { type: "string", pattern: /^[1-9][0-9]{0,18}$/, optional: true, messages: { stringPattern: "cursor: pass next_cursor from the previous page" } },
				$$strict: "remove",
			},
			/** Newest first; `next_cursor` pages to older rows. */
			async handler(ctx: Context<EventsParams>) {
				const p = ctx.params;
				const limit = p.limit ?? 100;
				const rows = await databaseOf(this.broker).query<Record<string, unknown>>(
					`SELECT * FROM audit_log
					 WHERE ($1::text IS NULL OR service = $1) AND ($2::text IS NULL OR action = $2) AND ($3::text IS NULL OR actor = $3)
					   AND ($4::text IS NULL OR request_id = $4) AND ($5::timestamptz IS NULL OR occurred_at >= $5) AND ($6::timestamptz IS NULL OR occurred_at < $6)
					   AND ($7::bigint IS NULL OR seq < $7)
					 ORDER BY seq DESC LIMIT $8`,
					{ bind: [p.service ?? null, p.action ?? null, p.actor ?? null, p.request_id ?? null, p.from ?? null, p.to ?? null, p.cursor ?? null, limit + 1], type: QueryTypes.SELECT },
				);
				const page = rows.slice(0, limit).map(normaliseEntry);
				return { events: page, next_cursor: rows.length > limit ? String(page[page.length - 1].seq) : null };
			},
		},

		/** Walks the whole chain: {ok: true, checked} or {ok: false, first_broken: {id, seq}, checked}. */
		verify: {
			...actionPolicy({ idempotent: true, timeout: "slow" }),
			rest: "GET /verify",
			access: INTERNAL_ACCESS,
			async handler(ctx: Context) {
				const sequelize = databaseOf(this.broker);
				let tail = EMPTY_CHAIN;
				let checked = 0;
				for (;;) {
					const rows = await sequelize.query<Record<string, unknown>>("SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2", {
						bind: [tail.seq, VERIFY_PAGE],
						type: QueryTypes.SELECT,
					});
					const entries: AuditEntry[] = rows.map(normaliseEntry);
					const result = checkLinks(tail, entries);
					if (result.broken) {
						requestLogger(this.logger, ctx).warn(`Audit chain broken at seq ${result.broken.seq}`, { event: "audit.chain_broken", seq: result.broken.seq });
						return { ok: false, checked: checked + entries.indexOf(result.broken), first_broken: { id: result.broken.id, seq: result.broken.seq } };
					}
					checked += entries.length;
					tail = result.tail;
					if (rows.length < VERIFY_PAGE) return { ok: true, checked, last: tail.seq ? tail : null };
				}
			},
		},

		/** Who writes the chain, how, and how much it has written since it started. */
		writer: {
			...READ,
			rest: "GET /writer",
			access: INTERNAL_ACCESS,
			handler() {
				return { node: this.broker.nodeID, leader: this.lease?.isLeader() ?? false, mode: this.mode, ...this.stats };
			},
		},
	},

	methods: {
		async appendBatch(this: AuditThis, events: IncomingAuditEvent[]): Promise<number> {
			const result = await this.writer.append(events);
			this.stats.appended += result.appended.length;
			this.stats.duplicates += result.duplicates;
			this.stats.rejected += result.rejected.length;
			if (result.rejected.length) this.logger.warn(`Audit writer: ${result.rejected.length} event(s) that are not audit.{service}.{action} were skipped`);
			if (this.broker.isMetricsEnabled()) {
				this.broker.metrics.increment(AUDIT_METRICS.appended, undefined, result.appended.length);
				if (result.duplicates) this.broker.metrics.increment(AUDIT_METRICS.duplicates, undefined, result.duplicates);
				const now = Date.now();
				for (const e of result.appended) this.broker.metrics.observe(AUDIT_METRICS.lag, (now - Date.parse(e.occurred_at)) / 1000);
			}
			return events.length;
		},

		async startConsuming(this: AuditThis) {
			const nc = natsConnectionOf(this.broker);
			this.mode = nc ? "jetstream" : "outbox-table";
			if (!nc) return;
			const { events } = nodeContextOf(this.broker).settings;
			await ensureStream(nc, events, declaredSubjects(this.broker, this.metadata));
			const jsm = await nc.jetstreamManager();
			const config = { ack_wait: nanos(ACK_WAIT_MS), max_ack_pending: 20_000, filter_subject: prefixedSubject(events, "audit.>") };
			await jsm.consumers.add(events.stream, { durable_name: CONSUMER, ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All, ...config }).catch(async (err: Error) => {
				// A durable made by an older release with other limits: bring it to these (its position is kept).
				if (!/already (exists|in use)/i.test(err.message)) throw err;
				await jsm.consumers.update(events.stream, CONSUMER, config);
			});
			const consumer = await nc.jetstream().consumers.get(events.stream, CONSUMER);
			this.messages = await consumer.consume({
				max_messages: 2 * BATCH_SIZE,
				callback: msg => {
					this.buffer.push(msg);
					this.wake?.();
				},
			});
		},

		async stopConsuming(this: AuditThis) {
			const messages = this.messages;
			this.messages = null;
			if (messages) await messages.close().catch(() => undefined);
			// Hand what this node had not stored to the next leader at once rather than after ack_wait.
			for (const msg of this.buffer.splice(0)) msg.nak();
		},

		async flushJetStream(this: AuditThis): Promise<number> {
			const msgs = this.buffer.slice(0, BATCH_SIZE);
			if (!msgs.length) return 0;
			const parsed = msgs.map(incoming);
			for (const [i, event] of parsed.entries()) if (!event) msgs[i].term();
			await this.appendBatch(parsed.filter((e): e is IncomingAuditEvent => !!e));
			// Acked only after the commit: a crash before this line means redelivery, which dedupe absorbs.
			this.buffer.splice(0, msgs.length);
			for (const [i, msg] of msgs.entries()) if (parsed[i]) msg.ack();
			return msgs.length;
		},

		async flushOutboxTable(this: AuditThis): Promise<number> {
			const rows = await databaseOf(this.broker).query<IncomingAuditEvent>(OUTBOX_AUDIT_BATCH, { bind: [BATCH_SIZE], type: QueryTypes.SELECT });
			return rows.length ? this.appendBatch(rows) : 0;
		},

		/** Waits until a message arrives (JetStream) or `ms` passed. */
		idle(this: AuditThis, ms: number): Promise<void> {
			return new Promise(resolve => {
				const timer = setTimeout(() => {
					this.wake = null;
					resolve();
				}, ms);
				this.wake = () => {
					clearTimeout(timer);
					this.wake = null;
					resolve();
				};
			});
		},

		/** While leader: consume and append; a fenced-out or failing writer stops and lets go. */
		async writeLoop(this: AuditThis, duty: LeaderDuty) {
			// The transporter is connected by now (services start after it), not yet when the service was created.
			this.mode = natsConnectionOf(this.broker) ? "jetstream" : "outbox-table";
			while (duty.running) {
				if (!duty.lease.isLeader()) {
					if (this.messages || this.buffer.length) await this.stopConsuming();
					await sleep(IDLE_WAIT_MS);
					continue;
				}
				try {
					if (!this.messages && this.mode === "jetstream") await this.startConsuming();
					const handled = this.mode === "jetstream" ? await this.flushJetStream() : await this.flushOutboxTable();
					// Idle: wait for a delivery. Busy but not full: let 10 ms of events gather into the next batch.
					if (handled === 0) await this.idle(this.mode === "jetstream" ? IDLE_WAIT_MS : OUTBOX_TABLE_POLL_MS);
					else if (handled < BATCH_SIZE) await sleep(COALESCE_MS);
				} catch (err) {
					this.stats.lastError = (err as Error).message;
					this.logger.warn(`Audit writer: ${(err as Error).message}`, { event: err instanceof FencedOutError ? "audit.fenced_out" : "audit.write_failed" });
					if (err instanceof FencedOutError) await this.stopConsuming();
					await duty.pause(ERROR_PAUSE_MS);
				}
			}
			await this.stopConsuming();
		},
	},

	/** The lease exists from here on (LeaderDutyMixin); the writer fences every append with its token. */
	created() {
		registerMetrics(this);
		this.buffer = [];
		this.wake = null;
		this.messages = null;
		this.stats = { appended: 0, duplicates: 0, rejected: 0, lastError: null };
		this.mode = "outbox-table";
		this.writer = new AuditWriter(databaseOf(this.broker), { lease: this.lease.name, holder: this.broker.nodeID, fencingToken: () => this.lease.fencingToken });
	},
};

export default AuditService;
