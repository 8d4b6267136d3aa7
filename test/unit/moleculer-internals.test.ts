/**
 * Pins the private parts of Moleculer that lib/mesh/moleculer-internals.ts reaches into, on a real
 * broker with Moleculer's in-memory transporter: an upgrade that renames or reshapes them fails here,
 * not silently in the liveness probe or the outbox.
 */
import { ServiceBroker } from "moleculer";
import { noteHeardFrom, pendingRequestsOf, remoteNodeMetadata, subjectPrefixOf, usesNatsTransporter } from "../../lib/mesh/moleculer-internals";

describe("Moleculer internals the mesh relies on", () => {
	const broker = new ServiceBroker({ namespace: "pin", nodeID: "pin-node", transporter: "Fake", logger: false });
	beforeAll(() => broker.start());
	afterAll(() => broker.stop());

	it("keeps pending requests in transit.pendingRequests, with the stream clean-up methods beside it", () => {
		expect(pendingRequestsOf(broker)).toBeInstanceOf(Map);
		const transit = broker.transit as unknown as Record<string, unknown>;
		expect(typeof transit._deletePendingReqStream).toBe("function");
		expect(typeof transit._deletePendingResStream).toBe("function");
		expect(typeof transit.removePendingRequestByNodeID).toBe("function");
	});

	it("prefixes subjects with MOL-<namespace> and tells the NATS transporter from others", () => {
		expect(subjectPrefixOf(broker)).toBe("MOL-pin");
		expect(usesNatsTransporter(broker)).toBe(false);
	});

	it("finds a node's gossiped metadata in registry.nodes (the local node here)", () => {
		(broker.metadata as Record<string, unknown>).pinned = true;
		expect(remoteNodeMetadata(broker, "pin-node")).toMatchObject({ pinned: true });
		expect(remoteNodeMetadata(broker, "no-such-node")).toBeNull();
	});

	it("stamps a remote node's heartbeat time in registry.nodes (what the discoverer's timeout reads), never the local node's", async () => {
		const other = new ServiceBroker({ namespace: "pin", nodeID: "pin-other", transporter: "Fake", logger: false });
		await other.start();
		try {
			const nodes = (broker.registry as unknown as { nodes: { get(id: string): { lastHeartbeatTime?: number; available?: boolean } | undefined } }).nodes;
			for (let i = 0; i < 100 && !nodes.get("pin-other")?.available; i++) await new Promise(r => setTimeout(r, 10));
			const remote = nodes.get("pin-other")!;
			expect(remote.available).toBe(true);
			remote.lastHeartbeatTime = -1_000;
			noteHeardFrom(broker, "pin-other");
			expect(remote.lastHeartbeatTime).toBe(Math.round(process.uptime()));
			const local = nodes.get("pin-node")!;
			local.lastHeartbeatTime = -1_000;
			noteHeardFrom(broker, "pin-node");
			expect(local.lastHeartbeatTime).toBe(-1_000);
		} finally {
			await other.stop();
		}
	});
});
