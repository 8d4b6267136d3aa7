/**
 * Every environment variable the mesh reads is parsed here, once, into a typed object.
 * Services and scripts receive this object; they never read process.env themselves.
 */
import { createHash } from "crypto";
import os from "os";
import { version } from "../../package.json";
import { parseHostList } from "../data/db-hosts";

export type NodeRole = "node1" | "node2" | string;

export interface RateLimitSettings {
	/** sustained requests per second for one client key; 0 switches the per-key limit off */
	perKey: number;
	/** bucket size for one client key */
	burst: number;
	/** sustained requests per second for the whole gateway; 0 switches it off */
	global: number;
}

/** Budgets for socket.io clients (lib/realtime/socket-limits.ts); each 0 switches that limit off. */
export interface SocketLimitSettings {
	/** events per second one socket may send, and its bucket */
	eventsPerSocket: number;
	eventBurstPerSocket: number;
	/** events per second one user may send over all their sockets on a gateway, and its bucket */
	eventsPerUser: number;
	eventBurstPerUser: number;
	/** refused events a socket may pile up (refilling at its event rate) before it is disconnected */
	floodAllowance: number;
	/** one user's socket events that run at once on a gateway (each may hold a database connection); the rest wait */
	userConcurrency: number;
	/** connection and namespace handshakes per second from one client address, and its bucket */
	handshakesPerAddress: number;
	handshakeBurst: number;
	/** open socket.io connections from one client address */
	maxConnectionsPerAddress: number;
}

export interface NatsSettings {
	/** one server, or a comma-separated list of the servers of a NATS cluster */
	url?: string;
	/**
	 * Try the servers in NATS_URL order (first connect and every reconnect) instead of nats.js's shuffle:
	 * a node lists the server on its own host first and fails over to the others in the order given.
	 */
	keepUrlOrder: boolean;
	/** hold the packets of one event-loop turn and write them to NATS together (lib/mesh/coalescing-nats.ts) */
	coalesceSends: boolean;
	user?: string;
	password?: string;
	tls: boolean;
	tlsCaFile?: string;
	tlsCertFile?: string;
	tlsKeyFile?: string;
}

export interface DatabaseSettings {
	/** full connection URL; null means "use the embedded PostgreSQL" */
	url: string | null;
	ssl: boolean;
}

export interface MeshSettings {
	version: string;
	production: boolean;
	nodeID: string;
	role: NodeRole;
	namespace: string;
	/** null = all actor services found in services/ */
	services: string[] | null;
	port: number;
	host: string;
	/** explicit transporter choice: "NATS", "TCP", or a transporter connection string */
	transporter?: string;
	nats: NatsSettings;
	serializer: string;
	heartbeatInterval: number;
	heartbeatTimeout: number;
	requestTimeout: number;
	logLevel: string;
	jwtSecret?: string;
	/** GET /auth/dev-token is served: the development secret is in use, or DEV_LOGIN=true (never in production) */
	devLogin: boolean;
	/** why devLogin is on or off, for the startup log */
	devLoginReason: string;
	rateLimit: RateLimitSettings;
	corsOrigins: string[];
	bodyLimit: string;
	database: DatabaseSettings;
	/** per-connection PostgreSQL limits: no request holds a pool connection longer than this */
	databaseLimits: DatabaseLimits;
	/** how long an Idempotency-Key answers with its first response; swept by the lease holder after that */
	idempotencyTtlMs: number;
	/** when set, /metrics needs `Authorization: Bearer <token>` */
	metricsToken?: string;
	/** development and tests only: extra *.service.ts files (test doubles) this node may run; refused in production */
	testServicesDir?: string;
	/** set by `npm start` for its nodes: stop as on SIGTERM when standard input ends, i.e. when the launcher is gone */
	stopWhenStdinEnds: boolean;
	embeddedPgPort: number;
	embeddedPgDir: string;
	metricsEnabled: boolean;
	/** apply pending migrations/ at start (default on in development, off in production) */
	migrateOnStart: boolean;
	memory: MemorySettings;
	events: EventSettings;
	/** socket clients may read public rooms without a token */
	wsPublicRead: boolean;
	socketLimits: SocketLimitSettings;
	/** services' own settings set from the environment (their defaults live in each service's schema) */
	serviceSettings: ServiceSettingOverrides;
	/** NATS queue groups pick the node instead of Moleculer's balancer (measured in docs/FAILOVER.md; off) */
	disableBalancer: boolean;
	/** hedged idempotent calls allowed per idempotent call sent, 0..1 (lib/mesh/hedged-calls.ts; 0 = off) */
	hedgeBudget: number;
	/**
	 * while the main event loop is silent, the liveness worker sends the node's heartbeats for it, up to this long;
	 * past it the node is left to the heartbeat timeout (lib/mesh/liveness-responder.ts; 0 = the worker never beats)
	 */
	stuckLeaveMs: number;
	/** leader leases for singleton duties (lib/data/leader-lease.ts) */
	leaseTtlMs: number;
	swapper: SwapperSettings;
	router: RouterSettings;
	registry: RegistrySettings;
}

