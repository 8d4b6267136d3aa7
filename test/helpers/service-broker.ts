/**
 * One in-process node for a service's unit tests: a ServiceBroker built from moleculer.config.ts (same
 * middlewares, error regenerator, breaker, bulkhead, metrics) but with no transporter, the services under
 * test loaded from services/ as a real node loads them, and — when asked — a fresh PostgreSQL database
 * migrated by the project's runner, and the gateway (services/api) on a free loopback port.
 *
 * Tests talk to it the way the rest of the mesh does: `node.call("memory.get", …, { meta: { user } })`,
 * or over HTTP through the gateway when the rule under test lives there (`access`, status codes).
 */
import { randomBytes } from "crypto";
import type { AddressInfo } from "net";
import { ServiceBroker, type CallingOptions, type ServiceSchema } from "moleculer";
import type { Sequelize } from "sequelize";
import { createBrokerOptions } from "../../moleculer.config";
import { signToken, type MeshUser } from "../../lib/http/auth";
import { createSequelize } from "../../lib/data/database";
import { runMigrations } from "../../lib/data/migrations";
import { serviceSchemaFor } from "../../lib/runtime/node-runtime";
import { attachNodeContext } from "../../lib/runtime/node-resources";
import { jwtSecretOf, loadSettings, type MeshSettings } from "../../lib/runtime/settings";
import type { TransportChoice } from "../../lib/runtime/transport";
import { getJson, waitFor } from "./cluster";
import { dropFreshDatabases, freshDatabase } from "./databases";

export interface InProcessOptions {
	/** services/<name>.service.ts to load, e.g. ["memory"]; add "api" to serve HTTP */
	services: string[];
	/** a fresh, migrated PostgreSQL database (services that need one refuse to start without it) */
	database?: boolean;
	/** environment overrides, parsed by lib/runtime/settings.ts like a real node's */
	env?: Record<string, string>;
	/** extra schemas: test listeners for events, stand-ins for services the one under test calls */
	extraServices?: ServiceSchema[];
}

export interface HttpAnswer {
	status: number;
	body: any;
	headers: Headers;
}

export interface HttpOptions {
	/** signs a bearer token for this user */
	user?: MeshUser;
	/** sent as JSON */
	body?: unknown;
	/** sent as it is (broken JSON, other media types); set Content-Type in headers */
	rawBody?: string;
	headers?: Record<string, string>;
}

export interface InProcessNode {
	broker: ServiceBroker;
	settings: MeshSettings;
	/** the fresh database's URL, when one was asked for */
	databaseUrl: string | null;
	call<T = unknown>(action: string, params?: object, options?: CallingOptions): Promise<T>;
	/** ctx.meta.user as the gateway sets it from a token */
	callAs<T = unknown>(user: MeshUser, action: string, params?: object, options?: CallingOptions): Promise<T>;
	/** a bearer token this node's gateway accepts */
	tokenFor(user: MeshUser): string;
	/** an HTTP request to the in-process gateway (needs "api" among the services) */
	http(method: string, path: string, options?: HttpOptions): Promise<HttpAnswer>;
	stop(): Promise<void>;
}

export const user = (id: string, roles: string[] = [], teams: string[] = []): MeshUser => ({ id, roles, teams });

/** No transporter: calls, events and the registry stay inside this process. */
const IN_PROCESS: TransportChoice = { kind: "custom", transporter: "", reason: "in-process unit test (no transporter)" };

function settingsFor(options: InProcessOptions, databaseUrl: string | null): MeshSettings {
	const namespace = `unit-${process.pid}-${randomBytes(3).toString("hex")}`;
	return loadSettings({
		NODE_ID: `${namespace}-node`,
		MESH_NAMESPACE: namespace,
		JWT_SECRET: randomBytes(24).toString("base64"),
		PORT: "0",
		HOST: "127.0.0.1",
		// Every test request comes from one address: per-client limits would measure the limiter.
		RATE_LIMIT_PER_KEY: "0",
		LOG_LEVEL: "error",
		MIGRATE_ON_START: "false",
		...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}),
		...options.env,
	});
}

async function migratedDatabase(): Promise<string> {
	const url = await freshDatabase("unit");
	await runMigrations(url, "up");
	return url;
}

