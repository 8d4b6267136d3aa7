/**
 * `npm run bench:call-cost`: what each component of the project's broker configuration costs a remote call.
 * Bare Moleculer, the project, and the project with one component taken out (bench/mesh/call-cost-variants.ts)
 * make the same call (params + meta.user) from this process to a serving process over NATS, at 10 and 100
 * concurrent callers (COST_CONCURRENCY). Variants take turns over BENCH_ROUNDS rounds (default 5) of
 * BENCH_SECONDS (default 1.2); per variant the median of each figure is reported: calls/s, and the CPU
 * microseconds per call of the caller (process.cpuUsage), the serving process and nats-server (/proc).
 * On this 2-core machine calls/s at 100 callers follows the summed CPU per call, which is far steadier than
 * calls/s over short rounds, so a component's share of the gap is read from the CPU columns.
 *
 * CALL_COST_BASE=<checkout> adds "project before": that checkout's moleculer.config.ts and mesh.echo (its
 * node_modules must be a symlink to this one's, so both use the same Moleculer), for before/after in one run.
 * CALL_COST_ONLY=word,word keeps bare, project and the variants whose names contain a word.
 */
import { execSync } from "child_process";
import { ServiceBroker } from "moleculer";
import { closedLoop, loadAverage, machine, processCpuMs, runBench, startProcess, stopProcesses, table } from "../lib/harness";
import { costVariants, variantOptions, type CostVariant } from "./call-cost-variants";

const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const SECONDS = Number(process.env.BENCH_SECONDS ?? 1.2);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
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
	call: () => Promise<unknown>;
}

function median(values: number[]): number {
	const sorted = [...values].sort((a, b) => a - b);
	return sorted[Math.floor(sorted.length / 2)];
}

async function round(contender: Contender, concurrency: number, serverPid: number, natsPid: number): Promise<Sample> {
	const before = { caller: process.cpuUsage(), server: processCpuMs(serverPid), nats: processCpuMs(natsPid) };
	const result = await closedLoop(contender.call, concurrency, SECONDS * 1000);
	const caller = process.cpuUsage(before.caller);
	const perCall = (ms: number) => (ms * 1000) / Math.max(1, result.calls);
	return {
		perSecond: result.perSecond,
		p99: result.p99,
		errors: result.errors,
		caller: perCall((caller.user + caller.system) / 1000),
		server: perCall(processCpuMs(serverPid) - before.server),
		nats: perCall(processCpuMs(natsPid) - before.nats),
	};
}

/** Each variant's median figures at one concurrency; the order of turns rotates every round. */
async function measure(contenders: Contender[], concurrency: number, serverPid: number, natsPid: number): Promise<Sample[]> {
	const samples = contenders.map((): Sample[] => []);
	for (const c of contenders) await closedLoop(c.call, concurrency, 400);
	for (let r = 0; r < ROUNDS; r++) {
		for (let k = 0; k < contenders.length; k++) {
			const i = (k + r) % contenders.length;
			samples[i].push(await round(contenders[i], concurrency, serverPid, natsPid));
		}
		process.stdout.write(`@${concurrency} round ${r + 1}/${ROUNDS} done (load ${loadAverage()})\n`);
	}
	return samples.map(s => ({
		perSecond: median(s.map(x => x.perSecond)),
		p99: median(s.map(x => x.p99)),
		errors: s.reduce((sum, x) => sum + x.errors, 0),
		caller: median(s.map(x => x.caller)),
		server: median(s.map(x => x.server)),
		nats: median(s.map(x => x.nats)),
	}));
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
	const env = {
		MESH_NAMESPACE: `cost-${process.pid}`,
		NATS_URL,
		DATABASE_URL: process.env.DATABASE_URL ?? "postgres://root@127.0.0.1:5432/test",
		JWT_SECRET: "cost-secret-0123456789abcdef0123456789",
		LOG_LEVEL: "warn",
	};
	const variants = costVariants();
	const server = await startProcess("bench/mesh/call-cost-server.ts", env, "READY", 90_000);
	const brokers = await Promise.all(variants.map(async (v, i) => new ServiceBroker(await variantOptions(v, i, "caller", env))));
	await Promise.all(brokers.map(b => b.start()));
	await Promise.all(brokers.map((b, i) => b.waitForServices(variants[i].edit ? "mesh" : "echo", 30_000)));
	const natsPid = Number(execSync("pgrep -o nats-server").toString().trim());
	const params = { message: "hello mesh" };
	const meta = { user: { id: "bench", roles: ["admin"], teams: [] } };
	const contenders = variants.map((variant, i) => ({ variant, call: () => brokers[i].call(variant.edit ? "mesh.echo" : "echo.echo", params, { meta }) }));
	try {
		const sections: string[] = [];
		for (const concurrency of CONCURRENCY) sections.push(report(contenders, await measure(contenders, concurrency, server.pid!, natsPid), concurrency));
		const header =
			`Run ${new Date().toISOString()} on ${machine()}; NATS ${NATS_URL}; load average ${loadAtStart} at the start and ${loadAverage()} at the end; ` +
			`${variants.length} variants taking turns over ${ROUNDS} rounds of ${SECONDS} s at each concurrency, median of each column; ` +
			`${((performance.now() - started) / 1000).toFixed(0)} s in all. \`npm run bench:call-cost\`.`;
		process.stdout.write(`\n${header}\n\n${sections.join("\n\n")}\n`);
	} finally {
		await Promise.all(brokers.map(b => b.stop()));
		await stopProcesses();
	}
}

runBench(main);
