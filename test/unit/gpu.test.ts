/**
 * The GPU reading behind swapper-proxy's advertisement: parsed from nvidia-smi's CSV, taken at most every
 * GPU_READ_EVERY_MS, and never again once the tool is missing (each spawn stalls the event loop).
 */
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from "fs";
import { tmpdir } from "os";
import path from "path";

type GpuModule = typeof import("../../lib/inference/gpu");

/** A stand-in nvidia-smi (a real executable) that counts its runs and prints two GPUs. */
function fakeTool(): { tool: string; runs: () => number } {
	const dir = mkdtempSync(path.join(tmpdir(), "gpu-"));
	const tool = path.join(dir, "nvidia-smi");
	const counter = path.join(dir, "runs");
	writeFileSync(counter, "");
	writeFileSync(tool, `#!/bin/sh\necho run >> ${counter}\nprintf '37, 2048\\n80, 1024\\n'\n`);
	chmodSync(tool, 0o755);
	return { tool, runs: () => readFileSync(counter, "utf8").split("\n").filter(Boolean).length };
}

function freshModule(): GpuModule {
	let gpu!: GpuModule;
	jest.isolateModules(() => {
		gpu = jest.requireActual("../../lib/inference/gpu");
	});
	return gpu;
}

describe("GPU reading", () => {
	it("reads the busiest GPU's utilisation and the VRAM used by all", async () => {
		const { readGpu } = freshModule();
		const { tool, runs } = fakeTool();
		await expect(readGpu(1_000, tool)).resolves.toEqual({ utilization: 0.8, vram_used_bytes: 3072 * 1024 * 1024 });
		expect(runs()).toBe(1);
	});

	it("is due at most every GPU_READ_EVERY_MS", () => {
		const { gpuReadDue, GPU_READ_EVERY_MS } = freshModule();
		expect(gpuReadDue(null, 5)).toBe(true);
		expect(gpuReadDue(1_000, 1_000 + GPU_READ_EVERY_MS - 1)).toBe(false);
		expect(gpuReadDue(1_000, 1_000 + GPU_READ_EVERY_MS)).toBe(true);
	});

	it("asks a machine without nvidia-smi once: afterwards nothing is started and nothing is due", async () => {
		const { readGpu, gpuReadDue } = freshModule();
		const { tool, runs } = fakeTool();
		await expect(readGpu(1_000, path.join(tmpdir(), "no-such-nvidia-smi"))).resolves.toBeNull();
		expect(gpuReadDue(null)).toBe(false);
		await expect(readGpu(1_000, tool)).resolves.toBeNull();
		expect(runs()).toBe(0);
	});
});
