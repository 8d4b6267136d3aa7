/**
 * Moleculer's NATS transporter, with the packets one event-loop turn sends written to NATS together.
 *
 * nats.js flushes its outbound buffer in a microtask after the first publish, so a gateway handling HTTP
 * requests one socket callback at a time makes one socket write per request, and nats-server one read and
 * one wake-up per request. Measured (docs/BENCHMARKS.md "Mesh foundation"), that per-packet write and the
 * nats-server work behind it cost more CPU than the gateway's own JavaScript on this machine. Holding the
 * publishes until setImmediate (the end of this loop turn's I/O callbacks) lets every request read in the
 * same turn share one write; the delay is one loop turn, and the order of packets is kept.
 */
import { Transporters } from "moleculer";

export class CoalescingNatsTransporter extends Transporters.NATS {
	private pending: Array<[string, Buffer]> = [];
	private scheduled = false;

	send(topic: string, data: Buffer): Promise<void> {
		this.pending.push([topic, data]);
		if (!this.scheduled) {
			this.scheduled = true;
			setImmediate(() => this.publishPending());
		}
		return Promise.resolve();
	}

	/** Publishes in one synchronous run: nats.js then writes them to the socket in one flush. */
	publishPending(): void {
		this.scheduled = false;
		const batch = this.pending;
		this.pending = [];
		for (const [topic, data] of batch) {
			try {
				this.client?.publish(topic, data);
			} catch (err) {
				// A closed connection throws here, after send() resolved: logged as Moleculer's transit logs a
				// failed send; the call itself then ends by its timeout, as it would have before.
				this.logger.error(`Unable to send a packet to '${topic}'`, err);
			}
		}
	}

	/** Nothing held back is lost on a graceful stop (Moleculer sends DISCONNECT just before this). */
	disconnect(): Promise<void> {
		this.publishPending();
		return super.disconnect();
	}
}
