/**
 * Starts one mesh node: chooses the transport, connects the database, builds the broker from
 * moleculer.config.ts, loads the chosen services, and stops gracefully on SIGTERM/SIGINT.
 */
import fs from "fs";
import path from "path";
import { ServiceBroker, type ServiceSchema } from "moleculer";
import { createBrokerOptions } from "../../moleculer.config";
import { databaseGuardOf } from "../data/db-guard";
import { createSequelize } from "../data/database";
import { locateDatabase } from "../data/database-location";
import { readHeap } from "./heap";
import { runMigrations } from "../data/migrations";
import { attachNodeContext } from "./node-resources";
import type { MeshSettings } from "./settings";
import { resolveTransport, type TransportChoice } from "./transport";

export const SERVICES_DIR = path.resolve(__dirname, "..", "..", "services");
/** Services every node with actor services also runs (the gateway decides nothing about them). */
const INFRASTRUCTURE_SERVICES = new Set(["api", "mesh"]);

export function availableServices(dir = SERVICES_DIR): string[] {
	return fs
		.readdirSync(dir)
		.filter(f => /\.service\.(ts|js)$/.test(f))
		.map(f => f.replace(/\.service\.(ts|js)$/, ""))
		.sort();
}

/**
 * Where each service this node may run lives: services/, plus the test doubles of TEST_SERVICES_DIR
 * (development and tests only; lib/runtime/settings.ts refuses it in production, so no production node can
 * load a test hook).
 */
export function serviceDirectories(settings: Pick<MeshSettings, "testServicesDir">): Map<string, string> {
	const dirs = new Map(availableServices().map(name => [name, SERVICES_DIR]));
	if (settings.testServicesDir) {
		const testDir = path.resolve(settings.testServicesDir);
		for (const name of availableServices(testDir)) {
			if (dirs.has(name)) throw new Error(`TEST_SERVICES_DIR: "${name}" would shadow the production service of that name`);
			dirs.set(name, testDir);
		}
	}
	return dirs;
}

/** SERVICES=api means a gateway-only node; naming any actor service adds the `mesh` service too. */
export function chooseServices(requested: string[] | null, available: string[]): string[] {
	if (!requested) return available;
	const unknown = requested.filter(name => !available.includes(name));
	if (unknown.length) throw new Error(`SERVICES names unknown services: ${unknown.join(", ")} (known: ${available.join(", ")})`);
	const chosen = new Set(requested);
	if (requested.some(name => !INFRASTRUCTURE_SERVICES.has(name))) chosen.add("mesh");
	return [...chosen].sort();
}

export function loadServiceSchema(name: string, dir = SERVICES_DIR): ServiceSchema {
	const file = ["ts", "js"].map(ext => path.join(dir, `${name}.service.${ext}`)).find(f => fs.existsSync(f));
	if (!file) throw new Error(`No service file for "${name}" in ${dir}`);
	// eslint-disable-next-line @typescript-eslint/no-require-imports
	const loaded = require(file);
	return (loaded.default ?? loaded) as ServiceSchema;
}

/** A service's schema with what the environment sets of its own settings (MeshSettings.serviceSettings) over its defaults. */
export function serviceSchemaFor(name: string, settings: MeshSettings, dir = SERVICES_DIR): ServiceSchema {
	const schema = loadServiceSchema(name, dir);
	const overrides = settings.serviceSettings[schema.name];
	return overrides && Object.keys(overrides).length ? { ...schema, settings: { ...schema.settings, ...overrides } } : schema;
}

export interface RunningNode {
	broker: ServiceBroker;
	transport: TransportChoice;
	services: string[];
	stop(): Promise<void>;
}

