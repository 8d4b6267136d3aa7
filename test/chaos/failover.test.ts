/**
 * Chaos with real processes, real signals and a real (test-owned) NATS server: NODE1 dies, is
 * stopped, hangs, or loses NATS while a gateway-only node serves steady load; users must not notice.
 */
import { getJson, TEST_SERVICES_ENV, waitFor } from "../helpers/cluster";
import { servedCounts, stallsAfter, startLoad, windowStats, type LoadReport, type RunningLoad } from "../helpers/load";
import { idleShareOver } from "../helpers/machine-cpu";
import { describeWithNats } from "../helpers/requirements";
import { keyedDrillWrites, loggedAt, startChaosMesh, waitForChaosMesh, type ChaosMesh } from "./topology";

jest.setTimeout(120_000);

const RATE = 200; // requests per second through the gateway

function whoamiLoad(mesh: ChaosMesh): RunningLoad {
	return startLoad({
		url: `${mesh.gateway.url}/api/mesh/whoami`,
		ratePerSecond: RATE,
		servedBy: body => (body as { nodeID?: string }).nodeID,
	});
}

const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms));

function report(name: string, stats: object): void {
	process.stdout.write(`[chaos] ${name}: ${JSON.stringify(stats)}\n`);
}

describeWithNats("failover under load (NODE1, NODE2, gateway-only node, test-owned NATS)", () => {
	let mesh: ChaosMesh;
	beforeAll(async () => {
		// The drill test double holds writes open so that a node can be killed mid-write.
		// CHAOS_EXTRA_ENV (JSON) sets more node variables for a manual A/B, e.g. '{"HEDGE_BUDGET":"0"}'.
		mesh = await startChaosMesh({ ...TEST_SERVICES_ENV, ...JSON.parse(process.env.CHAOS_EXTRA_ENV ?? "{}") });
	});
	afterAll(async () => {
		await mesh?.stop();
	});

	/** NODE1 back (if a test killed it) and both actor nodes serving through the gateway. */
	async function bothNodesServing(): Promise<void> {
		if (mesh.node1.child.exitCode !== null || mesh.node1.child.signalCode !== null) await mesh.restartNode1();
		await waitForChaosMesh(mesh.gateway, ["NODE1", "NODE2"]);
	}

	it("SIGKILL NODE1: no failed request, every call answered within 250 ms, out of rotation within 0.5 s and removed within 3.5 s; NODE1 gets traffic when it returns", async () => {
		await bothNodesServing();
		const load = whoamiLoad(mesh);
		await sleep(2_000);
		const killedAt = load.now();
		const killedWallClock = Date.now();
		mesh.node1.child.kill("SIGKILL");
		const idleAfterKill = idleShareOver(600);
		await sleep(5_000);
		const restartAt = load.now();
		await mesh.restartNode1();
		await waitForChaosMesh(mesh.gateway, ["NODE1", "NODE2"]);
		await sleep(6_000);
		const result: LoadReport = await load.stop();

		const during = windowStats(result.samples, killedAt, restartAt);
		// Calls already on their way to NODE1 when it died count too: they started just before the kill.
		const aroundKill = windowStats(result.samples, killedAt - 100, restartAt);
		const leftAt = loggedAt(mesh.gateway, killedWallClock, l => l.event === "node.left" && l.node_id === "NODE1");
		const removedMs = leftAt == null ? null : leftAt - killedWallClock;
		const lostAt = loggedAt(mesh.gateway, killedWallClock, l => (l.event === "node.lost" || l.event === "node.suspect") && l.node_id === "NODE1");
		const outOfRotationMs = lostAt == null ? null : lostAt - killedWallClock;
		report("SIGKILL", { ...during, aroundKillMaxMs: aroundKill.maxMs, outOfRotationMs, removedMs, shed: result.shed, machineIdleAfterKill: await idleAfterKill, loadClientStalls: stallsAfter(result.stalls, killedAt) });

		expect(result.shed).toBe(0);
		expect(during.failures).toEqual([]);
		expect(during.failed).toBe(0);
		expect(during.longestGapMs).toBeLessThanOrEqual(1_000);
		expect(outOfRotationMs).not.toBeNull();
		expect(removedMs).not.toBeNull();
		// Removal is Moleculer's heartbeat timeout (2.5 s) on heartbeat times it keeps in whole seconds of
		// uptime, checked every 250 ms: from a heartbeat just before the kill that is up to 2.5 + 0.5 (rounding)
		// + 0.25 s. A 3.0 s bound sat below that worst case (a clean CI run measured 3,061 ms).
		expect(removedMs!).toBeLessThanOrEqual(3_500);
		// The liveness probe learns of the death from NATS once the kernel has closed the dead process's
		// socket and takes NODE1 out of rotation at once; a read pending longer than its p99 is hedged to NODE2;
		// a lost call's retry leaves at once. Goal: every call answered within 100 ms; the bound is the issue's
		// 250 ms for CI noise. On an otherwise idle machine this test measures 36-55 ms (docs/FAILOVER.md). When
		// other work shares the 2 cores it waits for CPU, not for the mesh: 263-575 ms were traced with helpers
		// running (load 1.7-8.7), so the report above prints how idle the machine was in the 600 ms after the kill.
		// A regression to the fast-timeout wait (~790 ms) fails this bound.
		expect(aroundKill.failed).toBe(0);
		expect(aroundKill.maxMs).toBeLessThanOrEqual(250);
		expect(outOfRotationMs!).toBeLessThanOrEqual(500);
		// Out of rotation means out: nothing started 3 s after the kill was served by NODE1's old process.
		expect(servedCounts(result.samples, killedAt + 3_000).NODE1 ?? 0).toBeGreaterThan(0); // the restarted one
		expect(servedCounts(result.samples.filter(s => s.start < restartAt), killedAt + 3_000).NODE1).toBeUndefined();
		expect(windowStats(result.samples, restartAt, Infinity).failed).toBe(0);
		// The failover is counted, with its reason, in the gateway's metrics.
		const metrics = await (await fetch(`${mesh.gateway.url}/metrics`)).text();
		report("SIGKILL hedges", metrics.split("\n").filter(l => l.startsWith("mesh_hedge_total")));
		expect(metrics).toMatch(/mesh_node_left_total\{node_id="NODE1",reason="heartbeat-timeout"\} [1-9]/);
		expect(metrics).toMatch(/mesh_node_joined_total\{node_id="NODE1",reconnected="(true|false)"\} [1-9]/);
	});

	it("SIGTERM NODE1 under load: zero errors, and it leaves gracefully", async () => {
		await bothNodesServing();
		const load = whoamiLoad(mesh);
		await sleep(2_000);
		const stoppedAt = load.now();
		const stoppedWallClock = Date.now();
		const exitCode = mesh.node1.kill("SIGTERM");
		await sleep(4_000);
		const result = await load.stop();

		const stats = windowStats(result.samples, 0, Infinity);
		report("SIGTERM", { ...stats, exitCode: await exitCode });
		expect(await exitCode).toBe(0);
		expect(stats.failures).toEqual([]);
		expect(stats.failed).toBe(0);
		expect(loggedAt(mesh.gateway, stoppedWallClock, l => l.event === "node.left" && l.node_id === "NODE1" && l.reason === "graceful")).not.toBeNull();
		expect(servedCounts(result.samples, stoppedAt + 1_000).NODE2).toBeGreaterThan(0);
	});

	it("SIGSTOP NODE1 for 10 s: requests keep succeeding; after SIGCONT it serves again and its breaker is closed", async () => {
		await bothNodesServing();
		const load = whoamiLoad(mesh);
		await sleep(2_000);
		const stoppedAt = load.now();
		mesh.node1.child.kill("SIGSTOP");
		const idleAfterStop = idleShareOver(600);
		await sleep(10_000);
		mesh.node1.child.kill("SIGCONT");
		const resumedAt = load.now();
		await waitFor("NODE1 to serve again after SIGCONT", async () => {
			const { body } = await getJson(`${mesh.gateway.url}/api/mesh/nodes`);
			return (body as Array<{ nodeID: string; available: boolean }>).some(n => n.nodeID === "NODE1" && n.available);
		}, 20_000);
		await sleep(8_000);
		const result = await load.stop();

		const during = windowStats(result.samples, stoppedAt, resumedAt);
		const aroundStop = windowStats(result.samples, stoppedAt - 100, resumedAt);
		const after = windowStats(result.samples, resumedAt, Infinity);
		report("SIGSTOP", { during, aroundStopMaxMs: aroundStop.maxMs, after, machineIdleAfterStop: await idleAfterStop, loadClientStalls: stallsAfter(result.stalls, stoppedAt) });
		expect(during.failed).toBe(0);
		// An unanswered liveness probe makes NODE1 suspect: its idempotent calls retry elsewhere at once
		// and it gets no new ones. The goal, 300 ms for the slowest, is the bound: 52-70 ms on an idle machine.
		expect(aroundStop.maxMs).toBeLessThanOrEqual(300);
		expect(after.failed).toBe(0);
		expect(servedCounts(result.samples, resumedAt + 3_000).NODE1).toBeGreaterThan(0);
		const metrics = await (await fetch(`${mesh.gateway.url}/metrics`)).text();
		const openBreakers = metrics.split("\n").filter(l => l.startsWith("moleculer_circuit_breaker_opened_active") && l.includes('"NODE1"') && !l.trim().endsWith(" 0"));
		expect(openBreakers).toEqual([]);
	});

	it("NATS restarts: every node reconnects by itself, calls succeed within 5 s of NATS being back, no duplicate nodes", async () => {
		await bothNodesServing();
		await mesh.nats.stop();
		await sleep(3_000);
		await mesh.nats.start();
		const backAt = Date.now();
		await waitFor(
			"a call through the gateway to succeed after NATS is back",
			async () => (await fetch(`${mesh.gateway.url}/api/mesh/whoami`)).status === 200,
			5_000,
			50,
		);
		const recoveredMs = Date.now() - backAt;
		await waitForChaosMesh(mesh.gateway, ["NODE1", "NODE2"]);
		const { body } = await getJson(`${mesh.gateway.url}/api/mesh/nodes`);
		const ids = (body as Array<{ nodeID: string }>).map(n => n.nodeID);
		report("NATS restart", { recoveredMs, nodes: ids });
		expect(recoveredMs).toBeLessThanOrEqual(5_000);
		expect(new Set(ids).size).toBe(ids.length);
		for (const node of [mesh.gateway, mesh.node1, mesh.node2]) expect(node.child.exitCode).toBeNull();
	});

	it("a write in flight on a killed node applies at most once: a retryable error, no hang, and the keyed retry applies once", async () => {
		await bothNodesServing();
		const writes = keyedDrillWrites(mesh, "node", 2_000);
		const started = Date.now();
		const inFlight = writes.send(started);
		await sleep(500);
		const killedAt = Date.now() - started;
		mesh.node1.child.kill("SIGKILL");
		const first = await inFlight;
		report("write in flight", first.map(r => ({ status: r.status, afterKillMs: r.ms - killedAt, node: r.body.node_id ?? r.body.type })));
		const wallKill = started + killedAt;
		// When the gateway learned of the death (node.lost: "no responders"; node.suspect: no answer in time).
		report("write in flight: gateway saw", mesh.gateway.jsonLogs().filter(l => Date.parse(String(l.timestamp)) >= wallKill && /^node\.(lost|suspect)$/.test(String(l.event))).map(l => ({ afterKillMs: Date.parse(String(l.timestamp)) - wallKill, event: l.event, node: l.node_id })));

		const failed = first.filter(r => r.status !== 200);
		expect(failed.length).toBeGreaterThan(0); // round robin sent some of the six to NODE1
		for (const r of failed) {
			expect(r.status).toBeGreaterThanOrEqual(500);
			expect(r.body.retryable).toBe(true);
			expect(r.retryAfter).toBe("1");
			// An answer, not a hang: the liveness probe finds the node gone (goal 100 ms after the kill,
			// 33-39 ms on an idle machine; bound with CI slack as for reads).
			expect(r.ms - killedAt).toBeLessThanOrEqual(250);
		}
		for (const r of first.filter(r => r.status === 200)) expect(r.body.node_id).toBe("NODE2");

		// The client retries everything with the same keys: failed writes apply now, done ones replay.
		await writes.expectRetriesApplyOnce(first);
	});
});
