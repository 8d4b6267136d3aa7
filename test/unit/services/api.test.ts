/**
 * api (the moleculer-web gateway), in process with mesh behind it: request ids, JSON errors for every
 * kind of bad request, token checks, /health and /metrics, the rate limit, and 503 (not 404) for a
 * service that was in the mesh but has no node now; the answers the gateway writes itself (development
 * login, /metrics, malformed HTTP) in the error family's shape.
 */
import { randomBytes } from "crypto";
import { connect, type AddressInfo } from "net";
import type { ServiceSchema } from "moleculer";
import jwt from "jsonwebtoken";
import { jwtSecretOf } from "../../../lib/runtime/settings";
import { describeWithPostgres } from "../../helpers/requirements";
import { startInProcessNode, stopInProcessNodes, user, type InProcessNode } from "../../helpers/service-broker";

/** A service that leaves the node during the test (as when its last node stops). */
const EPHEMERAL: ServiceSchema = {
	name: "ephemeral",
	actions: { ping: { rest: "GET /ping", access: "public", handler: () => "pong" } as never },
};

describeWithPostgres("api gateway (in-process broker)", () => {
	let node: InProcessNode;
	let limited: InProcessNode;
	beforeAll(async () => {
		node = await startInProcessNode({ services: ["api", "mesh"], database: true, env: { BODY_LIMIT: "1kb" }, extraServices: [EPHEMERAL] });
		limited = await startInProcessNode({ services: ["api", "mesh"], env: { RATE_LIMIT_PER_KEY: "1", RATE_LIMIT_BURST: "2" } });
	});
	afterAll(() => stopInProcessNodes(node, limited));

	const echo = (options: { body?: unknown; rawBody?: string; headers?: Record<string, string> }) => node.http("POST", "/api/mesh/echo", { user: user("u1"), ...options });

	describe("request ids", () => {
		it("keeps a sane X-Request-ID, carries it to the action as ctx.requestID, and echoes it", async () => {
			const answer = await echo({ body: { message: "hi" }, headers: { "X-Request-ID": "abc-123" } });
			expect(answer.headers.get("x-request-id")).toBe("abc-123");
			expect(answer.body.requestID).toBe("abc-123");
		});

		it("replaces an unusable one with a fresh id", async () => {
			const answer = await echo({ body: { message: "hi" }, headers: { "X-Request-ID": "x".repeat(500) } });
			const id = answer.headers.get("x-request-id");
			expect(id).toMatch(/^[0-9a-f-]{36}$/);
			expect(answer.body.requestID).toBe(id);
		});
	});

	describe("every bad request is a JSON client error, never a 500", () => {
		it("400 for broken JSON, 415 for another media type, 413 above BODY_LIMIT, 422 naming the field", async () => {
			expect(await echo({ rawBody: '{"message": ', headers: { "Content-Type": "application/json" } })).toMatchObject({ status: 400, body: { name: "BadRequestError", type: "INVALID_JSON" } });
			expect(await echo({ rawBody: "message=hi", headers: { "Content-Type": "application/x-www-form-urlencoded" } })).toMatchObject({ status: 415, body: { name: "UnsupportedMediaTypeError", type: "UNSUPPORTED_MEDIA_TYPE" } });
			expect(await echo({ body: { message: "x".repeat(2_000) } })).toMatchObject({ status: 413, body: { type: "PAYLOAD_TOO_LARGE" } });
			const invalid = await echo({ body: { message: "" } });
			expect(invalid.status).toBe(422);
			expect(invalid.body).toMatchObject({ name: "ValidationError", data: [expect.objectContaining({ field: "message" })] });
		});

		it("404 as JSON for an unknown route, and a bad Idempotency-Key is a 400 naming the header", async () => {
			expect(await node.http("GET", "/api/mesh/nothing-here", { user: user("u1") })).toMatchObject({ status: 404, body: { type: "NOT_FOUND" } });
			expect(await echo({ body: { message: "hi" }, headers: { "Idempotency-Key": "k".repeat(200) } })).toMatchObject({ status: 400, body: { data: { field: "Idempotency-Key" } } });
		});
	});

	describe("tokens", () => {
		it("refuses a malformed header, a forged signature and an expired token with 401", async () => {
			const call = (authorization: string) => node.http("POST", "/api/mesh/echo", { body: { message: "hi" }, headers: { Authorization: authorization } });
			expect(await call("Basic dTpw")).toMatchObject({ status: 401, body: { type: "INVALID_TOKEN" } });
			const forged = jwt.sign({ roles: ["admin"] }, "not-the-secret", { subject: "mallory", expiresIn: 60 });
			expect(await call(`Bearer ${forged}`)).toMatchObject({ status: 401, body: { type: "INVALID_TOKEN" } });
			const expired = jwt.sign({ roles: [], exp: Math.floor(Date.now() / 1000) - 10 }, jwtSecretOf(node.settings), { subject: "u1" });
			expect(await call(`Bearer ${expired}`)).toMatchObject({ status: 401, body: { type: "TOKEN_EXPIRED" } });
		});

		it("serves no development login on a node with a real JWT secret", async () => {
			expect((await node.http("GET", "/auth/dev-token?user=alice")).status).toBe(404);
		});
	});

	describe("operations", () => {
		it("/health reports each dependency; a node without a transporter is unhealthy (503), its database up", async () => {
			const health = await node.http("GET", "/health");
			expect(health.status).toBe(503);
			expect(health.body).toMatchObject({ status: "unhealthy", dependencies: { database: { status: "up" } } });
		});

		it("/metrics renders the HTTP metrics as Prometheus text", async () => {
			await echo({ body: { message: "count me" } });
			const metrics = await node.http("GET", "/metrics");
			expect(metrics.status).toBe(200);
			expect(metrics.headers.get("content-type")).toContain("text/plain");
			expect(metrics.body).toMatch(/^http_requests_total\{.*route="\/api\/mesh\/echo".*\} \d+/m);
		});
	});

	it("limits requests per client: beyond the burst a 429 with Retry-After", async () => {
		const answers = [];
		for (let i = 0; i < 4; i++) answers.push(await limited.http("GET", "/api/mesh/whoami"));
		const refused = answers.find(a => a.status === 429);
		expect(refused?.body).toMatchObject({ code: 429 });
		expect(refused?.headers.get("retry-after")).toBeTruthy();
	});

	it("answers 503 with Retry-After, not 404, for a service that was in the mesh and has no node now", async () => {
		expect(await node.http("GET", "/api/ephemeral/ping")).toMatchObject({ status: 200, body: "pong" });
		const rebuilt = new Promise(resolve => node.broker.localBus.once("$api.aliases.regenerated", resolve));
		await node.broker.destroyService(node.broker.getLocalService("ephemeral"));
		// The gateway rebuilds its routes shortly after the mesh changes (moleculer-web's debounce).
		await rebuilt;
		const gone = await node.http("GET", "/api/ephemeral/ping");
		expect(gone).toMatchObject({ status: 503, body: { type: "SERVICE_UNAVAILABLE", data: { service: "ephemeral" } } });
		expect(gone.headers.get("retry-after")).toBe("5");
	});
});

