/**
 * lib/mesh/coalescing-nats.ts: a loop turn's first packets leave at once, what later callbacks of the same turn
 * send reaches nats.js together (one socket write instead of one per HTTP request), in order, and none is lost
 * on a graceful stop.
 */
import { ServiceBroker } from "moleculer";
import { createBrokerOptions } from "../../moleculer.config";
import { CoalescingNatsTransporter, HOLD_LIMIT } from "../../lib/mesh/coalescing-nats";
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
	it("sends the turn's first packets at once: a lone call waits for nothing, a burst from one callback shares nats.js's flush", () => {
		const { tx, published } = withFakeClient();
		void tx.send("a", Buffer.from("a"));
		expect(published).toEqual(["a"]);
		void tx.send("b", Buffer.from("b")); // same synchronous run: joins the flush nats.js has queued
		void tx.send("c", Buffer.from("c"));
		expect(published).toEqual(["a", "b", "c"]);
	});

	it("holds what later callbacks of the same turn send, and publishes it together, in order, in the check phase", async () => {
		const { tx, published, turns } = withFakeClient();
		void tx.send("first", Buffer.from("x"));
		await Promise.resolve(); // nats.js's flush (a microtask) has run: the direct window is closed
		await Promise.resolve();
		await Promise.all(["a", "b", "c"].map(topic => tx.send(topic, Buffer.from(topic))));
		expect(published).toEqual(["first"]);
		await new Promise(resolve => setImmediate(resolve));
		expect(published).toEqual(["first", "a", "b", "c"]);
		expect(new Set(turns.slice(1)).size).toBe(1); // all three in one synchronous run: one socket write
	});

	it("opens the next turn with a direct send again, and never lets a direct send pass a held one", async () => {
		const { tx, published } = withFakeClient();
		void tx.send("first", Buffer.from("x"));
		await Promise.resolve();
		await Promise.resolve();
		void tx.send("held", Buffer.from("x"));
		expect(published).toEqual(["first"]);
		await new Promise(resolve => setImmediate(resolve));
		void tx.send("next-turn", Buffer.from("x"));
		expect(published).toEqual(["first", "held", "next-turn"]);
	});

	it("sends a later callback's burst at once: held packets leave when there are HOLD_LIMIT of them, in order, and the rest of the burst goes direct", async () => {
		const { tx, published } = withFakeClient();
		void tx.send("first", Buffer.from("x"));
		await Promise.resolve();
		await Promise.resolve();
		const burst = Array.from({ length: HOLD_LIMIT + 10 }, (_, i) => `burst-${i}`);
		for (const topic of burst.slice(0, HOLD_LIMIT - 1)) void tx.send(topic, Buffer.from(topic));
		expect(published).toEqual(["first"]); // a trickle so far: held
		for (const topic of burst.slice(HOLD_LIMIT - 1)) void tx.send(topic, Buffer.from(topic));
		expect(published).toEqual(["first", ...burst]); // nothing waits for setImmediate
		await Promise.resolve();
		await Promise.resolve();
		void tx.send("trickle", Buffer.from("x")); // a later callback again: held, behind nothing
		expect(published).toEqual(["first", ...burst]);
		await new Promise(resolve => setImmediate(resolve));
		expect(published).toEqual(["first", ...burst, "trickle"]);
	});

	it("publishes what it holds before disconnecting", async () => {
		const { tx, published } = withFakeClient();
		void tx.send("MOL.EVENT", Buffer.from("{}"));
		await Promise.resolve();
		await Promise.resolve();
		void tx.send("MOL.DISCONNECT", Buffer.from("{}")); // held: the turn had its direct flush
		expect(published).toEqual(["MOL.EVENT"]);
		await tx.disconnect();
		expect(published).toEqual(["MOL.EVENT", "MOL.DISCONNECT"]);
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
