/**
 * `npm run bench:call-cost`: what each component of the project's broker configuration costs a remote call.
 * Bare Moleculer, the project, and the project with one component taken out (bench/mesh/call-cost-variants.ts)
 * make the same call (params + meta.user) from a caller process to a serving process over NATS (each variant has
 * its own pair: bench/mesh/call-cost-caller.ts and call-cost-server.ts), at 10 and 100
 * concurrent callers (COST_CONCURRENCY). Only the pair under measurement runs, the others wait stopped (SIGSTOP).
 * Variants take turns over BENCH_ROUNDS rounds (default 4) of
 * BENCH_SECONDS (default 1); per variant the median of each figure is reported: calls/s, and the CPU
 * microseconds per call of the caller (process.cpuUsage), the serving process and nats-server (/proc).
 * On this 2-core machine calls/s at 100 callers follows the summed CPU per call, which is steadier than calls/s
 * over short rounds; still, with other work on the cores a run resolves ±5–8 µs per call, more than most single
 * components cost (docs/BENCHMARKS.md, "Per-call cost, component by component"): bench/mesh/call-chain.ts
 * measures the middleware chains alone, to ±75 ns.
 *
 * CALL_COST_BASE=<checkout> adds "project before": that checkout's moleculer.config.ts and mesh.echo (its
 * node_modules must be a symlink to this one's, so both use the same Moleculer), for before/after in one run.
 * CALL_COST_ONLY=word,word keeps bare, project and the variants whose names contain a word.
 */
import { execSync, type ChildProcess } from "child_process";
import { ask, loadAverage, machine, median, processCpuMs, runBench, startProcess, stopProcesses, table } from "../lib/harness";
import type { RoundAnswer, RoundRequest } from "./call-cost-caller";
import { costVariants, pairEnv, type CostVariant } from "./call-cost-variants";

const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const SECONDS = Number(process.env.BENCH_SECONDS ?? 1);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 4);
const CONCURRENCY = (process.env.COST_CONCURRENCY ?? "10,100").split(",").map(Number);

interface Sample {
	perSecond: number;
	p99: number;
	errors: number;
	/** CPU µs per call */
	caller: number;
	server: number;
	nats: number;
}

interface Contender {
	variant: CostVariant;
	caller: ChildProcess;
	server: ChildProcess;
}

/** One round of one variant: its caller process runs the loop; CPU per call of each of the three processes. */
async function round(contender: Contender, concurrency: number, natsPid: number, ms = SECONDS * 1000): Promise<Sample> {
	const before = { server: processCpuMs(contender.server.pid!), nats: processCpuMs(natsPid) };
	const answer = await ask<RoundAnswer>(contender.caller, { concurrency, ms } satisfies RoundRequest);
	const perCall = (ms: number) => (ms * 1000) / Math.max(1, answer.calls);
	return {
		perSecond: answer.perSecond,
		p99: answer.p99,
		errors: answer.errors,
		caller: perCall(answer.cpuMs),
		server: perCall(processCpuMs(contender.server.pid!) - before.server),
		nats: perCall(processCpuMs(natsPid) - before.nats),
	};
}

/**
 * Only the pair under measurement runs: the others are stopped (SIGSTOP). An idle project node is not free
 * (its liveness scan wakes it every 10 ms), and thirty of them would take a share of the two cores.
 */
async function resume(c: Contender): Promise<void> {
	c.server.kill("SIGCONT");
	c.caller.kill("SIGCONT");
	await ask(c.caller, { settle: true } satisfies RoundRequest);
}

function pause(c: Contender): void {
	c.caller.kill("SIGSTOP");
	c.server.kill("SIGSTOP");
}

