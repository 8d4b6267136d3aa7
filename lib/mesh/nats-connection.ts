/**
 * The NATS connection Moleculer's NATS transporter already holds, for JetStream and plain subjects
 * (outbox relay, audit writer, node-registry subjects). One connection per node instead of a second one;
 * null on the TCP fallback. Reaches into the transporter (`transit.tx.client`), pinned by
 * test/integration/outbox.test.ts, so only this file knows the private path.
 */
import type { ServiceBroker } from "moleculer";
import type { NatsConnection } from "nats";
import { nodeContextOf } from "../node-context";

export function natsConnectionOf(broker: ServiceBroker): NatsConnection | null {
	if (nodeContextOf(broker).transport.kind !== "nats") return null;
	return (broker.transit as unknown as { tx: { client?: NatsConnection } } | undefined)?.tx.client ?? null;
}
