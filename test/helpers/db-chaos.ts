/**
 * The database-fault scenario shared by test/chaos/db-faults.test.ts and bench/db-faults: two full
 * nodes (real processes, real NATS) on a test-owned PostgreSQL, reads of existing memories and keyed
 * memory writes through both gateways at a steady rate, a fault injected in the middle.
 *
 * The writers behave like the clients the issue describes: on a 5xx or a lost connection they send
 * the same request with the same Idempotency-Key again (after Retry-After when given), until it is
 * acknowledged. Every answer is recorded, so a run yields: answers by status, the client-visible
 * window (first failed answer → first success after it), the slowest answer, and for each logical
 * write whether it was acknowledged, to be checked against the rows in the database.
 */
import { randomUUID } from "crypto";
import http from "http";
import { signToken } from "../../lib/http/auth";
import { startNodeProcess, tsxNode, stopAll, uniqueNamespace, waitForMesh, type NodeProcess } from "./cluster";
import { subjectPrefixFor, streamFor } from "./databases";
import { LOCAL_NATS_URL } from "./requirements";

export const CHAOS_JWT_SECRET = "db-chaos-secret-0123456789abcdef0123";
const OWNER = "chaos-user";

export interface Answer {
	kind: "read" | "write";
	/** ms on the scenario clock */
	start: number;
	end: number;
	status: number;
	retryAfter: string | null;
	type?: string;
	/** why a request got no HTTP answer at all (status 0) */
	error?: string;
}

export interface WriteOutcome {
	key: string;
	acknowledged: boolean;
	attempts: number;
	id?: string;
}

export interface FaultWindow {
	answers: number;
	failed: number;
	byStatus: Record<string, number>;
	/** first failed answer (by its end) → first successful answer after it, ms; 0 when nothing failed */
	windowMs: number;
	/** first failed answer → last failed answer, ms */
	failingForMs: number;
	slowestMs: number;
}

export interface ChaosMesh {
	nodes: NodeProcess[];
	env: Record<string, string>;
	stop(): Promise<void>;
}

export interface ChaosMeshOptions {
	databaseUrl: string;
	/** checkout to run the nodes from (the benchmark runs the base commit for "before") */
	root?: string;
	extraEnv?: Record<string, string>;
}

/** Two full nodes (every service) on one test-owned database. */
export async function startChaosMesh(options: ChaosMeshOptions): Promise<ChaosMesh> {
	const namespace = uniqueNamespace("dbchaos");
	const env = {
		MESH_NAMESPACE: namespace,
		NATS_URL: LOCAL_NATS_URL,
		DATABASE_URL: options.databaseUrl,
		JWT_SECRET: CHAOS_JWT_SECRET,
		RATE_LIMIT_PER_KEY: "0",
		EVENTS_SUBJECT_PREFIX: subjectPrefixFor(namespace),
		NATS_STREAM_EVENTS: streamFor(namespace),
		LOG_LEVEL: "info",
		...options.extraEnv,
	};
	// One first, so that the two do not race for the migration lock on a fresh database.
	const first = await startNodeProcess({ ...env, NODE_ID: `${namespace}-a`, NODE_ROLE: "node1" }, tsxNode(options.root), options.root);
	await waitForMesh(first, ["memory"], 1, 60_000, "/api/memory/memories");
	const second = await startNodeProcess({ ...env, NODE_ID: `${namespace}-b`, NODE_ROLE: "node2" }, tsxNode(options.root), options.root);
	await waitForMesh(second, ["memory"], 2, 60_000, "/api/memory/memories");
	return { nodes: [first, second], env, stop: () => stopAll([first, second]) };
}

const token = signToken(CHAOS_JWT_SECRET, { id: OWNER, roles: [], teams: [] });
const headers = { authorization: `Bearer ${token}`, "content-type": "application/json" };

/**
 * One connection per request: with keep-alive, a request sent just as the server closes an idle socket
 * (its 5 s keep-alive timeout, late on a starved machine) fails with ECONNRESET, a client-side race that
 * would be counted as a failed answer although the server never saw the request.
 */
const agent = new http.Agent({ keepAlive: false });

function send(url: string, init: { method?: string; headers?: Record<string, string>; body?: string }): Promise<{ status: number; retryAfter: string | null; text: string }> {
	return new Promise((resolve, reject) => {
		const req = http.request(url, { method: init.method ?? "GET", headers: init.headers, agent, timeout: 15_000 }, res => {
			const chunks: Buffer[] = [];
			res.on("data", (c: Buffer) => chunks.push(c));
			res.on("end", () => resolve({ status: res.statusCode ?? 0, retryAfter: (res.headers["retry-after"] as string | undefined) ?? null, text: Buffer.concat(chunks).toString("utf8") }));
			res.on("error", reject);
		});
		req.on("timeout", () => req.destroy(new Error("client timeout")));
		req.on("error", reject);
		req.end(init.body);
	});
}

async function answer(kind: Answer["kind"], clock: () => number, url: string, init: { method?: string; headers?: Record<string, string>; body?: string }): Promise<Answer & { body?: unknown }> {
	const start = clock();
	try {
		const res = await send(url, init);
		let body: unknown;
		try {
			body = JSON.parse(res.text);
		} catch {
			body = res.text;
		}
		return { kind, start, end: clock(), status: res.status, retryAfter: res.retryAfter, type: (body as { type?: string })?.type, body };
	} catch (err) {
		return { kind, start, end: clock(), status: 0, retryAfter: null, error: `${(err as Error).name}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` };
	}
}

