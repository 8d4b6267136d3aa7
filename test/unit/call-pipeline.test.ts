/**
 * The broker's middleware chain with ServingGate (bulkhead + tracking + metrics in one wrapper) and the
 * local-caller Timeout: the behaviour Moleculer's own Bulkhead, ContextTracker and Timeout gave.
 */
import { Errors, ServiceBroker } from "moleculer";
import { meshInternalMiddlewares } from "../../lib/mesh/call-pipeline";

/** An action timeout, as actionPolicy() declares it (Moleculer's typings do not list `timeout`). */
const fiftyMs = { timeout: 50 };

function brokerWithPipeline(): ServiceBroker {
	return new ServiceBroker({
		logger: false,
		metrics: { enabled: true },
		bulkhead: { enabled: true, concurrency: 2, maxQueueSize: 1 },
		tracking: { enabled: true, shutdownTimeout: 5_000 },
		internalMiddlewares: false,
		middlewares: meshInternalMiddlewares() as never,
	});
}

/** A handler that waits until the test opens the gate. */
function gate() {
	let open!: () => void;
	const opened = new Promise<void>(resolve => (open = resolve));
	return { open, opened };
}

describe("call pipeline", () => {
	const broker = brokerWithPipeline();
	let held = gate();
	let running = 0;
	let peak = 0;
	broker.createService({
		name: "slow",
		actions: {
			async hold() {
				peak = Math.max(peak, ++running);
				await held.opened;
				running--;
				return "done";
			},
			timed: { ...fiftyMs, handler: () => new Promise(resolve => setTimeout(() => resolve("late"), 300)) },
			pause: (ctx: { params: { ms: number } }) => new Promise(resolve => setTimeout(() => resolve("finished"), ctx.params.ms)),
			budget: (ctx: { options: { timeout?: number | null } }) => ctx.options.timeout,
			spendThenAsk: {
				timeout: 1_000,
				async handler(ctx: { call(action: string): Promise<unknown> }) {
					await new Promise(resolve => setTimeout(resolve, 200));
					return ctx.call("slow.budget");
				},
			},
		},
	});
	beforeAll(() => broker.start());

	const gauge = (name: string) =>
		(broker.metrics.list({ includes: name }) as unknown as Array<{ values: Array<{ labels: { action: string }; value: number }> }>)[0]?.values.find(v => v.labels.action === "slow.hold")?.value;

	it("runs at most `concurrency` calls, queues up to maxQueueSize, refuses the rest with a retryable 429", async () => {
		held = gate();
		const calls = [1, 2, 3].map(() => broker.call("slow.hold"));
		const refused = broker.call("slow.hold");
		await expect(refused).rejects.toBeInstanceOf(Errors.QueueIsFullError);
		await expect(refused).rejects.toMatchObject({ code: 429, retryable: true });
		expect(running).toBe(2);
		expect(gauge("moleculer.request.bulkhead.inflight")).toBe(2);
		expect(gauge("moleculer.request.bulkhead.queue.size")).toBe(1);
		held.open();
		await expect(Promise.all(calls)).resolves.toEqual(["done", "done", "done"]);
		expect(peak).toBe(2);
		expect(gauge("moleculer.request.bulkhead.inflight")).toBe(0);
		expect(gauge("moleculer.request.bulkhead.queue.size")).toBe(0);
		expect(gauge("moleculer.request.active")).toBe(0);
	});

	it("still times out calls that start on this node", async () => {
		await expect(broker.call("slow.timed")).rejects.toBeInstanceOf(Errors.RequestTimeoutError);
	});

	it("gives a call made while serving another the rest of that call's budget (distributed timeouts)", async () => {
		const budget = (await broker.call("slow.spendThenAsk")) as number;
		expect(budget).toBeGreaterThan(600);
		expect(budget).toBeLessThanOrEqual(800);
	});

	it("makes a stopping broker wait for the calls it is serving", async () => {
		const inFlight = broker.call("slow.pause", { ms: 300 });
		await new Promise(resolve => setTimeout(resolve, 20));
		const stopped = broker.stop().then(() => "stopped");
		const first = await Promise.race([inFlight, stopped]);
		expect(first).toBe("finished");
		await stopped;
	});
});

describe("call pipeline across two brokers (in-memory transporter)", () => {
	const options = (nodeID: string) => ({
		nodeID,
		namespace: `pipeline-${process.pid}`,
		transporter: "Fake" as const,
		logger: false,
		metrics: { enabled: true },
		tracking: { enabled: true, shutdownTimeout: 5_000 },
		retryPolicy: { enabled: false, retries: 2, delay: 10, maxDelay: 50, factor: 2, check: (err: Error & { retryable?: boolean }) => !!err.retryable },
		internalMiddlewares: false,
		middlewares: meshInternalMiddlewares() as never,
	});
	const caller = new ServiceBroker(options("caller"));
	const server = new ServiceBroker(options("server"));
	let flaky = 0;
	const retryTwice = { retryPolicy: { enabled: true, retries: 2 } };
	server.createService({
		name: "far",
		actions: {
			pause: (ctx: { params: { ms: number } }) => new Promise(resolve => setTimeout(() => resolve("finished"), ctx.params.ms)),
			flaky: {
				...retryTwice,
				handler() {
					if (flaky++ === 0) throw new Errors.MoleculerRetryableError("first attempt fails");
					return "second attempt";
				},
			},
		},
	});
	beforeAll(async () => {
		await Promise.all([server.start(), caller.start()]);
		await caller.waitForServices("far");
	});
	afterAll(() => server.stop());

	it("retries a retryable failure on the caller's side, and counts the outgoing call in the remote request metrics", async () => {
		await expect(caller.call("far.flaky")).resolves.toBe("second attempt");
		expect(flaky).toBe(2);
		const total = (caller.metrics.list({ includes: "moleculer.request.total" }) as unknown as Array<{ values: Array<{ labels: { action: string; type: string }; value: number }> }>)[0].values.find(
			v => v.labels.action === "far.flaky" && v.labels.type === "remote",
		);
		// Moleculer's Retry sends the second attempt through the whole chain again: two requests counted.
		expect(total?.value).toBe(2);
	});

	it("makes a stopping caller wait for the calls it has in flight on another node", async () => {
		const inFlight = caller.call("far.pause", { ms: 300 });
		await new Promise(resolve => setTimeout(resolve, 20));
		const stopped = caller.stop().then(() => "stopped");
		expect(await Promise.race([inFlight, stopped])).toBe("finished");
		await stopped;
	});
});
