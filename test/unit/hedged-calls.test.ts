/**
 * The hedge delay of lib/mesh/hedged-calls.ts: a call is hedged only once it is slower than its action's
 * recent p99, never sooner than minDelayMs, and at the cold delay until the action has enough samples.
 * (The hedging itself, with real nodes on NATS: test/integration/liveness-probe.test.ts.)
 */
import { ActionLatency, HEDGE_DEFAULTS } from "../../lib/mesh/hedged-calls";

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
