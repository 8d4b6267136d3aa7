/**
 * The socket budgets (lib/realtime/socket-limits.ts) on a fake clock: per socket and per user, the flood
 * allowance that ends in a disconnect, handshakes and open connections per address, and one user's
 * events running at most N at a time.
 */
import { HandshakeGuard, KeyedConcurrency, SocketEventBudget } from "../../lib/realtime/socket-limits";
import type { SocketLimitSettings } from "../../lib/runtime/settings";

const LIMITS: SocketLimitSettings = {
	eventsPerSocket: 10,
	eventBurstPerSocket: 20,
	eventsPerUser: 10,
	eventBurstPerUser: 30,
	floodAllowance: 5,
	userConcurrency: 2,
	handshakesPerAddress: 2,
	handshakeBurst: 3,
	maxConnectionsPerAddress: 2,
};

describe("SocketEventBudget", () => {
	it("allows a socket its burst, then refuses; refills at the rate; past the flood allowance it says disconnect", () => {
		let now = 0;
		const budget = new SocketEventBudget(LIMITS, () => now);
		const taken = Array.from({ length: 20 }, () => budget.take("s1", "u1").allowed);
		expect(taken.every(Boolean)).toBe(true);
		const refused = Array.from({ length: 6 }, () => budget.take("s1", "u1"));
		expect(refused.map(r => r.allowed)).toEqual([false, false, false, false, false, false]);
		expect(refused.map(r => r.flooding)).toEqual([false, false, false, false, false, true]);
		now += 100; // one token back
		expect(budget.take("s1", "u1")).toMatchObject({ allowed: true });
	});

	it("one user's sockets share the user's bucket", () => {
		const now = 0;
		const budget = new SocketEventBudget(LIMITS, () => now);
		const allowed = ["a", "b", "c"].flatMap(socket => Array.from({ length: 20 }, () => budget.take(socket, "u1").allowed)).filter(Boolean).length;
		expect(allowed).toBe(LIMITS.eventBurstPerUser);
		expect(budget.take("d", "u2").allowed).toBe(true);
	});

	it("0 switches a limit off", () => {
		const budget = new SocketEventBudget({ ...LIMITS, eventsPerSocket: 0, eventsPerUser: 0 });
		expect(Array.from({ length: 1000 }, () => budget.take("s", "u").allowed).every(Boolean)).toBe(true);
	});
});

describe("HandshakeGuard", () => {
	it("budgets handshakes per address and caps open connections per address", () => {
		const guard = new HandshakeGuard(LIMITS);
		expect([guard.handshake("10.0.0.1"), guard.handshake("10.0.0.1"), guard.handshake("10.0.0.1")]).toEqual([null, null, null]);
		expect(guard.handshake("10.0.0.1")).toMatchObject({ code: 429, type: "RATE_LIMITED" });
		expect(guard.handshake("10.0.0.2")).toBeNull();
		guard.opened("10.0.0.2");
		guard.opened("10.0.0.2");
		expect(guard.connection("10.0.0.2")).toMatchObject({ code: 429, type: "TOO_MANY_CONNECTIONS" });
		guard.closed("10.0.0.2");
		expect(guard.openFrom("10.0.0.2")).toBe(1);
		expect(guard.connection("10.0.0.2")).toBeNull();
	});
});

describe("KeyedConcurrency", () => {
	it("runs at most N of one key's tasks at once, in order; other keys are not held up", async () => {
		const lanes = new KeyedConcurrency(2);
		let running = 0;
		let most = 0;
		const order: number[] = [];
		const task = (n: number) => async () => {
			running++;
			most = Math.max(most, running);
			await new Promise(resolve => setTimeout(resolve, 5));
			order.push(n);
			running--;
			return n;
		};
		const other = lanes.run("u2", async () => "other");
		const results = await Promise.all(Array.from({ length: 6 }, (_, n) => lanes.run("u1", task(n))));
		expect(results).toEqual([0, 1, 2, 3, 4, 5]);
		expect(most).toBe(2);
		expect(await other).toBe("other");
		await expect(lanes.run("u1", async () => Promise.reject(new Error("boom")))).rejects.toThrow("boom");
		expect(await lanes.run("u1", async () => "after a failure")).toBe("after a failure");
	});
});
