/**
 * The broker's middleware chain with ServingGate (bulkhead + tracking + metrics in one wrapper) and the
 * local-caller Timeout: the behaviour Moleculer's own Bulkhead, ContextTracker and Timeout gave.
 */
import { Errors, ServiceBroker } from "moleculer";
import { meshInternalMiddlewares } from "../../lib/call-pipeline";

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

	it("makes a stopping broker wait for the calls it is serving", async () => {
		const inFlight = broker.call("slow.pause", { ms: 300 });
		await new Promise(resolve => setTimeout(resolve, 20));
		const stopped = broker.stop().then(() => "stopped");
		const first = await Promise.race([inFlight, stopped]);
		expect(first).toBe("finished");
		await stopped;
	});
});
