/**
 * The outbox relay: publishes committed outbox rows to NATS JetStream (message id = outbox id, so the
 * stream's duplicate window drops a re-publish after a crash) and as Moleculer events, then marks them
 * published. Failures back off exponentially; after `outboxMaxAttempts` a row moves to outbox_dlq and
 * an `ops.alert.warning` event fires. Exactly one relay runs per mesh: outbox.service holds a leader
 * lease and runs batches only while it leads.
 */
import type { ServiceBroker } from "moleculer";
import type { JetStreamClient, NatsConnection } from "nats";
import { QueryTypes, type Sequelize, type Transaction } from "sequelize";
import { probeEventStream, subjectMatches, type Outage } from "../event-stream";
import { prefixedSubject } from "./enqueue";
import type { EventSettings } from "../../runtime/settings";
import { nodeContextIfAny } from "../../runtime/node-resources";

export interface OutboxRow {
	id: string;
	aggregate_type: string;
	aggregate_id: string;
	event_type: string;
	subject: string;
	payload: Record<string, unknown>;
	attempts: number;
	created_at: Date;
}

export const OUTBOX_METRICS = {
	pending: "outbox.pending",
	/** age of the oldest pending event: grows while the relay is paused or behind */
	oldestPending: "outbox.lag.seconds",
	paused: "outbox.relay.paused",
	dlq: "outbox.dlq.size",
	replicasConfigured: "event_stream.replicas.configured",
	replicasOnline: "event_stream.replicas.online",
	lag: "outbox.relay.lag.seconds",
	published: "outbox.published.total",
	failed: "outbox.failed.total",
	dead: "outbox.dead.total",
};

/**
 * Where a service names the subjects it publishes through the outbox (without the events prefix):
 * `metadata: { publishes: ["memory.>"] }` in its schema. Moleculer gossips every node's service
 * metadata, so the stream can capture what the services of the whole mesh publish while lib/ keeps no
 * list of the domain's subjects.
 */
export const PUBLISHES = "publishes";

/**
 * The subjects declared by the services of this node's code base (running or not: a producer that left
 * the mesh may have events still pending) and by the services the registry knows on other nodes,
 * deduplicated and sorted. `own` is the calling service's metadata, for nodes built without a code base
 * (in-process tests): a service still starting is not in the registry yet.
 */
export function declaredSubjects(broker: ServiceBroker, own: Record<string, unknown> = {}): string[] {
	const services = broker.registry.getServiceList({ skipInternal: true }) as Array<{ metadata?: Record<string, unknown> }>;
	const codeBase = nodeContextIfAny(broker)?.codeBaseMetadata?.() ?? [];
	const metadata = [own, ...codeBase, ...services.map(s => s.metadata ?? {})];
	const subjects = metadata.flatMap(m => m[PUBLISHES]).filter((s): s is string => typeof s === "string");
	return [...new Set(subjects)].sort();
}

/** Subjects the events stream captures: those declared, with the configured prefix. */
export function streamSubjects(events: EventSettings, declared: string[]): string[] {
	return declared.map(s => prefixedSubject(events, s));
}

/** Two updates racing (relay and audit writer on different nodes) can drop each other's subjects: read back and add again. */
const ENSURE_ATTEMPTS = 3;

/**
 * Creates the event stream, or brings an existing one to the given subjects (it only ever adds) and
 * the configured replica count (NATS_STREAM_REPLICAS: 3 on a three-server cluster, so the stream
 * survives one server; 1 on a single server). Returns what it changed, for the log.
 */
export async function ensureStream(nc: NatsConnection, events: EventSettings, declared: string[]): Promise<string | null> {
	const jsm = await nc.jetstreamManager();
	const subjects = streamSubjects(events, declared);
	const replicas = events.streamReplicas;
	const changes: string[] = [];
	for (let attempt = 0; ; attempt++) {
		let info;
		try {
			info = await jsm.streams.info(events.stream);
		} catch (err) {
			if (!/stream not found/i.test((err as Error).message)) throw err;
			// Two minutes of message-id dedup: longer than any relay restart.
			await jsm.streams.add({ name: events.stream, subjects, num_replicas: replicas, duplicate_window: 120 * 1_000_000_000 });
			return `stream ${events.stream} created with ${replicas} replica(s), subjects ${subjects.join(" ")}`;
		}
		const missing = subjects.filter(s => !info.config.subjects?.includes(s));
		if (!missing.length && info.config.num_replicas === replicas) return changes.length ? changes.join("; ") : null;
		if (attempt === ENSURE_ATTEMPTS) throw new Error(`stream ${events.stream}: could not add ${missing.join(" ")} (updated concurrently ${attempt} times)`);
		await jsm.streams.update(events.stream, { ...info.config, subjects: [...(info.config.subjects ?? []), ...missing], num_replicas: replicas });
		changes.push(`stream ${events.stream} updated: replicas ${info.config.num_replicas} → ${replicas}${missing.length ? `, subjects + ${missing.join(" ")}` : ""}`);
	}
}