function createBroker(settings: MeshSettings, sequelize: Sequelize | null): ServiceBroker {
	const { metricsReporter, ...options } = createBrokerOptions(settings, IN_PROCESS);
	const broker = new ServiceBroker({ ...options, transporter: null });
	attachNodeContext(broker, { settings, transport: IN_PROCESS, sequelize, metricsReporter, startedAt: Date.now() });
	return broker;
}

/**
 * moleculer-web rebuilds its REST aliases (debounced) each time services register, so the first rebuild may
 * come before every service of the node is in: the first HTTP call waits until no rebuild has come for a while.
 */
const ALIASES_QUIET_MS = 300;
function aliasesBuilt(broker: ServiceBroker): Promise<void> {
	return new Promise(resolve => {
		let quiet: NodeJS.Timeout | null = null;
		const rebuilt = () => {
			if (quiet) clearTimeout(quiet);
			quiet = setTimeout(() => {
				broker.localBus.off("$api.aliases.regenerated", rebuilt);
				resolve();
			}, ALIASES_QUIET_MS);
		};
		broker.localBus.on("$api.aliases.regenerated", rebuilt);
	});
}

function gatewayUrl(broker: ServiceBroker): string {
	const api = broker.getLocalService("api") as unknown as { server?: { address(): AddressInfo | string | null } } | undefined;
	const address = api?.server?.address();
	if (!address || typeof address === "string") throw new Error('No gateway in this node: add "api" to its services');
	return `http://127.0.0.1:${address.port}`;
}

export async function startInProcessNode(options: InProcessOptions): Promise<InProcessNode> {
	const databaseUrl = options.database ? await migratedDatabase() : null;
	const settings = settingsFor(options, databaseUrl);
	const sequelize = databaseUrl ? createSequelize({ ...settings.database, url: databaseUrl }, settings.databaseLimits) : null;
	const broker = createBroker(settings, sequelize);
	for (const name of options.services) broker.createService(serviceSchemaFor(name, settings));
	for (const schema of options.extraServices ?? []) broker.createService(schema);
	const routed = options.services.includes("api") ? aliasesBuilt(broker) : Promise.resolve();
	await broker.start();
	await routed;
	const secret = jwtSecretOf(settings);

	const node: InProcessNode = {
		broker,
		settings,
		databaseUrl,
		call: (action, params = {}, callOptions) => broker.call(action, params, callOptions),
		callAs: (who, action, params = {}, callOptions) => broker.call(action, params, { ...callOptions, meta: { ...callOptions?.meta, user: who } }),
		tokenFor: who => signToken(secret, who),
		http(method, path, { user: who, body, rawBody, headers = {} } = {}) {
			return getJson(`${gatewayUrl(broker)}${path}`, {
				method,
				headers: {
					...(who ? { Authorization: `Bearer ${signToken(secret, who)}` } : {}),
					...(body !== undefined ? { "Content-Type": "application/json" } : {}),
					...headers,
				},
				body: rawBody ?? (body === undefined ? undefined : JSON.stringify(body)),
			});
		},
		async stop() {
			await broker.stop();
			await sequelize?.close().catch(() => undefined);
		},
	};
	return node;
}

/** afterAll for a file that started nodes: stop them, then drop the databases they used. */
export async function stopInProcessNodes(...nodes: Array<InProcessNode | undefined>): Promise<void> {
	await Promise.all(nodes.filter((n): n is InProcessNode => !!n).map(n => n.stop()));
	await dropFreshDatabases();
}

/** Collects the events a node broadcasts, for assertions on what a service announced. */
export interface EventRecorder {
	schema: ServiceSchema;
	received: Array<{ event: string; params: unknown }>;
	/** the first `event` received that matches, waiting up to `timeoutMs` for it */
	seen<T = unknown>(event: string, match?: (params: T) => boolean, timeoutMs?: number): Promise<T>;
}

export function eventRecorder(events: string[]): EventRecorder {
	const received: Array<{ event: string; params: unknown }> = [];
	const find = (event: string, match: (params: never) => boolean) => received.find(r => r.event === event && match(r.params as never));
	return {
		received,
		schema: { name: `recorder-${randomBytes(3).toString("hex")}`, events: Object.fromEntries(events.map(e => [e, (ctx: { params: unknown }) => void received.push({ event: e, params: ctx.params })])) },
		async seen<T>(event: string, match: (params: T) => boolean = () => true, timeoutMs = 10_000) {
			const found = await waitFor(`event ${event}`, async () => find(event, match as (params: never) => boolean), timeoutMs, 20);
			return found.params as T;
		},
	};
}
