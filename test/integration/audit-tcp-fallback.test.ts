/**
 * The audit writer on the TCP transporter (development without NATS; TRANSPORTER=TCP here, the same
 * choice the fallback makes when no NATS answers): there is no JetStream, so the writer leader reads
 * audit events straight from the outbox table (mode `outbox-table`). Checked with real node processes
 * and a PostgreSQL database of its own: an operator note reaches audit_log once; a writer SIGKILLed
 * under load leaves every event stored exactly once with an intact chain, written by both nodes.
 */
import { signToken } from "../../lib/http/auth";
import { getJson, startNodeProcess, stopAll, uniqueNamespace, waitFor, waitForMesh, type NodeProcess } from "../helpers/cluster";
import { dropFreshDatabases, freshDatabase, isolatedMeshEnv, query } from "../helpers/databases";
import { describeWithPostgres } from "../helpers/requirements";

const JWT_SECRET = "tcp-fallback-secret-0123456789abcdef";
const admin = { authorization: `Bearer ${signToken(JWT_SECRET, { id: "op", roles: ["admin"], teams: [] })}` };

describeWithPostgres("audit writer on the TCP transporter: reads the outbox table, exactly once", () => {
	const namespace = uniqueNamespace("audittcp");
	let databaseUrl: string;
	let env: Record<string, string>;
	let node1: NodeProcess;
	let node2: NodeProcess;

	beforeAll(async () => {
		databaseUrl = await freshDatabase("audittcp");
		// No NATS_URL at all: nothing in these nodes may reach NATS behind the transporter's back.
		env = { ...isolatedMeshEnv(namespace, databaseUrl, JWT_SECRET), TRANSPORTER: "TCP", LEASE_TTL_MS: "2000" };
		delete env.NATS_URL;
		node1 = await startNodeProcess({ ...env, NODE_ID: "tcp-node1", NODE_ROLE: "node1", SERVICES: "api,audit,outbox" });
		await waitForMesh(node1, ["audit"], 1, 40_000, "/api/audit/verify");
		node2 = await startNodeProcess({ ...env, NODE_ID: "tcp-node2", NODE_ROLE: "node2", SERVICES: "api,audit,outbox" });
		await waitForMesh(node2, ["audit"], 1, 40_000, "/api/audit/verify");
	}, 90_000);
	afterAll(async () => {
		await stopAll([node1, node2]);
		await dropFreshDatabases();
	});

	const count = async (where = "true", params: unknown[] = []) => Number((await query<{ n: string }>(databaseUrl, `SELECT count(*) AS n FROM audit_log WHERE ${where}`, params))[0].n);
	const writerOf = async (node: NodeProcess) => (await getJson(`${node.url}/api/audit/writer`, { headers: admin })).body;

	async function enqueue(n: number, tag: string): Promise<string[]> {
		const rows = await query<{ id: string }>(
			databaseUrl,
			`INSERT INTO outbox (aggregate_type, aggregate_id, event_type, subject, payload)
			 SELECT 'audit', $1, 'audit.test.load', 'audit.test.load', jsonb_build_object('actor', 'loader', 'target', $1 || '-' || i, 'outcome', 'success', 'node', 'test', 'occurred_at', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
			 FROM generate_series(1, $2) AS i RETURNING id`,
			[tag, n],
		);
		return rows.map(r => r.id);
	}

	it("runs on TCP in outbox-table mode, and an operator note reaches audit_log once", async () => {
		const health = await getJson(`${node1.url}/health`);
		expect(health.body).toMatchObject({ node: { transport: "tcp" } });
		const writer = await waitFor("a writer leader", async () => {
			const answers = [await writerOf(node1), await writerOf(node2)];
			return answers.find(w => w.leader);
		});
		expect(writer).toMatchObject({ node: "tcp-node1", mode: "outbox-table" });

		const note = await getJson(`${node2.url}/api/audit/records`, {
			method: "POST",
			headers: { ...admin, "content-type": "application/json", "x-request-id": `req-${namespace}` },
			body: JSON.stringify({ action: "deploy.started", subject: "release-7" }),
		});
		expect(note.status).toBe(200);
		await waitFor("the note in audit_log", async () => (await count("request_id = $1", [`req-${namespace}`])) === 1, 10_000);
		const [row] = await query<{ service: string; action: string; actor: string; writer: string }>(databaseUrl, "SELECT service, action, actor, writer FROM audit_log WHERE request_id = $1", [`req-${namespace}`]);
		expect(row).toEqual({ service: "operator", action: "deploy.started", actor: "op", writer: "tcp-node1" });
		// The relay still marks the row published (Moleculer events only); the writer never needed it to.
		await waitFor("the relay to mark the note published", async () => (await query<{ n: string }>(databaseUrl, "SELECT count(*) AS n FROM outbox WHERE status = 'pending' AND event_type = 'audit.operator.deploy.started'"))[0].n === "0", 10_000);
		await new Promise(r => setTimeout(r, 500));
		expect(await count("request_id = $1", [`req-${namespace}`])).toBe(1);
	});

	it("a writer SIGKILLed under load: every event exactly once, chain intact, the other node took over", async () => {
		const before = await count();
		const ids: string[] = [];
		const load = (async () => {
			for (let round = 0; round < 10; round++) {
				ids.push(...(await enqueue(100, `load-${round}`)));
				await new Promise(r => setTimeout(r, 100));
			}
		})();
		await waitFor("the writer to be appending", async () => (await count("service = 'test'")) > 200, 20_000, 50);
		node1.child.kill("SIGKILL");
		await load;
		await waitFor("every event stored", async () => (await count("event_id = ANY($1)", [ids])) === ids.length, 40_000, 250);
		await new Promise(r => setTimeout(r, 1_000));
		expect(await count("event_id = ANY($1)", [ids])).toBe(1_000);
		expect(await query(databaseUrl, "SELECT event_id FROM audit_log GROUP BY event_id HAVING count(*) > 1")).toEqual([]);
		const writers = await query<{ writer: string }>(databaseUrl, "SELECT DISTINCT writer FROM audit_log WHERE event_id = ANY($1) ORDER BY writer", [ids]);
		expect(writers.map(w => w.writer)).toEqual(["tcp-node1", "tcp-node2"]);
		expect(await count()).toBe(before + 1_000);
		const verify = (await getJson(`${node2.url}/api/audit/verify`, { headers: admin })).body;
		expect(verify).toMatchObject({ ok: true, checked: before + 1_000 });
		expect(await writerOf(node2)).toMatchObject({ leader: true, mode: "outbox-table" });
	}, 90_000);
});
