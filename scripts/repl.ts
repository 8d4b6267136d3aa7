/**
 * `npm run repl`: an operator console that joins the running mesh with the same transport settings as
 * the nodes (NATS_URL / TRANSPORTER / MESH_NAMESPACE). Moleculer's commands (nodes, services, actions,
 * call, dcall, emit, metrics, …) plus `mesh`: every node with its role, its actors and its health.
 */
import os from "os";
import { ServiceBroker } from "moleculer";
import { createBrokerOptions } from "../moleculer.config";
import { describeNode, type MeshNodeView } from "../services/mesh.service";
import { loadSettings } from "../lib/settings";
import { resolveTransport } from "../lib/transport";

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

export async function meshTable(broker: ServiceBroker): Promise<string[][]> {
	const nodes = (broker.registry.getNodeList({ onlyAvailable: false, withServices: true }) as never[])
		.map(describeNode)
		.filter(n => !n.local); // the REPL itself is a node too; operators want the others
	const rows = [["Node", "Role", "Available", "Actors", "Health", "Database", "Transport", "Last heartbeat"]];
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
		]);
	}
	return rows;
}

async function main(): Promise<void> {
	const settings = loadSettings({ ...process.env, NODE_ID: process.env.NODE_ID ?? `repl-${os.hostname()}-${process.pid}`, NODE_ROLE: "operator" });
	const transport = await resolveTransport(settings);
	const options = createBrokerOptions({ ...settings, logLevel: process.env.LOG_LEVEL ?? "warn", metricsEnabled: false }, transport);
	const broker = new ServiceBroker({ ...options, replOptions: { customCommands: [meshCommand()] } } as never);
	await broker.start();
	if (transport.warning) broker.logger.warn(transport.warning);
	process.stdout.write(`Joined mesh "${settings.namespace}" over ${transport.kind} as ${broker.nodeID}. Try: mesh, nodes, services, call mesh.whoami\n`);
	broker.repl();
}

function meshCommand() {
	return {
		command: "mesh",
		description: "Nodes as operators see them: role, actors, health of each node",
		async action(broker: ServiceBroker, _args: unknown, helpers: { table: (rows: string[][]) => string }) {
			process.stdout.write(helpers.table(await meshTable(broker)) + "\n");
		},
	};
}

if (require.main === module) {
	main().catch(err => {
		process.stderr.write(`REPL failed to start: ${(err as Error).message}\n`);
		process.exit(1);
	});
}
