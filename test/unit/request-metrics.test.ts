/**
 * The lean request metrics update Moleculer's metric items in place; these tests pin the item shape
 * of the installed Moleculer version and check the numbers a Prometheus scrape would see.
 */
import { Errors, ServiceBroker } from "moleculer";
import { meshInternalMiddlewares } from "../../lib/mesh/call-pipeline";
import { REQUEST_TIME_BUCKETS_MS } from "../../lib/mesh/request-metrics";

interface Snapshot {
	name: string;
	values: Array<{ labels: Record<string, unknown>; value?: number; count?: number; sum?: number; buckets?: Record<string, number> }>;
}

describe("lean request metrics", () => {
	const broker = new ServiceBroker({ logger: false, metrics: { enabled: true }, internalMiddlewares: false, middlewares: meshInternalMiddlewares() as never });
	broker.createService({
		name: "probe",
		actions: {
			ok: async () => new Promise(resolve => setTimeout(() => resolve("ok"), 5)),
			fail() {
				throw new Errors.MoleculerClientError("nope", 422, "NOPE");
			},
		},
	});
	beforeAll(() => broker.start());
	afterAll(() => broker.stop());

	const metric = (name: string) => (broker.metrics.list({ includes: name }) as unknown as Snapshot[])[0];
	const series = (name: string, action: string) => metric(name)?.values.find(v => v.labels.action === action);

	it("counts requests, errors, active requests and durations per action with Moleculer's names", async () => {
		for (let i = 0; i < 3; i++) await broker.call("probe.ok");
		await expect(broker.call("probe.fail")).rejects.toThrow("nope");

		expect(series("moleculer.request.total", "probe.ok")?.value).toBe(3);
		expect(series("moleculer.request.total", "probe.fail")?.value).toBe(1);
		expect(series("moleculer.request.active", "probe.ok")?.value).toBe(0);
		const errors = series("moleculer.request.error.total", "probe.fail");
		expect(errors).toMatchObject({ value: 1, labels: { errorName: "MoleculerClientError", errorCode: 422, errorType: "NOPE" } });

		const time = series("moleculer.request.time", "probe.ok");
		expect(time?.count).toBe(3);
		// Three calls of ~5 ms each (timers may fire up to a millisecond early against performance.now()).
		expect(time?.sum).toBeGreaterThanOrEqual(12);
		// Cumulative buckets: none of three ~5 ms calls fits under 0.5 ms; all fit under 60 s.
		expect(time?.buckets?.[String(REQUEST_TIME_BUCKETS_MS[0])]).toBe(0);
		expect(time?.buckets?.[String(REQUEST_TIME_BUCKETS_MS.at(-1))]).toBe(3);
	});

	it("shows every later update on every later read (the registry caches snapshots of metrics it did not see change)", async () => {
		await broker.call("probe.ok");
		const before = series("moleculer.request.total", "probe.ok")?.value ?? 0;
		const countBefore = series("moleculer.request.time", "probe.ok")?.count ?? 0;
		await broker.call("probe.ok");
		await broker.call("probe.ok");
		expect(series("moleculer.request.total", "probe.ok")?.value).toBe(before + 2);
		const time = series("moleculer.request.time", "probe.ok");
		expect(time?.count).toBe(countBefore + 2);
		// Buckets stay cumulative and consistent across reads: the last bucket holds every observation.
		expect(time?.buckets?.[String(REQUEST_TIME_BUCKETS_MS.at(-1))]).toBe(countBefore + 2);
		expect(time?.buckets?.[String(REQUEST_TIME_BUCKETS_MS[0])]).toBe(0);
	});

	it("keeps the rest of Moleculer's middleware chain: validation still rejects bad params", async () => {
		broker.createService({ name: "strict", actions: { take: { params: { n: "number" }, handler: () => "taken" } } });
		await broker.waitForServices("strict");
		await expect(broker.call("strict.take", { n: "x" })).rejects.toBeInstanceOf(Errors.ValidationError);
		expect(await broker.call("strict.take", { n: 1 })).toBe("taken");
	});
});
