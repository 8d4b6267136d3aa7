/**
 * Moleculer's tracked-call lists (what a graceful stop waits for), as lib/mesh/call-pipeline.ts keeps them:
 * a finished call leaves its list without a search, whatever order calls finish in, and a list that Moleculer
 * emptied or replaced meanwhile is left as it is.
 */
import type { Context } from "moleculer";
import { track, untrack } from "../../lib/mesh/call-pipeline";

interface FakeCall {
	id: number;
	broker: { _trackedContexts: FakeCall[] };
}

/** A list whose searches are counted: finishing a call must not need one. */
function countedList(): { list: FakeCall[]; searches: () => number } {
	const list: FakeCall[] = [];
	let searches = 0;
	const indexOf = list.indexOf.bind(list);
	Object.defineProperty(list, "indexOf", { value: (x: FakeCall) => (searches++, indexOf(x)) });
	return { list, searches: () => searches };
}

/** A deterministic shuffle (LCG), so that a failure repeats. */
function shuffled<T>(items: T[], seed: number): T[] {
	const out = [...items];
	let state = seed;
	for (let i = out.length - 1; i > 0; i--) {
		state = (state * 1_103_515_245 + 12_345) % 2 ** 31;
		const j = state % (i + 1);
		[out[i], out[j]] = [out[j], out[i]];
	}
	return out;
}

const asCtx = (call: FakeCall) => call as unknown as Context;
const ids = (list: FakeCall[]) => list.map(c => c.id).sort((a, b) => a - b);

describe("tracked calls", () => {
	it.each([
		["in the order they began", (calls: FakeCall[]) => calls],
		["newest first", (calls: FakeCall[]) => [...calls].reverse()],
		["in a shuffled order", (calls: FakeCall[]) => shuffled(calls, 7)],
		["in another shuffled order", (calls: FakeCall[]) => shuffled(calls, 1_234)],
	])("keep exactly the calls still running when they finish %s, without searching the list", (_order, finishOrder) => {
		const { list, searches } = countedList();
		const broker = { _trackedContexts: list };
		const calls = Array.from({ length: 200 }, (_, id) => ({ id, broker }));
		const running = new Set<number>();
		for (const call of calls) {
			track(asCtx(call));
			running.add(call.id);
		}
		for (const call of finishOrder(calls)) {
			untrack(asCtx(call));
			running.delete(call.id);
			expect(ids(list)).toEqual([...running].sort((a, b) => a - b));
		}
		expect(list).toHaveLength(0);
		expect(searches()).toBe(0);
	});

	it("interleaves starts and finishes (a steady stream of calls) without a search", () => {
		const { list, searches } = countedList();
		const broker = { _trackedContexts: list };
		const running: FakeCall[] = [];
		for (let id = 0; id < 1_000; id++) {
			const call = { id, broker };
			track(asCtx(call));
			running.push(call);
			if (id % 3 === 2) untrack(asCtx(running.splice((id * 7) % running.length, 1)[0]));
		}
		expect(ids(list)).toEqual(ids(running));
		expect(searches()).toBe(0);
	});

	it("leaves a list that Moleculer emptied (a stop that timed out) or replaced (a restart) as it is", () => {
		const { list } = countedList();
		const broker = { _trackedContexts: list };
		const calls = Array.from({ length: 5 }, (_, id) => ({ id, broker }));
		calls.forEach(call => track(asCtx(call)));
		list.length = 0;
		expect(() => calls.forEach(call => untrack(asCtx(call)))).not.toThrow();
		expect(list).toHaveLength(0);

		const fresh = { id: 99, broker };
		broker._trackedContexts = [];
		track(asCtx(fresh));
		untrack(asCtx(calls[0])); // its slot 0 now holds another call
		expect(ids(broker._trackedContexts)).toEqual([99]);
		untrack(asCtx(fresh));
		expect(broker._trackedContexts).toHaveLength(0);
	});
});