/** Sends bytes as they are (no HTTP client would send a malformed request) and reads the answer until the server closes. */
function rawHttp(node: InProcessNode, request: string): Promise<{ head: string; body: unknown }> {
	const api = node.broker.getLocalService("api") as unknown as { server: { address(): AddressInfo } };
	return new Promise((resolve, reject) => {
		const socket = connect(api.server.address().port, "127.0.0.1", () => socket.write(request));
		let text = "";
		socket.setEncoding("utf8");
		socket.on("data", (chunk: string) => (text += chunk));
		socket.on("error", reject);
		socket.on("close", () => {
			const [head, body] = text.split("\r\n\r\n");
			resolve({ head, body: JSON.parse(body) });
		});
	});
}

describe("api gateway: answers it writes itself are the error family's (in-process broker)", () => {
	const METRICS_TOKEN = randomBytes(24).toString("hex");
	let node: InProcessNode;
	beforeAll(async () => {
		node = await startInProcessNode({ services: ["api"], env: { DEV_LOGIN: "true", METRICS_TOKEN } });
	});
	afterAll(() => stopInProcessNodes(node));

	it("the development login refuses a bad user name with a 422 naming the field", async () => {
		expect(await node.http("GET", "/auth/dev-token?user=no%20spaces")).toMatchObject({
			status: 422,
			body: { name: "ValidationError", code: 422, type: "VALIDATION_ERROR", data: [{ field: "user" }], retryable: false },
		});
		expect(await node.http("GET", "/auth/dev-token?user=alice")).toMatchObject({ status: 200, body: { user: "alice" } });
	});

	it("/metrics without its token is a 401 with WWW-Authenticate; with it, the metrics", async () => {
		const refused = await node.http("GET", "/metrics");
		expect(refused).toMatchObject({ status: 401, body: { name: "UnauthorizedError", code: 401, type: "NO_TOKEN", retryable: false } });
		expect(refused.headers.get("www-authenticate")).toBe('Bearer realm="metrics"');
		expect((await node.http("GET", "/metrics", { headers: { Authorization: `Bearer ${METRICS_TOKEN}` } })).status).toBe(200);
	});

	it("malformed HTTP is a JSON 400 and over-long headers a JSON 431, before any route", async () => {
		const malformed = await rawHttp(node, "NOT HTTP AT ALL\r\n\r\n");
		expect(malformed.head).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
		expect(malformed.body).toMatchObject({ name: "BadRequestError", code: 400, type: "BAD_REQUEST" });
		const tooLong = await rawHttp(node, `GET /health HTTP/1.1\r\nHost: x\r\nX-Long: ${"a".repeat(20_000)}\r\n\r\n`);
		expect(tooLong.head).toMatch(/^HTTP\/1\.1 431 Request Header Fields Too Large\r\n/);
		expect(tooLong.body).toMatchObject({ name: "HeadersTooLargeError", code: 431, type: "HEADERS_TOO_LARGE" });
	});
});