export async function startNode(settings: MeshSettings): Promise<RunningNode> {
	const transport = await resolveTransport(settings);
	const directories = serviceDirectories(settings);
	const services = chooseServices(settings.services, [...directories.keys()].sort());
	// Development without DATABASE_URL/DB_HOST gets the embedded server; production settings require one.
	const database = await locateDatabase(settings);
	const sequelize = createSequelize({ ...settings.database, url: database.url }, settings.databaseLimits);

	const options = createBrokerOptions(settings, transport);
	const broker = new ServiceBroker(options);
	let codeBase: Array<Record<string, unknown>> | null = null;
	attachNodeContext(broker, {
		settings,
		transport,
		sequelize,
		// Loaded on first use (the relay's leader), not at every node's start.
		codeBaseMetadata: () => (codeBase ??= [...directories].map(([name, dir]) => loadServiceSchema(name, dir).metadata ?? {})),
		metricsReporter: options.metricsReporter,
		startedAt: Date.now(),
	});

	databaseGuardOf(sequelize)?.observe(broker);
	const log = broker.getLogger("node");
	if (transport.warning) log.warn(transport.warning);
	log.info(`Transport: ${transport.kind} (${transport.reason})`, { transport: transport.kind, nats_url: transport.natsUrl });
	if (database.embedded) log.warn(`Database: embedded PostgreSQL (${settings.embeddedPgDir}); set DATABASE_URL or DB_HOST for production`);
	for (const note of database.embedded?.notes ?? []) log.warn(note);
	log.info(`Node ${settings.nodeID} (${settings.role}) runs: ${services.join(", ")}`);

	if (settings.migrateOnStart) {
		// Nodes starting together serialise on the runner's advisory lock; the second finds nothing to do.
		const result = await runMigrations(database.url, "up", { log: line => log.info(`Migration ${line}`) });
		log.info(`Migrations: ${result.applied.length} applied, ${result.status.length} known`);
	}
	if (settings.testServicesDir) log.warn(`Test services loaded from ${settings.testServicesDir}: this node is for development and tests only`);
	for (const name of services) broker.createService(serviceSchemaFor(name, settings, directories.get(name)));
	await broker.start();

	let stopping: Promise<void> | null = null;
	const stop = () =>
		(stopping ??= (async () => {
			await broker.stop();
			await sequelize.close().catch(() => undefined);
			await database.release();
		})());
	return { broker, transport, services, stop };
}

/**
 * SIGTERM/SIGINT: finish in-flight requests (broker tracking), leave the mesh, exit 0. Installed while the
 * node is still starting: a signal then waits for the start to finish and stops it cleanly, instead of
 * Node's default action killing a half-started node that already serves (the gateway listens before every
 * service has started). `whenStdinEnds` (STOP_WHEN_STDIN_ENDS, set by `npm start`): the end of standard input
 * stops it the same way, so a launcher killed outright (SIGKILL) leaves no node behind.
 */
export function stopOnSignals(starting: Promise<RunningNode>, options: { whenStdinEnds?: boolean } = {}): void {
	const stopFor = (reason: string) => {
		starting
			.then(async node => {
				node.broker.logger.info(`${reason}: finishing in-flight requests and leaving the mesh`);
				await node.stop().catch(err => {
					node.broker.logger.error("Stop failed", err);
					process.exit(1);
				});
				process.exit(0);
			})
			// A start that failed reports itself (scripts/run-node.ts) and exits non-zero.
			.catch(() => undefined);
	};
	process.once("SIGTERM", () => stopFor("SIGTERM received"));
	process.once("SIGINT", () => stopFor("SIGINT received"));
	if (options.whenStdinEnds) {
		process.stdin.once("end", () => stopFor("Standard input closed (the launcher is gone)"));
		process.stdin.resume();
	}
	starting.then(node => process.on("SIGUSR2", () => reportHeap(node))).catch(() => undefined);
}

/**
 * `kill -USR2 <pid>`: one log line with the heap in use — after a full GC when node runs with
 * --expose-gc (memory investigations, bench/presence), else as it stands.
 */
export function reportHeap(node: RunningNode): void {
	const { heapUsed, codeBytes, afterGc } = readHeap();
	node.broker.logger.info(`Heap in use: ${heapUsed} bytes (${codeBytes} of them code)${afterGc ? " after a full GC" : ""}`, {
		event: "heap",
		heap_used_bytes: heapUsed,
		heap_code_bytes: codeBytes,
		rss_bytes: process.memoryUsage().rss,
		after_gc: afterGc,
	});
}
