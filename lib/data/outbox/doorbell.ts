/**
 * A write that committed outbox rows wakes the relay through the mesh, so that an idle relay need not poll
 * PostgreSQL to find them (docs/BENCHMARKS.md, "Outbox wake-up from the mesh").
 *
 * The ring is a Moleculer broadcast of OUTBOX_DUE_EVENT to the `outbox` services: one small packet per other node
 * running one, or a direct call when the relay leader is this node. The leader wakes; the others ignore it.
 *
 * It is sent after the commit, never before: a relay that hears it and claims sees the rows. A ring that is lost
 * (a node dying between its commit and its ring, a transporter outage) costs that row the relay's fallback poll
 * (OUTBOX_IDLE_POLL_MS), not the row: the rows are in the table either way.
 *
 * Rings are spaced per node: the first of a burst leaves at once, the rest as one more ring RING_GAP_MS after
 * the last one sent. A relay claims everything due when it wakes, so a stream of writes needs one ring per
 * claim, not one per write.
 */
import type { ServiceBroker } from "moleculer";
import type { Sequelize, Transaction } from "sequelize";

export const OUTBOX_DUE_EVENT = "outbox.due";
/** The service group rings go to (outbox.service.ts's name). */
const RELAY_GROUP = "outbox";
/**
 * Under a stream, the relay claims at most every 50 ms (outbox.service.ts, CLAIM_SPACING_MS), so rings closer
 * together than that wake nothing more; 20 ms keeps the last write of a burst from waiting more than that for its ring.
 */
export const RING_GAP_MS = 20;

/** At most one send per `gapMs`: the first at once, the ones a gap swallowed as one trailing send. */
export class Doorbell {
	private lastSent = -Infinity;
	private trailing: NodeJS.Timeout | null = null;

	constructor(
		private readonly send: () => void,
		private readonly gapMs = RING_GAP_MS,
	) {}

	ring(): void {
		if (this.trailing) return;
		const wait = this.lastSent + this.gapMs - performance.now();
		if (wait <= 0) return this.fire();
		this.trailing = setTimeout(() => {
			this.trailing = null;
			this.fire();
		}, wait);
		// A ring is an optimisation: it must not keep a stopping process alive.
		this.trailing.unref();
	}

	private fire(): void {
		this.lastSent = performance.now();
		this.send();
	}
}

/** By database handle: the writers hold one (lib/data/outbox/enqueue.ts), and one node has one. */
const doorbells = new WeakMap<Sequelize, Doorbell>();

/** A doorbell that rings the mesh's relay through `broker`. */
export function meshDoorbell(broker: ServiceBroker): Doorbell {
	return new Doorbell(() => {
		// Best effort: a ring that cannot leave (no transporter yet, a stopping broker) falls back to the relay's poll.
		try {
			Promise.resolve(broker.broadcast(OUTBOX_DUE_EVENT, {}, { groups: [RELAY_GROUP] })).catch(() => undefined);
		} catch {
			// same as above
		}
	});
}

/** Called once per node, where the node hands its services the database (lib/runtime/node-resources.ts). */
export function installOutboxDoorbell(sequelize: Sequelize, broker: ServiceBroker): void {
	doorbells.set(sequelize, meshDoorbell(broker));
}

/**
 * Tells the relay that outbox rows were written through `sequelize`: after `t` commits, or now when the rows were
 * written by a statement of their own (`t` null). A handle without a doorbell (a bench's or a test's own) rings nothing.
 */
export function ringOutbox(sequelize: Sequelize, t: Transaction | null = null): void {
	const doorbell = doorbells.get(sequelize);
	if (!doorbell) return;
	if (t) t.afterCommit(() => doorbell.ring());
	else doorbell.ring();
}