export function backoffMs(events: EventSettings, attempts: number): number {
	return Math.min(events.outboxBackoffMs * 2 ** (attempts - 1), 60_000);
}

export interface RelayOptions {
	broker: ServiceBroker;
	sequelize: Sequelize;
	events: EventSettings;
	/** null on the TCP fallback: Moleculer events only */
	nats: NatsConnection | null;
	batchSize?: number;
}

/**
 * The oldest due rows, read in created_at order from the partial index outbox_pending_by_age (migration 011)
 * and stopped at the LIMIT. Publishing a row UPDATEs it out of that index's predicate but leaves its entry
 * until VACUUM; an index scan marks such entries dead as it passes them, so the next claims skip them without
 * reading the heap. A bitmap scan never marks them, and the planner takes one (then sorts) whenever it expects
 * few pending rows, the usual state of a queue: each claim then read every row published since the last
 * VACUUM (docs/BENCHMARKS.md, "Memory → JetStream lag"). CLAIM_PLAN rules bitmap scans out for the claim's
 * transaction alone.
 */
export const CLAIM_PLAN = "SET LOCAL enable_bitmapscan = off";
/** The rows a claim takes, and the ones ANY_DUE looks for: one predicate, so the check never disagrees with the claim. */
const DUE = "status = 'pending' AND next_attempt_at <= now()";
export const CLAIM_BATCH = `SELECT id, aggregate_type, aggregate_id, event_type, subject, payload, attempts, created_at
FROM outbox WHERE ${DUE}
ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED`;

/**
 * Whether a claim would find a row now, in one statement outside any transaction (the same partial index; an
 * EXISTS stops at the first entry). A claim that finds nothing still costs four (BEGIN, SET LOCAL, the SELECT …
 * FOR UPDATE, COMMIT), and an idle leader claims 20 times a second.
 */
const ANY_DUE = `SELECT EXISTS (SELECT 1 FROM outbox WHERE ${DUE}) AS due`;

const MARK_PUBLISHED = `UPDATE outbox SET status = 'published', published_at = clock_timestamp(), attempts = attempts + 1, last_error = NULL
WHERE id = ANY($1::uuid[])`;

const MARK_FAILED = `UPDATE outbox SET attempts = attempts + 1, last_error = $2, next_attempt_at = now() + $3 * interval '1 millisecond' WHERE id = $1`;

const MOVE_TO_DLQ = `WITH gone AS (DELETE FROM outbox WHERE id = $1 RETURNING *)
INSERT INTO outbox_dlq (id, aggregate_type, aggregate_id, event_type, subject, payload, attempts, last_error, created_at)
SELECT id, aggregate_type, aggregate_id, event_type, subject, payload, attempts + 1, $2, created_at FROM gone`;

export interface BatchResult {
	/** rows claimed (published, failed or left pending) */
	handled: number;
	/** set when the stream is unavailable: the failed rows stay pending, the caller pauses */
	outage: Outage | null;
}

/** Errors that say "the stream did not answer", not "this event is wrong". */
const isUnanswered = (err: Error & { code?: string }) => err.code === "503" || err.code === "TIMEOUT" || /timeout/i.test(err.message);

export class OutboxRelay {
	private readonly jetstream: JetStreamClient | null;
	/** the last claim did not fill its batches, so it took everything due: poll() asks hasDue() before claiming again */
	private idle = false;
	/**
	 * performance.now() by which each row this relay put in backoff is due again (one entry per ~10 ms: a failing
	 * batch shares one), until a poll at or after it. Each retry keeps its own entry: a row that failed again
	 * before an earlier entry came due must not be forgotten when that entry goes.
	 */
	private retryDeadlines: number[] = [];

	constructor(private readonly opts: RelayOptions) {
		this.jetstream = opts.nats ? opts.nats.jetstream() : null;
	}

	private get metrics() {
		return this.opts.broker.metrics;
	}

	get batchSize(): number {
		return this.opts.batchSize ?? 500;
	}

