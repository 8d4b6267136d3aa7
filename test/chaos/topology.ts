/**
 * The chaos topology from issue #4: NODE1 and NODE2 run the actor services, a gateway-only node
 * (SERVICES=api) takes the load, all on a test-owned nats-server that tests may stop and restart, or on a
 * test-owned three-server NATS cluster whose servers tests may kill.
 */
import { Client } from "pg";
import { signToken } from "../../lib/http/auth";
import { startNodeProcess, TEST_SERVICES_ENV, uniqueNamespace, waitFor, waitForMesh, getJson, type NodeProcess } from "../helpers/cluster";
import { startNatsCluster, type TestNatsCluster } from "../helpers/nats-cluster";
import { startNatsServer, type TestNatsServer } from "../helpers/nats-server";
import { dropFreshDatabases, freshDatabase } from "../helpers/databases";

export const JWT_SECRET = "chaos-test-secret-that-is-long-enough";

/** The mesh's NATS: one test-owned server, or a three-server cluster (test/helpers/nats-cluster.ts). */
export interface ChaosMesh<N extends { stop(): Promise<void> } = TestNatsServer> {
	nats: N;
	namespace: string;
	gateway: NodeProcess;
	node1: NodeProcess;
	node2: NodeProcess;
	env: Record<string, string>;
	/** start NODE1 again (after a kill) with the same identity */
	restartNode1(): Promise<NodeProcess>;
	/** stop a node (SIGTERM) if it runs, and start it again with the same identity and env */
	restart(which: "node1" | "node2" | "gateway"): Promise<NodeProcess>;
	stop(): Promise<void>;
}

/** Env of one node beyond the mesh's shared env (e.g. its own NATS_URL order on a cluster). */
export interface PerNodeEnv {
	node1?: Record<string, string>;
	node2?: Record<string, string>;
	gateway?: Record<string, string>;
}

/** Actor nodes carry the test doubles too (the drill write that holds its transaction open). */
export async function startActorNode(env: Record<string, string>, nodeID: string, role: string): Promise<NodeProcess> {
	return startNodeProcess({ ...TEST_SERVICES_ENV, ...env, NODE_ID: nodeID, NODE_ROLE: role });
}

/** Every node sees every other one, and the gateway routes /api/mesh/* to the actors. */
export async function waitForChaosMesh(gateway: NodeProcess, actorNodes: string[]): Promise<void> {
	await waitForMesh(gateway, ["mesh"], actorNodes.length + 1);
	await waitFor(
		`the gateway to route to ${actorNodes.join(", ")}`,
		async () => {
			const { body } = await getJson(`${gateway.url}/api/mesh/nodes`);
			const available = new Set((body as Array<{ nodeID: string; available: boolean }>).filter(n => n.available).map(n => n.nodeID));
			return actorNodes.every(id => available.has(id));
		},
		30_000,
	);
}

export async function startChaosMesh(extraEnv: Record<string, string> = {}): Promise<ChaosMesh> {
	const nats = await startNatsServer();
	return startChaosMeshOn(nats, { NATS_URL: nats.url, ...extraEnv });
}

/**
 * The topology on a NATS cluster, each node with its own server first (NATS_KEEP_URL_ORDER): NODE1 on
 * server 0 (nats-a), NODE2 and the gateway on server 1 (nats-b); every node fails over in its list's order.
 */
export async function startClusterChaosMesh(extraEnv: Record<string, string> = {}): Promise<ChaosMesh<TestNatsCluster>> {
	const nats = await startNatsCluster();
	return startChaosMeshOn(nats, { NATS_KEEP_URL_ORDER: "true", ...extraEnv }, {
		node1: { NATS_URL: nats.urlList(0, 2, 1) },
		node2: { NATS_URL: nats.urlList(1, 2, 0) },
		gateway: { NATS_URL: nats.urlList(1, 2, 0) },
	});
}

