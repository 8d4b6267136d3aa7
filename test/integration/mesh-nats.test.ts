/**
 * Two real node processes on real NATS and real PostgreSQL: the gateway on one node, the actors on
 * the other, so every call below crosses the mesh.
 */
import { spawnSync } from "child_process";
import { signToken } from "../../lib/http/auth";
import { getJson, startNodeProcess, stopAll, TEST_SERVICES_ENV, uniqueNamespace, waitFor, waitForMesh, type NodeProcess } from "../helpers/cluster";
import { dropFreshDatabases, freshDatabase } from "../helpers/databases";
import { describeWithNatsAndPostgres, LOCAL_NATS_URL } from "../helpers/requirements";

const JWT_SECRET = "integration-secret-0123456789abcdef";
const adminToken = signToken(JWT_SECRET, { id: "op1", roles: ["admin"], teams: [] });
const userToken = signToken(JWT_SECRET, { id: "u1", roles: ["member"], teams: [] });
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const json = { "content-type": "application/json" };

/** One database for this file, made on first use (the shared one may carry other branches' migrations). */
let database: Promise<string> | undefined;
afterAll(() => dropFreshDatabases());

async function meshEnv(namespace: string, extra: Record<string, string>): Promise<Record<string, string>> {
	database ??= freshDatabase("meshtest");
	return { MESH_NAMESPACE: namespace, NATS_URL: LOCAL_NATS_URL, DATABASE_URL: await database, JWT_SECRET, ...extra };
}

/**
 * A gateway-only node and a node running the actors, in one namespace, ready to route mesh calls, each
 * knowing the other. Discovery is not symmetric in time: the gateway learns of the actors from their
 * INFO while its own INFO goes out only after its services started (Moleculer debounces it by 1 s and a
 * node answers no DISCOVER in its first 500 ms; a first INFO may list no services yet), and its HTTP port
 * answers before that. So both views are awaited: the gateway's (it routes to the actors) and the
 * actors' (mesh.nodes, served there, lists the gateway as available with its api service).
 */
async function startGatewayAndActors(namespace: string, gateway: Record<string, string>, actors: Record<string, string>): Promise<[NodeProcess, NodeProcess]> {
	const nodes = await Promise.all([
		startNodeProcess(await meshEnv(namespace, { ...gateway, SERVICES: "api" })),
		startNodeProcess(await meshEnv(namespace, { ...actors, ...TEST_SERVICES_ENV, SERVICES: "api,mesh,drill" })),
	]);
	const [gatewayNode, actorsNode] = nodes;
	await Promise.all([
		waitForMesh(gatewayNode, ["mesh"], 2),
		waitFor(`${actorsNode.nodeID} to list ${gatewayNode.nodeID} with its services`, async () => {
			const { status, body } = await getJson(`${actorsNode.url}/api/mesh/nodes`);
			return status === 200 && (body as Array<{ nodeID: string; available: boolean; services: string[] }>).some(n => n.nodeID === gatewayNode.nodeID && n.available && n.services.includes("api"));
		}, 40_000),
	]);
	return nodes;
}

