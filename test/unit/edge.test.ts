import { TokenBucketLimiter } from "../../lib/http/rate-limiter";
import { acceptRequestID, parseByteSize } from "../../lib/http/edge-middlewares";
import { bearerToken, checkAccess, signToken, verifyToken } from "../../lib/http/auth";
import { UnauthorizedError } from "../../lib/mesh/errors";
import type { Logger } from "moleculer";
import { formatLogLine, logsAt, redactText, requestLogger } from "../../lib/runtime/logger";

describe("token bucket (10 r/s, burst 20)", () => {
	it("allows the burst, refuses the next with Retry-After, refills over time", () => {
		let now = 1_000_000;
		const limiter = new TokenBucketLimiter(10, 20, () => now);
		for (let i = 0; i < 20; i++) expect(limiter.take("a").allowed).toBe(true);
		const refused = limiter.take("a");
		expect(refused).toEqual({ allowed: false, retryAfterSeconds: 1 });
		expect(limiter.take("b").allowed).toBe(true);
		now += 100;
		expect(limiter.take("a").allowed).toBe(true);
		expect(limiter.take("a").allowed).toBe(false);
	});

	it("is off at rate 0", () => {
		const limiter = new TokenBucketLimiter(0, 0);
		for (let i = 0; i < 1000; i++) expect(limiter.take("a").allowed).toBe(true);
	});
});

describe("request ids and sizes", () => {
	it("keeps a sane client id and replaces anything else", () => {
		expect(acceptRequestID("req-123_abc.9")).toBe("req-123_abc.9");
		expect(acceptRequestID("bad id with spaces")).toMatch(/^[0-9a-f-]{36}$/);
		expect(acceptRequestID("x".repeat(200))).toMatch(/^[0-9a-f-]{36}$/);
		expect(acceptRequestID(undefined)).toMatch(/^[0-9a-f-]{36}$/);
	});
	it("parses body limits", () => {
		expect(parseByteSize("1mb")).toBe(1048576);
		expect(parseByteSize("512kb")).toBe(524288);
		expect(() => parseByteSize("lots")).toThrow(/Invalid size/);
	});
});

describe("auth", () => {
	const secret = "s".repeat(32);
	it("round-trips a user", () => {
		const token = signToken(secret, { id: "u1", roles: ["admin"], teams: ["t1"] });
		expect(verifyToken(secret, token)).toEqual({ id: "u1", roles: ["admin"], teams: ["t1"] });
	});
	it("rejects a token signed with another secret, and an expired one", () => {
		const other = signToken("o".repeat(32), { id: "u1", roles: [], teams: [] });
		expect(() => verifyToken(secret, other)).toThrow(UnauthorizedError);
		const expired = signToken(secret, { id: "u1", roles: [], teams: [] }, -10);
		expect(() => verifyToken(secret, expired)).toThrow(/expired/);
	});
	it("remembers a verified token only under its own secret and only until it expires", async () => {
		const token = signToken(secret, { id: "u2", roles: [], teams: [] }, 1);
		expect(verifyToken(secret, token).id).toBe("u2");
		expect(verifyToken(secret, token).id).toBe("u2"); // from the cache
		expect(() => verifyToken("x".repeat(32), token)).toThrow(UnauthorizedError);
		await new Promise(resolve => setTimeout(resolve, 2_100));
		expect(() => verifyToken(secret, token)).toThrow(/expired/);
	});
	it("parses only 'Bearer <token>'", () => {
		expect(bearerToken("Bearer abc")).toBe("abc");
		expect(bearerToken(undefined)).toBeUndefined();
		expect(() => bearerToken("Basic abc")).toThrow(UnauthorizedError);
	});
	it("applies access rules: public, user, roles", () => {
		const user = { id: "u", roles: ["member"], teams: [] };
		expect(() => checkAccess("public", undefined)).not.toThrow();
		expect(() => checkAccess(undefined, undefined)).toThrow(expect.objectContaining({ code: 401 }));
		expect(() => checkAccess("user", user)).not.toThrow();
		expect(() => checkAccess(["admin", "service"], user)).toThrow(expect.objectContaining({ code: 403 }));
		expect(() => checkAccess(["admin", "service"], { ...user, roles: ["service"] })).not.toThrow();
	});
});

describe("JSON log lines", () => {
	it("carry timestamp, level, service, nodeID, message and the request id of a request logger", () => {
		const lines: string[] = [];
		const sink = Object.fromEntries(
			["fatal", "error", "warn", "info", "debug", "trace"].map(level => [level, (...args: unknown[]) => lines.push(formatLogLine(level, args, { nodeID: "n1", svc: "mesh" }))]),
		) as unknown as Logger;
		requestLogger(sink, { requestID: "rid-1" }).info("hello", { extra: 1 });
		const parsed = JSON.parse(lines[0]);
		expect(parsed).toMatchObject({ level: "info", service: "mesh", nodeID: "n1", message: "hello", request_id: "rid-1", extra: 1 });
		expect(new Date(parsed.timestamp).toString()).not.toBe("Invalid Date");
	});
	it("turn the requestID field of Moleculer's own request lines into request_id, and use null outside requests", () => {
		const timedOut = JSON.parse(formatLogLine("warn", ["Request 'mesh.echo' is timed out.", { requestID: "rid-2", timeout: 750 }], { nodeID: "n1" }));
		expect(timedOut).toMatchObject({ request_id: "rid-2", timeout: 750 });
		expect(timedOut).not.toHaveProperty("requestID");
		expect(JSON.parse(formatLogLine("info", ["started"], { nodeID: "n1" })).request_id).toBeNull();
	});
	it("are written at the configured level and the levels above it only", () => {
		expect(logsAt("info", "info")).toBe(true);
		expect(logsAt("warn", "info")).toBe(true);
		expect(logsAt("debug", "info")).toBe(false);
		expect(logsAt("trace", "debug")).toBe(false);
	});
	it("never print secrets", () => {
		const jwt = signToken("k".repeat(32), { id: "u", roles: [], teams: [] });
		const line = formatLogLine(
			"info",
			[`auth header Bearer ${jwt} url nats://user:hunter2@h:4222`, { password: "hunter2", nested: { apiKey: "abc", jwt } }],
			{ nodeID: "n1" },
		);
		expect(line).not.toContain("hunter2");
		expect(line).not.toContain(jwt);
		expect(line).not.toContain('"abc"');
		expect(redactText("postgres://app:secret@db/x")).toBe("postgres://app:[redacted]@db/x");
	});
});