async function startChaosMeshOn<N extends { stop(): Promise<void> }>(nats: N, extraEnv: Record<string, string>, perNode: PerNodeEnv = {}): Promise<ChaosMesh<N>> {
	const namespace = uniqueNamespace("chaos");
	// A database of its own: chaos nodes migrate on start, and leases/outbox rows stay with this mesh.
	const databaseUrl = await freshDatabase("chaos");
	const env = {
		MESH_NAMESPACE: namespace,
		DATABASE_URL: databaseUrl,
		JWT_SECRET,
		// One client IP sends all the load; per-client limits would measure the limiter, not failover.
		RATE_LIMIT_PER_KEY: "0",
		...extraEnv,
	};
	const launch = {
		node1: () => startActorNode({ ...env, ...perNode.node1 }, "NODE1", "node1"),
		node2: () => startActorNode({ ...env, ...perNode.node2 }, "NODE2", "node2"),
		gateway: () => startNodeProcess({ ...env, ...perNode.gateway, NODE_ID: "GATEWAY", NODE_ROLE: "gateway", SERVICES: "api" }),
	};
	const [node1, node2, gateway] = await Promise.all([launch.node1(), launch.node2(), launch.gateway()]);
	const mesh: ChaosMesh<N> = {
		nats,
		namespace,
		gateway,
		node1,
		node2,
		env,
		async restartNode1() {
			return mesh.restart("node1");
		},
		async restart(which) {
			await mesh[which].kill("SIGTERM");
			mesh[which] = await launch[which]();
			return mesh[which];
		},
		async stop() {
			await Promise.all([mesh.gateway, mesh.node1, mesh.node2].map(n => n.kill("SIGKILL")));
			await nats.stop();
			await dropFreshDatabases();
		},
	};
	await waitForChaosMesh(gateway, ["NODE1", "NODE2"]);
	return mesh;
}

/** Wall-clock time (ms) of the first JSON log line matching `match` logged at or after `since`. */
export function loggedAt(node: NodeProcess, since: number, match: (line: Record<string, unknown>) => boolean): number | null {
	for (const line of node.jsonLogs()) {
		const at = Date.parse(String(line.timestamp));
		if (at >= since && match(line)) return at;
	}
	return null;
}

export interface WriteAnswer {
	i: number;
	status: number;
	retryAfter: string | null;
	body: Record<string, unknown>;
	/** ms since the writes were sent */
	ms: number;
}

/**
 * Six keyed writes of the drill test double (its transaction held open `holdMs`) through the gateway, for
 * "a write in flight when something dies"; `tag` keeps one test's rows apart from another's.
 */
export function keyedDrillWrites(mesh: { namespace: string; gateway: NodeProcess; env: Record<string, string> }, tag: string, holdMs: number) {
	const token = signToken(JWT_SECRET, { id: "drill-user", roles: [], teams: [] });
	const subject = (i: number) => `drill-${mesh.namespace}-${tag}-${i}`;
	const write = (i: number) =>
		fetch(`${mesh.gateway.url}/api/drill/writes`, {
			method: "POST",
			headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json", "Idempotency-Key": `key-${subject(i)}` },
			body: JSON.stringify({ subject: subject(i), holdMs }),
		});
	const ids = [0, 1, 2, 3, 4, 5];
	return {
		/** all six at once; each answer with its time since `started` */
		send(started: number): Promise<WriteAnswer[]> {
			return Promise.all(
				ids.map(async i => {
					const res = await write(i);
					return { i, status: res.status, retryAfter: res.headers.get("retry-after"), body: (await res.json()) as Record<string, unknown>, ms: Date.now() - started };
				}),
			);
		},
		/** The client retries every write with its key: failed ones apply now, done ones replay; one row per write. */
		async expectRetriesApplyOnce(first: WriteAnswer[]): Promise<void> {
			const retried = await Promise.all(ids.map(async i => ({ i, res: await write(i) })));
			for (const { i, res } of retried) {
				expect(res.status).toBe(200);
				const earlier = first.find(r => r.i === i)!;
				if (earlier.status === 200) {
					expect(res.headers.get("idempotent-replayed")).toBe("true");
					expect(((await res.json()) as { id: string }).id).toBe(earlier.body.id);
				}
			}
			const db = new Client({ connectionString: mesh.env.DATABASE_URL });
			await db.connect();
			try {
				const { rows } = await db.query<{ subject: string; n: string }>(
					"SELECT subject, count(*) AS n FROM drill_writes WHERE subject LIKE $1 GROUP BY subject ORDER BY subject",
					[`drill-${mesh.namespace}-${tag}-%`],
				);
				expect(rows.map(r => [r.subject, Number(r.n)])).toEqual(ids.map(i => [subject(i), 1]));
			} finally {
				await db.end();
			}
		},
	};
}
