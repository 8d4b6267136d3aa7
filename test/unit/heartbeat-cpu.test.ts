/**
 * The CPU figure a heartbeat carries is sampled at most every CPU_SAMPLE_EVERY_MS: Moleculer samples it before
 * every beat (os.cpus() three times), and this mesh beats every second for failure detection.
 */
import os from "os";
import { ServiceBroker } from "moleculer";
import { FailureDetectorMiddleware, sampleCpuAtMostEvery } from "../../lib/mesh/failover-policy";

describe("heartbeat CPU sampling", () => {
	afterEach(() => jest.restoreAllMocks());

	it("a broker with the failure detector reads the machine's CPUs once for beats close together", async () => {
		const broker = new ServiceBroker({ logger: false, middlewares: [FailureDetectorMiddleware()] });
		const cpus = jest.spyOn(os, "cpus");
		const first = await broker.getCpuUsage();
		const readsForOneSample = cpus.mock.calls.length;
		expect(readsForOneSample).toBeGreaterThan(0);
		const second = await broker.getCpuUsage();
		expect(cpus.mock.calls.length).toBe(readsForOneSample);
		expect(second).toEqual(first);
	});

	it("samples again once the interval has passed, and after a failed sample", async () => {
		const broker = new ServiceBroker({ logger: false });
		const sample = jest.fn().mockRejectedValueOnce(new Error("no /proc")).mockResolvedValue({ avg: 7, usages: [7] });
		broker.getCpuUsage = sample;
		sampleCpuAtMostEvery(broker, 30);
		await expect(broker.getCpuUsage()).rejects.toThrow("no /proc");
		await expect(broker.getCpuUsage()).resolves.toEqual({ avg: 7, usages: [7] });
		expect(sample).toHaveBeenCalledTimes(2);
		await broker.getCpuUsage();
		expect(sample).toHaveBeenCalledTimes(2);
		await new Promise(resolve => setTimeout(resolve, 40));
		await broker.getCpuUsage();
		expect(sample).toHaveBeenCalledTimes(3);
	});

	it("the heartbeat still carries a CPU figure", async () => {
		const broker = new ServiceBroker({ logger: false, middlewares: [FailureDetectorMiddleware()] });
		const local = broker.registry.nodes.localNode as unknown as { updateLocalInfo(fn: ServiceBroker["getCpuUsage"]): Promise<void>; cpu: number | null };
		await local.updateLocalInfo(broker.getCpuUsage);
		expect(typeof local.cpu).toBe("number");
	});
});
