/**
 * A mesh event that gateways push to their sockets (city.message.created) reaches the other gateways
 * before this node's own push runs: over real NATS, the broadcast's copy is written to the NATS socket
 * before the local push starts. Pushed synchronously inside the broadcast, a push to thousands of local
 * sockets ran first and the NATS client flushed only after it (in a microtask), so the other gateways
 * fanned out after this one instead of beside it.
 *
 * Pins a nats.js internal (NatsConnection.protocol.transport.send, the one place its bytes are written).
 */
import { randomBytes } from "crypto";
import { ServiceBroker } from "moleculer";
import type { ChannelDefinition } from "../../lib/realtime/channel";
import { pushHandlers } from "../../mixins/realtime-gateway.mixin";
import { describeWithNats, LOCAL_NATS_URL } from "../helpers/requirements";

type Transport = { send(frame: Uint8Array): void };

function natsTransportOf(broker: ServiceBroker): Transport {
	const client = (broker.transit!.tx as unknown as { client: { protocol: { transport: Transport } } }).client;
	return client.protocol.transport;
}

describeWithNats("gateway pushes and the broadcast's remote copies", () => {
	const namespace = `push-order-${randomBytes(4).toString("hex")}`;
	const brokers: ServiceBroker[] = [];
	afterAll(async () => {
		await Promise.all(brokers.map(b => b.stop()));
	});

	it("writes the event to NATS for the other gateways before this node pushes it to its own sockets", async () => {
		const order: string[] = [];
		const channel = {
			name: "order-test",
			pushes: { "order.created": (_gateway: unknown, payload: Record<string, unknown>) => order.push(`local push ${String(payload.n)}`) },
		} as unknown as ChannelDefinition;
		const make = (nodeID: string) => new ServiceBroker({ nodeID, namespace, transporter: { type: "NATS", options: { url: LOCAL_NATS_URL } }, logger: false });
		const gateway = make("gw-a");
		const other = make("gw-b");
		brokers.push(gateway, other);
		gateway.createService({ name: "gateway", events: pushHandlers([channel]) });
		const received: number[] = [];
		other.createService({ name: "other-gateway", events: { "order.created": (ctx: { params: { n: number } }) => void received.push(ctx.params.n) } });
		await Promise.all([gateway.start(), other.start()]);
		await gateway.waitForServices("other-gateway", 10_000);

		const transport = natsTransportOf(gateway);
		const send = transport.send.bind(transport);
		transport.send = frame => {
			const text = Buffer.from(frame).toString("latin1");
			for (const n of [1, 2]) if (text.includes(".EVENT.gw-b") && text.includes(`"n":${n}`)) order.push(`nats write ${n}`);
			send(frame);
		};
		void gateway.broadcast("order.created", { n: 1 });
		void gateway.broadcast("order.created", { n: 2 });
		for (let i = 0; i < 200 && received.length < 2; i++) await new Promise(r => setTimeout(r, 10));

		expect(received).toEqual([1, 2]);
		// Both copies leave (one flush) before either local push; the pushes keep the events' order.
		expect(order).toEqual(["nats write 1", "nats write 2", "local push 1", "local push 2"]);
	});
});
