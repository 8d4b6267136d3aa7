/**
 * The main loop's clock shared with the liveness probe's worker (lib/mesh/loop-clock.ts), both sides in one
 * thread here: the worker's side asks for stamps only when they are off, counts silence from its ask until a
 * stamp shows it was heard, and the stamps stop once probes do.
 */
import { createLoopClock, HeartbeatCover, LoopSilence, LoopStamper, STAMP_EVERY_MS, STAMP_IDLE_AFTER_MS, stampHeartbeatSent } from "../../lib/mesh/loop-clock";

const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms));

describe("loop clock", () => {
	let stamper: LoopStamper;
	afterEach(() => stamper.stop());

	it("asks once for stamps, counts the silence from the ask until one comes, then reads the stamps", async () => {
		const clock = createLoopClock();
		stamper = new LoopStamper(clock);
		let asks = 0;
		const silence = new LoopSilence(clock, () => asks++);
		await sleep(60);
		// Not stamping yet: the silence starts with this ask, not with the clock's creation.
		expect(silence.probed()).toBeLessThan(20);
		expect(asks).toBe(1);
		await sleep(80);
		// The ask is not heard (this loop "did not run it"): silent since the ask, and not asked twice.
		expect(silence.probed()).toBeGreaterThanOrEqual(75);
		expect(asks).toBe(1);
		stamper.start();
		expect(silence.probed()).toBeLessThan(20);
		await sleep(3 * STAMP_EVERY_MS);
		expect(silence.probed()).toBeLessThanOrEqual(STAMP_EVERY_MS + 30);
		expect(asks).toBe(1);
	});

	it("stops stamping once probes stop, and a later probe asks again", async () => {
		const clock = createLoopClock();
		stamper = new LoopStamper(clock);
		let asks = 0;
		const silence = new LoopSilence(clock, () => {
			asks++;
			stamper.start();
		});
		silence.probed();
		expect(asks).toBe(1);
		await sleep(STAMP_IDLE_AFTER_MS + 3 * STAMP_EVERY_MS);
		const probedAfterIdle = silence.probed();
		expect(asks).toBe(2);
		expect(probedAfterIdle).toBeLessThan(20);
	});
});

describe("heartbeat cover: the worker beats only while the main loop is late, and not for ever", () => {
	const timing = { coverAfterMs: 1_600, everyMs: 1_000, leaveAfterMs: 10_000 };
	const ms = (n: number) => BigInt(Math.round(n * 1_000_000));

	it("steps through a stall: nothing while the main loop beats, then one beat per interval from coverAfterMs until leaveAfterMs", () => {
		const clock = createLoopClock();
		stampHeartbeatSent(clock);
		const sentAt = process.hrtime.bigint();
		const cover = new HeartbeatCover(clock, timing);
		const at = (offsetMs: number) => cover.due(sentAt + ms(offsetMs));
		// Each check of a 10.5 s stall, every 250 ms as the worker checks: the silence when it beat, or null.
		const beats: number[] = [];
		for (let t = 0; t <= 10_500; t += 250) {
			const silent = at(t);
			if (silent !== null) beats.push(silent);
		}
		// At 1.75 s (first check past 1.6 s), then every 1 s while the stall is under 10 s: 1.75, 2.75 … 9.75 s.
		expect(beats.map(b => Math.round(b / 250) * 250)).toEqual([1_750, 2_750, 3_750, 4_750, 5_750, 6_750, 7_750, 8_750, 9_750]);
	});

	it("nothing to cover before the main thread's first heartbeat (the node has not joined yet)", () => {
		const clock = createLoopClock();
		const cover = new HeartbeatCover(clock, timing);
		const now = process.hrtime.bigint();
		for (const later of [0, 2_000, 5_000]) expect(cover.due(now + ms(later))).toBeNull();
		stampHeartbeatSent(clock, now + ms(5_000));
		expect(cover.due(now + ms(6_700))).toBe(1_700);
	});

	it("a heartbeat from the main loop ends the cover at once", () => {
		const clock = createLoopClock();
		const cover = new HeartbeatCover(clock, timing);
		const t0 = process.hrtime.bigint();
		stampHeartbeatSent(clock, t0);
		expect(cover.due(t0 + ms(2_000))).toBe(2_000);
		// the main loop runs again and beats at 2.1 s: nothing from the worker until that beat is late in turn
		stampHeartbeatSent(clock, t0 + ms(2_100));
		expect(cover.due(t0 + ms(2_600))).toBeNull();
		expect(cover.due(t0 + ms(3_600))).toBeNull();
		expect(cover.due(t0 + ms(3_750))).toBe(1_650);
	});
});
