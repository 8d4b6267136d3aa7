/**
 * The writing side of the transactional outbox: a service inserts its events into `outbox` in the
 * same transaction as the change they describe, so an event exists if and only if the change
 * committed. lib/data/outbox/relay.ts publishes them.
 */
import type { Sequelize, Transaction } from "sequelize";
import type { EventSettings } from "../../runtime/settings";
import { ringOutbox } from "./doorbell";

export interface OutboxEvent {
	aggregateType: string;
	aggregateId: string;
	/** Moleculer event name, e.g. "memory.created" */
	eventType: string;
	/** JetStream subject without the configured prefix, e.g. "memory.created.public" */
	subject: string;
	/** never secrets or confidential content: events are copied to logs, streams and other nodes */
	payload: Record<string, unknown>;
}

export function prefixedSubject(events: EventSettings, subject: string): string {
	return events.subjectPrefix ? `${events.subjectPrefix}.${subject}` : subject;
}

/**
 * The multi-row INSERT of `items` (at least one), its parameters numbered from `$firstParam`: a write can
 * put it in a data-modifying CTE beside its own change, so that change and events are one statement.
 * With `onlyIf` (the name of another CTE) the rows are inserted only when that CTE returned a row.
 * The write rings the relay (`ringOutbox`, lib/data/outbox/doorbell.ts) once its statement has committed.
 */
export function outboxInsert(events: EventSettings, items: OutboxEvent[], firstParam = 1, onlyIf?: string): { sql: string; bind: unknown[] } {
	const at = (i: number, column: number) => `$${firstParam + i * 5 + column}`;
	const values = items.map((_, i) => `(${at(i, 0)}, ${at(i, 1)}, ${at(i, 2)}, ${at(i, 3)}, ${at(i, 4)}::jsonb)`).join(", ");
	const bind = items.flatMap(e => [e.aggregateType, e.aggregateId, e.eventType, prefixedSubject(events, e.subject), JSON.stringify(e.payload)]);
	const rows = onlyIf ? `SELECT * FROM (VALUES ${values}) AS event WHERE EXISTS (SELECT 1 FROM ${onlyIf})` : `VALUES ${values}`;
	return { sql: `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, subject, payload) ${rows}`, bind };
}

/**
 * One multi-row INSERT for all of a write's events: one round trip inside the write's transaction, or,
 * with `t` null (events that describe no change of their own), alone: one statement is atomic by itself.
 * The relay is rung once the rows are committed.
 */
export async function enqueueEvents(sequelize: Sequelize, t: Transaction | null, events: EventSettings, items: OutboxEvent[]): Promise<void> {
	if (!items.length) return;
	const { sql, bind } = outboxInsert(events, items);
	await sequelize.query(sql, { bind, transaction: t ?? undefined });
	ringOutbox(sequelize, t);
}
