/**
 * GPU utilisation for the node's advertisement, read from `nvidia-smi` when the machine has one;
 * null otherwise (no GPU, other vendor, or the tool missing). Never throws.
 */
import { execFile } from "child_process";

export interface GpuReading {
	/** 0..1, the busiest GPU */
	utilization: number;
	vram_used_bytes: number;
}

export function readGpu(timeoutMs = 1_000): Promise<GpuReading | null> {
	return new Promise(resolve => {
		execFile("nvidia-smi", ["--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"], { timeout: timeoutMs }, (err, stdout) => {
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
