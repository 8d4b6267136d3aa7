/**
 * The GPU reading behind swapper-proxy's advertisement: parsed from nvidia-smi's CSV, taken at most every
 * GPU_READ_EVERY_MS, and never again once the tool is missing (each spawn stalls the event loop).
 */
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from "fs";
import { tmpdir } from "os";
import path from "path";
import { GPU_READ_EVERY_MS, GpuReader } from "../../lib/inference/gpu";

/** A stand-in nvidia-smi (a real executable) that counts its runs and prints two GPUs; written at `tool` when given. */
function fakeTool(tool = path.join(mkdtempSync(path.join(tmpdir(), "gpu-")), "nvidia-smi")): { tool: string; runs: () => number } {
	const counter = `${tool}.runs`;
	writeFileSync(counter, "");
	writeFileSync(tool, `#!/bin/sh\necho run >> ${counter}\nprintf '37, 2048\\n80, 1024\\n'\n`);
	chmodSync(tool, 0o755);
	return { tool, runs: () => readFileSync(counter, "utf8").split("\n").filter(Boolean).length };
}

const TWO_GPUS = { utilization: 0.8, vram_used_bytes: 3072 * 1024 * 1024 };

describe("GPU reading", () => {
	it("reads the busiest GPU's utilisation and the VRAM used by all", async () => {
		const { tool, runs } = fakeTool();
		await expect(new GpuReader(tool).current()).resolves.toEqual(TWO_GPUS);
		expect(runs()).toBe(1);
	});

	it("reads again at most every GPU_READ_EVERY_MS, answering the last reading meanwhile", async () => {
		const { tool, runs } = fakeTool();
		const reader = new GpuReader(tool);
		await reader.current(1_000);
		await expect(reader.current(1_000 + GPU_READ_EVERY_MS - 1)).resolves.toEqual(TWO_GPUS);
		expect(runs()).toBe(1);
		await reader.current(1_000 + GPU_READ_EVERY_MS);
		expect(runs()).toBe(2);
	});

	it("asks a machine without nvidia-smi once: afterwards nothing is started, even when it is due", async () => {
		const missing = path.join(mkdtempSync(path.join(tmpdir(), "gpu-")), "nvidia-smi");
		const reader = new GpuReader(missing);
		await expect(reader.current(0)).resolves.toBeNull();
		// The tool appears later: a reader that found it missing does not look again.
		const { runs } = fakeTool(missing);
		await expect(reader.current(10 * GPU_READ_EVERY_MS)).resolves.toBeNull();
		expect(runs()).toBe(0);
	});
});
