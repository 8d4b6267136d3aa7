/**
 * mesh: how a node and the mesh look from the inside, for clients, operators and tests.
 * Runs wherever actor services run; a gateway-only node (SERVICES=api) does not run it, so every
 * call it takes is served by another node.
 */
import { createHash } from "crypto";
import os from "os";
import type { Context, ServiceSchema } from "moleculer";
import { INTERNAL_ACCESS, type MeshUser } from "../lib/http/auth";
import { auditEvent } from "../lib/data/audit-events";
import { logsAt, requestLogger } from "../lib/runtime/logger";
import { buildHealthReport, transportStatus } from "../lib/http/health";
import { nodeContextOf } from "../lib/runtime/node-resources";
import { actionPolicy } from "../lib/mesh/failover-policy";
import { describeNode } from "../lib/mesh/node-view";
import { PUBLISHES } from "../lib/data/outbox/relay";

/** Everything here only reads: safe to retry on another node. */
const READ = actionPolicy({ idempotent: true, timeout: "fast" });


const MeshService: ServiceSchema = {
	name: "mesh",
	/** Published through the outbox (the event stream captures it): its audit events. */
	metadata: { [PUBLISHES]: ["audit.>"] },

	actions: {
		whoami: {
			...READ,
			rest: "GET /whoami",
			access: "public",
			handler() {
				const { settings, startedAt } = nodeContextOf(this.broker);
				return {
					nodeID: this.broker.nodeID,
					role: settings.role,
					version: settings.version,
					uptime: Math.round((Date.now() - startedAt) / 1000),
				};
			},
		},

		nodes: {
			...READ,
			rest: "GET /nodes",
			access: "public",
			handler() {
				const nodes = this.broker.registry.getNodeList({ onlyAvailable: false, withServices: true });
				return nodes.map(describeNode).sort((a, b) => a.nodeID.localeCompare(b.nodeID));
			},
		},

		/** This node's health document; mesh-internal (no REST), used by the REPL's `mesh` command. */
		health: {
			...READ,
			handler() {
				return buildHealthReport(this.broker);
			},
		},

		echo: {
			// No side effects, so idempotent. Tests that need a request held in flight use the drill test
			// double (test/fixtures/services), which production nodes cannot load.
			...actionPolicy({ idempotent: true, timeout: "standard" }),
			rest: "POST /echo",
			access: "user",
			params: {
				message: { type: "string", min: 1, max: 10_000 },
				$$strict: "remove",
			},
			handler(ctx: Context<{ message: string }, { user?: MeshUser }>) {
				// Checked first: below debug the line was still built and passed down two loggers on every call,
				// ~0.2 µs of a served call's ~15 µs (docs/BENCHMARKS.md, "Where a remote call's CPU goes").
				if (logsAt("debug", this.broker.options.logLevel as string)) {
					requestLogger(this.logger, ctx).debug(`echo served for ${ctx.meta.user?.id ?? "mesh caller"}`);
				}
				return {
					message: ctx.params.message,
					nodeID: this.broker.nodeID,
					requestID: ctx.requestID,
					user: ctx.meta.user?.id ?? null,
				};
			},
		},

		config: {
			...READ,
			rest: "GET /config",
			access: INTERNAL_ACCESS,
			handler() {
				const { settings, transport } = nodeContextOf(this.broker);
				return {
					nodeID: this.broker.nodeID,
					role: settings.role,
					hostname: os.hostname(),
					transport: { kind: transport.kind, reason: transport.reason, natsUrl: transport.natsUrl ?? null, ...transportStatus(this.broker) },
					heartbeat: { interval: settings.heartbeatInterval, timeout: settings.heartbeatTimeout },
					requestTimeout: settings.requestTimeout,
					rateLimit: settings.rateLimit,
					database: settings.database.url ? "configured" : "embedded",
				};
			},
		},
	},

	/** A node (re)starting is when its configuration (re)loads: audited with a digest, never secrets. */
	started() {
		const { settings } = nodeContextOf(this.broker);
		const visible = { version: settings.version, role: settings.role, services: settings.services, heartbeat: [settings.heartbeatInterval, settings.heartbeatTimeout], rateLimit: settings.rateLimit, production: settings.production };
		const digest = createHash("sha256").update(JSON.stringify(visible)).digest("hex").slice(0, 16);
		void auditEvent(this.broker, null, { service: "mesh", action: "config_loaded", actor: `node:${this.broker.nodeID}`, target: this.broker.nodeID, details: { ...visible, digest } });
	},
};

export default MeshService;
