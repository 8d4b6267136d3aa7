/**
 * lib/mesh/coalescing-nats.ts: the packets one event-loop turn sends reach nats.js together (one socket
 * write instead of one per HTTP request), in order, and none is lost on a graceful stop.
 */
import { ServiceBroker } from "moleculer";
import { createBrokerOptions } from "../../moleculer.config";
import { CoalescingNatsTransporter } from "../../lib/mesh/coalescing-nats";
import { loadSettings } from "../../lib/runtime/settings";
import { LOCAL_NATS_URL, describeWithNats } from "../helpers/requirements";

function withFakeClient(): { tx: CoalescingNatsTransporter; published: string[]; turns: number[] } {
	const tx = new CoalescingNatsTransporter({ servers: LOCAL_NATS_URL });
	const published: string[] = [];
	const turns: number[] = [];
	let turn = 0;
	setImmediate(function tick() {
		turn++;
		if (turn < 50) setImmediate(tick);
	});
	(tx as unknown as { client: unknown }).client = {
		publish: (topic: string) => {
			published.push(topic);
			turns.push(turn);
		},
		flush: () => Promise.resolve(),
		close: () => Promise.resolve(),
	};
	return { tx, published, turns };
}

describe("CoalescingNatsTransporter", () => {
	it("holds the sends of one loop turn and publishes them together, in order, in the next check phase", async () => {
		const { tx, published, turns } = withFakeClient();
		await Promise.all(["a", "b", "c"].map(topic => tx.send(topic, Buffer.from(topic))));
		expect(published).toEqual([]); // not yet: the microtasks after send() have run, the publishes wait
		await new Promise(resolve => setImmediate(resolve));
		expect(published).toEqual(["a", "b", "c"]);
		expect(new Set(turns).size).toBe(1); // all three in one synchronous run: nats.js flushes them in one write
	});

	it("publishes what it holds before disconnecting", async () => {
		const { tx, published } = withFakeClient();
		void tx.send("MOL.DISCONNECT", Buffer.from("{}"));
		await tx.disconnect();
		expect(published).toEqual(["MOL.DISCONNECT"]);
	});

	it("logs a publish that throws instead of crashing the process from setImmediate", async () => {
		const tx = new CoalescingNatsTransporter({ servers: LOCAL_NATS_URL });
		const errors: unknown[] = [];
		Object.assign(tx, { logger: { error: (...args: unknown[]) => errors.push(args) } });
		(tx as unknown as { client: unknown }).client = { publish: () => { throw new Error("CONNECTION_CLOSED"); } };
		void tx.send("t", Buffer.from("x"));
		await new Promise(resolve => setImmediate(resolve));
		expect(errors).toHaveLength(1);
	});

	it.each([
		[undefined, true],
		["true", true],
		["false", false],
	])("is the transporter the project's brokers use over NATS (NATS_COALESCE_SENDS=%s: %p)", (raw, coalesced) => {
		const env: Record<string, string> = { NODE_ID: "coalesce-test", NATS_URL: LOCAL_NATS_URL, JWT_SECRET: "coalesce-secret-0123456789abcdef0123" };
		if (raw !== undefined) env.NATS_COALESCE_SENDS = raw;
		const options = createBrokerOptions(loadSettings(env), { kind: "nats", transporter: { type: "NATS", options: { servers: LOCAL_NATS_URL } }, reason: "test" });
		expect(options.transporter instanceof CoalescingNatsTransporter).toBe(coalesced);
		if (!coalesced) expect(options.transporter).toEqual({ type: "NATS", options: { servers: LOCAL_NATS_URL } });
	});
});

describeWithNats("CoalescingNatsTransporter over real NATS", () => {
	it("carries calls both ways, and a graceful stop's DISCONNECT reaches the other node", async () => {
		const namespace = `coalesce-${process.pid}`;
		const make = (nodeID: string) => new ServiceBroker({ namespace, nodeID, transporter: new CoalescingNatsTransporter({ servers: LOCAL_NATS_URL }), logger: false, heartbeatTimeout: 60 });
		const server = make("coalesce-server");
		const caller = make("coalesce-caller");
		server.createService({ name: "echo", actions: { echo: ctx => ctx.params } });
		await Promise.all([server.start(), caller.start()]);
		try {
			await caller.waitForServices("echo", 10_000);
			const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => caller.call("echo.echo", { i })));
			expect(answers).toEqual(Array.from({ length: 20 }, (_, i) => ({ i })));
			const gone = new Promise<string>(resolve => caller.localBus.on("$node.disconnected", (p: { node: { id: string } }) => resolve(p.node.id)));
			await server.stop();
			// heartbeatTimeout is 60 s: only the DISCONNECT packet can tell the caller this soon
			await expect(Promise.race([gone, new Promise(r => setTimeout(() => r("timeout"), 3_000))])).resolves.toBe("coalesce-server");
		} finally {
			await Promise.all([server.stop(), caller.stop()]);
		}
	});
});