	/**
	 * Up to `depth` batches in flight, each in its own transaction: the next batch claims its rows (SKIP
	 * LOCKED, so never the same rows) as soon as the previous one's publishes are on the wire, and the
	 * relay waits for the acks of several batches at once instead of one batch's round trips at a time —
	 * waiting, not CPU, is what bounds a relay that publishes one batch after another. The stream's order
	 * still follows created_at: a batch issues all its publishes before the next one claims. Stops early at
	 * a batch that was not full (nothing more to claim); rethrows the first failure once every batch settled.
	 */
	async runBatches(depth: number): Promise<BatchResult> {
		const batches: Array<Promise<BatchResult>> = [];
		for (let i = 0; i < depth; i++) {
			let onWire!: (claimed: number) => void;
			const publishing = new Promise<number>(resolve => (onWire = resolve));
			const batch = this.runBatch(onWire);
			batches.push(batch);
			const claimed = await Promise.race([publishing, batch.then(() => 0, () => 0)]);
			if (claimed < this.batchSize) break;
		}
		const settled = await Promise.allSettled(batches);
		const failed = settled.find((r): r is PromiseRejectedResult => r.status === "rejected");
		if (failed) throw failed.reason;
		const results = settled.map(r => (r as PromiseFulfilledResult<BatchResult>).value);
		return { handled: results.reduce((n, r) => n + r.handled, 0), outage: results.find(r => r.outage)?.outage ?? null };
	}

	/** Whether a row is due for publishing now (one statement, no transaction). */
	async hasDue(): Promise<boolean> {
		const [row] = await this.opts.sequelize.query<{ due: boolean }>(ANY_DUE, { type: QueryTypes.SELECT });
		return !!row?.due;
	}

	/**
	 * Whether the last poll took every row that was due (its batches were not full): more can only come from new
	 * commits and retries, so the caller may wait for a ring (services/outbox.service.ts).
	 */
	get tookEverythingDue(): boolean {
		return this.idle;
	}

	/**
	 * runBatches, as the relay's loop calls it. A call that did not fill its batches took every row due then, so
	 * the next one first asks hasDue() — one statement instead of a four-statement claim (BEGIN, SET LOCAL, the
	 * claim, COMMIT) that finds nothing (docs/BENCHMARKS.md, "An idle node: the outbox relay's poll") — unless
	 * `rung`: a write has said it committed rows since (lib/data/outbox/doorbell.ts). A stream that fills batches
	 * never meets the check.
	 */
	async poll(depth: number, rung = false): Promise<BatchResult> {
		// Retries due now are this poll's to take (hasDue sees them); one that fails again is scheduled anew.
		const now = performance.now();
		if (this.retryDeadlines.length) this.retryDeadlines = this.retryDeadlines.filter(at => at > now);
		if (this.idle && !rung && !(await this.hasDue())) return { handled: 0, outage: null };
		this.idle = false;
		const result = await this.runBatches(depth);
		this.idle = !result.outage && result.handled < depth * this.batchSize;
		return result;
	}

	/**
	 * How long until a row this relay put in backoff is due again, or null when none is. No write rings for a
	 * retry, so an idle relay waiting for rings must not sleep past it.
	 */
	msUntilRetry(): number | null {
		if (!this.retryDeadlines.length) return null;
		return Math.max(0, Math.min(...this.retryDeadlines) - performance.now());
	}

	/** `at` or up to 10 ms later: never earlier than the row is due, or the poll then would drop it unseen. */
	private scheduleRetry(at: number): void {
		if (!this.retryDeadlines.some(d => d >= at && d - at < 10)) this.retryDeadlines.push(at);
	}

	/** One batch: publish, then mark. `onWire` hears how many rows it claimed once their publishes are issued. */
	async runBatch(onWire?: (claimed: number) => void): Promise<BatchResult> {
		const { sequelize } = this.opts;
		return sequelize.transaction(async t => {
			await sequelize.query(CLAIM_PLAN, { transaction: t });
			const rows = await sequelize.query<OutboxRow>(CLAIM_BATCH, { bind: [this.batchSize], type: QueryTypes.SELECT, transaction: t });
			// Acks are awaited together: nats.js writes each publish to the connection when it is called.
			const publishing = rows.map(row => this.publish(row).then(() => null, (err: Error) => err));
			onWire?.(rows.length);
			if (!rows.length) return { handled: 0, outage: null };
			const results = await Promise.all(publishing);
			const published = rows.filter((_, i) => !results[i]);
			if (published.length) await sequelize.query(MARK_PUBLISHED, { bind: [published.map(r => r.id)], transaction: t });
			this.record(published);
			const failed = rows.flatMap((row, i) => (results[i] ? [{ row, err: results[i] }] : []));
			if (!failed.length) return { handled: rows.length, outage: null };
			const probe = this.opts.nats ? await probeEventStream(this.opts.nats, this.opts.events.stream) : { outage: null, subjects: [] };
			if (probe.outage) return { handled: rows.length, outage: probe.outage };
			let outage: Outage | null = null;
			for (const { row, err } of failed) {
				// The stream is up and captures this subject, yet did not answer: a leader election or a
				// restart in progress. Keep the row and pause briefly rather than spend one of its attempts.
				if (isUnanswered(err) && probe.subjects.some(p => subjectMatches(p, row.subject))) {
					outage = { code: "stream_unavailable", reason: `JetStream did not acknowledge a publish to a captured subject (${err.message}); retrying` };
				} else await this.recordFailure(t, row, err);
			}
			return { handled: rows.length, outage };
		});
	}

