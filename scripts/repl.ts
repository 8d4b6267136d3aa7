/**
 * `npm run repl`: an operator console that joins the running mesh with the same transport settings as
 * the nodes (NATS_URL / TRANSPORTER / MESH_NAMESPACE). Moleculer's commands (nodes, services, actions,
 * call, dcall, emit, metrics, …) plus `mesh` (every node with its role, its actors, its health and its
 * node-registry status, plus registered external nodes) and
 * `breakers` (circuit breaker states, asked of every node).
 */
import { ServiceBroker } from "moleculer";
import { createBrokerOptions } from "../moleculer.config";
import { describeNode, type MeshNodeView } from "../lib/mesh/node-view";
import { loadReplSettings } from "../lib/runtime/settings";
import { resolveTransport } from "../lib/runtime/transport";

interface NodeHealthLine {
	database: string;
	transport: string;
	status: string;
}

async function healthOf(broker: ServiceBroker, node: MeshNodeView): Promise<NodeHealthLine> {
	if (!node.available) return { status: "unreachable", database: "-", transport: "-" };
	if (!node.services.includes("mesh")) return { status: "gateway-only", database: "-", transport: "up" };
	try {
		const report = (await broker.call("mesh.health", {}, { nodeID: node.nodeID, timeout: 3_000 })) as {
			status: string;
			dependencies: Record<string, { status: string }>;
		};
		const deps = report.dependencies;
		return { status: report.status, database: deps.database?.status ?? "-", transport: (deps.nats ?? deps.transport)?.status ?? "-" };
	} catch (err) {
		return { status: `error: ${(err as Error).message}`, database: "?", transport: "?" };
	}
}

/** node_id → status in the node registry (online | degraded | offline), when a node-registry runs. */
async function registryStatus(broker: ServiceBroker): Promise<Map<string, { status: string; kind: string; role: string }>> {
	const running = (broker.registry.getServiceList({ onlyAvailable: true }) as Array<{ name: string }>).some(s => s.name === "node-registry");
	if (!running) return new Map();
	try {
		const { nodes } = (await broker.call("node-registry.list", { limit: 1_000 }, { timeout: 3_000 })) as { nodes: Array<{ node_id: string; status: string; kind: string; role: string }> };
		return new Map(nodes.map(n => [n.node_id, n]));
	} catch {
		return new Map();
	}
}

export async function meshTable(broker: ServiceBroker): Promise<string[][]> {
	const nodes = broker.registry.getNodeList({ onlyAvailable: false, withServices: true })
		.map(describeNode)
		.filter(n => !n.local); // the REPL itself is a node too; operators want the others
	const registry = await registryStatus(broker);
	const rows = [["Node", "Role", "Available", "Actors", "Health", "Database", "Transport", "Last heartbeat", "Registry"]];
	for (const node of nodes.sort((a, b) => a.nodeID.localeCompare(b.nodeID))) {
		const health = await healthOf(broker, node);
		rows.push([
			node.nodeID,
			node.role ?? "?",
			node.available ? "yes" : "NO",
			node.services.join(", ") || "-",
			health.status,
			health.database,
			health.transport,
			node.lastHeartbeat ?? (node.local ? "local" : "-"),
			registry.get(node.nodeID)?.status ?? "-",
		]);
	}
	// Registered nodes the mesh does not see: external ones (HTTP heartbeats) and mesh nodes gone for good.
	const inMesh = new Set(nodes.map(n => n.nodeID));
	for (const [id, entry] of [...registry].filter(([id]) => !inMesh.has(id) && id !== broker.nodeID).sort(([a], [b]) => a.localeCompare(b))) {
		rows.push([id, entry.role, entry.kind === "external" ? "external" : "NO", "-", "-", "-", "-", "-", entry.status]);
	}
	return rows;
}

interface MetricSnapshot {
	name: string;
	values: Array<{ labels: Record<string, string>; value: number }>;
}

const BREAKER_OPEN = "moleculer.circuit-breaker.opened.active";
const BREAKER_HALF_OPEN = "moleculer.circuit-breaker.half-opened.active";
const BREAKER_OPENED_TOTAL = "moleculer.circuit-breaker.opened.total";

/** Breakers live in each *caller*: ask every node for its own (via $node.metrics) and list them. */
export async function breakerTable(broker: ServiceBroker): Promise<string[][]> {
	const rows = [["Caller", "Affected node", "Action", "State", "Times opened"]];
	const nodes = (broker.registry.getNodeList({ onlyAvailable: true, withServices: false }) as Array<{ id: string; local: boolean }>).filter(n => !n.local);
	for (const node of nodes.sort((a, b) => a.id.localeCompare(b.id))) {
		let metrics: MetricSnapshot[];
		try {
			metrics = (await broker.call("$node.metrics", { includes: "moleculer.circuit-breaker.**" }, { nodeID: node.id, timeout: 3_000 })) as MetricSnapshot[];
		} catch (err) {
			rows.push([node.id, "-", "-", `unknown: ${(err as Error).message}`, "-"]);
			continue;
		}
		const value = (name: string, labels: Record<string, string>) =>
			metrics.find(m => m.name === name)?.values.find(v => v.labels.affectedNodeID === labels.affectedNodeID && v.labels.action === labels.action)?.value ?? 0;
		const seen = metrics.find(m => m.name === BREAKER_OPENED_TOTAL)?.values ?? [];
		if (!seen.length) rows.push([node.id, "-", "-", "all closed", "0"]);
		for (const { labels, value: opened } of seen) {
			const state = value(BREAKER_OPEN, labels) ? "OPEN" : value(BREAKER_HALF_OPEN, labels) ? "half-open" : "closed";
			rows.push([node.id, labels.affectedNodeID, labels.action, state, String(opened)]);
		}
	}
	return rows;
}

async function main(): Promise<void> {
	const settings = loadReplSettings();
	const transport = await resolveTransport(settings);
	const options = createBrokerOptions(settings, transport);
	const broker = new ServiceBroker({ ...options, replOptions: { customCommands: [meshCommand(), breakersCommand()] } });
	await broker.start();
	if (transport.warning) broker.logger.warn(transport.warning);
	process.stdout.write(`Joined mesh "${settings.namespace}" over ${transport.kind} as ${broker.nodeID}. Try: mesh, breakers, nodes, services, call mesh.whoami\n`);
	broker.repl();
}

/** A REPL command that prints one table built from the live mesh. */
function tableCommand(command: string, description: string, rows: (broker: ServiceBroker) => Promise<string[][]>) {
	return {
		command,
		description,
		async action(broker: ServiceBroker, _args: unknown, helpers: { table: (rows: string[][]) => string }) {
			process.stdout.write(helpers.table(await rows(broker)) + "\n");
		},
	};
}

const meshCommand = () => tableCommand("mesh", "Nodes as operators see them: role, actors, health of each node", meshTable);
const breakersCommand = () =>
	tableCommand("breakers", "Circuit breakers of every node (as a caller): which endpoints are open, half-open or closed", breakerTable);

if (require.main === module) {
	main().catch(err => {
		process.stderr.write(`REPL failed to start: ${(err as Error).message}\n`);
		process.exit(1);
	});
}
