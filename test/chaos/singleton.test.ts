/**
 * Singleton duties under chaos: the node-registry lease moves to NODE2 when NODE1 dies or hangs, goes
 * back to NODE1 when it returns, and no two nodes ever act as leader at once — proven from the lease
 * history and the fenced writes in PostgreSQL, not from the nodes' own claims.
 */
import { Client } from "pg";
import { getJson, waitFor } from "../helpers/cluster";
import { describeWithNatsAndPostgres } from "../helpers/requirements";
import { startChaosMesh, waitForChaosMesh, type ChaosMesh } from "./topology";

jest.setTimeout(120_000);

const LEASE_TTL_MS = 2_000;

interface LeaseEvent {
	holder: string;
	fencing_token: string;
	event: string;
	at: Date;
}

interface DutyWrite {
	recorded_by: string;
	fencing_token: string;
	at: Date;
	node_id: string;
	event: string;
	reason: string | null;
}

describeWithNatsAndPostgres("singleton duties: leader lease with takeover and hand-back", () => {
	let mesh: ChaosMesh;
	let db: Client;
	beforeAll(async () => {
		mesh = await startChaosMesh({ LEASE_TTL_MS: String(LEASE_TTL_MS) });
		db = new Client({ connectionString: mesh.env.DATABASE_URL });
		await db.connect();
	});
	afterAll(async () => {
		// First: stop() drops the mesh's database, which would cut this connection.
		await db?.end();
		await mesh?.stop();
	});

	async function leaderIs(nodeID: string, timeoutMs: number): Promise<number> {
		const started = Date.now();
		await waitFor(
			`${nodeID} to hold the node-registry lease`,
			async () => {
				const { status, body } = await getJson(`${mesh.gateway.url}/api/node-registry/leader`);
				return status === 200 && body.holder === nodeID && Date.parse(body.expires_at) > Date.now();
			},
			timeoutMs,
		);
		return Date.now() - started;
	}

	it("moves to NODE2 on SIGKILL and SIGSTOP, back to NODE1 when it returns, never held by two nodes at once", async () => {
		await leaderIs("NODE1", 20_000);

		mesh.node1.child.kill("SIGKILL");
		const takeoverAfterKillMs = await leaderIs("NODE2", 15_000);

		await mesh.restartNode1();
		await waitForChaosMesh(mesh.gateway, ["NODE1", "NODE2"]);
		const handbackMs = await leaderIs("NODE1", 20_000);

		mesh.node1.child.kill("SIGSTOP");
		const takeoverAfterStopMs = await leaderIs("NODE2", 15_000);
		await new Promise(r => setTimeout(r, 3_000));
		mesh.node1.child.kill("SIGCONT");
		const handbackAfterResumeMs = await leaderIs("NODE1", 30_000);
		process.stdout.write(`[chaos] lease: ${JSON.stringify({ takeoverAfterKillMs, handbackMs, takeoverAfterStopMs, handbackAfterResumeMs })}\n`);

		const lease = `${mesh.namespace}:node-registry`;
		const acquisitions = (
			await db.query<LeaseEvent>("SELECT holder, fencing_token, event, at FROM leader_lease_events WHERE name = $1 AND event = 'acquired' ORDER BY id", [lease])
		).rows;
		const readWrites = async () =>
			(await db.query<DutyWrite>("SELECT recorded_by, fencing_token, at, node_id, event, reason FROM mesh_node_events WHERE namespace = $1 ORDER BY id", [mesh.namespace])).rows;
		// The lease can be seen on NODE1 before its first round wrote the return (the API reads the lease,
		// the round follows the acquisition): the history has to show it within a couple of rounds.
		await waitFor("NODE1's return in the membership history", async () => (await readWrites()).some(w => w.node_id === "NODE1" && w.event === "rejoined"), 5_000).catch(() => undefined);
		const writes = await readWrites();

		// Holders alternate NODE1 → NODE2 → NODE1 → NODE2 → NODE1, each with the next fencing token.
		// Both nodes start together, so NODE2 may win the very first round and hand back to NODE1.
		const holders = acquisitions.map(a => a.holder);
		if (holders[0] === "NODE2") holders.shift();
		expect(holders).toEqual(["NODE1", "NODE2", "NODE1", "NODE2", "NODE1"]);
		acquisitions.forEach((a, i) => expect(Number(a.fencing_token)).toBe(Number(acquisitions[0].fencing_token) + i));

		// Every duty write happened while its writer held that generation: before the next one began.
		expect(writes.length).toBeGreaterThan(0);
		for (const write of writes) {
			const own = acquisitions.find(a => a.fencing_token === write.fencing_token);
			const next = acquisitions.find(a => Number(a.fencing_token) === Number(write.fencing_token) + 1);
			expect(own?.holder).toBe(write.recorded_by);
			if (next) expect(write.at.getTime()).toBeLessThan(next.at.getTime());
		}
		// The duty itself did its job across the hand-overs: NODE1's departures and returns are on record.
		const node1History = writes.filter(w => w.node_id === "NODE1").map(w => w.event);
		expect(node1History).toEqual(expect.arrayContaining(["joined", "left", "rejoined"]));
		expect(writes.some(w => w.node_id === "NODE1" && w.event === "left" && w.reason === "heartbeat-timeout")).toBe(true);
	});
});
