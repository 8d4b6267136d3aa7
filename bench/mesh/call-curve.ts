/**
 * `npm run bench:call-curve`: calls/s and p99 of a remote call against the number of concurrent callers
 * (CURVE_CONCURRENCY, default 1, 10, 100, 1000), bare Moleculer vs the project making the same call
 * (params + meta.user) between two processes over real NATS. At each point the two take turns over
 * BENCH_ROUNDS rounds (default 3) of BENCH_SECONDS (default 5) and the median round is reported, with
 * the CPU each process used meanwhile (% of one core), which says what limits the curve. Writes the
 * table into docs/BENCHMARKS.md and the plot to docs/bench/call-curve.svg.
 */
import fs from "fs";
import path from "path";
import { execSync } from "child_process";
import { closedLoop, settleHeap, formatNumber, loadAverage, machine, processCpuMs, ROOT, stopProcesses, table, writeSection, type LoadResult, runBench } from "../lib/harness";
import { startCallPair } from "./call-pair";
import { svgCharts } from "../lib/svg-plot";

const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const CONCURRENCY = (process.env.CURVE_CONCURRENCY ?? "1,10,100,1000").split(",").map(Number);
const namespace = `curve-${process.pid}`;
const SVG_FILE = path.join(ROOT, "docs", "bench", "call-curve.svg");

interface Round extends LoadResult {
	/** % of one core over the round: the calling process, the serving node, nats-server */
	cpu: { caller: number; server: number; nats: number };
	/** failed calls over every round at this point, not only the median one */
	errorsAllRounds?: number;
}

interface Variant {
	name: string;
	serverPid: number;
	call: () => Promise<unknown>;
}

async function round(variant: Variant, concurrency: number, natsPid: number): Promise<Round> {
	settleHeap();
	const before = { caller: process.cpuUsage(), server: processCpuMs(variant.serverPid), nats: processCpuMs(natsPid), at: performance.now() };
	const result = await closedLoop(variant.call, concurrency, SECONDS * 1000);
	const elapsed = performance.now() - before.at;
	const caller = process.cpuUsage(before.caller);
	const share = (ms: number) => (100 * ms) / elapsed;
	return { ...result, cpu: { caller: share((caller.user + caller.system) / 1000), server: share(processCpuMs(variant.serverPid) - before.server), nats: share(processCpuMs(natsPid) - before.nats) } };
}

/** Every point: the variants take turns round by round; the median round (by calls/s) of each. */
async function measureCurve(variants: Variant[], natsPid: number): Promise<Map<string, Round[]>> {
	const curve = new Map<string, Round[]>(variants.map(v => [v.name, []]));
	for (const concurrency of CONCURRENCY) {
		const rounds = new Map<string, Round[]>(variants.map(v => [v.name, []]));
		for (const v of variants) await closedLoop(v.call, concurrency, 1_000); // warm-up at this concurrency
		for (let i = 0; i < ROUNDS; i++) for (const v of variants) rounds.get(v.name)!.push(await round(v, concurrency, natsPid));
		for (const v of variants) {
			const byRate = [...rounds.get(v.name)!].sort((a, b) => a.perSecond - b.perSecond);
			const median = byRate[Math.floor(byRate.length / 2)];
			curve.get(v.name)!.push({ ...median, errorsAllRounds: byRate.reduce((sum, r) => sum + r.errors, 0) });
			process.stdout.write(
				`@${concurrency} ${v.name}: ${byRate.map(r => formatNumber(r.perSecond)).join(" / ")} calls/s, p99 ${formatNumber(median.p99)} ms, ` +
					`CPU caller ${median.cpu.caller.toFixed(0)}% server ${median.cpu.server.toFixed(0)}% nats ${median.cpu.nats.toFixed(0)}% (load ${loadAverage()})\n`,
			);
		}
	}
	return curve;
}

