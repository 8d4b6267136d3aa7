/**
 * `node --import tsx bench/lib/profile-summary.ts <file.cpuprofile> [top] [from-ms] [to-ms]`: where a
 * process spent its CPU, from a V8 .cpuprofile (BENCH_NODE_ARGS="--cpu-prof --cpu-prof-dir=…" on a bench):
 * self time by function and by file, and inclusive time by function, over the whole profile or over a
 * window of it (ms from its start, e.g. the fan-out only). Idle and GC are listed apart.
 */
import fs from "fs";

interface ProfileNode {
	id: number;
	callFrame: { functionName: string; url: string; lineNumber: number };
	children?: number[];
}

interface CpuProfile {
	nodes: ProfileNode[];
	startTime: number;
	samples: number[];
	timeDeltas: number[];
}

const [file, topArg, fromArg, toArg] = process.argv.slice(2);
const top = Number(topArg ?? 30);
const profile = JSON.parse(fs.readFileSync(file, "utf8")) as CpuProfile;
const byId = new Map(profile.nodes.map(n => [n.id, n]));
const parent = new Map<number, number>();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

const shortUrl = (url: string) => url.replace(/^file:\/\//, "").replace(/.*node_modules\//, "").replace(/.*\/wt-[^/]+\//, "") || "(native)";
const label = (n: ProfileNode) => `${n.callFrame.functionName || "(anonymous)"} ${shortUrl(n.callFrame.url)}:${n.callFrame.lineNumber + 1}`;

/** Microseconds of each sample (the delta to the next one), within the window. */
const selfUs = new Map<number, number>();
let elapsed = 0;
let total = 0;
const from = Number(fromArg ?? 0) * 1000;
const to = toArg ? Number(toArg) * 1000 : Infinity;
for (let i = 0; i < profile.samples.length; i++) {
	elapsed += profile.timeDeltas[i];
	if (elapsed < from || elapsed > to) continue;
	const dt = profile.timeDeltas[i + 1] ?? 0;
	selfUs.set(profile.samples[i], (selfUs.get(profile.samples[i]) ?? 0) + dt);
	total += dt;
}

const selfByLabel = new Map<string, number>();
const selfByFile = new Map<string, number>();
const inclusive = new Map<string, number>();
for (const [id, us] of selfUs) {
	const node = byId.get(id)!;
	selfByLabel.set(label(node), (selfByLabel.get(label(node)) ?? 0) + us);
	const f = shortUrl(node.callFrame.url).split(":")[0];
	selfByFile.set(f, (selfByFile.get(f) ?? 0) + us);
	// Inclusive: every distinct function on the stack once.
	const seen = new Set<string>();
	for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
		const l = label(byId.get(at)!);
		if (seen.has(l)) continue;
		seen.add(l);
		inclusive.set(l, (inclusive.get(l) ?? 0) + us);
	}
}

const print = (title: string, m: Map<string, number>) => {
	process.stdout.write(`\n== ${title} (ms, % of ${(total / 1000).toFixed(0)} ms sampled)\n`);
	for (const [k, us] of [...m].sort((a, b) => b[1] - a[1]).slice(0, top)) process.stdout.write(`${(us / 1000).toFixed(1).padStart(9)} ${((100 * us) / total).toFixed(1).padStart(5)}%  ${k}\n`);
};
print("self by function", selfByLabel);
print("self by file", selfByFile);
print("inclusive by function", inclusive);
