/**
 * ModelLifecycle with a recording provider: lazy load (once for concurrent callers), idle unload,
 * LRU eviction that never takes a model in use, the per-model concurrency limit and bounded queue,
 * cancellation while queued, remote models that are never loaded or evicted.
 */
import { CapacityError, ModelLifecycle, type LifecycleLimits } from "../../lib/inference/model-lifecycle";
import type { GenerateResult, Locality, ModelProvider } from "../../lib/inference/provider";

class RecordingProvider implements ModelProvider {
	readonly name = "recording";
	calls: string[] = [];
	loadMs = 0;
	constructor(readonly locality: Locality = "local") {}
	async listModels() {
		return [];
	}
	async loadedModels() {
		return null;
	}
	async load(model: string) {
		this.calls.push(`load ${model}`);
		if (this.loadMs) await new Promise(r => setTimeout(r, this.loadMs));
	}
	async unload(model: string) {
		this.calls.push(`unload ${model}`);
	}
	async generate(): Promise<GenerateResult> {
		return { text: "", tokens_in: 0, tokens_out: 0, tool_calls: [], development: false };
	}
}

const LIMITS: LifecycleLimits = { idleTimeoutMs: 60_000, maxLoaded: 2, maxConcurrency: 2, queue: 2, timeoutMs: 1_000 };

function deferred() {
	let release!: () => void;
	const promise = new Promise<void>(r => (release = r));
	return { promise, release };
}

const state = (lc: ModelLifecycle, model: string) => lc.list().find(m => m.model === model);
const never = new AbortController().signal;

