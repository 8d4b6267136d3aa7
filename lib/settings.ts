/**
 * Every environment variable the mesh reads is parsed here, once, into a typed object.
 * Services and scripts receive this object; they never read process.env themselves.
 */
import { createHash } from "crypto";
import os from "os";
import { version } from "../package.json";

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
	url?: string;
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
	rateLimit: RateLimitSettings;
	corsOrigins: string[];
	bodyLimit: string;
	database: DatabaseSettings;
	embeddedPgPort: number;
	embeddedPgDir: string;
	metricsEnabled: boolean;
	/** apply pending migrations/ at start (default on in development, off in production) */
	migrateOnStart: boolean;
	memory: MemorySettings;
	events: EventSettings;
	presence: PresenceSettings;
	/** socket clients may read public rooms without a token */
	wsPublicRead: boolean;
	socketLimits: SocketLimitSettings;
	cityMaxMessageChars: number;
	/** NATS queue groups pick the node instead of Moleculer's balancer (measured in docs/FAILOVER.md; off) */
	disableBalancer: boolean;
	/** leader leases for singleton duties (lib/leader-lease.ts) */
	leaseTtlMs: number;
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
	/** prepended to every subject ("" in production; tests and staging meshes sharing a NATS set one) */
	subjectPrefix: string;
	outboxMaxAttempts: number;
	outboxBackoffMs: number;
}

export interface PresenceSettings {
	/** no activity for this long → away (seed: 5 minutes) */
	awayAfterMs: number;
	/** a closed or hidden socket stays present this long, in case it reconnects */
	graceMs: number;
	/** how often clients send heartbeats; three missed → offline */
	heartbeatMs: number;
}

export class SettingsError extends Error {
	constructor(variable: string, problem: string) {
		super(`${variable}: ${problem}`);
		this.name = "SettingsError";
	}
}

type Env = Record<string, string | undefined>;

function readInt(env: Env, name: string, fallback: number, min = 0): number {
	const raw = env[name];
	if (raw == null || raw === "") return fallback;
	const value = Number(raw);
	if (!Number.isFinite(value) || value < min) {
		throw new SettingsError(name, `expected a number >= ${min}, got "${raw}"`);
	}
	return value;
}

function readBool(env: Env, name: string, fallback: boolean): boolean {
	const raw = env[name];
	if (raw == null || raw === "") return fallback;
	if (/^(1|true|yes|on)$/i.test(raw)) return true;
	if (/^(0|false|no|off)$/i.test(raw)) return false;
	throw new SettingsError(name, `expected true/false, got "${raw}"`);
}

function readList(raw: string | undefined): string[] | null {
	if (raw == null || raw.trim() === "" || raw.trim() === "*" || raw.trim() === "all") return null;
	return raw
		.split(",")
		.map(s => s.trim())
		.filter(Boolean);
}

/** DATABASE_URL wins; otherwise the seed's DB_* variables; otherwise null (embedded default). */
/** What `npm run migrate` needs: only the database, so that a deploy can migrate before nodes and their secrets exist. */
export function loadMigrationSettings(env: Env = process.env): Pick<MeshSettings, "database" | "embeddedPgDir" | "embeddedPgPort" | "production"> {
	const production = env.NODE_ENV === "production";
	const database = resolveDatabaseSettings(env);
	if (production && !database.url) throw new SettingsError("DATABASE_URL or DB_HOST", "required when NODE_ENV=production");
	return { production, database, embeddedPgDir: env.EMBEDDED_PG_DIR ?? "data/pg", embeddedPgPort: readInt(env, "EMBEDDED_PG_PORT", 54329, 1) };
}