/** Each variant's median figures at each concurrency; the order of turns rotates every round; round 0 warms up. */
async function measure(contenders: Contender[], natsPid: number): Promise<Sample[][]> {
	const samples = CONCURRENCY.map(() => contenders.map((): Sample[] => []));
	for (let r = 0; r <= ROUNDS; r++) {
		for (let k = 0; k < contenders.length; k++) {
			const i = (k + r) % contenders.length;
			await resume(contenders[i]);
			for (let j = 0; j < CONCURRENCY.length; j++) {
				const sample = await round(contenders[i], CONCURRENCY[j], natsPid, r === 0 ? 500 : SECONDS * 1000);
				if (r > 0) samples[j][i].push(sample);
			}
			pause(contenders[i]);
		}
		process.stdout.write(`round ${r}/${ROUNDS} done${r === 0 ? " (warm-up)" : ""} (load ${loadAverage()})\n`);
	}
	return samples.map(byVariant =>
		byVariant.map(s => ({
			perSecond: median(s.map(x => x.perSecond)),
			p99: median(s.map(x => x.p99)),
			errors: s.reduce((sum, x) => sum + x.errors, 0),
			caller: median(s.map(x => x.caller)),
			server: median(s.map(x => x.server)),
			nats: median(s.map(x => x.nats)),
		})),
	);
}

function report(contenders: Contender[], figures: Sample[], concurrency: number): string {
	const total = (s: Sample) => s.caller + s.server + s.nats;
	const [bare, project] = figures;
	const gap = total(project) - total(bare);
	const signed = (n: number) => `${n >= 0 ? "+" : "−"}${Math.abs(n).toFixed(1)}`;
	const rows = contenders.map((c, i) => {
		const s = figures[i];
		const saved = total(project) - total(s);
		return [
			c.variant.name,
			s.perSecond,
			(s.perSecond / project.perSecond).toFixed(2),
			(s.perSecond / bare.perSecond).toFixed(2),
			s.caller.toFixed(1),
			s.server.toFixed(1),
			s.nats.toFixed(1),
			total(s).toFixed(1),
			i < 2 ? "" : `${signed(project.caller - s.caller)} / ${signed(project.server - s.server)} / ${signed(saved)}`,
			i < 2 || gap <= 0 ? "" : `${Math.round((100 * saved) / gap)} %`,
			s.errors,
		];
	});
	return [
		`### ${concurrency} concurrent callers`,
		"",
		table(
			[
				"variant",
				"calls/s",
				"× project",
				"× bare",
				"caller µs/call",
				"server µs/call",
				"nats µs/call",
				"total µs/call",
				"saved vs project µs: caller / server / total",
				"share of the gap",
				"failed calls",
			],
			rows,
		),
	].join("\n");
}

async function main(): Promise<void> {
	const loadAtStart = loadAverage();
	const started = performance.now();
	const env = pairEnv(`cost-${process.pid}`, NATS_URL);
	const variants = costVariants();
	const contenders: Contender[] = [];
	try {
		// A few at a time: thirty-odd processes compiling TypeScript at once would only thrash two cores.
		for (let i = 0; i < variants.length; i += 4) {
			const batch = variants.slice(i, i + 4).map(async (variant, j) => {
				const childEnv = { ...env, COST_VARIANT: String(i + j) };
				const server = await startProcess("bench/mesh/call-cost-server.ts", childEnv, "READY", 120_000);
				const caller = await startProcess("bench/mesh/call-cost-caller.ts", childEnv, "READY", 120_000, true);
				return { variant, caller, server };
			});
			contenders.push(...(await Promise.all(batch)));
			contenders.slice(i).forEach(pause);
		}
		const natsPid = Number(execSync("pgrep -o nats-server").toString().trim());
		const figures = await measure(contenders, natsPid);
		const sections = CONCURRENCY.map((concurrency, j) => report(contenders, figures[j], concurrency));
		const header =
			`Run ${new Date().toISOString()} on ${machine()}; NATS ${NATS_URL}; load average ${loadAtStart} at the start and ${loadAverage()} at the end; ` +
			`${variants.length} variants, each a caller process and a serving process of its own (only the pair under measurement running, the others stopped), taking turns over ${ROUNDS} rounds of ${SECONDS} s at each concurrency, median of each column; ` +
			`${((performance.now() - started) / 1000).toFixed(0)} s in all. \`npm run bench:call-cost\`.`;
		process.stdout.write(`\n${header}\n\n${sections.join("\n\n")}\n`);
	} finally {
		for (const c of contenders) for (const child of [c.caller, c.server]) child.kill("SIGCONT");
		await stopProcesses();
	}
}

runBench(main);
