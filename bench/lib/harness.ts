/**
 * Benchmark harness: child processes on loopback, bounded load loops (count AND time), latency
 * percentiles, a printed table, and a section of docs/BENCHMARKS.md rewritten per benchmark with the
 * date, the machine, absolute figures and ratios against baselines measured in the same run.
 */
import { execSync, spawn, type ChildProcess } from "child_process";
import fs from "fs";
import os from "os";
import path from "path";
import { Client, type Pool, type PoolClient } from "pg";
import { runMigrations } from "../../lib/data/migrations";

export const ROOT = path.resolve(__dirname, "..", "..");
const running = new Set<ChildProcess>();

/** Extra node flags for every process a bench starts, e.g. BENCH_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" to profile them (not allowed in NODE_OPTIONS). */
const NODE_ARGS = (process.env.BENCH_NODE_ARGS ?? "").split(" ").filter(Boolean);
/**
 * BENCH_CHILD_LOG=<dir>: every child's stdout and stderr also go to <dir>/<script name>.<pid>.log, whole. Without it
 * only the output up to the ready line is kept (for the error if it never comes); with `--trace-opt` or
 * `--trace-deopt` in BENCH_NODE_ARGS, this is where V8's lines land.
 */
const CHILD_LOG_DIR = process.env.BENCH_CHILD_LOG;

/**
 * Starts `node --import tsx <script>` and resolves when it prints a line containing `readyText`. With `ipc`,
 * the child also gets a message channel (process.send / child.send). `launcher` runs node under another program
 * (e.g. `valgrind --tool=callgrind`), which must exec node in its own process so that the channel is inherited;
 * `nodeArgs` are node flags for this process only (after BENCH_NODE_ARGS).
 */
export function startProcess(script: string, env: Record<string, string>, readyText = "READY", timeoutMs = 30_000, ipc = false, launcher: string[] = [], nodeArgs: string[] = []): Promise<ChildProcess> {
	const [command, ...args] = [...launcher, process.execPath, ...NODE_ARGS, ...nodeArgs, "--import", "tsx", path.join(ROOT, script)];
	const child = spawn(command, args, {
		cwd: ROOT,
		env: { ...process.env, ...env },
		stdio: ipc ? ["ignore", "pipe", "pipe", "ipc"] : ["ignore", "pipe", "pipe"],
	});
	running.add(child);
	child.once("exit", () => running.delete(child));
	if (CHILD_LOG_DIR) logChildOutput(child, script, CHILD_LOG_DIR);
	return new Promise((resolve, reject) => {
		let output = "";
		const timer = setTimeout(() => reject(new Error(`${script} not ready after ${timeoutMs} ms:\n${output.slice(-2000)}`)), timeoutMs);
		const onData = (chunk: Buffer) => {
			output += chunk.toString();
			if (output.includes(readyText)) {
				clearTimeout(timer);
				resolve(child);
			}
			if (output.length > 100_000) output = output.slice(-10_000);
		};
		child.stdout?.on("data", onData);
		child.stderr?.on("data", onData);
		child.once("exit", code => reject(new Error(`${script} exited (${code}) before ready:\n${output.slice(-2000)}`)));
	});
}

function logChildOutput(child: ChildProcess, script: string, dir: string): void {
	fs.mkdirSync(dir, { recursive: true });
	const log = fs.createWriteStream(path.join(dir, `${path.basename(script, ".ts")}.${child.pid}.log`));
	child.stdout?.pipe(log, { end: false });
	child.stderr?.pipe(log, { end: false });
	child.once("close", () => log.end());
}

/** Sends a child started with `ipc` one message and resolves with its next message (its answer). */
export function ask<T>(child: ChildProcess, request: unknown): Promise<T> {
	return new Promise<T>(resolve => {
		child.once("message", resolve as (answer: unknown) => void);
		child.send(request as Parameters<ChildProcess["send"]>[0]);
	});
}

