/**
 * The pieces that cross nodes without a transport in between: the cancel board and scope
 * (lib/inference/cancellation.ts), and the error counts each node advertises and the router sums
 * (lib/inference/error-window.ts counts/withRemote, lib/inference/capacity-board.ts remoteOutcomes).
 * The end-to-end behaviour across two node processes is in test/integration/router.test.ts.
 */
import { CancelBoard, CancelScope, cancelledError, isCancellation } from "../../lib/inference/cancellation";
import { CapacityBoard, type NodeAdvert } from "../../lib/inference/capacity-board";
import { ErrorWindow, withRemote } from "../../lib/inference/error-window";

describe("cancel board", () => {
	it("aborts every piece of work running under a key, once, and forgets it when done", () => {
		const board = new CancelBoard();
		const a = new AbortController();
		const b = new AbortController();
		const other = new AbortController();
		board.track("k1", a);
		const untrackB = board.track("k1", b);
		board.track("k2", other);
		untrackB();
		expect(board.cancel("k1")).toBe(1);
		expect(a.signal.aborted).toBe(true);
		expect(isCancellation(a.signal.reason)).toBe(true);
		expect(b.signal.aborted).toBe(false);
		expect(other.signal.aborted).toBe(false);
		expect(board.cancel("k1")).toBe(0);
		expect(board.size()).toBe(1);
	});

	it("a cancel that overtakes its call aborts the call the moment it is tracked, within a minute", () => {
		let now = 1_000_000;
		const board = new CancelBoard(() => now);
		board.cancel("early");
		const late = new AbortController();
		board.track("early", late);
		expect(late.signal.aborted).toBe(true);
		now += 61_000;
		board.cancel("another"); // expires what is older than a minute
		const much = new AbortController();
		board.track("early", much);
		expect(much.signal.aborted).toBe(false);
	});
});

describe("cancel scope", () => {
	it("abandons a pending call at once; the call's late outcome is ignored, not unhandled", async () => {
		const scope = new CancelScope();
		let settle!: (v: string) => void;
		const call = new Promise<string>(resolve => (settle = resolve));
		const raced = scope.race(call);
		const cleanups: string[] = [];
		scope.onAbort(reason => cleanups.push((reason as Error & { type?: string }).type ?? ""));
		scope.abort(cancelledError());
		await expect(raced).rejects.toMatchObject({ code: 499, type: "CANCELLED", data: { retry_elsewhere: false } });
		settle("too late");
		expect(cleanups).toEqual(["CANCELLED"]);
		expect(() => scope.check()).toThrow("The client went away");
		await expect(scope.race(Promise.resolve("after"))).rejects.toMatchObject({ type: "CANCELLED" });
	});

	it("passes a call's own outcome through when nothing cancels", async () => {
		const scope = new CancelScope();
		await expect(scope.race(Promise.resolve(42))).resolves.toBe(42);
		await expect(scope.race(Promise.reject(new Error("boom")))).rejects.toThrow("boom");
		expect(() => scope.check()).not.toThrow();
	});
});

describe("mesh-wide error figures", () => {
	const advert = (node: string, agents?: NodeAdvert["agents"], at = 1): NodeAdvert => ({ node, at, limits: { max_concurrency: 1, queue: 0, max_loaded: 1 }, gpu: null, models: [], agents });

	it("a window advertises [runs, errors] per agent and drops agents with nothing left in the window", () => {
		let now = 0;
		const w = new ErrorWindow(1_000, () => now);
		w.record("a", null);
		w.record("a", "PROVIDER_FAILED");
		w.record("b", null);
		expect(w.counts()).toEqual({ a: [2, 1], b: [1, 0] });
		now = 5_000;
		expect(w.counts()).toEqual({});
	});

	it("the router adds other nodes' fresh counts to its own; its own node's advert and stale adverts do not count twice", () => {
		let now = 10_000;
		const board = new CapacityBoard("n1", () => now);
		board.update(advert("n1", { a: [100, 100] })); // this node: its live window counts, not its advert
		board.update(advert("n2", { a: [5, 5] }));
		now += 500;
		board.update(advert("n3", { a: [4, 0], b: [9, 9] }));
		expect(board.remoteOutcomes("a", 60_000)).toEqual({ total: 9, errors: 5 });
		now += 60_000; // n2's advert is older than the window now, n3's is not
		expect(board.remoteOutcomes("a", 60_000)).toEqual({ total: 4, errors: 0 });
		board.drop("n3");
		expect(board.remoteOutcomes("a", 60_000)).toEqual({ total: 0, errors: 0 });

		const local = { total: 1, errors: 0, rate: 0, byType: {} };
		expect(withRemote(local, { total: 5, errors: 5 })).toEqual({ total: 6, errors: 5, rate: 5 / 6, byType: {} });
		expect(withRemote({ total: 0, errors: 0, rate: 0, byType: {} }, { total: 0, errors: 0 }).rate).toBe(0);
	});
});
