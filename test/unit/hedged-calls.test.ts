/**
 * The hedge delay of lib/mesh/hedged-calls.ts: a call is hedged only once it is slower than its action's
 * recent p99, never sooner than minDelayMs, and at the cold delay until the action has enough samples.
 * (The hedging itself, with real nodes on NATS: test/integration/liveness-probe.test.ts.)
 */
import type { Context, ServiceBroker } from "moleculer";
import { ActionLatency, CallHedger, HEDGE_DEFAULTS } from "../../lib/mesh/hedged-calls";

const opts = HEDGE_DEFAULTS;

function latencyOf(samples: number[]): ActionLatency {
	const latency = new ActionLatency();
	for (const ms of samples) latency.add(ms);
	return latency;
}

const spread = (n: number, at: (i: number) => number) => Array.from({ length: n }, (_, i) => at(i));

describe("hedge delay", () => {
	it.each([
		["no samples yet", [], opts.coldDelayMs],
		["fewer samples than minSamples", spread(opts.minSamples - 1, () => 500), opts.coldDelayMs],
		["quick calls: the floor, not their p99", spread(100, () => 1), opts.minDelayMs],
		["a slow action: its p99", spread(100, i => (i < 98 ? 50 : 400)), 400],
		["a slow action, one outlier in 100: the p99 still takes it", spread(100, i => (i === 0 ? 900 : 60)), 900],
		["a slow action, one outlier in 128 samples: the p99 leaves it out", spread(128, i => (i === 0 ? 900 : 60)), 60],
		["only the last 128 samples count", [...spread(200, () => 800), ...spread(128, () => 45)], 45],
	])("%s", (_what, samples, expected) => {
		expect(latencyOf(samples).delayMs(opts, 0)).toBe(expected);
	});

	it("keeps its p99 for a second, then takes new samples in", () => {
		const latency = latencyOf(spread(128, () => 40));
		expect(latency.delayMs(opts, 0)).toBe(40);
		for (let i = 0; i < 128; i++) latency.add(200);
		expect(latency.delayMs(opts, 999)).toBe(40);
		expect(latency.delayMs(opts, 1_001)).toBe(200);
	});
});

describe("timing a sampled call", () => {
	// A sampled call handed back through a `.then` of its own reached its caller one microtask after the
	// others of the same NATS read, so the calls it triggered missed nats.js's write for the rest of the turn
	// (bench/mesh/wire-count.ts: 0.039 socket writes per call against bare Moleculer's 0.022).
	it("hands every call back as the promise the call itself returned, sampled or not, and still samples", async () => {
		const broker = { registry: {} } as unknown as ServiceBroker;
		const hedger = new CallHedger(broker, HEDGE_DEFAULTS, () => false);
		const ctx = { action: { name: "memory.get", idempotent: true } } as unknown as Context;
		const calls = Array.from({ length: 16 }, (_, i) => Promise.resolve(i));
		const returned = calls.map(call => hedger.watch(ctx, () => call));
		returned.forEach((promise, i) => expect(promise).toBe(calls[i]));
		await Promise.all(returned);
		await new Promise(resolve => setImmediate(resolve));
		const samples = (hedger as unknown as { latency: Map<string, { count: number }> }).latency.get("memory.get");
		expect(samples?.count).toBe(2);
	});

	it("leaves a failed call's rejection to its caller (no unhandled rejection from the timing branch)", async () => {
		const hedger = new CallHedger({ registry: {} } as unknown as ServiceBroker, HEDGE_DEFAULTS, () => false);
		const ctx = { action: { name: "memory.get", idempotent: true } } as unknown as Context;
		const unhandled = jest.fn();
		process.on("unhandledRejection", unhandled);
		try {
			const failures = Array.from({ length: 8 }, () => hedger.watch(ctx, () => Promise.reject(new Error("node gone"))));
			await Promise.all(failures.map(failure => expect(failure).rejects.toThrow("node gone")));
			await new Promise(resolve => setImmediate(resolve));
			expect(unhandled).not.toHaveBeenCalled();
		} finally {
			process.off("unhandledRejection", unhandled);
		}
	});
});
