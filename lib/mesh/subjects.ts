/**
 * Plain (non-outbox) mesh notifications with seed subject names: `node.{node_id}.events`,
 * `system.broadcast`, `ops.health.{service}`, `ops.alert.{severity}`. Each goes out as a core NATS
 * message on that subject (with EVENTS_SUBJECT_PREFIX) when NATS is the transport — for consumers
 * outside the mesh — and as a Moleculer event of the same name to every node of the mesh. Best effort,
 * at most once: durable facts go through the outbox instead (lib/data/outbox/enqueue.ts).
 */
import type { ServiceBroker } from "moleculer";
import { nodeContextOf } from "../runtime/node-resources";
import { prefixedSubject } from "../data/outbox/enqueue";
import { natsConnectionOf } from "./moleculer-internals";

export type AlertSeverity = "warning" | "critical";

export const nodeEventsSubject = (nodeID: string) => `node.${nodeID}.events`;
export const SYSTEM_BROADCAST = "system.broadcast";
export const healthSubject = (service: string) => `ops.health.${service}`;
export const alertSubject = (severity: AlertSeverity) => `ops.alert.${severity}`;

export async function publishSubject(broker: ServiceBroker, subject: string, payload: Record<string, unknown>): Promise<void> {
	const message = { ...payload, subject, from: broker.nodeID, at: new Date().toISOString() };
	const nc = natsConnectionOf(broker);
	if (nc) nc.publish(prefixedSubject(nodeContextOf(broker).settings.events, subject), JSON.stringify(message));
	await broker.broadcast(subject, message);
}
