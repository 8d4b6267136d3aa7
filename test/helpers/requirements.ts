/**
 * Real dependencies for integration tests. Under REQUIRE_NATS=1 / REQUIRE_POSTGRES=1 (CI) a missing
 * dependency fails the suite; otherwise (a fresh laptop) the suite is skipped with a printed reason.
 * The check is synchronous because jest collects describe() blocks synchronously.
 */
import { spawnSync } from "child_process";

export const LOCAL_NATS_URL = process.env.TEST_NATS_URL ?? "nats://127.0.0.1:4222";
export const LOCAL_DATABASE_URL = process.env.TEST_DATABASE_URL ?? "postgres://root@127.0.0.1:5432/test";

const PROBE = `
const s = require("net").connect({ host: process.argv[1], port: Number(process.argv[2]) });
s.setTimeout(1000, () => process.exit(1));
s.once("connect", () => process.exit(0));
s.once("error", () => process.exit(1));`;

function portAnswers(url: string): boolean {
	const { hostname, port } = new URL(url);
	return spawnSync(process.execPath, ["-e", PROBE, hostname, port], { timeout: 3_000 }).status === 0;
}

interface Dependency {
	name: string;
	requireVar: string;
	url: string;
}

const NATS: Dependency = { name: "NATS", requireVar: "REQUIRE_NATS", url: LOCAL_NATS_URL };
const POSTGRES: Dependency = { name: "PostgreSQL", requireVar: "REQUIRE_POSTGRES", url: LOCAL_DATABASE_URL };

function missing(deps: Dependency[]): string[] {
	return deps.filter(dep => !portAnswers(dep.url)).map(dep => `${dep.name} at ${dep.url}`);
}

/**
 * describe() when the dependencies answer; when they do not, a failing suite if any of them is
 * required by env, else a skipped suite whose reason is printed.
 */
function describeWith(deps: Dependency[]) {
	return (title: string, body: () => void): void => {
		const absent = missing(deps);
		if (absent.length === 0) return describe(title, body);
		const required = deps.filter(d => process.env[d.requireVar] === "1").map(d => d.requireVar);
		if (required.length) {
			describe(title, () => {
				it("has its required dependencies", () => {
					throw new Error(`${absent.join(", ")} not reachable but ${required.join(", ")}=1`);
				});
			});
			return;
		}
		process.stdout.write(`SKIP "${title}": ${absent.join(", ")} not reachable (set ${deps.map(d => d.requireVar).join("/")}=1 to fail instead)\n`);
		// Skipped on purpose: the dependency is absent on this machine and not required here.
		describe.skip(title, body);
	};
}

export const describeWithNats = describeWith([NATS]);
export const describeWithPostgres = describeWith([POSTGRES]);
export const describeWithNatsAndPostgres = describeWith([NATS, POSTGRES]);

/** Chromium for the browser tests (Debian package `chromium`); CHROMIUM_PATH overrides. */
export const CHROMIUM_PATH = [process.env.CHROMIUM_PATH, "/usr/bin/chromium", "/usr/bin/chromium-browser"].find(
	(p): p is string => !!p && spawnSync(p, ["--version"], { timeout: 10_000 }).status === 0,
);

/** describe() needing NATS, PostgreSQL and Chromium; REQUIRE_BROWSER=1 (CI) turns a missing browser into a failure. */
export function describeWithBrowser(title: string, body: () => void): void {
	if (CHROMIUM_PATH) return describeWithNatsAndPostgres(title, body);
	if (process.env.REQUIRE_BROWSER === "1") {
		describe(title, () => {
			it("has Chromium", () => {
				throw new Error("Chromium not found but REQUIRE_BROWSER=1 (apt-get install chromium, or set CHROMIUM_PATH)");
			});
		});
		return;
	}
	process.stdout.write(`SKIP "${title}": Chromium not found (apt-get install chromium; set REQUIRE_BROWSER=1 to fail instead)\n`);
	// Skipped on purpose: no browser on this machine and none required here.
	describe.skip(title, body);
}
