/**
 * The private parts of Moleculer 0.15 this project reaches into, in one place, typed as narrowly as
 * they are used. Moleculer is pinned to a tilde range in package.json for these; a unit test
 * (test/unit/moleculer-internals.test.ts) pins the shapes so an upgrade that changes them fails loudly.
 */
import { Transporters, type Context, type ServiceBroker } from "moleculer";
import type { ConnectionOptions, NatsConnection } from "nats";

/** One call this node sent and still waits for (Transit#pendingRequests). */
export interface PendingRequest {
	nodeID: string;
	action?: { name?: string; idempotent?: boolean };
	/** the caller's context (its params and meta are what a hedge re-sends) */
	ctx?: Context;
	resolve(result: unknown): void;
	reject(err: Error): void;
	/** whether the call sends a request stream */
	stream?: boolean;
	/** stamped by the liveness probe the first time it sees the request */
	probeSeenAt?: number;
	/** set once the call has been hedged (lib/mesh/hedged-calls.ts) */
	hedged?: boolean;
}

interface TransitInternals {
	pendingRequests: Map<string, PendingRequest>;
	/** response streams being received, by request id */
	pendingResStreams: Map<string, unknown>;
	/** the response stream of a call whose first chunk has arrived (its promise already resolved with it) */
	_deletePendingResStream(id: string, origin: string): void;
	/** the request stream a call is sending */
	_deletePendingReqStream(id: string, origin: string): void;
	tx?: { prefix?: string; client?: NatsConnection | null; opts?: Record<string, unknown> };
}

function transitOf(broker: ServiceBroker): TransitInternals | null {
	return (broker.transit as unknown as TransitInternals | undefined) ?? null;
}

export function pendingRequestsOf(broker: ServiceBroker): Map<string, PendingRequest> | null {
	return transitOf(broker)?.pendingRequests ?? null;
}

/** Whether the response of pending call `id` is already streaming in (its promise resolved with the stream). */
export function isResponseStreaming(broker: ServiceBroker, id: string): boolean {
	return transitOf(broker)?.pendingResStreams.has(id) ?? false;
}

/**
 * Answers pending call `id` with `result` from elsewhere (a hedge), as Transit#responseHandler does for its own
 * response: removes it, then resolves it. False when the call is no longer the pending `req` (answered or given up).
 */
export function answerPendingRequest(broker: ServiceBroker, id: string, req: PendingRequest, result: unknown): boolean {
	const pending = pendingRequestsOf(broker);
	if (pending?.get(id) !== req) return false;
	pending.delete(id);
	req.resolve(result);
	return true;
}

/**
 * Gives up on one pending call to `nodeID`, as Transit#removePendingRequestByNodeID does for a node that
 * left: rejects it with `err` and destroys its streams. A streamed call stays in pendingRequests while its
 * response streams, with its promise already resolved: only destroying the stream tells its consumer.
 */
export function abandonPendingRequest(broker: ServiceBroker, id: string, nodeID: string, err: Error): void {
	const transit = transitOf(broker);
	const req = transit?.pendingRequests.get(id);
	if (!transit || !req) return;
	transit.pendingRequests.delete(id);
	req.reject(err);
	transit._deletePendingReqStream(id, nodeID);
	transit._deletePendingResStream(id, nodeID);
}

/** abandonPendingRequest for every pending call `which` selects, each with its own error; how many it gave up on. */
export function abandonPendingRequests(broker: ServiceBroker, which: (req: PendingRequest) => boolean, errorFor: (req: PendingRequest) => Error): number {
	const pending = pendingRequestsOf(broker);
	if (!pending) return 0;
	let abandoned = 0;
	for (const [id, req] of [...pending]) {
		if (!which(req)) continue;
		abandonPendingRequest(broker, id, req.nodeID, errorFor(req));
		abandoned++;
	}
	return abandoned;
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

/**
 * The nats.js options Moleculer's NATS transporter connects with, for a second connection to the same servers
 * with the same credentials (lib/mesh/liveness-responder.ts). Only plain values: they cross to a worker thread.
 * Null on any other transporter.
 */
export function natsTransporterOptionsOf(broker: ServiceBroker): ConnectionOptions | null {
	const opts = usesNatsTransporter(broker) ? transitOf(broker)?.tx?.opts : undefined;
	if (!opts) return null;
	const plain = Object.fromEntries(Object.entries(opts).filter(([, v]) => typeof v !== "function")) as ConnectionOptions & { url?: string };
	// Moleculer turns `url` into `servers` (and credentials) only when it connects.
	if (plain.url && !plain.servers) {
		const urls = plain.url.split(",").map(u => new URL(u));
		plain.servers = urls.map(u => u.host);
		plain.user ??= decodeURIComponent(urls[0].username) || undefined;
		plain.pass ??= decodeURIComponent(urls[0].password) || undefined;
	}
	delete plain.url;
	return plain;
}

/** Moleculer's subject prefix: `MOL` or `MOL-<namespace>`. */
export function subjectPrefixOf(broker: ServiceBroker): string {
	return transitOf(broker)?.tx?.prefix ?? (broker.namespace ? `MOL-${broker.namespace}` : "MOL");
}

export function remoteNodeMetadata(broker: ServiceBroker, nodeID: string): Record<string, unknown> | null {
	const node = (broker.registry as unknown as { nodes: { get(id: string): { metadata?: Record<string, unknown>; available?: boolean } | undefined } }).nodes.get(nodeID);
	return node?.available ? (node.metadata ?? {}) : null;
}
