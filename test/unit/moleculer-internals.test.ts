/**
 * Pins the private parts of Moleculer that lib/mesh/moleculer-internals.ts reaches into, on a real
 * broker with Moleculer's in-memory transporter: an upgrade that renames or reshapes them fails here,
 * not silently in the liveness probe or the outbox.
 */
import { ServiceBroker } from "moleculer";
import { isResponseStreaming, natsTransporterOptionsOf, pendingRequestsOf, remoteNodeMetadata, subjectPrefixOf, usesNatsTransporter } from "../../lib/mesh/moleculer-internals";

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

	it("holds what a hedge re-sends in each pending request: its context, resolve and reject, and whether it streams", async () => {
		const server = new ServiceBroker({ namespace: "pin", nodeID: "pin-server", transporter: "Fake", logger: false });
		let release: () => void = () => undefined;
		server.createService({ name: "held", actions: { read: () => new Promise<string>(resolve => (release = () => resolve("answered"))) } });
		await server.start();
		try {
			await broker.waitForServices("held");
			const answer = broker.call("held.read", { q: 1 }, { meta: { user: "u1" } });
			await new Promise(resolve => setTimeout(resolve, 20));
			const [[id, req]] = [...pendingRequestsOf(broker)!];
			expect(req).toMatchObject({ nodeID: "pin-server", action: { name: "held.read" }, stream: false });
			expect(req.ctx).toMatchObject({ params: { q: 1 }, meta: { user: "u1" } });
			expect(typeof req.resolve).toBe("function");
			expect(typeof req.reject).toBe("function");
			expect((broker.transit as unknown as { pendingResStreams: unknown }).pendingResStreams).toBeInstanceOf(Map);
			expect(isResponseStreaming(broker, id)).toBe(false);
			release();
			await expect(answer).resolves.toBe("answered");
		} finally {
			await server.stop();
		}
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

	it("keeps the NATS transporter's connection options in tx.opts (a second connection copies them, url turned into servers)", () => {
		const nats = new ServiceBroker({
			nodeID: "pin-nats",
			transporter: { type: "NATS", options: { url: "nats://u%40x:p@10.0.0.1:4222,nats://10.0.0.2:4222", pingInterval: 5_000 } },
			logger: false,
		});
		expect(natsTransporterOptionsOf(nats)).toMatchObject({ servers: ["10.0.0.1:4222", "10.0.0.2:4222"], user: "u@x", pass: "p", pingInterval: 5_000, maxReconnectAttempts: -1 });
		expect(natsTransporterOptionsOf(nats)).not.toHaveProperty("url");
		expect(natsTransporterOptionsOf(broker)).toBeNull();
	});
});
