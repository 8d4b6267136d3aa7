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
import { prefixedSubject } from "./outbox";
import type { EventSettings } from "./settings";

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
	lag: "outbox.relay.lag.seconds",
	published: "outbox.published.total",
	failed: "outbox.failed.total",
	dead: "outbox.dead.total",
};

/** Subjects the events stream captures (everything the services publish). */
export function streamSubjects(events: EventSettings): string[] {
	return ["memory.>", "audit.>", "ops.>", "message.>", "presence.>"].map(s => prefixedSubject(events, s));
}

export async function ensureStream(nc: NatsConnection, events: EventSettings): Promise<void> {
	const jsm = await nc.jetstreamManager();
	const subjects = streamSubjects(events);
	try {
		const info = await jsm.streams.info(events.stream);
		const missing = subjects.filter(s => !info.config.subjects?.includes(s));
		if (missing.length) await jsm.streams.update(events.stream, { ...info.config, subjects: [...(info.config.subjects ?? []), ...missing] });
	} catch (err) {
		if (!/stream not found/i.test((err as Error).message)) throw err;
		// Two minutes of message-id dedup: longer than any relay restart.
		await jsm.streams.add({ name: events.stream, subjects, duplicate_window: 120 * 1_000_000_000 });
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
	jetstream: JetStreamClient | null;
	batchSize?: number;
}

const CLAIM_BATCH = `SELECT id, aggregate_type, aggregate_id, event_type, subject, payload, attempts, created_at
FROM outbox WHERE status = 'pending' AND next_attempt_at <= now()
ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED`;

const MARK_PUBLISHED = `UPDATE outbox SET status = 'published', published_at = clock_timestamp(), attempts = attempts + 1, last_error = NULL
WHERE id = ANY($1::uuid[])`;

const MARK_FAILED = `UPDATE outbox SET attempts = attempts + 1, last_error = $2, next_attempt_at = now() + $3 * interval '1 millisecond' WHERE id = $1`;

const MOVE_TO_DLQ = `WITH gone AS (DELETE FROM outbox WHERE id = $1 RETURNING *)
INSERT INTO outbox_dlq (id, aggregate_type, aggregate_id, event_type, subject, payload, attempts, last_error, created_at)
SELECT id, aggregate_type, aggregate_id, event_type, subject, payload, attempts + 1, $2, created_at FROM gone`;

export class OutboxRelay {
	constructor(private readonly opts: RelayOptions) {}

	private get metrics() {
		return this.opts.broker.metrics;
	}

	/** One batch: publish, then mark. Returns how many rows it handled. */
	async runBatch(): Promise<number> {
		const { sequelize } = this.opts;
		return sequelize.transaction(async t => {
			const rows = await sequelize.query<OutboxRow>(CLAIM_BATCH, { bind: [this.opts.batchSize ?? 500], type: QueryTypes.SELECT, transaction: t });
			if (!rows.length) return 0;
			const results = await Promise.all(rows.map(row => this.publish(row).then(() => null, (err: Error) => err)));
			const published = rows.filter((_, i) => !results[i]);
			if (published.length) await sequelize.query(MARK_PUBLISHED, { bind: [published.map(r => r.id)], transaction: t });
			for (const [i, row] of rows.entries()) {
				const err = results[i];
				if (err) await this.recordFailure(t, row, err);
			}
			this.record(published);
			return rows.length;
		});
	}

	private async publish(row: OutboxRow): Promise<void> {
		const message = { id: row.id, type: row.event_type, aggregate: { type: row.aggregate_type, id: row.aggregate_id }, ...row.payload };
		if (this.opts.jetstream) {
			await this.opts.jetstream.publish(row.subject, JSON.stringify(message), { msgID: row.id, timeout: 2_000 }).catch((err: Error) => {
				// nats.js reports "no stream for this subject" as a bare 503 (no responders).
				throw err.message === "503" ? new Error(`no JetStream stream captures subject "${row.subject}" (503 no responders)`) : err;
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
			await this.opts.sequelize.query(MARK_FAILED, { bind: [row.id, reason, backoffMs(this.opts.events, attempts)], transaction: t });
			return;
		}
		await this.opts.sequelize.query(MOVE_TO_DLQ, { bind: [row.id, reason], transaction: t });
		this.metrics.increment(OUTBOX_METRICS.dead, { event_type: row.event_type });
		const alert = { severity: "warning", source: "outbox-relay", outbox_id: row.id, event_type: row.event_type, subject: row.subject, attempts, error: reason };
		this.opts.broker.logger.warn(`Outbox event ${row.id} (${row.event_type}) moved to the DLQ after ${attempts} attempts: ${reason}`, { event: "outbox.dead" });
		await this.opts.broker.broadcast("ops.alert.warning", alert);
		await this.opts.jetstream?.publish(prefixedSubject(this.opts.events, "ops.alert.warning"), JSON.stringify(alert), { msgID: `dlq-${row.id}` }).catch(() => undefined);
	}

	private record(published: OutboxRow[]): void {
		const now = Date.now();
		for (const row of published) {
			this.metrics.increment(OUTBOX_METRICS.published, { event_type: row.event_type });
			this.metrics.observe(OUTBOX_METRICS.lag, (now - new Date(row.created_at).getTime()) / 1000);
		}
	}

	async pendingCount(): Promise<number> {
		const [{ n }] = await this.opts.sequelize.query<{ n: string }>("SELECT count(*) AS n FROM outbox WHERE status = 'pending'", { type: QueryTypes.SELECT });
		return Number(n);
	}
}
