/**
 * The seed's health document, answered by every gateway:
 *   {status, service, version, uptime, dependencies: {database, nats|transport}, node, mesh}
 * `status` is "healthy" (HTTP 200) when every dependency is up; "unhealthy" (HTTP 503) when the transport
 * is down (the node cannot reach the mesh); "degraded" otherwise, with the reason in `dependencies`:
 * - the database unreachable → HTTP 503: the node still answers, with retryable 503s for calls that need
 *   the database, and turns healthy on the first ping that works;
 * - only the JetStream event stream away → HTTP 200: events wait in the outbox, nothing is lost. Why 200
 *   here (the seed says 503 when degraded): load balancers and readiness probes read the code, and taking
 *   every gateway out of service because events are queued would turn a delay into an outage.
 */
import type { ServiceBroker } from "moleculer";
import { databaseGuardOf } from "../data/db-guard";
import { pingDatabase, type DependencyStatus } from "../data/database";
import { nodeContextOf } from "../runtime/node-resources";

export interface HealthReport {
	status: "healthy" | "degraded" | "unhealthy";
	service: string;
	version: string;
	uptime: number;
	node: { id: string; role: string; transport: string };
	dependencies: Record<string, DependencyStatus & { required: boolean; pool?: { size: number; idle: number; waiting: number } }>;
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
	if (context.sequelize) {
		const pool = databaseGuardOf(context.sequelize)?.poolStats();
		dependencies.database = { ...(await pingDatabase(context.sequelize)), required: true, ...(pool ? { pool } : {}) };
	}
	const transportName = context.transport.kind === "nats" ? "nats" : "transport";
	dependencies[transportName] = { ...transportStatus(broker), required: true };
	// Events wait in the outbox while the stream is away: the node still serves, degraded.
	if (context.eventStream) dependencies.event_stream = { ...context.eventStream(), required: false };
	const down = Object.entries(dependencies).filter(([, d]) => d.status !== "up").map(([name]) => name);
	return {
		status: down.length === 0 ? "healthy" : down.includes(transportName) ? "unhealthy" : "degraded",
		service: "daarion-mesh",
		version: context.settings.version,
		uptime: Math.round((Date.now() - context.startedAt) / 1000),
		node: { id: broker.nodeID, role: context.settings.role, transport: context.transport.kind },
		dependencies,
		mesh: meshSummary(broker),
		...Object.fromEntries([...(sections.get(broker) ?? new Map<string, () => unknown>())].map(([name, section]) => [name, section()])),
	};
}

/** The HTTP code of a health report: 503 while a required dependency is down (see the header). */
export function healthHttpStatus(report: HealthReport): number {
	return Object.values(report.dependencies).some(d => d.required && d.status !== "up") ? 503 : 200;
}