describeWithNatsAndPostgres("mesh over NATS: gateway on one node, actors on the other", () => {
	const namespace = uniqueNamespace("mesh");
	let gateway: NodeProcess;
	let actors: NodeProcess;

	beforeAll(async () => {
		[gateway, actors] = await startGatewayAndActors(
			namespace,
			{ NODE_ID: "gw-node1", NODE_ROLE: "node1", RATE_LIMIT_PER_KEY: "0", BODY_LIMIT: "64kb", LOG_LEVEL: "debug" },
			{ NODE_ID: "actors-node2", NODE_ROLE: "node2", LOG_LEVEL: "debug" },
		);
	});
	afterAll(() => stopAll([gateway, actors]));

	it("serves a call entering NODE1's gateway on NODE2, the only node running the actor", async () => {
		const { status, body } = await getJson(`${gateway.url}/api/mesh/whoami`);
		expect(status).toBe(200);
		expect(body).toMatchObject({ nodeID: "actors-node2", role: "node2", version: expect.any(String) });
		expect(body.uptime).toBeGreaterThanOrEqual(0);
	});

	it("lists every node with its role, availability, services and heartbeat", async () => {
		const { body } = await getJson(`${gateway.url}/api/mesh/nodes`);
		const byID = Object.fromEntries(body.map((n: { nodeID: string }) => [n.nodeID, n]));
		expect(byID["gw-node1"]).toMatchObject({ role: "node1", available: true, services: ["api"] });
		expect(byID["actors-node2"]).toMatchObject({ role: "node2", available: true, services: ["api", "drill", "mesh"] });
		expect(Date.parse(byID["gw-node1"].lastHeartbeat)).toBeGreaterThan(Date.now() - 60_000);
	});

	it("carries the client's X-Request-ID to the remote node and into its log lines", async () => {
		const requestID = `it-${Date.now()}`;
		const res = await getJson(`${gateway.url}/api/mesh/echo`, {
			method: "POST",
			headers: { ...json, ...bearer(userToken), "x-request-id": requestID },
			body: JSON.stringify({ message: "hello mesh" }),
		});
		expect(res.status).toBe(200);
		expect(res.headers.get("x-request-id")).toBe(requestID);
		expect(res.body).toMatchObject({ message: "hello mesh", nodeID: "actors-node2", requestID, user: "u1" });
		const remoteLine = await waitFor("the remote log line", async () =>
			actors.jsonLogs().find(l => l.request_id === requestID && l.nodeID === "actors-node2"),
		);
		expect(remoteLine).toMatchObject({ level: "debug", service: "mesh", message: "echo served for u1" });
		expect(Object.keys(remoteLine)).toEqual(expect.arrayContaining(["timestamp", "level", "service", "nodeID", "message", "request_id"]));
		// The gateway's own request and response lines carry it too.
		const gatewayLines = await waitFor("the gateway's request and response lines", async () => {
			const lines = gateway.jsonLogs().filter(l => l.request_id === requestID && l.nodeID === "gw-node1");
			return lines.some(l => String(l.message).startsWith("<= 200 POST /api/mesh/echo")) ? lines : undefined;
		});
		expect(gatewayLines.map(l => String(l.message).slice(0, 2))).toEqual(expect.arrayContaining(["=>", "<="]));
	});

	it("generates a request id when none (or a malformed one) is sent, and echoes it on errors too", async () => {
		const generated = await getJson(`${gateway.url}/api/mesh/whoami`);
		expect(generated.headers.get("x-request-id")).toMatch(/^[0-9a-f-]{36}$/);
		const replaced = await getJson(`${gateway.url}/api/nowhere`, { headers: { "x-request-id": "has spaces in it" } });
		expect(replaced.status).toBe(404);
		expect(replaced.headers.get("x-request-id")).toMatch(/^[0-9a-f-]{36}$/);
	});

	describe("auth", () => {
		const echo = (headers: Record<string, string>) =>
			getJson(`${gateway.url}/api/mesh/echo`, { method: "POST", headers: { ...json, ...headers }, body: JSON.stringify({ message: "x" }) });

		it("answers 401 JSON without a token, with a bad, foreign or expired token, or a non-bearer header", async () => {
			const foreign = signToken("another-secret-0123456789abcdef0123", { id: "u1", roles: ["admin"], teams: [] });
			const expired = signToken(JWT_SECRET, { id: "u1", roles: [], teams: [] }, -60);
			const cases: Array<[Record<string, string>, string]> = [
				[{}, "NO_TOKEN"],
				[bearer("not-a-jwt"), "INVALID_TOKEN"],
				[bearer(foreign), "INVALID_TOKEN"],
				[bearer(expired), "TOKEN_EXPIRED"],
				[{ authorization: "Basic dTpw" }, "INVALID_TOKEN"],
			];
			for (const [headers, type] of cases) {
				const res = await echo(headers);
				expect({ status: res.status, type: res.body.type }).toEqual({ status: 401, type });
			}
		});

		it("answers 403 when the token lacks the internal role, 200 for admin", async () => {
			const denied = await getJson(`${gateway.url}/api/mesh/config`, { headers: bearer(userToken) });
			expect(denied.status).toBe(403);
			expect(denied.body).toMatchObject({ code: 403, type: "FORBIDDEN", message: expect.stringContaining("admin") });
			const allowed = await getJson(`${gateway.url}/api/mesh/config`, { headers: bearer(adminToken) });
			expect(allowed.status).toBe(200);
			expect(allowed.body).toMatchObject({ nodeID: "actors-node2", transport: { kind: "nats", status: "up" } });
			expect(JSON.stringify(allowed.body)).not.toContain(JWT_SECRET);
		});
	});

	describe("bad input gets a JSON error naming the problem", () => {
		const post = (body: string, headers: Record<string, string> = json) =>
			getJson(`${gateway.url}/api/mesh/echo`, { method: "POST", headers: { ...bearer(userToken), ...headers }, body });

		it("422 names the missing or wrong field", async () => {
			for (const [payload, field] of [
				[{}, "message"],
				[{ message: 5 }, "message"],
				[{ message: "" }, "message"],
				[{ message: "x".repeat(10_001) }, "message"],
			] as const) {
				const res = await post(JSON.stringify(payload));
				expect(res.status).toBe(422);
				expect(res.body.name).toBe("ValidationError");
				expect(res.body.data.map((d: { field: string }) => d.field)).toContain(field);
			}
		});

		it("400 for broken JSON, 415 for a non-JSON body, 413 above the body limit, 404 for an unknown route", async () => {
			const broken = await post("{not json");
			expect(broken).toMatchObject({ status: 400, body: { type: "INVALID_JSON" } });
			const notJson = await post("message=hi", { "content-type": "text/plain" });
			expect(notJson).toMatchObject({ status: 415, body: { type: "UNSUPPORTED_MEDIA_TYPE" } });
			const huge = await post(JSON.stringify({ message: "x".repeat(100 * 1024) }));
			expect(huge).toMatchObject({ status: 413, body: { type: "PAYLOAD_TOO_LARGE", data: { limit: 65536 } } });
			const unknown = await getJson(`${gateway.url}/api/mesh/does-not-exist`);
			expect(unknown).toMatchObject({ status: 404, body: { code: 404, type: "NOT_FOUND" } });
		});

		it("keeps serving after bad input", async () => {
			expect((await getJson(`${gateway.url}/api/mesh/whoami`)).status).toBe(200);
		});
	});

	it("GET /health follows the seed's format and reports the mesh", async () => {
		const { status, body } = await getJson(`${gateway.url}/health`);
		expect(status).toBe(200);
		expect(body).toMatchObject({
			status: "healthy",
			service: "daarion-mesh",
			version: expect.any(String),
			uptime: expect.any(Number),
			node: { id: "gw-node1", role: "node1", transport: "nats" },
			dependencies: { database: { status: "up" }, nats: { status: "up" } },
		});
		expect(body.mesh.nodes_available).toBe(2);
		expect(body.mesh.services_available).toEqual(expect.arrayContaining(["api", "mesh"]));
	});

	it("GET /metrics exposes Moleculer and HTTP metrics and passes promtool", async () => {
		await getJson(`${gateway.url}/api/mesh/whoami`);
		await getJson(`${gateway.url}/health`);
		const res = await fetch(`${gateway.url}/metrics`);
		const text = await res.text();
		expect(res.headers.get("content-type")).toContain("text/plain");
		expect(text).toMatch(/^http_requests_total\{node_id="gw-node1",method="GET",route="\/api\/mesh\/whoami",status="200"\} [1-9]/m);
		expect(text).toMatch(/^http_request_duration_seconds_bucket\{.*route="\/api\/mesh\/whoami".*le="0.005"\} \d+/m);
		expect(text).toMatch(/^http_request_duration_seconds_count\{.*\} [1-9]/m);
		expect(text).toMatch(/^active_connections\{node_id="gw-node1",kind="http"\} \d+/m);
		expect(text).toMatch(/^service_health\{node_id="gw-node1",dependency="node"\} 1/m);
		expect(text).toMatch(/^moleculer_request_total\{/m);

		// Counters count exactly: five more whoami calls, five more in both the counter and the histogram.
		const whoamiCount = (metrics: string) => Number(/^http_requests_total\{node_id="gw-node1",method="GET",route="\/api\/mesh\/whoami",status="200"\} (\d+)/m.exec(metrics)?.[1]);
		const histogramCount = (metrics: string) => Number(/^http_request_duration_seconds_count\{node_id="gw-node1",method="GET",route="\/api\/mesh\/whoami"\} (\d+)/m.exec(metrics)?.[1]);
		for (let i = 0; i < 5; i++) await getJson(`${gateway.url}/api/mesh/whoami`);
		const after = await (await fetch(`${gateway.url}/metrics`)).text();
		expect(whoamiCount(after) - whoamiCount(text)).toBe(5);
		expect(histogramCount(after) - histogramCount(text)).toBe(5);
		const promtool = spawnSync("promtool", ["check", "metrics"], { input: text, encoding: "utf8" });
		if (promtool.error && !process.env.CI) {
			process.stdout.write("promtool not installed (Debian package prometheus): exposition lint not run here\n");
			return;
		}
		expect({ status: promtool.status, problems: `${promtool.stdout}${promtool.stderr}`.trim() }).toEqual({ status: 0, problems: "" });
	});

	it("stops gracefully on SIGTERM: the in-flight request finishes, the node leaves, exit code 0", async () => {
		const inFlight = getJson(`${gateway.url}/api/drill/echo`, {
			method: "POST",
			headers: { ...json, ...bearer(userToken) },
			body: JSON.stringify({ message: "slow", delayMs: 1500 }),
		});
		await new Promise(r => setTimeout(r, 300));
		const signalledAt = Date.now();
		const exitCode = actors.kill("SIGTERM");
		const answer = await inFlight;
		expect(answer).toMatchObject({ status: 200, body: { message: "slow", nodeID: "actors-node2" } });
		expect(await exitCode).toBe(0);
		await waitFor("NODE1 to see NODE2 leave", async () => (await getJson(`${gateway.url}/health`)).body.mesh.nodes_available === 1, 3_000);
		expect(Date.now() - signalledAt).toBeLessThan(5_000);
		const gone = await waitFor("the gateway to drop the mesh routes", async () => {
			const res = await getJson(`${gateway.url}/api/mesh/whoami`);
			return res.status !== 200 && res;
		});
		expect(gone.status).toBe(503);
		expect(gone.headers.get("retry-after")).toBe("5");
		expect(gone.body).toMatchObject({ code: 503, type: "SERVICE_UNAVAILABLE", data: { service: "mesh" } });
		expect((await getJson(`${gateway.url}/api/never-existed/x`)).status).toBe(404);
	});
});

describeWithNatsAndPostgres("mesh over NATS: the reverse direction", () => {
	const namespace = uniqueNamespace("reverse");
	let gateway: NodeProcess;
	let actors: NodeProcess;

	beforeAll(async () => {
		[gateway, actors] = await startGatewayAndActors(namespace, { NODE_ID: "gw-node2", NODE_ROLE: "node2" }, { NODE_ID: "actors-node1", NODE_ROLE: "node1" });
	});
	afterAll(() => stopAll([gateway, actors]));

	it("serves a call entering NODE2's gateway on NODE1", async () => {
		const { status, body } = await getJson(`${gateway.url}/api/mesh/whoami`);
		expect(status).toBe(200);
		expect(body).toMatchObject({ nodeID: "actors-node1", role: "node1" });
	});
});

describeWithNatsAndPostgres("rate limiting at the gateway", () => {
	let node: NodeProcess;
	beforeAll(async () => {
		node = await startNodeProcess(await meshEnv(uniqueNamespace("rate"), { SERVICES: "api,mesh", RATE_LIMIT_PER_KEY: "2", RATE_LIMIT_BURST: "5" }));
		await waitForMesh(node, ["mesh"]);
	});
	afterAll(() => stopAll([node]));

	it("lets the burst through, then answers 429 with Retry-After and a JSON body; /health has a budget of its own", async () => {
		// waitForMesh spent tokens on its readiness probe: let the bucket refill (2/s up to 5).
		await new Promise(r => setTimeout(r, 2_600));
		const answers = [];
		for (let i = 0; i < 8; i++) answers.push(await getJson(`${node.url}/api/mesh/whoami`));
		expect(answers.slice(0, 5).map(a => a.status)).toEqual([200, 200, 200, 200, 200]);
		const refused = answers.slice(5);
		for (const r of refused) {
			expect(r.status).toBe(429);
			expect(Number(r.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
			expect(r.body).toMatchObject({ code: 429, type: "RATE_LIMITED" });
		}
		expect((await getJson(`${node.url}/health`)).status).toBe(200);
		await new Promise(r => setTimeout(r, 1_100));
		expect((await getJson(`${node.url}/api/mesh/whoami`)).status).toBe(200);
	});
});
