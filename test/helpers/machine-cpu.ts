/**
 * How busy the whole machine was over a span, from /proc/stat (Linux). Chaos tests report it next to
 * their slowest call: a failover that is slow because no process got a core (other work on a shared
 * machine) reads differently from one that is slow because the mesh waited.
 */
import { readFileSync } from "fs";

interface CpuTimes {
	idle: number;
	total: number;
}

function machineCpuTimes(): CpuTimes | null {
	try {
		const line = readFileSync("/proc/stat", "utf8").split("\n", 1)[0];
		// cpu  user nice system idle iowait irq softirq steal ...
		const ticks = line.trim().split(/\s+/).slice(1).map(Number);
		return { idle: ticks[3] + (ticks[4] ?? 0), total: ticks.reduce((a, b) => a + b, 0) };
	} catch {
		return null;
	}
}

/** Share of the machine's CPU time left idle over the next `ms` (0..1), or null where /proc/stat is absent. */
export async function idleShareOver(ms: number): Promise<number | null> {
	const before = machineCpuTimes();
	await new Promise(resolve => setTimeout(resolve, ms));
	const after = machineCpuTimes();
	if (!before || !after || after.total === before.total) return null;
	return Math.round(((after.idle - before.idle) / (after.total - before.total)) * 100) / 100;
}
