/**
 * /health tells the truth about PostgreSQL: 503 `degraded` while the database is unreachable, 200 again
 * within a second of its return, with service_health, db_available and the fault counters following. The database is a real PostgreSQL owned by this test.
 */
import fs from "fs";
import os from "os";
import path from "path";
import { freePort, getJson, startNodeProcess, startPgServer, stopAll, uniqueNamespace, waitFor, waitForMesh, type NodeProcess } from "../helpers/cluster";
import { describeWithNats, LOCAL_NATS_URL } from "../helpers/requirements";

describeWithNats("health follows PostgreSQL", () => {
	const dir = fs.mkdtempSync(path.join(os.tmpdir(), "daarion-pg-"));
	let pgPort: number;
	let pg: Awaited<ReturnType<typeof startPgServer>>;
	let node: NodeProcess;

	beforeAll(async () => {
		pgPort = await freePort();
		pg = await startPgServer(dir, pgPort);
		node = await startNodeProcess({ MESH_NAMESPACE: uniqueNamespace("health"), NATS_URL: LOCAL_NATS_URL, DATABASE_URL: pg.url, SERVICES: "api,mesh" });
		await waitForMesh(node, ["mesh"]);
	}, 90_000);
	afterAll(async () => {
		await stopAll([node]);
		await pg?.stop();
		fs.rmSync(dir, { recursive: true, force: true });
	});

	const health = () => getJson(`${node.url}/health`);
	const healthMetric = async () => /^service_health\{node_id="[^"]+",dependency="database"\} (\d)/m.exec(await (await fetch(`${node.url}/metrics`)).text())?.[1];

	it("is 200 with the database up, 503 naming it while it is down, and 200 again when it is back", async () => {
		const before = await health();
		expect(before).toMatchObject({ status: 200, body: { status: "healthy", dependencies: { database: { status: "up" } } } });
		expect(await healthMetric()).toBe("1");

		expect(await pg.stop()).toBe(0);
		const down = await waitFor("health to turn 503", async () => {
			const res = await health();
			return res.status === 503 && res;
		}, 15_000);
		expect(down.body).toMatchObject({ status: "degraded", dependencies: { database: { status: "down", required: true, error: expect.any(String), pool: { size: expect.any(Number) } }, nats: { status: "up" } } });
		expect(await healthMetric()).toBe("0");
		expect((await getJson(`${node.url}/api/mesh/whoami`)).status).toBe(200);

		pg = await startPgServer(dir, pgPort);
		// Healthy within 1 s of the database accepting connections again (slack for a loaded machine: 2 s).
		const backAt = Date.now();
		await waitFor("health to return to 200", async () => (await health()).status === 200, 20_000, 50);
		const recoveredMs = Date.now() - backAt;
		process.stdout.write(`[health-db] healthy ${recoveredMs} ms after PostgreSQL was back\n`);
		expect(recoveredMs).toBeLessThan(2_000);
		expect(await healthMetric()).toBe("1");
		const metrics = await (await fetch(`${node.url}/metrics`)).text();
		expect(metrics).toMatch(/^db_available\{[^}]*\} 1$/m);
		expect(metrics).toMatch(/^db_pool_size\{[^}]*\} \d+$/m);
		expect(metrics).toMatch(/^db_errors_total\{[^}]*class="connection"[^}]*\} [1-9]\d*$/m);
	}, 90_000);
});
