/**
 * `npm run bench:startup`: how long a production node takes from exec to a healthy /health, and its
 * resident memory once healthy, compiled (`node dist/scripts/run-node.js`) against the TypeScript
 * source through tsx (`node --import tsx scripts/run-node.ts`). Runs `npm run build` first; both
 * variants take turns, NODE_ENV=production, real NATS and PostgreSQL; loopback only.
 */
import { spawn, spawnSync } from "child_process";
import { randomBytes } from "crypto";
import fs from "fs";
import { machine, median, ROOT, table, writeSection } from "../lib/harness";

const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const DATABASE_URL = process.env.DATABASE_URL ?? "postgres://root@127.0.0.1:5432/test";
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const SETTLE_MS = 2_000;

interface Sample {
	startupMs: number;
	rssMb: number;
}

const VARIANTS = {
	compiled: ["dist/scripts/run-node.js"],
	tsx: ["--import", "tsx", "scripts/run-node.ts"],
};

function rssMb(pid: number): number {
	const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
	return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
}

async function healthy(port: number): Promise<boolean> {
	try {
		return (await fetch(`http://127.0.0.1:${port}/health`)).ok;
	} catch {
		return false;
	}
}

async function once(args: string[], port: number): Promise<Sample> {
	const began = performance.now();
	const env = {
		PATH: process.env.PATH ?? "",
		NODE_ENV: "production",
		NODE_ID: `startup-${port}`,
		PORT: String(port),
		NATS_URL,
		DATABASE_URL,
		MESH_NAMESPACE: `bench-startup-${process.pid}`,
		EVENTS_SUBJECT_PREFIX: `bench-startup-${process.pid}`,
		NATS_STREAM_EVENTS: `BENCH_STARTUP_${process.pid}`,
		JWT_SECRET: randomBytes(32).toString("hex"),
		MEMORY_ENCRYPTION_KEY: randomBytes(32).toString("base64"),
		LOG_LEVEL: "warn",
	};
	const child = spawn(process.execPath, args, { cwd: ROOT, env, stdio: "ignore" });
	try {
		const deadline = Date.now() + 30_000;
		while (!(await healthy(port))) {
			if (Date.now() > deadline || child.exitCode !== null) throw new Error(`${args.join(" ")} did not become healthy`);
			await new Promise(r => setTimeout(r, 20));
		}
		const startupMs = performance.now() - began;
		await new Promise(r => setTimeout(r, SETTLE_MS));
		return { startupMs, rssMb: rssMb(child.pid!) };
	} finally {
		const exited = new Promise(r => child.once("exit", r));
		child.kill("SIGTERM");
		await exited;
	}
}

async function main(): Promise<void> {
	const build = spawnSync("npm", ["run", "build"], { cwd: ROOT, stdio: "inherit" });
	if (build.status !== 0) throw new Error("npm run build failed");
	const samples: Record<string, Sample[]> = { compiled: [], tsx: [] };
	for (let round = 0; round < ROUNDS; round++) {
		for (const [name, args] of Object.entries(VARIANTS)) samples[name].push(await once(args, 19_400 + round));
	}
	const rows = Object.entries(samples).map(([name, s]) => [
		name === "compiled" ? "compiled: node dist/scripts/run-node.js" : "tsx: node --import tsx scripts/run-node.ts",
		Math.round(median(s.map(x => x.startupMs))),
		s.map(x => Math.round(x.startupMs)).join(" / "),
		Math.round(median(s.map(x => x.rssMb))),
	]);
	const ratio = median(samples.compiled.map(x => x.startupMs)) / median(samples.tsx.map(x => x.startupMs));
	const body = `Run ${new Date().toISOString()} on ${machine()}; NODE_ENV=production, every service, real NATS and PostgreSQL; median of ${ROUNDS} starts per variant, taking turns; RSS read ${SETTLE_MS / 1000} s after the first healthy /health.

${table(["variant", "exec → healthy /health, ms (median)", "runs", "RSS MB (median)"], rows)}

- compiled / tsx start-up time: **${ratio.toFixed(2)}**
- Where the difference comes from: tsx transforms every TypeScript file with esbuild at load time and keeps its
  loader in the process; the compiled build loads plain JavaScript. The image runs the compiled build on Node 22.
- Start-up includes the NATS probe, PostgreSQL connection, service start and the mesh announcing itself; on a
  2-core machine shared with other work the runs spread widely, so compare the medians of one run.`;
	writeSection("Production node start-up (bench/startup)", body);
	process.stdout.write(`${body}\n`);
}

main().catch(err => {
	process.stderr.write(`${(err as Error).stack}\n`);
	process.exit(1);
});
