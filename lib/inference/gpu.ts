/**
 * GPU utilisation for the node's advertisement, read from `nvidia-smi` when the machine has one;
 * null otherwise (no GPU, other vendor, or the tool missing). Never throws.
 *
 * Starting a process is not free for the caller: spawn() runs on the event loop, 14 ms at p50 and 46 ms
 * at worst on this project's 2-core machine (a CPU profile of a node under the city bench had 3 % of its
 * samples in it, from a read every second). So a machine without nvidia-smi is asked once, and a machine
 * with it at most every GPU_READ_EVERY_MS (gpuReadDue).
 */
import { execFile } from "child_process";

export interface GpuReading {
	/** 0..1, the busiest GPU */
	utilization: number;
	vram_used_bytes: number;
}

/** A GPU's utilisation changes with the requests it runs; the router needs the trend, not every second. */
export const GPU_READ_EVERY_MS = 10_000;

/** Set once nvidia-smi was not found: it does not appear while the process runs. */
let toolMissing = false;

/** Whether a reading last taken at `lastReadAt` (ms, performance.now()) is due again. */
export function gpuReadDue(lastReadAt: number | null, now = performance.now()): boolean {
	return !toolMissing && (lastReadAt === null || now - lastReadAt >= GPU_READ_EVERY_MS);
}

export function readGpu(timeoutMs = 1_000, tool = "nvidia-smi"): Promise<GpuReading | null> {
	if (toolMissing) return Promise.resolve(null);
	return new Promise(resolve => {
		execFile(tool, ["--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"], { timeout: timeoutMs }, (err, stdout) => {
			if ((err as NodeJS.ErrnoException | null)?.code === "ENOENT") toolMissing = true;
			if (err) return resolve(null);
			const rows = stdout
				.trim()
				.split("\n")
				.map(line => line.split(",").map(v => Number(v.trim())))
				.filter(([u, m]) => Number.isFinite(u) && Number.isFinite(m));
			if (!rows.length) return resolve(null);
			resolve({ utilization: Math.max(...rows.map(([u]) => u)) / 100, vram_used_bytes: rows.reduce((s, [, m]) => s + m * 1024 * 1024, 0) });
		});
	});
}
