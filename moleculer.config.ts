/**
 * The one broker configuration. Everything that varies between nodes comes from MeshSettings
 * (parsed from the environment in lib/runtime/settings.ts); the transporter is chosen beforehand by
 * lib/runtime/transport.ts because choosing it needs a network probe.
 */
import type { BrokerOptions } from "moleculer";
import { databaseLimitError, isDatabaseFault, MeshErrorRegenerator } from "./lib/data/db-faults";
import { jsonLogger } from "./lib/runtime/logger";
import { guardedSerializer, InputGuardMiddleware } from "./lib/mesh/input-guard";
import { meshInternalMiddlewares, timedOutHere } from "./lib/mesh/call-pipeline";
import { GatewayPrometheusReporter, GatewayReporterMiddleware } from "./lib/http/prometheus";
import { nodeHealthFailure } from "./lib/inference/errors";
import { LivenessProbeMiddleware } from "./lib/mesh/liveness-probe";
import { NatsReconnectGuardMiddleware } from "./lib/mesh/nats-reconnect-guard";
import { ChangedMetaOnlyMiddleware } from "./lib/mesh/response-meta";
import { FailoverEventsMiddleware, FailoverStrategy, FailureDetectorMiddleware, RETRY_POLICY } from "./lib/mesh/failover-policy";
import type { MeshSettings } from "./lib/runtime/settings";
import type { TransportChoice } from "./lib/runtime/transport";
import { CoalescingNatsTransporter } from "./lib/mesh/coalescing-nats";

/**
 * NATS through the coalescing transporter (lib/mesh/coalescing-nats.ts) unless NATS_COALESCE_SENDS=false; TCP and
 * custom ones as chosen. It doubles the gateway's req/s and costs remote calls at high concurrency a loop turn per
 * hop (docs/BENCHMARKS.md, "Mesh foundation"): the switch lets an RPC-heavy node without a gateway opt out.
 */
function meshTransporter(transport: TransportChoice, coalesce: boolean): BrokerOptions["transporter"] {
	if (coalesce && transport.kind === "nats" && typeof transport.transporter === "object") {
		return new CoalescingNatsTransporter(transport.transporter.options);
	}
	return transport.transporter as BrokerOptions["transporter"];
}

export interface BrokerExtras {
	/** the reporter the gateway renders /metrics from */
	metricsReporter: GatewayPrometheusReporter;
}

export function createBrokerOptions(settings: MeshSettings, transport: TransportChoice): BrokerOptions & BrokerExtras {
	const metricsReporter = new GatewayPrometheusReporter();
	const options: BrokerOptions = {
		namespace: settings.namespace,
		nodeID: settings.nodeID,
		metadata: { role: settings.role, version: settings.version, transport: transport.kind },
		transporter: meshTransporter(transport, settings.nats.coalesceSends),
		// A request too deeply nested to serialize is refused as bad input (lib/mesh/input-guard.ts).
		serializer: guardedSerializer(settings.serializer),
		// Database faults cross the mesh typed (a retryable 503), not as a plain Error.
		errorRegenerator: new MeshErrorRegenerator(),
		logger: jsonLogger(settings.logLevel),
		logLevel: settings.logLevel as BrokerOptions["logLevel"],

		// Membership (docs/FAILOVER.md): heartbeats every second; a node silent for heartbeatTimeout is
		// removed (FailureDetectorMiddleware checks every 250 ms), and skipped as suspect well before that.
		heartbeatInterval: settings.heartbeatInterval,
		heartbeatTimeout: settings.heartbeatTimeout,
		// The ceiling for actions without a timeout class (lib/mesh/failover-policy.ts TIMEOUT_CLASSES).
		requestTimeout: settings.requestTimeout,
		// stopDelay: after announcing "no services" on SIGTERM, wait for calls already on the wire.
		registry: { strategy: FailoverStrategy, preferLocal: true, stopDelay: 300 },
		// Off: measured worse on SIGKILL (docs/FAILOVER.md); kept as a switch for the benchmark.
		disableBalancer: settings.disableBalancer,
		// Enabled per action by actionPolicy(): only idempotent actions are retried, on another node.
		retryPolicy: RETRY_POLICY,
		// Per action on the node that runs it: excess calls queue, then fail fast with a retryable 429.
		bulkhead: { enabled: true, concurrency: 256, maxQueueSize: 2_048 },

		// lib/runtime/node-runtime.ts owns SIGTERM/SIGINT (one graceful stop, then exit 0).
		skipProcessEventRegistration: true,
		// Finish in-flight requests before leaving the mesh on SIGTERM.
		tracking: { enabled: true, shutdownTimeout: 10_000 },

		// Per endpoint (action × node): half the calls failing in a 10 s window opens it for 5 s.
		circuitBreaker: {
			enabled: true,
			threshold: 0.5,
			minRequestCount: 10,
			windowTime: 10,
			halfOpenTime: 5_000,
			// A database fault is the same on every node: opening breakers would only keep callers away
			// for halfOpenTime after the database is back. An error carrying `retry_elsewhere` reports how
			// one model fared, not the node's health (nodeHealthFailure). This broker-wide check is the one
			// that counts: a caller's breaker wraps the *remote* endpoint, whose action definition came over
			// the wire without functions, so an action's own `circuitBreaker.check` never reaches callers
			// (five PROVIDER_FAILED from one flaky model opened swapper-proxy.generate on that node for
			// every model, and the next runs there failed at once).
			// A timeout this node gave is left out too, as before (lib/mesh/call-pipeline.ts timedOutHere).
			check: (err: Error & { code?: number }) => nodeHealthFailure(err) && !isDatabaseFault(err) && !timedOutHere(err),
		},

		// The reporter is an instance (GatewayReporterMiddleware hands it over): /metrics renders from it.
		metrics: { enabled: settings.metricsEnabled },
		// Moleculer's own middlewares, three of them in leaner equivalents (lib/mesh/call-pipeline.ts).
		internalMiddlewares: false,
		// First listed = innermost. Last = outermost: InputGuard refuses unstorable input before anything else
		// runs (on the serving node only: its check protects the data whoever calls).
		middlewares: [
			GatewayReporterMiddleware(metricsReporter),
			FailureDetectorMiddleware(),
			LivenessProbeMiddleware({ stuckLeaveMs: settings.stuckLeaveMs }, { budget: settings.hedgeBudget }),
			NatsReconnectGuardMiddleware(),
			FailoverEventsMiddleware(),
			ChangedMetaOnlyMiddleware(),
			// A served action's error that is PostgreSQL cutting its work short (lib/data/database.ts:
			// statement_timeout, idle_in_transaction_session_timeout) becomes a 503 naming the limit, not an
			// anonymous 500, before breakers and metrics see it: the classification the database guard applies
			// to every Sequelize call, here for what reaches an action without the guard (a raw pg error).
			...meshInternalMiddlewares({ servedError: databaseLimitError }),
			InputGuardMiddleware(),
		],
	};
	return { ...options, metricsReporter };
}