/** swapper-proxy: this node's model runtimes and how their models are kept (docs/ROUTER.md). */
export interface SwapperSettings {
	/** the built-in development model; on by default outside production */
	localEcho: boolean;
	/** model names local-echo answers as */
	localEchoModels: string[];
	/** local-echo: pause between streamed tokens (a development knob to watch streaming; 0 = none) */
	localEchoTokenMs: number;
	ollamaUrl: string | null;
	openai: { baseUrl: string | null; apiKey: string | null; models: string[] | null; local: boolean };
	/** a loaded model unused this long is unloaded, ms */
	idleTimeoutMs: number;
	/** at most this many local models loaded at once (LRU eviction of idle ones) */
	maxLoaded: number;
	/** generations running at once per model */
	maxConcurrency: number;
	/** generations waiting per model beyond maxConcurrency; more → 429 QUEUE_FULL */
	queue: number;
	/** one provider call (load or generation), ms */
	timeoutMs: number;
	/** how often the node advertises its models and load to the mesh, ms */
	advertiseMs: number;
}

export interface RouterSettings {
	/** agent registry and routing rules (YAML), reloaded when it changes */
	agentsFile: string;
	/** message + history larger than this (UTF-8 bytes) → 413 */
	maxPromptBytes: number;
	/** sliding window for an agent's error rate, ms */
	errorWindowMs: number;
}

export interface DatabaseLimits {
	/** PostgreSQL statement_timeout, ms (0 = none) */
	statementTimeoutMs: number;
	/** PostgreSQL idle_in_transaction_session_timeout, ms (0 = none) */
	idleInTransactionTimeoutMs: number;
}

export interface RegistrySettings {
	/** how often a mesh node writes its registry heartbeat (with capabilities and metrics) */
	heartbeatMs: number;
	/** no heartbeat for this long → offline; for half of it → degraded (mesh nodes go offline at once on disconnect) */
	offlineAfterMs: number;
	/** heartbeat_log rows older than this are pruned by the registry leader */
	retentionHours: number;
}

export interface MemorySettings {
	/** AES-256-GCM key for confidential content */
	encryptionKey: Buffer;
	encryptionKeyId: string;
	/** true when no key was configured and a labelled development key is used */
	developmentKey: boolean;
	maxContentBytes: number;
}

export interface EventSettings {
	/** JetStream stream the outbox relay publishes to */
	stream: string;
	/** replicas of that stream: 3 on a three-server NATS cluster, 1 on a single server */
	streamReplicas: number;
	/** prepended to every subject ("" in production; tests and staging meshes sharing a NATS set one) */
	subjectPrefix: string;
	outboxMaxAttempts: number;
	outboxBackoffMs: number;
	/**
	 * How often an idle relay leader looks for due rows itself. Writes ring it when they commit
	 * (lib/data/outbox/doorbell.ts), so this bounds only what a ring does not cover: a lost ring, a row whose
	 * retry backoff ran out.
	 */
	outboxIdlePollMs: number;
}

