/**
 * Moleculer's NATS transporter, with the packets of one event-loop turn written to NATS in at most two writes.
 *
 * nats.js flushes its outbound buffer in a microtask after the first publish. That batches well when one
 * callback sends many packets (a NATS read of 100 requests answers them all at the same promise depth, so
 * one flush carries 100 replies), but a gateway reading HTTP requests one socket callback at a time makes one
 * socket write per request, and nats-server one read and one wake-up per request. Measured (docs/BENCHMARKS.md
 * "Mesh foundation"), that per-packet write and the nats-server work behind it cost more CPU than the
 * gateway's own JavaScript on this machine.
 *
 * The rule: the first flush of a loop turn leaves at once, as with the plain transporter (no added latency for
 * a lone call, nor for a burst one callback sends); what later callbacks of the same turn send waits for
 * setImmediate (the end of this turn's I/O callbacks) and leaves in one write, or sooner, with the rest of its
 * burst, once HOLD_LIMIT packets wait. Holding every packet until
 * setImmediate also batched the gateway, but cost remote calls a loop turn on both sides (A/B in BENCHMARKS.md).
 * The order of packets is kept: once something is held, everything after it is held too.
 */
import { Transporters } from "moleculer";

/**
 * Held packets that make a later callback a burst rather than a trickle. The gateway's trickle is one packet per
 * HTTP request callback, at most one per open connection in a turn (50 in bench/mesh), and a caller with 100
 * calls in flight holds fewer than 100: both stay as they were. A caller with 1,000 calls in flight reads its
 * answers in several chunks per turn, and its next ~860 requests waited for setImmediate in one held batch while
 * the serving node idled: bench:call-curve at 1,000 callers 34.3k and 34.9k calls/s, against 39.3k and 41.1k with
 * this limit (docs/BENCHMARKS.md, "How the remote call grows"). 16 split the 100-caller case's batches too: 0.86
 * and 0.88 of bare Moleculer there, against 0.97 and 1.00 without a limit.
 */
export const HOLD_LIMIT = 256;

export class CoalescingNatsTransporter extends Transporters.NATS {
	private pending: Array<[string, Buffer]> = [];
	/** A direct publish may join nats.js's pending flush: true from the turn's first publish until that flush has run. */
	private flushOpen = false;
	/** The turn already had its direct flush; later sends wait for setImmediate. */
	private directUsed = false;
	private scheduled = false;
	/** Bound once: a closure per turn for each was garbage on every call of a lone caller. */
	private readonly closeDirectFlush = (): void => {
		this.flushOpen = false;
	};
	private readonly publishPendingNow = (): void => this.publishPending();

	send(topic: string, data: Buffer): Promise<void> {
		if (this.pending.length === 0 && (this.flushOpen || !this.directUsed)) {
			this.publishNow(topic, data);
			if (!this.flushOpen) this.openDirectFlush();
		} else if (this.pending.push([topic, data]) >= HOLD_LIMIT) {
			this.publishHeld();
		} else {
			this.schedule();
		}
		return Promise.resolve();
	}

	/**
	 * A later callback's burst: nats.js writes a burst in one flush anyway, so holding it longer only delays it.
	 * What was held leaves now, in order, and the rest of the burst joins the same flush.
	 */
	private publishHeld(): void {
		this.drainHeld();
		if (!this.flushOpen) this.openDirectFlush();
	}

	/**
	 * nats.js queued its flush microtask on the publish just made; this one, queued after it, closes the
	 * window, so every publish in between rides the same socket write. The turn's end reopens it.
	 */
	private openDirectFlush(): void {
		this.flushOpen = true;
		this.directUsed = true;
		queueMicrotask(this.closeDirectFlush);
		this.schedule();
	}

	private schedule(): void {
		if (this.scheduled) return;
		this.scheduled = true;
		setImmediate(this.publishPendingNow);
	}

	/** Publishes what waited in one synchronous run (nats.js then writes it in one flush) and opens the next turn. */
	publishPending(): void {
		this.scheduled = false;
		this.directUsed = false;
		this.drainHeld();
	}

	private drainHeld(): void {
		const batch = this.pending;
		this.pending = [];
		for (const [topic, data] of batch) this.publishNow(topic, data);
	}

	private publishNow(topic: string, data: Buffer): void {
		try {
			this.client?.publish(topic, data);
		} catch (err) {
			// A closed connection throws here, after send() resolved: logged as Moleculer's transit logs a
			// failed send; the call itself then ends by its timeout, as it would have before.
			this.logger.error(`Unable to send a packet to '${topic}'`, err);
		}
	}

	/** Nothing held back is lost on a graceful stop (Moleculer sends DISCONNECT just before this). */
	disconnect(): Promise<void> {
		this.publishPending();
		return super.disconnect();
	}
}
