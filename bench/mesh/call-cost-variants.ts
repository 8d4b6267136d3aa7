/**
 * The brokers bench/mesh/call-cost.ts compares: bare Moleculer, the project's configuration, and the project's
 * configuration with one component taken out, on both sides of the call (the same list builds the callers in
 * the bench process and the serving brokers in bench/mesh/call-cost-server.ts). Nothing here is a production
 * setting: each variant edits the BrokerOptions that moleculer.config.ts returns.
 */
import path from "path";
import type { BrokerOptions, Middleware, ServiceSchema } from "moleculer";
import type { createBrokerOptions as CreateBrokerOptions } from "../../moleculer.config";
import { LivenessProbeMiddleware } from "../../lib/mesh/liveness-probe";
import { loadSettings, type MeshSettings } from "../../lib/runtime/settings";
import { resolveTransport } from "../../lib/runtime/transport";
import { bareEchoService } from "./bare-echo";

type Listed = string | Middleware | ((...args: unknown[]) => unknown);

export interface CostVariant {
	name: string;
	/** null for bare Moleculer; otherwise how the project's options are changed (`settings`: what they were built from) */
	edit: ((options: BrokerOptions, settings: MeshSettings) => BrokerOptions) | null;
	/** another checkout whose moleculer.config.ts and mesh.service.ts to use (the "before" of a change) */
	root?: string;
}

function middlewareName(entry: Listed): string {
	return typeof entry === "string" ? entry : ((entry as { name?: string }).name ?? "");
}

/** The options without the middleware called `name` (a built-in's name, a factory's or an object's). */
function without(name: string): (options: BrokerOptions) => BrokerOptions {
	return options => {
		const listed = (options.middlewares ?? []) as Listed[];
		if (!listed.some(entry => middlewareName(entry) === name)) throw new Error(`call-cost: no middleware named ${name} in the project's options`);
		return { ...options, middlewares: listed.filter(entry => middlewareName(entry) !== name) as BrokerOptions["middlewares"] };
	};
}

type Factory = (this: unknown, broker: unknown) => Record<string, unknown>;

/** The middleware factory called `name` without its call wrappers: its lifecycle hooks (metrics it registers) stay. */
function unwrapped(name: string): (options: BrokerOptions) => BrokerOptions {
	return options => {
		const listed = (options.middlewares ?? []) as Listed[];
		const index = listed.findIndex(entry => typeof entry === "function" && entry.name === name);
		if (index === -1) throw new Error(`call-cost: no middleware factory named ${name} in the project's options`);
		const factory = listed[index] as Factory;
		const hooksOnly = function (this: unknown, broker: unknown) {
			const middleware = { ...factory.call(this, broker) };
			delete middleware.localAction;
			delete middleware.remoteAction;
			return middleware;
		};
		return { ...options, middlewares: listed.map((entry, i) => (i === index ? hooksOnly : entry)) as BrokerOptions["middlewares"] };
	};
}

/**
 * The project's LivenessProbe with its scan every `scanEveryMs` instead of 10 ms (hedging and probing as
 * configured otherwise): under valgrind a call is ~50× slower, so the clock-paced scan weighs ~50× more per call
 * than at full speed; this variant tells the scan's share apart from the probe's per-call work.
 */
function livenessScanEvery(scanEveryMs: number): (options: BrokerOptions, settings: MeshSettings) => BrokerOptions {
	return (options, settings) => {
		const listed = (options.middlewares ?? []) as Listed[];
		const index = listed.findIndex(entry => middlewareName(entry) === "LivenessProbe");
		if (index === -1) throw new Error("call-cost: no LivenessProbe in the project's options");
		const probe = LivenessProbeMiddleware({ scanEveryMs, stuckLeaveMs: settings.stuckLeaveMs }, { budget: settings.hedgeBudget });
		return { ...options, middlewares: listed.map((entry, i) => (i === index ? probe : entry)) as BrokerOptions["middlewares"] };
	};
}

/**
 * Moleculer's own NATS transporter with the options the project's coalescing one was built from
 * (what NATS_COALESCE_SENDS=false gives a node): each packet leaves in nats.js's flush of its own turn.
 */
function plainNats(options: BrokerOptions): BrokerOptions {
	const transporter = options.transporter as { opts?: Record<string, unknown>; constructor: { name: string } };
	if (transporter?.constructor?.name !== "CoalescingNatsTransporter") throw new Error("call-cost: the project's transporter is not the coalescing one");
	return { ...options, transporter: { type: "NATS", options: transporter.opts } };
}