/**
 * A service's own settings, as the environment sets them, by service name: only variables that are set.
 * The service declares each setting and its default in its schema (`settings`), where its reader sees
 * them; this file only reads the environment (the one place that does) and checks the values. The node
 * merges them into the schema before it creates the service (lib/runtime/node-runtime.ts, serviceSchemaFor).
 */
export type ServiceSettingOverrides = Record<string, Record<string, unknown>>;

export class SettingsError extends Error {
	constructor(variable: string, problem: string) {
		super(`${variable}: ${problem}`);
		this.name = "SettingsError";
	}
}

type Env = Record<string, string | undefined>;

/** A number >= min; `fallback` when the variable is unset (undefined: leave the default to whoever owns it). */
function readInt<F extends number | undefined>(env: Env, name: string, fallback: F, min = 0): number | F {
	const raw = env[name];
	if (raw == null || raw === "") return fallback;
	const value = Number(raw);
	if (!Number.isFinite(value) || value < min) {
		throw new SettingsError(name, `expected a number >= ${min}, got "${raw}"`);
	}
	return value;
}

/** A fraction between 0 and 1. */
function readFraction(env: Env, name: string, fallback: number): number {
	const value = readInt(env, name, fallback);
	if (value > 1) throw new SettingsError(name, `expected a fraction between 0 and 1, got "${env[name]}"`);
	return value;
}

