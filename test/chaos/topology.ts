/**
 * The chaos topology from issue #4: NODE1 and NODE2 run the actor services, a gateway-only node
 * (SERVICES=api) takes the load, all on a test-owned nats-server that tests may stop and restart.
 */
import { startNodeProcess, uniqueNamespace, waitFor, waitForMesh, getJson, type NodeProcess } from "../helpers/cluster";
import { startNatsServer, type TestNatsServer } from "../helpers/nats-server";
import { dropFreshDatabases, freshDatabase } from "../helpers/databases";

export const JWT_SECRET = "chaos-test-secret-that-is-long-enough";

export interface ChaosMesh {
	nats: TestNatsServer;
	namespace: string;
	/** a database of this mesh's own, so its migrations and leases meet no other test's */
	databaseUrl: string;
	gateway: NodeProcess;
	node1: NodeProcess;
	node2: NodeProcess;
	env: Record<string, string>;
	/** start NODE1 again (after a kill) with the same identity */
	restartNode1(): Promise<NodeProcess>;
	stop(): Promise<void>;
}

export async function startActorNode(env: Record<string, string>, nodeID: string, role: string): Promise<NodeProcess> {
	return startNodeProcess({ ...env, NODE_ID: nodeID, NODE_ROLE: role });
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
	const namespace = uniqueNamespace("chaos");
	const databaseUrl = await freshDatabase("chaos");
	const env = {
		MESH_NAMESPACE: namespace,
		NATS_URL: nats.url,
		DATABASE_URL: databaseUrl,
		JWT_SECRET,
		// One client IP sends all the load; per-client limits would measure the limiter, not failover.
		RATE_LIMIT_PER_KEY: "0",
		...extraEnv,
	};
	const [node1, node2, gateway] = await Promise.all([
		startActorNode(env, "NODE1", "node1"),
		startActorNode(env, "NODE2", "node2"),
		startNodeProcess({ ...env, NODE_ID: "GATEWAY", NODE_ROLE: "gateway", SERVICES: "api" }),
	]);
	const mesh: ChaosMesh = {
		nats,
		namespace,
		databaseUrl,
		gateway,
		node1,
		node2,
		env,
		async restartNode1() {
			mesh.node1 = await startActorNode(env, "NODE1", "node1");
			return mesh.node1;
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
