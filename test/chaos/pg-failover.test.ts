/**
 * PostgreSQL primary failover with the nodes running: a test-owned primary with a synchronous
 * streaming standby (initdb, pg_basebackup -R), nodes given both hosts (multi-host DATABASE_URL).
 * Under load the primary stops, the standby is promoted, and without a restart the nodes find the new
 * primary: writes succeed within 5 s of the promotion, no acknowledged write is lost, and the leader
 * leases and the outbox relay carry on by themselves.
 */
import { waitFor } from "../helpers/cluster";
import { faultWindow, seedMemories, sleep, startChaosLoad, startChaosMesh, type ChaosMesh } from "../helpers/db-chaos";
import { TestPostgres, describeWithPgBinaries } from "../helpers/pg-cluster";
import { describeWithNats } from "../helpers/requirements";

jest.setTimeout(240_000);

describeWithNats("PostgreSQL primary failover", () => {
	describeWithPgBinaries("primary + synchronous streaming standby (test-owned servers)", () => {
		let primary: TestPostgres;
		let standby: TestPostgres;
		let mesh: ChaosMesh;

		beforeAll(async () => {
			primary = await TestPostgres.create({ synchronousStandby: true });
			standby = await TestPostgres.standbyOf(primary);
			await primary.query("CREATE DATABASE app");
			mesh = await startChaosMesh({ databaseUrl: `postgres://postgres@${primary.hostPort},${standby.hostPort}/app` });
		}, 180_000);
		afterAll(async () => {
			await mesh?.stop();
			await standby?.destroy();
			await primary?.destroy();
		});

		it("nodes connect only to the primary (the standby is read-only and holds no connection of theirs)", async () => {
			const onStandby = await standby.query<{ n: string }>("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = 'app' AND backend_type = 'client backend' AND pid <> pg_backend_pid()");
			const onPrimary = await primary.query<{ n: string }>("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = 'app' AND backend_type = 'client backend' AND pid <> pg_backend_pid()");
			expect(Number(onStandby[0].n)).toBe(0);
			expect(Number(onPrimary[0].n)).toBeGreaterThan(0);
		});

		it("stop the primary, promote the standby: writes go to the new primary within 5 s, nothing acknowledged is lost, no restart", async () => {
			const pids = mesh.nodes.map(n => n.child.pid);
			const ids = await seedMemories(mesh, 20);
			const load = startChaosLoad(mesh, ids, { readsPerSecond: 40, writesPerSecond: 8 });
			await sleep(2_000);
			const faultAt = load.now();
			const stopping = Date.now();
			await primary.stop("fast");
			process.stdout.write(`[pg-failover] primary stopped in ${Date.now() - stopping} ms\n`);
			// A replication manager takes a moment to decide; the nodes meanwhile answer retryable 503s.
			await sleep(1_000);
			await standby.promote();
			const promotedAt = load.now();
			await sleep(7_000);
			const { answers, writes } = await load.stop();
			process.stdout.write(
				`[pg-failover] ${JSON.stringify({
					primary_down_ms: Math.round(promotedAt - faultAt),
					reads: faultWindow(answers, faultAt - 500, Infinity, "read"),
					writes: faultWindow(answers, faultAt - 500, Infinity, "write"),
					logical_writes: writes.length,
				})}\n`,
			);

			// Same processes: nobody restarted them.
			expect(mesh.nodes.map(n => n.child.pid)).toEqual(pids);
			expect(mesh.nodes.map(n => n.child.exitCode)).toEqual([null, null]);

			// Failed answers are retryable 503s (504 only when the machine starves the event loop), never a 500.
			const failed = answers.filter(a => a.status !== 200);
			expect(failed.length).toBeGreaterThan(0);
			expect(failed.filter(a => !((a.status === 503 && a.type === "SERVICE_UNAVAILABLE") || a.status === 504) || !a.retryAfter).map(a => `${a.kind} ${a.status} ${a.type ?? a.error}`)).toEqual([]);

			// Writes reach the new primary within 5 s of the promotion, and from then on keep succeeding.
			// (A write acknowledged after the promotion was written to the new primary: the old one was down.)
			const firstWriteAfter = answers.filter(a => a.kind === "write" && a.status === 200 && a.end > promotedAt).sort((a, b) => a.end - b.end)[0];
			expect(firstWriteAfter).toBeDefined();
			process.stdout.write(`[pg-failover] first write acknowledged ${Math.round(firstWriteAfter.end - promotedAt)} ms after the promotion\n`);
			expect(firstWriteAfter.end - promotedAt).toBeLessThan(5_000);
			expect(answers.filter(a => a.kind === "write" && a.start >= promotedAt + 5_000 && a.status === 503).map(a => Math.round(a.start - promotedAt))).toEqual([]);

			// No acknowledged write lost (synchronous standby), none applied twice.
			expect(writes.filter(w => !w.acknowledged)).toEqual([]);
			const rows = await standby.query<{ key: string; n: string }>("SELECT key, count(*) AS n FROM memories WHERE key LIKE 'chaos-%' GROUP BY key", [], "app");
			const rowsByKey = new Map(rows.map(r => [r.key, Number(r.n)]));
			expect(writes.filter(w => rowsByKey.get(w.key) !== 1).map(w => `${w.key}: ${rowsByKey.get(w.key) ?? 0}`)).toEqual([]);
		});

		it("leader leases and the outbox relay recover on the new primary by themselves", async () => {
			await waitFor(
				"every lease renewed on the new primary",
				async () => {
					const leases = await standby.query<{ name: string; live: boolean }>("SELECT name, expires_at > now() AS live FROM leader_leases", [], "app");
					return leases.length > 0 && leases.every(l => l.live);
				},
				20_000,
				250,
			);
			await waitFor(
				"the outbox drained on the new primary",
				async () => {
					const [{ n }] = await standby.query<{ n: string }>("SELECT count(*) AS n FROM outbox WHERE status = 'pending'", [], "app");
					return Number(n) === 0;
				},
				20_000,
				250,
			);
			const [{ n }] = await standby.query<{ n: string }>("SELECT count(*) AS n FROM outbox WHERE status = 'published' AND published_at > now() - interval '30 seconds'", [], "app");
			expect(Number(n)).toBeGreaterThan(0);
		});
	});
});
