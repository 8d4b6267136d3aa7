/**
 * The chaos topology from issue #4: NODE1 and NODE2 run the actor services, a gateway-only node
 * (SERVICES=api) takes the load, all on a test-owned nats-server that tests may stop and restart, or on a
 * test-owned three-server NATS cluster whose servers tests may kill.
 */
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
