/**
 * Consumers of outbox events (JetStream or Moleculer) see each event at least once; this makes their
 * effect happen once: the event id (= outbox id = JetStream msg id) is recorded in processed_events in
 * the same transaction as the consumer's own writes.
 */
import { QueryTypes, type Sequelize, type Transaction } from "sequelize";

/** Runs `handle` unless `consumer` already handled `eventId`; returns whether it ran. */
export async function handleOnce(sequelize: Sequelize, consumer: string, eventId: string, handle: (t: Transaction) => Promise<void>): Promise<boolean> {
	return sequelize.transaction(async t => {
		const claimed = await sequelize.query("INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING event_id", {
			bind: [consumer, eventId],
			type: QueryTypes.SELECT,
			transaction: t,
		});
		if (!claimed.length) return false;
		await handle(t);
		return true;
	});
}
