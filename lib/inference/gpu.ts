/**
 * GPU utilisation for the node's advertisement, read from `nvidia-smi` when the machine has one;
 * null otherwise (no GPU, other vendor, or the tool missing). Never throws.
 *
 * Starting a process is not free for the caller: spawn() runs on the event loop, 14 ms at p50 and 46 ms
 * at worst on this project's 2-core machine (a CPU profile of a node under the city bench had 3 % of its
 * samples in it, from a read every second). So a GpuReader asks a machine without nvidia-smi once, and a
 * machine with it at most every GPU_READ_EVERY_MS.
 */
import { execFile } from "child_process";

export interface GpuReading {
	/** 0..1, the busiest GPU */
	utilization: number;
	vram_used_bytes: number;
}

/** A GPU's utilisation changes with the requests it runs; the router needs the trend, not every second. */
export const GPU_READ_EVERY_MS = 10_000;

/** The GPU reading a node advertises, refreshed at most every `everyMs`, and not at all once the tool is missing. */
export class GpuReader {
	private readAt: number | null = null;
	private reading: GpuReading | null = null;
	/** nvidia-smi was not found: it does not appear while the process runs */
	private toolMissing = false;

	constructor(
		private readonly tool = "nvidia-smi",
		private readonly everyMs = GPU_READ_EVERY_MS,
		private readonly timeoutMs = 1_000,
	) {}

	/** The latest reading, taken again first when it is due. Never throws. */
	async current(now = performance.now()): Promise<GpuReading | null> {
		if (this.toolMissing || (this.readAt !== null && now - this.readAt < this.everyMs)) return this.reading;
		this.readAt = now;
		const answer = await queryGpu(this.tool, this.timeoutMs);
		this.toolMissing = answer === "missing";
		this.reading = answer === "missing" ? null : answer;
		return this.reading;
	}
}

function queryGpu(tool: string, timeoutMs: number): Promise<GpuReading | null | "missing"> {
	return new Promise(resolve => {
		execFile(tool, ["--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"], { timeout: timeoutMs }, (err, stdout) => {
			if ((err as NodeJS.ErrnoException | null)?.code === "ENOENT") return resolve("missing");
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