export function resolveDatabaseSettings(env: Env): DatabaseSettings {
	const sslMode = env.DB_SSLMODE ?? "disable";
	const ssl = !["disable", "allow", "prefer", ""].includes(sslMode);
	if (env.DATABASE_URL) return { url: env.DATABASE_URL, ssl: ssl || /sslmode=(require|verify)/.test(env.DATABASE_URL) };
	if (!env.DB_HOST) return { url: null, ssl: false };
	const user = encodeURIComponent(env.DB_USER ?? "postgres");
	const password = env.DB_PASSWORD ? `:${encodeURIComponent(env.DB_PASSWORD)}` : "";
	const port = readInt(env, "DB_PORT", 5432, 1);
	const name = env.DB_NAME ?? "daarion";
	return { url: `postgres://${user}${password}@${env.DB_HOST}:${port}/${name}`, ssl };
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
		rateLimit: {
			perKey: readInt(env, "RATE_LIMIT_PER_KEY", 10),
			burst: readInt(env, "RATE_LIMIT_BURST", 20),
			global: readInt(env, "RATE_LIMIT_GLOBAL", 0),
		},
		corsOrigins: readList(env.CORS_ORIGINS) ?? [],
		bodyLimit: env.BODY_LIMIT ?? "1mb",
		database: resolveDatabaseSettings(env),
		embeddedPgPort: readInt(env, "EMBEDDED_PG_PORT", 54329, 1),
		embeddedPgDir: env.EMBEDDED_PG_DIR ?? "data/pg",
		metricsEnabled: readBool(env, "METRICS", true),
		migrateOnStart: readBool(env, "MIGRATE_ON_START", !production),
		leaseTtlMs: readInt(env, "LEASE_TTL_MS", 5_000, 1_000),
		disableBalancer: readBool(env, "DISABLE_BALANCER", false),
		memory: readMemorySettings(env, production),
		presence: {
			awayAfterMs: readInt(env, "PRESENCE_AWAY_AFTER_MS", 5 * 60_000, 100),
			graceMs: readInt(env, "PRESENCE_GRACE_MS", 3_000, 0),
			heartbeatMs: readInt(env, "PRESENCE_HEARTBEAT_MS", 10_000, 100),
		},
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
		cityMaxMessageChars: readInt(env, "CITY_MAX_MESSAGE_CHARS", 4_000, 1),
		events: {
			stream: env.NATS_STREAM_EVENTS ?? "DAARION_EVENTS",
			subjectPrefix: env.EVENTS_SUBJECT_PREFIX ?? "",
			outboxMaxAttempts: readInt(env, "OUTBOX_MAX_ATTEMPTS", 5, 1),
			outboxBackoffMs: readInt(env, "OUTBOX_BACKOFF_MS", 500, 1),
		},
	};
	validateForProduction(settings);
	return settings;
}

const DEV_MEMORY_KEY_LABEL = "daarion-mesh development memory key - not for production";

function readMemorySettings(env: Env, production: boolean): MemorySettings {
	const maxContentBytes = readInt(env, "MEMORY_MAX_CONTENT_BYTES", 64 * 1024, 1);
	const raw = env.MEMORY_ENCRYPTION_KEY;
	if (!raw) {
		if (production) throw new SettingsError("MEMORY_ENCRYPTION_KEY", "required when NODE_ENV=production (base64 of 32 random bytes)");
		const key = createHash("sha256").update(DEV_MEMORY_KEY_LABEL).digest();
		return { encryptionKey: key, encryptionKeyId: "dev", developmentKey: true, maxContentBytes };
	}
	const key = Buffer.from(raw, "base64");
	if (key.length !== 32) throw new SettingsError("MEMORY_ENCRYPTION_KEY", `must be base64 of exactly 32 bytes (got ${key.length})`);
	return { encryptionKey: key, encryptionKeyId: env.MEMORY_ENCRYPTION_KEY_ID ?? "k1", developmentKey: false, maxContentBytes };
}

/** Production never runs on guessed defaults: a missing secret or transport is a start-up error. */
function validateForProduction(s: MeshSettings): void {
	if (!s.production) return;
	if (!s.jwtSecret) throw new SettingsError("JWT_SECRET", "required when NODE_ENV=production");
	if (s.jwtSecret.length < 32) throw new SettingsError("JWT_SECRET", "must be at least 32 characters in production");
	if (!s.nats.url && !s.transporter) throw new SettingsError("NATS_URL", "required when NODE_ENV=production");
	if (!s.database.url) throw new SettingsError("DATABASE_URL or DB_HOST", "required when NODE_ENV=production");
}

/** The development fallback secret: fine on a laptop, refused in production by validateForProduction. */
export const DEV_JWT_SECRET = "daarion-mesh-development-secret-not-for-production";

export function jwtSecretOf(s: MeshSettings): string {
	return s.jwtSecret ?? DEV_JWT_SECRET;
}