/** Memories to read during the run. */
export async function seedMemories(mesh: ChaosMesh, count: number): Promise<string[]> {
	const ids: string[] = [];
	for (let i = 0; i < count; i++) {
		const res = await fetch(`${mesh.nodes[i % 2].url}/api/memory/memories`, {
			method: "POST",
			headers,
			body: JSON.stringify({ scope: "personal", owner_id: OWNER, kind: "fact", key: `seed-${i}`, content: `seed ${i}` }),
		});
		if (res.status !== 200) throw new Error(`seeding failed: ${res.status} ${await res.text()}`);
		ids.push(((await res.json()) as { id: string }).id);
	}
	return ids;
}

export interface RunningChaosLoad {
	now(): number;
	stop(): Promise<{ answers: Answer[]; writes: WriteOutcome[] }>;
}

export interface ChaosLoadOptions {
	readsPerSecond: number;
	writesPerSecond: number;
	/** a keyed write is retried until acknowledged, at most this many attempts */
	maxWriteAttempts?: number;
}

/** Open-loop reads and keyed writes through both gateways, alternating. */
export function startChaosLoad(mesh: ChaosMesh, readIds: string[], options: ChaosLoadOptions): RunningChaosLoad {
	const startedAt = performance.now();
	const clock = () => performance.now() - startedAt;
	const answers: Answer[] = [];
	const writes: WriteOutcome[] = [];
	const pending = new Set<Promise<void>>();
	let reads = 0;
	let writesSent = 0;
	const gateway = (n: number) => mesh.nodes[n % mesh.nodes.length].url;

	const readOnce = async (n: number) => {
		const a = await answer("read", clock, `${gateway(n)}/api/memory/memories/${readIds[n % readIds.length]}`, { headers });
		answers.push(a);
	};
	const writeUntilAcknowledged = async (n: number) => {
		const key = `chaos-${randomUUID()}`;
		const outcome: WriteOutcome = { key, acknowledged: false, attempts: 0 };
		writes.push(outcome);
		const body = JSON.stringify({ scope: "personal", owner_id: OWNER, kind: "fact", key, content: `write ${n}` });
		while (outcome.attempts < (options.maxWriteAttempts ?? 40)) {
			const a = await answer("write", clock, `${gateway(n + outcome.attempts)}/api/memory/memories`, { method: "POST", headers: { ...headers, "idempotency-key": key }, body });
			outcome.attempts++;
			answers.push(a);
			if (a.status === 200) {
				outcome.acknowledged = true;
				outcome.id = (a.body as { id?: string }).id;
				return;
			}
			if (a.status > 0 && a.status < 500) return;
			const wait = a.retryAfter ? Math.min(Number(a.retryAfter) * 1000, 1000) : 200;
			await new Promise(r => setTimeout(r, wait * (0.5 + Math.random() * 0.5)));
		}
	};
	const track = (p: Promise<void>) => {
		pending.add(p);
		void p.finally(() => pending.delete(p));
	};
	const tick = setInterval(() => {
		const seconds = clock() / 1000;
		while (reads < Math.floor(seconds * options.readsPerSecond)) track(readOnce(reads++));
		while (writesSent < Math.floor(seconds * options.writesPerSecond)) track(writeUntilAcknowledged(writesSent++));
	}, 5);
	return {
		now: clock,
		async stop() {
			clearInterval(tick);
			while (pending.size) await Promise.all([...pending]);
			return { answers: answers.sort((a, b) => a.start - b.start), writes };
		},
	};
}

/** Statistics over answers of one kind (or all) started in [from, to). */
export function faultWindow(answers: Answer[], from: number, to: number, kind?: Answer["kind"]): FaultWindow {
	const inWindow = answers.filter(a => a.start >= from && a.start < to && (!kind || a.kind === kind));
	const byStatus: Record<string, number> = {};
	for (const a of inWindow) byStatus[a.status] = (byStatus[a.status] ?? 0) + 1;
	const failed = inWindow.filter(a => a.status !== 200);
	let windowMs = 0;
	const failingForMs = failed.length ? Math.round(Math.max(...failed.map(a => a.end)) - Math.min(...failed.map(a => a.end))) : 0;
	if (failed.length) {
		const firstFailure = Math.min(...failed.map(a => a.end));
		const firstSuccessAfter = inWindow.filter(a => a.status === 200 && a.end > firstFailure).reduce((m, a) => Math.min(m, a.end), Infinity);
		const lastEnd = Math.max(...inWindow.map(a => a.end));
		windowMs = Math.round((Number.isFinite(firstSuccessAfter) ? firstSuccessAfter : lastEnd) - firstFailure);
	}
	return {
		answers: inWindow.length,
		failed: failed.length,
		byStatus,
		windowMs,
		failingForMs,
		slowestMs: Math.round(Math.max(0, ...inWindow.map(a => a.end - a.start))),
	};
}

export function sleep(ms: number): Promise<void> {
	return new Promise(resolve => setTimeout(resolve, ms));
}