/** `work` between BEGIN and COMMIT on one pooled client (ROLLBACK on a failure): the raw-pg baselines' transaction. */
export async function inTransaction<T>(pool: Pool, work: (client: PoolClient) => Promise<T>): Promise<T> {
	const client = await pool.connect();
	try {
		await client.query("BEGIN");
		const result = await work(client);
		await client.query("COMMIT");
		return result;
	} catch (err) {
		await client.query("ROLLBACK").catch(() => undefined);
		throw err;
	} finally {
		client.release();
	}
}

/** A bench variant: its name in the table, and one call of it. */
export interface Variant {
	name: string;
	call: () => Promise<unknown>;
}

/** Runs a bench's main: exit 0 when it is done; on a failure, its stack, the child processes stopped, exit 1. */
export function runBench(main: () => Promise<void>): void {
	main().then(
		() => process.exit(0),
		err => {
			process.stderr.write(`bench failed: ${(err as Error).stack}\n`);
			stopProcesses().finally(() => process.exit(1));
		},
	);
}

/**
 * Stops the given children (by default every one still running) and resolves when they have exited: SIGKILL, or,
 * when profiling (BENCH_NODE_ARGS), SIGTERM first (a profile is written only on a clean exit).
 */
export async function stopProcesses(children: ChildProcess[] = [...running]): Promise<void> {
	await Promise.all(
		children.filter(child => running.has(child)).map(child => {
			const exited = new Promise(resolve => child.once("exit", resolve));
			if (!NODE_ARGS.length) child.kill("SIGKILL");
			else {
				child.kill("SIGTERM");
				setTimeout(() => child.kill("SIGKILL"), 15_000).unref();
			}
			return exited;
		}),
	);
}

/** The middle value (the upper one of an even count), as every bench reports its rounds. */
export function median(values: number[]): number {
	const sorted = [...values].sort((a, b) => a - b);
	return sorted[Math.floor(sorted.length / 2)];
}

export function percentile(sortedMs: number[], p: number): number {
	if (sortedMs.length === 0) return NaN;
	return sortedMs[Math.min(sortedMs.length - 1, Math.floor((p / 100) * sortedMs.length))];
}

export interface LoadResult {
	calls: number;
	errors: number;
	perSecond: number;
	p50: number;
	p99: number;
}

function summarize(latencies: number[], errors: number, elapsedMs: number): LoadResult {
	latencies.sort((a, b) => a - b);
	return { calls: latencies.length, errors, perSecond: (latencies.length / elapsedMs) * 1000, p50: percentile(latencies, 50), p99: percentile(latencies, 99) };
}

/** `concurrency` callers in a closed loop, until durationMs or maxCalls, whichever comes first. */
export async function closedLoop(call: () => Promise<unknown>, concurrency: number, durationMs: number, maxCalls = 2_000_000): Promise<LoadResult> {
	const latencies: number[] = [];
	let errors = 0;
	let started = 0;
	const start = performance.now();
	const deadline = start + durationMs;
	const worker = async () => {
		while (performance.now() < deadline && started < maxCalls) {
			started++;
			const t = performance.now();
			try {
				await call();
				latencies.push(performance.now() - t);
			} catch {
				errors++;
			}
		}
	};
	await Promise.all(Array.from({ length: concurrency }, worker));
	return summarize(latencies, errors, performance.now() - start);
}

/**
 * A full collection before a measured round, where the bench runs with --expose-gc (bench and bench:call-curve do):
 * variants calling from the same process take turns, and without it each round paid, in major GCs, for the
 * garbage the round before it left, so a variant's figure depended on which one ran before it.
 */
export function settleHeap(): void {
	(globalThis as { gc?: () => void }).gc?.();
}

