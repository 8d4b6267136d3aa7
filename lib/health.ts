/**
 * The seed's health document, answered by every gateway:
 *   {status, service, version, uptime, dependencies: {database, nats|transport}, node, mesh}
 * `status` is "healthy" (HTTP 200) or "unhealthy" (HTTP 503) when a required dependency is down.
 */
import type { ServiceBroker } from "moleculer";
import { pingDatabase, type DependencyStatus } from "./database";
import { nodeContextOf } from "./node-context";

export interface HealthReport {
	status: "healthy" | "unhealthy";
	service: string;
	version: string;
	uptime: number;
	node: { id: string; role: string; transport: string };
	dependencies: Record<string, DependencyStatus & { required: boolean }>;
	mesh: { nodes_seen: number; nodes_available: number; services_available: string[] };
	/** what services on this node add (e.g. router: the active rules version) */
	[section: string]: unknown;
}

const sections = new WeakMap<ServiceBroker, Map<string, () => unknown>>();

/** A service adds a section to its node's health document (removed again with `null`). */
export function setHealthSection(broker: ServiceBroker, name: string, section: (() => unknown) | null): void {
	let map = sections.get(broker);
	if (!map) sections.set(broker, (map = new Map()));
	if (section) map.set(name, section);
	else map.delete(name);
}

interface NatsClientLike {
	isClosed?(): boolean;
	protocol?: { connected?: boolean };
}

/** The transit's own flag stays true while nats.js reconnects, so the NATS client is asked directly. */
export function transportStatus(broker: ServiceBroker): DependencyStatus {
	const transit = broker.transit as unknown as { connected?: boolean; tx?: { client?: NatsClientLike } } | undefined;
	if (!transit) return { status: "down", error: "no transporter" };
	const client = transit.tx?.client;
	const clientDown = client ? client.isClosed?.() === true || client.protocol?.connected === false : false;
	if (!transit.connected || clientDown) return { status: "down", error: "transporter disconnected" };
	return { status: "up" };
}

export function meshSummary(broker: ServiceBroker): HealthReport["mesh"] {
	const nodes = broker.registry.getNodeList({ onlyAvailable: false, withServices: false }) as Array<{ available: boolean }>;
	const services = broker.registry.getServiceList({ onlyAvailable: true, skipInternal: true }) as Array<{ name: string }>;
	return {
		nodes_seen: nodes.length,
		nodes_available: nodes.filter(n => n.available).length,
		services_available: [...new Set(services.map(s => s.name))].sort(),
	};
}

export async function buildHealthReport(broker: ServiceBroker): Promise<HealthReport> {
	const context = nodeContextOf(broker);
	const dependencies: HealthReport["dependencies"] = {};
	if (context.sequelize) dependencies.database = { ...(await pingDatabase(context.sequelize)), required: true };
	dependencies[context.transport.kind === "nats" ? "nats" : "transport"] = { ...transportStatus(broker), required: true };
	const healthy = Object.values(dependencies).every(d => d.status === "up" || !d.required);
	return {
		status: healthy ? "healthy" : "unhealthy",
		service: "daarion-mesh",
		version: context.settings.version,
		uptime: Math.round((Date.now() - context.startedAt) / 1000),
		node: { id: broker.nodeID, role: context.settings.role, transport: context.transport.kind },
		dependencies,
		mesh: meshSummary(broker),
		...Object.fromEntries([...(sections.get(broker) ?? new Map<string, () => unknown>())].map(([name, section]) => [name, section()])),
	};
}
