/**
 * NATS reconnect guard: when a NATS server of a cluster dies, the calls that were passing through it are
 * lost, and nobody tells Moleculer. The nodes connected to that server reconnect to another one within
 * milliseconds (nats.js re-subscribes before it sends anything else), so the liveness probe finds every
 * node alive — and each lost call waits out its timeout class (`fast` 750 ms, `standard` 5 s).
 * docs/FAILOVER.md ("A NATS server of a cluster dies") has the timeline and the measurements.
 *
 * Which calls can be lost, and what this does about them:
 * - this node's own connection dropped: any call it had pending may have lost its request or its response
 *   (both pass through this node's server), and so may every call it made during the gap: nats.js does
 *   not keep what is published while it reconnects (each dial starts with an empty outbound buffer,
 *   ProtocolHandler#prepare). On the reconnect, every call still pending is rejected with a retryable
 *   RequestRejectedError: idempotent calls retry on another node at once (Moleculer's Retry,
 *   FailoverStrategy), writes answer a retryable 503 (at most once with an Idempotency-Key);
 * - another node's connection dropped (its server died): requests to it and its answers that were on that
 *   server are lost, and so are the answers it sent during its gap, and requests sent to it before its
 *   subscriptions reached the other servers again. After its reconnect it publishes `<prefix>.RECONNECTED.<nodeID>`, behind its
 *   re-subscriptions on the same connection (NATS keeps one connection's order, across routes too); every
 *   node that receives it rejects the calls it has pending on that node the same way. A call the node was
 *   still working on is rejected too: nothing tells it apart from a lost one, and the reply would come.
 *   For an idempotent call that costs one duplicate run; for a write, the client's keyed retry finds the
 *   first one's result (or waits for it on the key's row);
 * - while this node's own connection is down (disconnect → reconnect), the liveness probe does not judge
 *   other nodes: an unanswered probe then says nothing about them (natsConnectionEpoch).
 *
 * Cost at steady state: one subscription per node, nothing sent; one ~50-byte message per reconnect.
 */
import type { Middleware, ServiceBroker } from "moleculer";
import { Errors } from "moleculer";
import type { NatsConnection, Subscription } from "nats";
import { abandonPendingRequests, natsConnectionOf, pendingRequestsOf, subjectPrefixOf, type PendingRequest } from "./moleculer-internals";

/** Per broker: null while its NATS connection is down, else how many times it has reconnected. */
const epochByBroker = new WeakMap<ServiceBroker, number | null>();

/**
 * This node's NATS connection: null while it is down, else a number that changes with every reconnect.
 * A liveness probe is judged only if the epoch is the same (and not null) when it is sent and answered.
 * Always 0 without the guard (another transporter, or NATS not connected yet).
 */
export function natsConnectionEpoch(broker: ServiceBroker): number | null {
	const epoch = epochByBroker.get(broker);
	return epoch === undefined ? 0 : epoch;
}

const reconnectedSubject = (broker: ServiceBroker, nodeID: string) => `${subjectPrefixOf(broker)}.RECONNECTED.${nodeID}`;

class NatsReconnectGuard {
	private subscription: Subscription | null = null;
	private stopped = false;
	private reconnects = 0;
	private readonly log: ReturnType<ServiceBroker["getLogger"]>;

	constructor(
		private readonly broker: ServiceBroker,
		private readonly nc: NatsConnection,
	) {
		this.log = broker.getLogger("nats-guard");
		epochByBroker.set(broker, 0);
	}

	start(): void {
		const prefix = reconnectedSubject(this.broker, "");
		this.subscription = this.nc.subscribe(`${prefix}*`, {
			callback: (_err, msg) => {
				const nodeID = msg.subject.slice(prefix.length);
				if (nodeID === this.broker.nodeID) return;
				const rejected = this.reject(req => req.nodeID === nodeID);
				if (rejected) this.log.info(`Node ${nodeID} reconnected to NATS; ${rejected} call(s) pending on it rejected (retryable)`, { event: "nats.peer-reconnected", node_id: nodeID, rejected });
			},
		});
		void this.watch();
	}

	stop(): void {
		this.stopped = true;
		this.subscription?.unsubscribe();
		this.subscription = null;
	}

	private async watch(): Promise<void> {
		for await (const status of this.nc.status()) {
			if (this.stopped) return;
			if (status.type === "disconnect") this.disconnected(String(status.data));
			else if (status.type === "reconnect") this.reconnected(String(status.data));
		}
	}

	private disconnected(server: string): void {
		epochByBroker.set(this.broker, null);
		this.log.warn(`NATS connection to ${server} lost; reconnecting`, { event: "nats.disconnected", server, pending: pendingRequestsOf(this.broker)?.size ?? 0 });
	}

	private reconnected(server: string): void {
		this.reconnects++;
		epochByBroker.set(this.broker, this.reconnects);
		// Also rejects the few calls made between the reconnect and this status event: a spare retry.
		const rejected = this.reject(() => true);
		// Published after nats.js re-subscribed: whoever receives it can reach this node again.
		this.nc.publish(reconnectedSubject(this.broker, this.broker.nodeID));
		this.log.warn(`NATS connection re-established to ${server}; ${rejected} call(s) pending across the gap rejected (retryable)`, { event: "nats.reconnected", server, rejected });
	}

	private reject(which: (req: PendingRequest) => boolean): number {
		// `lost`: no answer will come through the reset connection, so a retry on another node leaves at once.
		return abandonPendingRequests(this.broker, which, req => new Errors.RequestRejectedError({ action: req.action?.name, nodeID: req.nodeID, lost: true }));
	}
}

export function NatsReconnectGuardMiddleware(): Middleware {
	let guard: NatsReconnectGuard | null = null;
	return {
		name: "NatsReconnectGuard",
		async started(broker: ServiceBroker) {
			const nc = natsConnectionOf(broker);
			if (!nc) return;
			guard = new NatsReconnectGuard(broker, nc);
			guard.start();
		},
		async stopped() {
			guard?.stop();
			guard = null;
		},
	} as Middleware;
}