function report(curve: Map<string, Round[]>, loadAtStart: string): string {
	const [bare, project] = [...curve.values()];
	const rows = CONCURRENCY.map((c, i) => [
		String(c),
		bare[i].perSecond,
		project[i].perSecond,
		(project[i].perSecond / bare[i].perSecond).toFixed(2),
		bare[i].p99,
		project[i].p99,
		`${bare[i].cpu.caller.toFixed(0)} / ${bare[i].cpu.server.toFixed(0)} / ${bare[i].cpu.nats.toFixed(0)}`,
		`${project[i].cpu.caller.toFixed(0)} / ${project[i].cpu.server.toFixed(0)} / ${project[i].cpu.nats.toFixed(0)}`,
		`${bare[i].errorsAllRounds} / ${project[i].errorsAllRounds}`,
	]);
	return [
		`Run ${new Date().toISOString()} on ${machine()}; NATS ${NATS_URL}; load average ${loadAtStart} at the start and ${loadAverage()} at the end (other work shares these cores); at each concurrency bare Moleculer and the project take turns over ${ROUNDS} rounds of ${SECONDS} s, median round reported. Both make the same call (params + \`meta.user\`) from this process to a serving process over NATS. \`npm run bench:call-curve\`.`,
		"",
		"![calls/s and p99 vs concurrency](bench/call-curve.svg)",
		"",
		table(["concurrent callers", "bare calls/s", "project calls/s", "project / bare", "bare p99 ms", "project p99 ms", "bare CPU % caller / server / nats", "project CPU % caller / server / nats", "failed calls, all rounds: bare / project"], rows),
		"",
		"- CPU columns: % of one core each process used during the median round (the machine has 200 %). Well under 200 % in",
		"  total with a high load average means the processes waited for cores taken by other work, not that they hit a limit",
		"  of their own. Failed calls: bare Moleculer's defaults wait without limit; the project's caller times calls by",
		"  class and takes a node that stops answering probes out of rotation, so overload can surface as failures.",
		"- Past one machine: a serving node is one event loop, so more serving nodes on the NATS cluster (Moleculer balances",
		"  calls over them) and callers on machines of their own add throughput; nats-server's column shows its share.",
	].join("\n");
}

function plot(curve: Map<string, Round[]>, caption: string): void {
	const colors = ["#888888", "#1f6feb"];
	const series = (pick: (r: Round) => number) => [...curve.entries()].map(([name, rounds], i) => ({ name, color: colors[i], points: rounds.map((r, j) => [CONCURRENCY[j], pick(r)] as [number, number]) }));
	fs.mkdirSync(path.dirname(SVG_FILE), { recursive: true });
	fs.writeFileSync(
		SVG_FILE,
		svgCharts(
			[
				{ title: "Remote call: calls/s", xLabel: "concurrent callers", yLabel: "calls/s (median round)", xLog: true, series: series(r => r.perSecond) },
				{ title: "Remote call: p99 latency", xLabel: "concurrent callers", yLabel: "p99 ms", xLog: true, yLog: true, series: series(r => r.p99) },
			],
			caption,
		),
	);
}

async function main(): Promise<void> {
	const loadAtStart = loadAverage();
	const env = { MESH_NAMESPACE: namespace, NATS_URL, DATABASE_URL: process.env.DATABASE_URL ?? "postgres://root@127.0.0.1:5432/test", JWT_SECRET: "curve-secret-0123456789abcdef0123456789", LOG_LEVEL: "warn" };
	const pair = await startCallPair(env, "curve", { ...process.env, ...env });
	const natsPid = Number(execSync("pgrep -o nats-server").toString().trim());
	try {
		const curve = await measureCurve(
			[
				{ name: "bare Moleculer", serverPid: pair.bareServer.pid!, call: pair.bareCall },
				{ name: "project", serverPid: pair.server.pid!, call: pair.projectCall },
			],
			natsPid,
		);
		const text = report(curve, loadAtStart);
		plot(curve, `${new Date().toISOString().slice(0, 16)}Z, ${machine()}, load ${loadAverage()}; median of ${ROUNDS} rounds of ${SECONDS} s per point`);
		process.stdout.write(`\n${text}\n`);
		writeSection("How the remote call grows with concurrency (bench/mesh/call-curve.ts)", text);
	} finally {
		await pair.stopCallers();
		await stopProcesses();
	}
}

runBench(main);
