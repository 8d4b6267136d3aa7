/**
 * PostgreSQL restarts and loses every connection under load (two full nodes, real NATS, a test-owned
 * PostgreSQL from Debian's binaries): clients see retryable 503s with Retry-After for a moment, never
 * a 500; every keyed write the client retried is applied exactly once; reads are back within 1 s of
 * the database; each node logs the fault once, not once per request.
 */
import { faultWindow, seedMemories, sleep, startChaosLoad, startChaosMesh, type Answer, type ChaosMesh, type WriteOutcome } from "../helpers/db-chaos";
import { TestPostgres, describeWithPgBinaries } from "../helpers/pg-cluster";
import { describeWithNats } from "../helpers/requirements";

jest.setTimeout(180_000);

// Modest on purpose: the machine's two cores are shared, and a starved event loop turns into mesh
// timeouts (504) that say nothing about the database.
const LOAD = { readsPerSecond: 40, writesPerSecond: 8 };

/** A failure the database caused, as the client sees it. */
const isDatabase503 = (a: Answer) => a.status === 503 && a.type === "SERVICE_UNAVAILABLE";

function report(name: string, stats: object): void {
	process.stdout.write(`[db-chaos] ${name}: ${JSON.stringify(stats)}\n`);
}

describeWithNats("database faults under load", () => {
	describeWithPgBinaries("PostgreSQL restart and terminated backends (test-owned server)", () => {
		let pg: TestPostgres;
		let mesh: ChaosMesh;
		let ids: string[];

		beforeAll(async () => {
			pg = await TestPostgres.create();
			await pg.query("CREATE DATABASE app");
			mesh = await startChaosMesh({ databaseUrl: pg.url("app") });
			ids = await seedMemories(mesh, 20);
		}, 120_000);
		afterAll(async () => {
			await mesh?.stop();
			await pg?.destroy();
		});

		/** What every scenario must show; `backAt` is when the database accepts connections again. */
		/** `faultEvents`: how many times the database was taken away (one restart, three rounds of terminations). */
		async function expectNonEvent(name: string, answers: Answer[], writes: WriteOutcome[], faultAt: number, backAt: number, logsBefore: number[], faultEvents: number): Promise<void> {
			const failed = answers.filter(a => a.status !== 200);
			report(name, {
				timeouts_504: failed.filter(a => a.status === 504).length,
				db_down_ms: Math.round(backAt - faultAt),
				reads: faultWindow(answers, faultAt - 500, Infinity, "read"),
				writes: faultWindow(answers, faultAt - 500, Infinity, "write"),
				logical_writes: writes.length,
			});
			// Whether the fault reached the nodes is each scenario's own check (else it proves nothing): a restart
			// must show as retryable 503s (below), terminated backends as pools made of new backends. Never as a
			// 500, never as a dropped connection, and every failed answer says "retry" with a Retry-After: a 503
			// SERVICE_UNAVAILABLE, or (only when the event loop is starved by the machine's other work) the mesh's
			// own retryable 504 REQUEST_TIMEOUT, reported separately.
			expect(answers.filter(a => a.status === 500 || a.status === 0)).toEqual([]);
			expect(failed.filter(a => !(isDatabase503(a) || a.status === 504) || !a.retryAfter).map(a => `${a.kind} ${a.status} ${a.type}`)).toEqual([]);
			// A restart keeps the database away for about a second, so some answers must have been the retryable
			// 503; terminated backends may be absorbed entirely by the read retries and the pool refill.
			if (faultEvents === 1) expect(failed.some(isDatabase503)).toBe(true);

			// Every keyed write the client retried is applied exactly once (keys are unique per logical write,
			// so a write applied twice shows as two rows under its key).
			expect(writes.filter(w => !w.acknowledged)).toEqual([]);
			const rows = await pg.query<{ key: string; n: string }>("SELECT key, count(*) AS n FROM memories WHERE key LIKE 'chaos-%' GROUP BY key", [], "app");
			const rowsByKey = new Map(rows.map(r => [r.key, Number(r.n)]));
			expect(writes.filter(w => rowsByKey.get(w.key) !== 1).map(w => `${w.key}: ${rowsByKey.get(w.key) ?? 0} rows`)).toEqual([]);

			// Reads are back within 1 s of the database: none started later meets a database fault.
			const lateReadFailures = answers.filter(a => a.kind === "read" && a.start >= backAt + 1_000 && isDatabase503(a));
			expect(lateReadFailures.map(a => `${Math.round(a.start - backAt)} ms after: ${a.status}`)).toEqual([]);
			expect(answers.some(a => a.kind === "read" && a.start >= backAt && a.start < backAt + 1_000 && a.status === 200)).toBe(true);

			// One line per state change per node, none per failed request; stacks never inside message. An outage
			// may show as two short down/up flaps on a node (pooled connections that die one after the other),
			// so up to two per fault event (at least 4), far below one per failed request.
			mesh.nodes.forEach((node, i) => {
				const lines = node.jsonLogs().slice(logsBefore[i]);
				const downs = lines.filter(l => l.event === "db.down");
				// A restart is felt by every node; terminated backends may all have been idle in the pool and be
				// replaced before any query meets them (the writes are single statements now), so a node may log
				// no state change at all for them — the fault itself is asserted by the caller (terminated > 3).
				if (faultEvents === 1) expect(downs.length).toBeGreaterThanOrEqual(1);
				expect(downs.length).toBeLessThanOrEqual(Math.max(4, 2 * faultEvents));
				expect(lines.filter(l => l.event === "db.up").length).toBe(downs.length);
				expect(lines.filter(l => l.level === "error")).toEqual([]);
				expect(lines.filter(l => /\n\s+at /.test(String(l.message)))).toEqual([]);
			});
		}

		it("restart (pg_ctl restart -m fast) under read and keyed-write load", async () => {
			const logsBefore = mesh.nodes.map(n => n.jsonLogs().length);
			const load = startChaosLoad(mesh, ids, LOAD);
			await sleep(2_000);
			const faultAt = load.now();
			await pg.restart("fast");
			const backAt = load.now();
			await sleep(4_000);
			const { answers, writes } = await load.stop();
			await expectNonEvent("restart", answers, writes, faultAt, backAt, logsBefore, 1);
		});

		it("pg_terminate_backend of every backend, three times, under read and keyed-write load", async () => {
			const logsBefore = mesh.nodes.map(n => n.jsonLogs().length);
			const load = startChaosLoad(mesh, ids, LOAD);
			await sleep(2_000);
			const faultAt = load.now();
			const terminated = new Set<number>();
			for (let i = 0; i < 3; i++) {
				const rows = await pg.query<{ pid: number }>("SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'app' AND pid <> pg_backend_pid()");
				for (const row of rows) terminated.add(row.pid);
				await sleep(400);
			}
			const backAt = load.now();
			await sleep(3_000);
			const { answers, writes } = await load.stop();
			// The fault reached the nodes: every round killed backends, and what serves the load now is made of
			// new ones. On an idle machine the pools replace dead connections before a query meets one, so no
			// client may see the fault at all (a clean-clone CI run: 191 reads and 39 writes, all 200, slowest
			// 20 ms); that is the point, and it is why the proof is the backends, not a slow or failed answer.
			const serving = await pg.query<{ pid: number }>("SELECT pid FROM pg_stat_activity WHERE datname = 'app' AND pid <> pg_backend_pid()");
			report("terminate: backends", { terminated: terminated.size, servingNow: serving.length });
			expect(terminated.size).toBeGreaterThan(3);
			expect(serving.length).toBeGreaterThan(0);
			expect(serving.filter(row => terminated.has(row.pid))).toEqual([]);
			await expectNonEvent("terminate", answers, writes, faultAt, backAt, logsBefore, 3);
		});
	});
});