const unchanged = (options: BrokerOptions) => options;

/** Every variant, bare first and the project second (the ratios are against these two). */
export function costVariants(baseRoot = process.env.CALL_COST_BASE): CostVariant[] {
	const variants: CostVariant[] = [
		{ name: "bare Moleculer", edit: null },
		{ name: "project", edit: unchanged },
		{ name: "− Timeout", edit: without("Timeout") },
		{ name: "− CircuitBreaker", edit: o => ({ ...o, circuitBreaker: { ...o.circuitBreaker, enabled: false } }) },
		{ name: "− Retry", edit: without("Retry") },
		{ name: "− CallingGate (tracking + metrics of calls made)", edit: unwrapped("CallingGate") },
		{ name: "− ServingGate (bulkhead, tracking + metrics of calls served)", edit: unwrapped("ServingGate") },
		{ name: "− metrics", edit: o => ({ ...o, metrics: { enabled: false } }) },
		{ name: "− call tracking", edit: o => ({ ...o, tracking: { ...o.tracking, enabled: false } }) },
		{ name: "− LivenessProbe", edit: without("LivenessProbe") },
		{ name: "LivenessProbe scanning every 1 s (not 10 ms)", edit: livenessScanEvery(1_000) },
		{ name: "− ChangedMetaOnly (responses carry the whole meta)", edit: without("ChangedMetaOnly") },
		{ name: "− FailureDetector", edit: without("FailureDetector") },
		{ name: "− InputGuard", edit: without("InputGuard") },
		{ name: "− Validator (params schema)", edit: without("Validator") },
		{ name: "plain JSON serializer", edit: o => ({ ...o, serializer: "JSON" }) },
		{ name: "plain NATS transporter (no coalescing of sends)", edit: plainNats },
	];
	if (baseRoot) variants.splice(2, 0, { name: "project before", edit: unchanged, root: path.resolve(baseRoot) });
	const only = process.env.CALL_COST_ONLY?.split(",");
	return only ? variants.filter((v, i) => i < 2 || only.some(word => v.name.includes(word))) : variants;
}

/** The environment of a caller/serving pair (bench/mesh/call-cost-caller.ts, call-cost-server.ts); COST_VARIANT picks the variant. */
export function pairEnv(namespace: string, natsUrl: string): Record<string, string> {
	return {
		MESH_NAMESPACE: namespace,
		NATS_URL: natsUrl,
		DATABASE_URL: process.env.DATABASE_URL ?? "postgres://root@127.0.0.1:5432/test",
		JWT_SECRET: "cost-secret-0123456789abcdef0123456789",
		LOG_LEVEL: "warn",
	};
}

/** A broker's options for one variant: its own namespace, so each caller reaches only its own server. */
export async function variantOptions(variant: CostVariant, index: number, role: "caller" | "server", env: Record<string, string>): Promise<BrokerOptions> {
	const namespace = `${env.MESH_NAMESPACE}-${index}`;
	const nodeID = `cost-${role}-${index}`;
	if (!variant.edit) return { namespace, nodeID, transporter: { type: "NATS", options: { url: env.NATS_URL } }, logger: false };
	const settings = loadSettings({ ...process.env, ...env, MESH_NAMESPACE: namespace, NODE_ID: nodeID });
	// eslint-disable-next-line @typescript-eslint/no-require-imports
	const config = variant.root ? (require(path.join(variant.root, "moleculer.config.ts")) as { createBrokerOptions: typeof CreateBrokerOptions }) : await import("../../moleculer.config");
	return variant.edit(config.createBrokerOptions(settings, await resolveTransport(settings)), settings);
}

/** The served action: bare-server.ts's echo for bare Moleculer, the project's mesh.echo (as defined) for the others. */
export function echoService(variant: CostVariant, nodeID: string): ServiceSchema {
	if (!variant.edit) return bareEchoService(nodeID);
	// eslint-disable-next-line @typescript-eslint/no-require-imports
	const mesh = require(path.join(variant.root ?? path.resolve(__dirname, "..", ".."), "services", "mesh.service.ts")).default as ServiceSchema;
	return { name: "mesh", actions: { echo: mesh.actions!.echo } };
}
