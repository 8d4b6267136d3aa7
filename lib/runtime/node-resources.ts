/**
 * What a node hands its services: settings, the chosen transport, the database handle and the
 * metrics reporter. Kept per broker (not global) so that tests can run several brokers in one process.
 */
import type { ServiceBroker } from "moleculer";
import type { Sequelize } from "sequelize";
import type { DependencyStatus } from "../data/database";
import { installOutboxDoorbell } from "../data/outbox/doorbell";
import type { GatewayPrometheusReporter } from "../http/prometheus";
import type { MeshSettings } from "./settings";
import type { TransportChoice } from "./transport";

export interface NodeContext {
	settings: MeshSettings;
	transport: TransportChoice;
	/** null on nodes that run no service needing PostgreSQL and have no database configured */
	sequelize: Sequelize | null;
	metricsReporter: GatewayPrometheusReporter;
	startedAt: number;
	/**
	 * What every service of this node's code base declares it publishes (schema `metadata.publishes`),
	 * running here or not: the stream must capture a producer's events after that producer left the mesh.
	 */
	codeBaseMetadata?: () => Array<Record<string, unknown>>;
	/** set by the outbox service on NATS nodes: the JetStream event stream as /health sees it */
	eventStream?: () => DependencyStatus;
}

const contexts = new WeakMap<ServiceBroker, NodeContext>();

export function attachNodeContext(broker: ServiceBroker, context: NodeContext): void {
	contexts.set(broker, context);
	// Writes through this node's database ring the outbox relay when their events commit.
	if (context.sequelize) installOutboxDoorbell(context.sequelize, broker);
}

/** The node context, or null for a broker not started through lib/runtime/node-runtime (in-process tests). */
export function nodeContextIfAny(broker: ServiceBroker): NodeContext | null {
	return contexts.get(broker) ?? null;
}

export function nodeContextOf(broker: ServiceBroker): NodeContext {
	const context = contexts.get(broker);
	if (!context) throw new Error("No node context attached to this broker (start it through lib/node-runtime)");
	return context;
}

/** The node's PostgreSQL handle, for services that cannot run without one. */
export function databaseOf(broker: ServiceBroker): Sequelize {
	const { sequelize } = nodeContextOf(broker);
	if (!sequelize) throw new Error("This service needs PostgreSQL, and the node has no database configured");
	return sequelize;
}
