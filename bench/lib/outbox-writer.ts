/**
 * For benches that write outbox rows with a client of their own (raw pg), where a node's services would write them
 * through lib/data/outbox/enqueue.ts: after each commit they ring the relay as a writing node does
 * (lib/data/outbox/doorbell.ts), from a broker of the project's configuration in the bench's mesh. Without the ring
 * the relay would find such rows on its fallback look (OUTBOX_IDLE_POLL_MS, 1 s), which no service's write waits for.
 */
import { ServiceBroker } from "moleculer";
import { meshDoorbell } from "../../lib/data/outbox/doorbell";
import { loadSettings } from "../../lib/runtime/settings";
import { resolveTransport } from "../../lib/runtime/transport";
import { createBrokerOptions } from "../../moleculer.config";

export interface OutboxWriter {
	/** after a commit that wrote outbox rows */
	ring(): void;
	stop(): Promise<void>;
}

/** `env`: the bench nodes' (MESH_NAMESPACE, NATS_URL, …); resolves once the mesh's outbox service is seen. */
export async function joinMeshAsOutboxWriter(env: Record<string, string>): Promise<OutboxWriter> {
	const settings = loadSettings({ ...env, NODE_ID: `bench-writer-${process.pid}`, LOG_LEVEL: "warn" });
	const broker = new ServiceBroker(createBrokerOptions(settings, await resolveTransport(settings)));
	await broker.start();
	await broker.waitForServices("outbox", 30_000);
	const doorbell = meshDoorbell(broker);
	return { ring: () => doorbell.ring(), stop: () => broker.stop() };
}
