/**
 * For benches that write outbox rows with a client of their own (raw pg), where a node's services would write them
 * through lib/data/outbox/enqueue.ts: after each commit they ring the relay as a writing node does
 * (lib/data/outbox/doorbell.ts). Without the ring the relay would find such rows on its fallback look
 * (OUTBOX_IDLE_POLL_MS, 1 s), which no service's write waits for, and sit idle while they are measured.
 */
import { ServiceBroker } from "moleculer";
import { meshDoorbell } from "../../lib/data/outbox/doorbell";
import { loadSettings } from "../../lib/runtime/settings";
import { resolveTransport } from "../../lib/runtime/transport";
import { createBrokerOptions } from "../../moleculer.config";

export interface RelayRinger {
	/** after a commit that wrote outbox rows */
	ring(): void;
	/** `write`, ringing once it has committed */
	after<T>(write: Promise<T>): Promise<T>;
}

/** Rings the relay of the mesh `broker` is in (a bench that has a broker of its own there). */
export function relayRinger(broker: ServiceBroker): RelayRinger {
	const doorbell = meshDoorbell(broker);
	const ring = () => doorbell.ring();
	return { ring, after: write => write.then(result => (ring(), result)) };
}

export interface OutboxWriter extends RelayRinger {
	stop(): Promise<void>;
}

/**
 * For a bench without a broker: joins its mesh with a broker of the project's configuration. `env`: the bench
 * nodes' (MESH_NAMESPACE, NATS_URL, …); resolves once the mesh's outbox service is seen.
 */
export async function joinMeshAsOutboxWriter(env: Record<string, string>): Promise<OutboxWriter> {
	const settings = loadSettings({ ...env, NODE_ID: `bench-writer-${process.pid}`, LOG_LEVEL: "warn" });
	const broker = new ServiceBroker(createBrokerOptions(settings, await resolveTransport(settings)));
	await broker.start();
	await broker.waitForServices("outbox", 30_000);
	return { ...relayRinger(broker), stop: () => broker.stop() };
}
