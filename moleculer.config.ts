/**
 * The one broker configuration. Everything that varies between nodes comes from MeshSettings
 * (parsed from the environment in lib/settings.ts); the transporter is chosen beforehand by
 * lib/transport.ts because choosing it needs a network probe.
 */
import type { BrokerOptions } from "moleculer";
import { jsonLogger } from "./lib/logger";
import { GatewayPrometheusReporter } from "./lib/metrics";
import { RequestContextMiddleware } from "./lib/request-context";
import type { MeshSettings } from "./lib/settings";
import type { TransportChoice } from "./lib/transport";

export interface BrokerExtras {
	/** the reporter the gateway renders /metrics from */
	metricsReporter: GatewayPrometheusReporter;
}

export function createBrokerOptions(settings: MeshSettings, transport: TransportChoice): BrokerOptions & BrokerExtras {
	const metricsReporter = new GatewayPrometheusReporter();
	return {
		namespace: settings.namespace,
		nodeID: settings.nodeID,
		metadata: { role: settings.role, version: settings.version, transport: transport.kind },
		transporter: transport.transporter as BrokerOptions["transporter"],
		serializer: settings.serializer as BrokerOptions["serializer"],
		logger: jsonLogger(settings.logLevel),
		logLevel: settings.logLevel as BrokerOptions["logLevel"],

		// Membership: a node that stops sending heartbeats is dropped after heartbeatTimeout.
		heartbeatInterval: settings.heartbeatInterval,
		heartbeatTimeout: settings.heartbeatTimeout,
		requestTimeout: settings.requestTimeout,
		registry: { strategy: "RoundRobin", preferLocal: true },

		// lib/node-runtime.ts owns SIGTERM/SIGINT (one graceful stop, then exit 0).
		skipProcessEventRegistration: true,
		// Finish in-flight requests before leaving the mesh on SIGTERM.
		tracking: { enabled: true, shutdownTimeout: 10_000 },

		circuitBreaker: {
			enabled: true,
			threshold: 0.5,
			minRequestCount: 20,
			windowTime: 60,
			halfOpenTime: 10_000,
			check: (err: Error & { code?: number }) => !err.code || err.code >= 500,
		},

		metrics: {
			enabled: settings.metricsEnabled,
			reporter: [metricsReporter as never],
		},
		middlewares: [RequestContextMiddleware],
		metricsReporter,
	} as BrokerOptions & BrokerExtras;
}