describe("ModelLifecycle", () => {
	it("loads lazily, once for callers arriving during the load, and reports state, last use and in-flight", async () => {
		const provider = new RecordingProvider();
		provider.loadMs = 50;
		const lc = new ModelLifecycle(LIMITS);
		lc.register(provider, ["m1"]);
		expect(state(lc, "m1")).toMatchObject({ state: "unloaded", last_used: null, in_flight: 0 });
		const gate = deferred();
		const a = lc.run("m1", never, () => gate.promise);
		const b = lc.run("m1", never, () => gate.promise);
		await new Promise(r => setTimeout(r, 10));
		expect(state(lc, "m1")).toMatchObject({ state: "loading", in_flight: 2 });
		await new Promise(r => setTimeout(r, 60));
		expect(state(lc, "m1")).toMatchObject({ state: "loaded", in_flight: 2 });
		gate.release();
		await Promise.all([a, b]);
		expect(provider.calls).toEqual(["load m1"]);
		expect(state(lc, "m1")?.in_flight).toBe(0);
		expect(state(lc, "m1")?.last_used).toEqual(expect.any(String));
		lc.close();
	});

	// On jest's clock: with real timers, a CI machine running the suites in parallel once woke this test's 50 ms
	// wait more than 30 ms late, past m2's restarted idle timeout (m2 read "unloaded" where it must be "loaded").
	it("unloads a model idle for idleTimeoutMs, and not one that was used again meanwhile", async () => {
		jest.useFakeTimers();
		try {
			const provider = new RecordingProvider();
			const lc = new ModelLifecycle({ ...LIMITS, idleTimeoutMs: 80 });
			lc.register(provider, ["m1", "m2"]);
			await lc.run("m1", never, async () => undefined);
			await lc.run("m2", never, async () => undefined);
			await jest.advanceTimersByTimeAsync(50);
			await lc.run("m2", never, async () => undefined); // m2's idle clock restarts
			await jest.advanceTimersByTimeAsync(50);
			expect(state(lc, "m1")?.state).toBe("unloaded");
			expect(state(lc, "m2")?.state).toBe("loaded");
			await jest.advanceTimersByTimeAsync(60);
			expect(state(lc, "m2")?.state).toBe("unloaded");
			expect(provider.calls).toEqual(["load m1", "load m2", "unload m1", "unload m2"]);
			lc.close();
		} finally {
			jest.useRealTimers();
		}
	});

	it("evicts the least recently used idle model at maxLoaded, never one in use; refuses when all are in use", async () => {
		const provider = new RecordingProvider();
		const lc = new ModelLifecycle(LIMITS);
		lc.register(provider, ["a", "b", "c", "d"]);
		await lc.run("a", never, async () => undefined);
		const busy = deferred();
		const bRun = lc.run("b", never, () => busy.promise);
		await new Promise(r => setTimeout(r, 5));
		// a is idle and older: it goes, b (in use) stays.
		await lc.run("c", never, async () => undefined);
		expect(provider.calls).toEqual(["load a", "load b", "unload a", "load c"]);
		expect(state(lc, "b")?.state).toBe("loaded");
		// Now b (in use) and c (idle) are loaded: d evicts c.
		const cBusy = deferred();
		const cRun = lc.run("c", never, () => cBusy.promise);
		await new Promise(r => setTimeout(r, 5));
		// b and c both in use: no room for d.
		await expect(lc.run("d", never, async () => undefined)).rejects.toMatchObject({ type: "NO_ROOM_TO_LOAD" });
		expect(state(lc, "b")?.state).toBe("loaded");
		expect(state(lc, "c")?.state).toBe("loaded");
		busy.release();
		cBusy.release();
		await Promise.all([bRun, cRun]);
		await lc.run("d", never, async () => undefined);
		expect(provider.calls.slice(-2)).toEqual(["unload b", "load d"]);
		lc.close();
	});

	it("runs maxConcurrency at once, queues up to `queue` in order, refuses more with QUEUE_FULL", async () => {
		const lc = new ModelLifecycle(LIMITS);
		lc.register(new RecordingProvider(), ["m"]);
		const gates = Array.from({ length: 4 }, deferred);
		const order: number[] = [];
		const runs = gates.map((g, i) =>
			lc.run("m", never, async () => {
				order.push(i);
				await g.promise;
			}),
		);
		await new Promise(r => setTimeout(r, 10));
		expect(state(lc, "m")).toMatchObject({ in_flight: 2, queued: 2 });
		expect(order).toEqual([0, 1]);
		const refused = lc.run("m", never, async () => undefined);
		await expect(refused).rejects.toBeInstanceOf(CapacityError);
		await expect(refused).rejects.toMatchObject({ type: "QUEUE_FULL" });
		gates[1].release();
		await new Promise(r => setTimeout(r, 5));
		expect(order).toEqual([0, 1, 2]);
		for (const g of gates) g.release();
		await Promise.all(runs);
		expect(order).toEqual([0, 1, 2, 3]);
		expect(state(lc, "m")).toMatchObject({ in_flight: 0, queued: 0 });
		lc.close();
	});

	it("a caller that goes away while queued leaves the queue and never runs", async () => {
		const lc = new ModelLifecycle({ ...LIMITS, maxConcurrency: 1 });
		lc.register(new RecordingProvider(), ["m"]);
		const gate = deferred();
		const first = lc.run("m", never, () => gate.promise);
		const controller = new AbortController();
		let ran = false;
		const queued = lc.run("m", controller.signal, async () => {
			ran = true;
		});
		await new Promise(r => setTimeout(r, 5));
		expect(state(lc, "m")?.queued).toBe(1);
		controller.abort();
		await expect(queued).rejects.toMatchObject({ type: "CANCELLED" });
		expect(state(lc, "m")?.queued).toBe(0);
		gate.release();
		await first;
		expect(ran).toBe(false);
		lc.close();
	});

	it("remote models are always loaded, never count against maxLoaded and are never unloaded", async () => {
		const remote = new RecordingProvider("remote");
		const local = new RecordingProvider();
		const lc = new ModelLifecycle({ ...LIMITS, maxLoaded: 1, idleTimeoutMs: 20 });
		lc.register(remote, ["cloud"]);
		lc.register(local, ["l1"]);
		expect(state(lc, "cloud")).toMatchObject({ state: "loaded", locality: "remote" });
		await lc.run("cloud", never, async () => undefined);
		await lc.run("l1", never, async () => undefined);
		await new Promise(r => setTimeout(r, 50));
		expect(remote.calls).toEqual([]);
		expect(state(lc, "cloud")?.state).toBe("loaded");
		expect(state(lc, "l1")?.state).toBe("unloaded");
		lc.close();
	});

	it("marks a failed load, and loads again on the next use", async () => {
		const provider = new RecordingProvider();
		const lc = new ModelLifecycle(LIMITS);
		lc.register(provider, ["m"]);
		provider.load = async () => {
			throw new Error("runtime says no");
		};
		await expect(lc.run("m", never, async () => undefined)).rejects.toThrow("runtime says no");
		expect(state(lc, "m")).toMatchObject({ state: "failed", error: "runtime says no", in_flight: 0 });
		provider.load = RecordingProvider.prototype.load;
		await lc.run("m", never, async () => undefined);
		expect(state(lc, "m")?.state).toBe("loaded");
		lc.close();
	});
});
