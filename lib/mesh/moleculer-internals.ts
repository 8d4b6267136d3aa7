/**
 * The private parts of Moleculer 0.15 this project reaches into, in one place, typed as narrowly as
 * they are used. Moleculer is pinned to a tilde range in package.json for these; a unit test
 * (test/unit/liveness-probe.test.ts) pins the shapes so an upgrade that changes them fails loudly.
 */
import { Transporters, type ServiceBroker } from "moleculer";
import type { NatsConnection } from "nats";

/** One call this node sent and still waits for (Transit#pendingRequests). */
export interface PendingRequest {
	nodeID: string;
	action?: { name?: string; idempotent?: boolean };
	reject(err: Error): void;
	/** stamped by the liveness probe the first time it sees the request */
	probeSeenAt?: number;
}

interface TransitInternals {
	pendingRequests: Map<string, PendingRequest>;
	_deletePendingReqStream?(id: string, origin: string): void;
	_deletePendingResStream?(id: string, origin: string): void;
	tx?: { prefix?: string; client?: NatsConnection | null };
}

function transitOf(broker: ServiceBroker): TransitInternals | null {
	return (broker.transit as unknown as TransitInternals | undefined) ?? null;
}

export function pendingRequestsOf(broker: ServiceBroker): Map<string, PendingRequest> | null {
	return transitOf(broker)?.pendingRequests ?? null;
}

/**
 * Drops a pending call as Transit#removePendingRequestByNodeID does for a node that left: out of
 * pendingRequests, rejected, and its request/response streams destroyed. A streamed answer resolves
 * its call at the first chunk but stays pending until the last; rejecting it alone is a no-op, and
 * dropping only the pendingRequests entry would leave its stream open forever (nothing else ends it).
 */
export function abortPendingRequest(broker: ServiceBroker, id: string, err: Error): void {
	const transit = transitOf(broker);
	const req = transit?.pendingRequests.get(id);
	if (!transit || !req) return;
	transit.pendingRequests.delete(id);
	req.reject(err);
	transit._deletePendingReqStream?.(id, req.nodeID);
	transit._deletePendingResStream?.(id, req.nodeID);
}

export function usesNatsTransporter(broker: ServiceBroker): boolean {
	return transitOf(broker)?.tx instanceof Transporters.NATS;
}

/**
 * The NATS connection Moleculer's NATS transporter already holds (once connected), for JetStream and
 * plain subjects (outbox relay, audit writer, node-registry subjects, liveness probe): one connection per
 * node instead of a second one. Null on any other transporter (the TCP fallback).
 */
export function natsConnectionOf(broker: ServiceBroker): NatsConnection | null {
	return usesNatsTransporter(broker) ? (transitOf(broker)?.tx?.client ?? null) : null;
}

/** Moleculer's subject prefix: `MOL` or `MOL-<namespace>`. */
export function subjectPrefixOf(broker: ServiceBroker): string {
	return transitOf(broker)?.tx?.prefix ?? (broker.namespace ? `MOL-${broker.namespace}` : "MOL");
}

export function remoteNodeMetadata(broker: ServiceBroker, nodeID: string): Record<string, unknown> | null {
	const node = (broker.registry as unknown as { nodes: { get(id: string): { metadata?: Record<string, unknown>; available?: boolean } | undefined } }).nodes.get(nodeID);
	return node?.available ? (node.metadata ?? {}) : null;
}