	private async publish(row: OutboxRow): Promise<void> {
		const message = { id: row.id, type: row.event_type, aggregate: { type: row.aggregate_type, id: row.aggregate_id }, ...row.payload };
		if (this.jetstream) {
			await this.jetstream.publish(row.subject, JSON.stringify(message), { msgID: row.id, timeout: 2_000 }).catch((err: Error & { code?: string }) => {
				// nats.js reports "no stream for this subject" as a bare 503 (no responders); runBatch
				// asks the stream whether that was the subject's fault or an outage.
				if (err.message !== "503") throw err;
				throw Object.assign(new Error(`no JetStream stream captures subject "${row.subject}" (503 no responders)`), { code: "503" });
			});
		}
		// In-mesh listeners get it as a Moleculer event too (at-least-once, like the stream).
		await this.opts.broker.broadcast(row.event_type, message);
	}

	private async recordFailure(t: Transaction, row: OutboxRow, err: Error): Promise<void> {
		const attempts = row.attempts + 1;
		const reason = err.message.slice(0, 500);
		this.metrics.increment(OUTBOX_METRICS.failed, { event_type: row.event_type });
		if (attempts < this.opts.events.outboxMaxAttempts) {
			const backoff = backoffMs(this.opts.events, attempts);
			await this.opts.sequelize.query(MARK_FAILED, { bind: [row.id, reason, backoff], transaction: t });
			// PostgreSQL's now() + backoff was taken before this line runs: by this clock the row is due by then.
			this.scheduleRetry(performance.now() + backoff);
			return;
		}
		await this.opts.sequelize.query(MOVE_TO_DLQ, { bind: [row.id, reason], transaction: t });
		this.metrics.increment(OUTBOX_METRICS.dead, { event_type: row.event_type });
		const alert = { severity: "warning", source: "outbox-relay", outbox_id: row.id, event_type: row.event_type, subject: row.subject, attempts, error: reason };
		this.opts.broker.logger.warn(`Outbox event ${row.id} (${row.event_type}) moved to the DLQ after ${attempts} attempts: ${reason}`, { event: "outbox.dead" });
		await this.opts.broker.broadcast("ops.alert.warning", alert);
		await this.jetstream?.publish(prefixedSubject(this.opts.events, "ops.alert.warning"), JSON.stringify(alert), { msgID: `dlq-${row.id}` }).catch(() => undefined);
	}

	/** One counter increment per event type and batch (labels are hashed per call), one lag sample per row. */
	private record(published: OutboxRow[]): void {
		const now = Date.now();
		const perType = new Map<string, number>();
		for (const row of published) {
			perType.set(row.event_type, (perType.get(row.event_type) ?? 0) + 1);
			this.metrics.observe(OUTBOX_METRICS.lag, (now - new Date(row.created_at).getTime()) / 1000);
		}
		for (const [eventType, count] of perType) this.metrics.increment(OUTBOX_METRICS.published, { event_type: eventType }, count);
	}

}

/** Pending rows, the age of the oldest, and the DLQ size (the pending part reads outbox_pending_by_age; needs no stream). */
export async function outboxBacklog(sequelize: Sequelize): Promise<{ pending: number; oldestSeconds: number; dead: number }> {
	const [row] = await sequelize.query<{ n: string; age: string | null; dead: string }>(
		"SELECT count(*) AS n, extract(epoch FROM now() - min(created_at)) AS age, (SELECT count(*) FROM outbox_dlq) AS dead FROM outbox WHERE status = 'pending'",
		{ type: QueryTypes.SELECT },
	);
	return { pending: Number(row.n), oldestSeconds: Math.max(0, Number(row.age ?? 0)), dead: Number(row.dead) };
}