function readBool(env: Env, name: string, fallback: boolean): boolean {
	const raw = env[name];
	if (raw == null || raw === "") return fallback;
	if (/^(1|true|yes|on)$/i.test(raw)) return true;
	if (/^(0|false|no|off)$/i.test(raw)) return false;
	throw new SettingsError(name, `expected true/false, got "${raw}"`);
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** A duration: "90" (seconds), or a number with a unit: 500ms, 30s, 15m, 24h, 7d. */
function readDurationMs(env: Env, name: string, fallbackMs: number, minMs = 0): number {
	const raw = env[name];
	if (raw == null || raw === "") return fallbackMs;
	const match = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$/i.exec(raw.trim());
	const ms = match ? Number(match[1]) * DURATION_UNITS[(match[2] ?? "s").toLowerCase()] : NaN;
	if (!Number.isFinite(ms) || ms < minMs) throw new SettingsError(name, `expected a duration of at least ${minMs} ms (examples: 90, 30s, 15m, 24h), got "${raw}"`);
	return ms;
}

/** What the environment sets of the services' own settings (defaults: services/city, services/presence). */
function readServiceSettings(env: Env): ServiceSettingOverrides {
	return {
		city: setOnly({ maxMessageChars: readInt(env, "CITY_MAX_MESSAGE_CHARS", undefined, 1) }),
		presence: setOnly({
			awayAfterMs: readInt(env, "PRESENCE_AWAY_AFTER_MS", undefined, 100),
			graceMs: readInt(env, "PRESENCE_GRACE_MS", undefined, 0),
			heartbeatMs: readInt(env, "PRESENCE_HEARTBEAT_MS", undefined, 100),
		}),
	};
}

function setOnly(values: Record<string, unknown>): Record<string, unknown> {
	return Object.fromEntries(Object.entries(values).filter(([, value]) => value !== undefined));
}

function readList(raw: string | undefined): string[] | null {
	if (raw == null || raw.trim() === "" || raw.trim() === "*" || raw.trim() === "all") return null;
	return raw
		.split(",")
		.map(s => s.trim())
		.filter(Boolean);
}

/**
 * What `npm run repl` joins the mesh with: the node settings, as an operator with a node id of its own
 * (unless NODE_ID names one), logging warnings only (unless LOG_LEVEL says otherwise), without metrics.
 */
export function loadReplSettings(env: Env = process.env): MeshSettings {
	const settings = loadSettings({ ...env, NODE_ID: env.NODE_ID ?? `repl-${os.hostname()}-${process.pid}`, NODE_ROLE: "operator" });
	return { ...settings, logLevel: env.LOG_LEVEL ?? "warn", metricsEnabled: false };
}

/** What `npm run migrate` needs: only the database, so that a deploy can migrate before nodes and their secrets exist. */
export function loadMigrationSettings(env: Env = process.env): Pick<MeshSettings, "database" | "embeddedPgDir" | "embeddedPgPort" | "production"> {
	const production = env.NODE_ENV === "production";
	const database = resolveDatabaseSettings(env);
	if (production && !database.url) throw new SettingsError("DATABASE_URL or DB_HOST", "required when NODE_ENV=production");
	return { production, database, embeddedPgDir: env.EMBEDDED_PG_DIR ?? "data/pg", embeddedPgPort: readInt(env, "EMBEDDED_PG_PORT", 54329, 1) };
}

function readHostList(list: string): string {
	try {
		const hosts = parseHostList(list);
		if (!hosts.length) throw new Error("no host");
		return hosts.map(h => `${h.host.includes(":") ? `[${h.host}]` : h.host}:${h.port}`).join(",");
	} catch (err) {
		throw new SettingsError("DB_HOSTS", `expected host:port[,host:port…]: ${(err as Error).message}`);
	}
}

/** DATABASE_URL wins; otherwise the seed's DB_* variables; otherwise null (embedded default). */
export function resolveDatabaseSettings(env: Env): DatabaseSettings {
	const sslMode = env.DB_SSLMODE ?? "disable";
	const ssl = !["disable", "allow", "prefer", ""].includes(sslMode);
	if (env.DATABASE_URL) return { url: env.DATABASE_URL, ssl: ssl || /sslmode=(require|verify)/.test(env.DATABASE_URL) };
	if (!env.DB_HOST && !env.DB_HOSTS) return { url: null, ssl: false };
	const user = encodeURIComponent(env.DB_USER ?? "postgres");
	const password = env.DB_PASSWORD ? `:${encodeURIComponent(env.DB_PASSWORD)}` : "";
	const name = env.DB_NAME ?? "daarion";
	// DB_HOSTS: the primary and its standbys; nodes connect to whichever accepts writes (lib/data/primary-locator.ts).
	const hosts = env.DB_HOSTS ? readHostList(env.DB_HOSTS) : `${env.DB_HOST}:${readInt(env, "DB_PORT", 5432, 1)}`;
	return { url: `postgres://${user}${password}@${hosts}/${name}`, ssl };
}

export function loadSettings(env: Env = process.env): MeshSettings {
	const production = env.NODE_ENV === "production";
	const role = env.NODE_ROLE ?? "node1";
	const nodeID = env.NODE_ID ?? `${role}-${os.hostname()}-${process.pid}`;
	const settings: MeshSettings = {
		version,
		production,
		nodeID,
		role,
		namespace: env.MESH_NAMESPACE ?? "daarion",
		services: readList(env.SERVICES),
		port: readInt(env, "PORT", 9300),
		host: env.HOST ?? "0.0.0.0",
		transporter: env.TRANSPORTER || undefined,
		nats: {
			url: env.NATS_URL || undefined,
			keepUrlOrder: readBool(env, "NATS_KEEP_URL_ORDER", false),
			coalesceSends: readBool(env, "NATS_COALESCE_SENDS", true),
			user: env.NATS_USER || undefined,
			password: env.NATS_PASSWORD || undefined,
			tls: readBool(env, "NATS_TLS", false),
			tlsCaFile: env.NATS_TLS_CA || undefined,
			tlsCertFile: env.NATS_TLS_CERT || undefined,
			tlsKeyFile: env.NATS_TLS_KEY || undefined,
		},
		serializer: env.SERIALIZER ?? "JSON",
		heartbeatInterval: readInt(env, "HEARTBEAT_INTERVAL", 1, 1),
		heartbeatTimeout: readInt(env, "HEARTBEAT_TIMEOUT", 2.5, 2),
		requestTimeout: readInt(env, "REQUEST_TIMEOUT", 10_000),
		logLevel: env.LOG_LEVEL ?? "info",
		jwtSecret: env.JWT_SECRET || undefined,
		...readDevLogin(env, production),
		rateLimit: {
			perKey: readInt(env, "RATE_LIMIT_PER_KEY", 10),
			burst: readInt(env, "RATE_LIMIT_BURST", 20),
			global: readInt(env, "RATE_LIMIT_GLOBAL", 0),
		},
		corsOrigins: readList(env.CORS_ORIGINS) ?? [],
		bodyLimit: env.BODY_LIMIT ?? "1mb",
		database: resolveDatabaseSettings(env),
		databaseLimits: {
			statementTimeoutMs: readInt(env, "DB_STATEMENT_TIMEOUT_MS", 5_000),
			idleInTransactionTimeoutMs: readInt(env, "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", 10_000),
		},
		idempotencyTtlMs: readDurationMs(env, "IDEMPOTENCY_TTL", 24 * 3_600_000, 1_000),
		metricsToken: env.METRICS_TOKEN || undefined,
		testServicesDir: readTestServicesDir(env, production),
		stopWhenStdinEnds: readBool(env, "STOP_WHEN_STDIN_ENDS", false),
		embeddedPgPort: readInt(env, "EMBEDDED_PG_PORT", 54329, 1),
		embeddedPgDir: env.EMBEDDED_PG_DIR ?? "data/pg",
		metricsEnabled: readBool(env, "METRICS", true),
		migrateOnStart: readBool(env, "MIGRATE_ON_START", !production),
		leaseTtlMs: readInt(env, "LEASE_TTL_MS", 5_000, 1_000),
		disableBalancer: readBool(env, "DISABLE_BALANCER", false),
		hedgeBudget: readFraction(env, "HEDGE_BUDGET", 0.05),
		stuckLeaveMs: readInt(env, "MESH_STUCK_LEAVE_MS", 10_000, 0),
		registry: {
			heartbeatMs: readInt(env, "NODE_HEARTBEAT_MS", 10_000, 100),
			offlineAfterMs: readInt(env, "NODE_OFFLINE_AFTER_MS", 90_000, 200),
			retentionHours: readInt(env, "NODE_HEARTBEAT_RETENTION_HOURS", 24, 1),
		},
		memory: readMemorySettings(env, production),
		wsPublicRead: readBool(env, "WS_PUBLIC_READ", false),
		socketLimits: {
			eventsPerSocket: readInt(env, "WS_EVENT_RATE", 10),
			eventBurstPerSocket: readInt(env, "WS_EVENT_BURST", 20, 1),
			eventsPerUser: readInt(env, "WS_USER_EVENT_RATE", 10),
			eventBurstPerUser: readInt(env, "WS_USER_EVENT_BURST", 10, 1),
			floodAllowance: readInt(env, "WS_FLOOD_ALLOWANCE", 40),
			userConcurrency: readInt(env, "WS_USER_CONCURRENCY", 1),
			handshakesPerAddress: readInt(env, "WS_HANDSHAKE_RATE", 10),
			handshakeBurst: readInt(env, "WS_HANDSHAKE_BURST", 40, 1),
			maxConnectionsPerAddress: readInt(env, "WS_MAX_CONNECTIONS_PER_ADDRESS", 200),
		},
		serviceSettings: readServiceSettings(env),
		swapper: readSwapperSettings(env, production),
		router: {
			agentsFile: env.ROUTER_AGENTS_FILE || "config/agents.yml",
			maxPromptBytes: readInt(env, "ROUTER_MAX_PROMPT_BYTES", 32 * 1024, 1),
			errorWindowMs: readInt(env, "ROUTER_ERROR_WINDOW_MS", 60_000, 100),
		},
		events: {
			stream: env.NATS_STREAM_EVENTS ?? "DAARION_EVENTS",
			streamReplicas: readInt(env, "NATS_STREAM_REPLICAS", 1, 1),
			subjectPrefix: env.EVENTS_SUBJECT_PREFIX ?? "",
			outboxMaxAttempts: readInt(env, "OUTBOX_MAX_ATTEMPTS", 5, 1),
			outboxBackoffMs: readInt(env, "OUTBOX_BACKOFF_MS", 500, 1),
			outboxIdlePollMs: readInt(env, "OUTBOX_IDLE_POLL_MS", 1_000, 10),
		},
	};
	validateForProduction(settings);
	return settings;
}

function readSwapperSettings(env: Env, production: boolean): SwapperSettings {
	return {
		localEcho: readBool(env, "SWAPPER_LOCAL_ECHO", !production),
		localEchoModels: readList(env.SWAPPER_LOCAL_ECHO_MODELS) ?? ["local-echo"],
		localEchoTokenMs: readInt(env, "SWAPPER_LOCAL_ECHO_TOKEN_MS", 0),
		ollamaUrl: env.OLLAMA_URL || null,
		openai: {
			baseUrl: env.OPENAI_BASE_URL || null,
			apiKey: env.OPENAI_API_KEY || null,
			models: readList(env.OPENAI_MODELS),
			local: readBool(env, "OPENAI_LOCAL", false),
		},
		// Seconds, like Ollama's keep_alive; fractions allowed (tests).
		idleTimeoutMs: readInt(env, "SWAPPER_IDLE_TIMEOUT", 300) * 1000,
		maxLoaded: readInt(env, "SWAPPER_MAX_LOADED", 2, 1),
		maxConcurrency: readInt(env, "SWAPPER_MAX_CONCURRENCY", 4, 1),
		queue: readInt(env, "SWAPPER_QUEUE", 16, 0),
		timeoutMs: readInt(env, "SWAPPER_TIMEOUT_MS", 60_000, 1),
		advertiseMs: readInt(env, "SWAPPER_ADVERTISE_MS", 1_000, 50),
	};
}

const DEV_MEMORY_KEY_LABEL = "daarion-mesh development memory key - not for production";

function readMemorySettings(env: Env, production: boolean): MemorySettings {
	const maxContentBytes = readInt(env, "MEMORY_MAX_CONTENT_BYTES", 64 * 1024, 1);
	const raw = env.MEMORY_ENCRYPTION_KEY;
	if (!raw) {
		if (production) throw new SettingsError("MEMORY_ENCRYPTION_KEY", "required when NODE_ENV=production (base64 of 32 random bytes)");
		return { encryptionKey: developmentMemoryKey(), encryptionKeyId: "dev", developmentKey: true, maxContentBytes };
	}
	const key = Buffer.from(raw, "base64");
	if (key.length !== 32) throw new SettingsError("MEMORY_ENCRYPTION_KEY", `must be base64 of exactly 32 bytes (got ${key.length})`);
	return { encryptionKey: key, encryptionKeyId: env.MEMORY_ENCRYPTION_KEY_ID ?? "k1", developmentKey: false, maxContentBytes };
}

/**
 * The development login mints a token for any name. It is served only where nobody could mistake it
 * for real authentication: with the development secret (tokens it signs are worthless elsewhere), or
 * when an operator asks for it with DEV_LOGIN=true outside production.
 */
function readDevLogin(env: Env, production: boolean): { devLogin: boolean; devLoginReason: string } {
	const explicit = env.DEV_LOGIN == null || env.DEV_LOGIN === "" ? undefined : readBool(env, "DEV_LOGIN", false);
	if (production) {
		if (explicit) throw new SettingsError("DEV_LOGIN", "the development login is refused when NODE_ENV=production");
		return { devLogin: false, devLoginReason: "NODE_ENV=production" };
	}
	if (explicit !== undefined) return { devLogin: explicit, devLoginReason: `DEV_LOGIN=${explicit}` };
	if (!env.JWT_SECRET) return { devLogin: true, devLoginReason: "the development JWT secret is in use (no JWT_SECRET)" };
	return { devLogin: false, devLoginReason: "JWT_SECRET is set and DEV_LOGIN is not true" };
}

/** Test doubles (test/fixtures/services) are loaded only where no user of a production node can reach them. */
function readTestServicesDir(env: Env, production: boolean): string | undefined {
	const dir = env.TEST_SERVICES_DIR || undefined;
	if (dir && production) throw new SettingsError("TEST_SERVICES_DIR", "test services are refused when NODE_ENV=production");
	return dir;
}

/**
 * Values that are public knowledge: this repository's development secrets and .env.example
 * placeholders. A production node refuses them, whatever their length.
 */
const KNOWN_SECRETS = new Set([
	"daarion-mesh-development-secret-not-for-production",
	"change-me-to-a-long-random-secret-of-32-chars-or-more",
	"change-me",
	"changeme",
	"secret",
	"password",
]);

/** Bits of entropy per character times length, from the character frequencies: a coarse guess-resistance floor. */
function shannonBits(text: string): number {
	const counts = new Map<string, number>();
	for (const ch of text) counts.set(ch, (counts.get(ch) ?? 0) + 1);
	let perChar = 0;
	for (const n of counts.values()) perChar -= (n / text.length) * Math.log2(n / text.length);
	return perChar * text.length;
}

/**
 * Why a secret is unfit for production, or null. Low entropy catches runs of one letter and short
 * alphabets ("abababab…"); 32 random hex characters score about 120 bits by this estimate, 32 base64 ones about 150.
 */
export function weakSecretReason(value: string, minLength: number): string | null {
	const lower = value.toLowerCase();
	if (KNOWN_SECRETS.has(lower) || /change-?me|replace[-_]?me|example|placeholder|not-for-production|development/.test(lower)) return "is a known development or placeholder value";
	if (value.length < minLength) return `must be at least ${minLength} characters in production`;
	if (new Set(value).size < 8 || shannonBits(value) < 100) return "has too little entropy (use e.g. `openssl rand -base64 48`)";
	return null;
}

/** Why a 32-byte key is unfit for production (all zero, one repeated byte, the development key), or null. */
export function weakKeyReason(key: Buffer): string | null {
	if (key.equals(developmentMemoryKey())) return "is the development key";
	if (new Set(key).size < 8) return "has too little entropy (all zero or a repeated byte); use `openssl rand -base64 32`";
	return null;
}

function developmentMemoryKey(): Buffer {
	return createHash("sha256").update(DEV_MEMORY_KEY_LABEL).digest();
}

/** Production never runs on guessed defaults: a missing secret or transport is a start-up error. */
function validateForProduction(s: MeshSettings): void {
	if (!s.production) return;
	if (!s.jwtSecret) throw new SettingsError("JWT_SECRET", "required when NODE_ENV=production");
	const jwtProblem = weakSecretReason(s.jwtSecret, 32);
	if (jwtProblem) throw new SettingsError("JWT_SECRET", jwtProblem);
	if (s.metricsToken) {
		const tokenProblem = weakSecretReason(s.metricsToken, 24);
		if (tokenProblem) throw new SettingsError("METRICS_TOKEN", tokenProblem);
	}
	const keyProblem = weakKeyReason(s.memory.encryptionKey);
	if (keyProblem) throw new SettingsError("MEMORY_ENCRYPTION_KEY", keyProblem);
	if (!s.nats.url && !s.transporter) throw new SettingsError("NATS_URL", "required when NODE_ENV=production");
	if (!s.database.url) throw new SettingsError("DATABASE_URL or DB_HOST", "required when NODE_ENV=production");
}

/** The development fallback secret: fine on a laptop, refused in production by validateForProduction. */
export const DEV_JWT_SECRET = "daarion-mesh-development-secret-not-for-production";

export function jwtSecretOf(s: MeshSettings): string {
	return s.jwtSecret ?? DEV_JWT_SECRET;
}
