/**
 * The main loop's clock shared with the liveness probe's worker (lib/mesh/loop-clock.ts), both sides in one
 * thread here: the worker's side asks for stamps only when they are off, counts silence from its ask until a
 * stamp shows it was heard, and the stamps stop once probes do.
 */
import { createLoopClock, LoopSilence, LoopStamper, STAMP_EVERY_MS, STAMP_IDLE_AFTER_MS } from "../../lib/mesh/loop-clock";

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
