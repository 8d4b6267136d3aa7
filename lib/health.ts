/**
 * The seed's health document, answered by every gateway:
 *   {status, service, version, uptime, dependencies: {database, nats|transport}, node, mesh}
 * `status` is "healthy" (HTTP 200), "unhealthy" (HTTP 503) when a required dependency is down, or
 * "degraded" (HTTP 200) when only an optional one is: the JetStream event stream. Why 200 for degraded
 * (the seed says 503): load balancers and readiness probes read the code, and taking every gateway
 * out of service because events are queued in the outbox would turn a delay into an outage.
 */
import type { ServiceBroker } from "moleculer";
import { pingDatabase, type DependencyStatus } from "./database";
import { nodeContextOf } from "./node-context";

export interface HealthReport {
	status: "healthy" | "degraded" | "unhealthy";
	service: string;
	version: string;
	uptime: number;
	node: { id: string; role: string; transport: string };
	dependencies: Record<string, DependencyStatus & { required: boolean }>;
	mesh: { nodes_seen: number; nodes_available: number; services_available: string[] };
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
	// Events wait in the outbox while the stream is away: the node still serves, degraded.
	if (context.eventStream) dependencies.event_stream = { ...context.eventStream(), required: false };
	const deps = Object.values(dependencies);
	return {
		status: deps.some(d => d.status !== "up" && d.required) ? "unhealthy" : deps.some(d => d.status !== "up") ? "degraded" : "healthy",
		service: "daarion-mesh",
		version: context.settings.version,
		uptime: Math.round((Date.now() - context.startedAt) / 1000),
		node: { id: broker.nodeID, role: context.settings.role, transport: context.transport.kind },
		dependencies,
		mesh: meshSummary(broker),
	};
}

/** The HTTP code of a health report: only "unhealthy" is 503 (see the header for "degraded"). */
export function healthHttpStatus(report: HealthReport): number {
	return report.status === "unhealthy" ? 503 : 200;
}