/** An open loop at a fixed rate (calls fired on schedule, whatever the answers), bounded by durationMs. */
export async function fixedRate(
	call: () => Promise<unknown>,
	perSecond: number,
	durationMs: number,
	/** each successful call's start (ms since the first call) and latency, for a look at when the slow ones began */
	onAnswered?: (startMs: number, latencyMs: number) => void,
): Promise<LoadResult> {
	const latencies: number[] = [];
	let errors = 0;
	const pending: Promise<void>[] = [];
	const start = performance.now();
	const total = Math.floor((perSecond * durationMs) / 1000);
	for (let i = 0; i < total; i++) {
		const due = start + (i * 1000) / perSecond;
		const wait = due - performance.now();
		if (wait > 1) await new Promise(r => setTimeout(r, wait));
		const t = performance.now();
		pending.push(
			call().then(
				() => {
					const ms = performance.now() - t;
					latencies.push(ms);
					onAnswered?.(t - start, ms);
				},
				() => void errors++,
			),
		);
	}
	await Promise.all(pending);
	return summarize(latencies, errors, performance.now() - start);
}

export function machine(): string {
	const cpu = os.cpus()[0]?.model ?? "unknown CPU";
	return `${os.cpus().length} cores (${cpu}), ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, ${os.platform()} ${os.release()}`;
}

const CLOCK_TICK_MS = 1000 / Number(execSync("getconf CLK_TCK").toString());

/** CPU milliseconds (user + system) another process has used so far, from /proc. */
export function processCpuMs(pid: number): number {
	const fields = fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
	return (Number(fields[11]) + Number(fields[12])) * CLOCK_TICK_MS;
}

/** "1-min / 5-min / 15-min" load average: other work on these cores moves every figure, so it goes beside them. */
export function loadAverage(): string {
	return fs.readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" / ");
}

export function table(headers: string[], rows: Array<Array<string | number>>): string {
	const cells = rows.map(r => r.map(c => (typeof c === "number" ? formatNumber(c) : c)));
	const line = (r: string[]) => `| ${r.join(" | ")} |`;
	return [line(headers), line(headers.map(() => "---")), ...cells.map(line)].join("\n");
}

export function formatNumber(n: number): string {
	if (!Number.isFinite(n)) return "n/a";
	if (Math.abs(n) >= 100) return Math.round(n).toLocaleString("en-US");
	return n.toFixed(2);
}

/** Replaces (or appends) the `## <title>` section of docs/BENCHMARKS.md (or another file under docs/). */
export function writeSection(title: string, body: string, docsFile = "BENCHMARKS.md"): void {
	const file = path.join(ROOT, "docs", docsFile);
	const header = "# Benchmarks\n\nWritten by `npm run bench*`; every ratio compares figures measured in the same run on the same machine.\n";
	const current = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : header;
	const section = `## ${title}\n\n${body.trim()}\n`;
	const pattern = new RegExp(`## ${title.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\n[\\s\\S]*?(?=\\n## |$)`);
	const next = pattern.test(current) ? current.replace(pattern, section) : `${current.trimEnd()}\n\n${section}`;
	fs.mkdirSync(path.dirname(file), { recursive: true });
	fs.writeFileSync(file, next);
}

/** The machine's PostgreSQL, where benchmarks create and drop databases of their own. */
export const ADMIN_DATABASE_URL = process.env.DATABASE_URL ?? "postgres://root@127.0.0.1:5432/test";

/** A database of the bench's own, migrated to the latest schema; its URL. */
export async function migratedBenchDatabase(name: string): Promise<string> {
	await adminQuery(`CREATE DATABASE ${name}`);
	const url = ADMIN_DATABASE_URL.replace(/\/[^/]*$/, `/${name}`);
	await runMigrations(url, "up");
	return url;
}

/** One statement on the admin connection (CREATE/DROP DATABASE). */
export async function adminQuery(sql: string): Promise<void> {
	const client = new Client({ connectionString: ADMIN_DATABASE_URL });
	await client.connect();
	try {
		await client.query(sql);
	} finally {
		await client.end();
	}
}
