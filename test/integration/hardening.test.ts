/**
 * Issue 13, the HTTP and data half, on real node processes (real NATS, real PostgreSQL in databases of
 * their own): confidential content never reaches the idempotency store, any other table or the logs;
 * keys expire; test hooks are unreachable on a production node while the pool stays free for others;
 * slow queries are cut with a clean error; the development login, /metrics, header limits and the
 * rate limit on operational endpoints; user ids and team ids do not mix in memory ownership.
 */
import { spawnSync } from "child_process";
import { randomBytes } from "crypto";
import os from "os";
import { signToken } from "../../lib/http/auth";
import { runMigrations } from "../../lib/data/migrations";
import { getJson, startNodeProcess, stopAll, TEST_SERVICES_ENV, uniqueNamespace, waitFor, waitForMesh, type NodeProcess } from "../helpers/cluster";
import { readCatalogue } from "../helpers/catalogue";
import { dropFreshDatabases, freshDatabase, isolatedMeshEnv, query } from "../helpers/databases";
import { describeWithNatsAndPostgres, LOCAL_NATS_URL } from "../helpers/requirements";

const JWT_SECRET = randomBytes(36).toString("base64");
const METRICS_TOKEN = randomBytes(24).toString("base64");
const token = (id: string, roles: string[] = [], teams: string[] = []) => signToken(JWT_SECRET, { id, roles, teams });
const SECRET_TEXT = `classified-${randomBytes(8).toString("hex")}`;

afterAll(() => dropFreshDatabases());

function call(node: NodeProcess, method: string, path: string, who: string | null, body?: unknown, headers: Record<string, string> = {}) {
	return getJson(`${node.url}${path}`, {
		method,
		headers: { ...(who ? { authorization: `Bearer ${who}` } : {}), "content-type": "application/json", ...headers },
		body: body === undefined ? undefined : JSON.stringify(body),
	});
}

describeWithNatsAndPostgres("hardening on a development mesh", () => {
	const namespace = uniqueNamespace("harden");
	let databaseUrl: string;
	let gateway: NodeProcess;
	let actors: NodeProcess;

	beforeAll(async () => {
		databaseUrl = await freshDatabase("hardtest");
		const env = {
			...isolatedMeshEnv(namespace, databaseUrl, JWT_SECRET),
			MEMORY_ENCRYPTION_KEY: randomBytes(32).toString("base64"),
			LOG_LEVEL: "debug",
			// Long enough for the replays below under load; the expiry test backdates its keys instead of waiting.
			IDEMPOTENCY_TTL: "20s",
			DB_STATEMENT_TIMEOUT_MS: "400",
			DB_IDLE_IN_TRANSACTION_TIMEOUT_MS: "400",
			METRICS_TOKEN,
			...TEST_SERVICES_ENV,
		};
		[gateway, actors] = await Promise.all([startNodeProcess({ ...env, SERVICES: "api" }), startNodeProcess({ ...env, SERVICES: "memory,audit,drill" })]);
		// A GET route: moleculer-web answers 404 for a GET on a POST-only alias.
		await waitForMesh(gateway, ["memory", "drill"], 2, 40_000, "/api/memory/memories");
	});
	afterAll(() => stopAll([gateway, actors]));

	it("keeps no confidential plaintext in any table or log line, and a replay after delete answers 404", async () => {
		const u1 = token("u1");
		const key = { "Idempotency-Key": `conf-${namespace}` };
		const body = { scope: "personal", owner_id: "u1", kind: "fact", key: "vault", content: SECRET_TEXT, confidential: true };
		const created = await call(gateway, "POST", "/api/memory/memories", u1, body, key);
		expect(created).toMatchObject({ status: 200, body: { content: SECRET_TEXT, confidential: true } });
		const replayed = await call(gateway, "POST", "/api/memory/memories", u1, body, key);
		expect(replayed.status).toBe(200);
		expect(replayed.headers.get("idempotent-replayed")).toBe("true");
		expect(replayed.body).toMatchObject({ id: created.body.id, content: SECRET_TEXT });
		const updateKey = { "Idempotency-Key": `conf-upd-${namespace}` };
		const secretUpdate = `${SECRET_TEXT}-v2`;
		expect((await call(gateway, "PATCH", `/api/memory/memories/${created.body.id}`, u1, { version: 1, content: secretUpdate }, updateKey)).status).toBe(200);

		// Every table, as a backup would hold it, and every log line of both nodes.
		const dump = spawnSync("pg_dump", ["--data-only", databaseUrl], { encoding: "utf8", maxBuffer: 64 * 1024 * 1024 });
		expect(dump.status).toBe(0);
		expect(dump.stdout).toContain(created.body.id);
		expect(dump.stdout).not.toContain(SECRET_TEXT);
		expect([...gateway.logs, ...actors.logs].filter(line => line.includes(SECRET_TEXT))).toEqual([]);
		const [stored] = await query<{ response: unknown }>(databaseUrl, "SELECT response FROM idempotency_keys WHERE key = $1", [key["Idempotency-Key"]]);
		expect(stored.response).toEqual({ id: created.body.id });

		// Someone else replaying the key gets nothing of it (keys are per caller), and after a delete the replay says 404.
		expect((await call(gateway, "POST", "/api/memory/memories", token("u2"), body, key)).status).toBe(403);
		expect((await call(gateway, "DELETE", `/api/memory/memories/${created.body.id}`, u1)).status).toBe(200);
		const afterDelete = await call(gateway, "POST", "/api/memory/memories", u1, body, key);
		expect(afterDelete).toMatchObject({ status: 404, body: { type: "NOT_FOUND" } });
		expect(JSON.stringify(afterDelete.body)).not.toContain(SECRET_TEXT);
		const updateReplay = await call(gateway, "PATCH", `/api/memory/memories/${created.body.id}`, u1, { version: 1, content: secretUpdate }, updateKey);
		expect(updateReplay.status).toBe(404);
	});

	it("expires idempotency keys after IDEMPOTENCY_TTL: an expired key applies afresh, and the sweeper deletes expired keys", async () => {
		// Operator notes are for operators (audit.record's access); a replay answers the stored response, request_id included.
		const record = (key: string) => call(gateway, "POST", "/api/audit/records", token("u1", ["operator"]), { action: "ttl.test", subject: `ttl-${namespace}` }, { "Idempotency-Key": key });
		const age = (key: string, seconds: number) => query(databaseUrl, "UPDATE idempotency_keys SET created_at = now() - $2 * interval '1 second' WHERE key = $1", [key, seconds]);
		const kept = (key: string) => query(databaseUrl, "SELECT 1 FROM idempotency_keys WHERE key = $1", [key]);
		const [live, expired, swept] = ["live", "expired", "swept"].map(k => `ttl-${k}-${namespace}`);
		const first = await record(expired);
		expect(first.status).toBe(200);
		await age(expired, 21);
		const again = await record(expired);
		expect(again.status).toBe(200);
		expect(again.headers.get("idempotent-replayed")).toBeNull();
		expect(first.body.request_id).toEqual(expect.any(String));
		expect(again.body.request_id).not.toBe(first.body.request_id);

		expect((await record(live)).status).toBe(200);
		expect((await record(swept)).status).toBe(200);
		await age(swept, 21);
		await waitFor("the sweeper to delete the expired key", async () => (await kept(swept)).length === 0, 30_000, 250);
		expect(await kept(live)).toHaveLength(1);
		expect((await record(live)).headers.get("idempotent-replayed")).toBe("true");
	});

	it("cuts a slow statement and an idle transaction with a 503 naming the limit, and other users and /health stay fine meanwhile", async () => {
		const attacker = token("attacker");
		const started = Date.now();
		const slow = await call(gateway, "POST", "/api/drill/slow-query", attacker, { seconds: 5 });
		expect(slow).toMatchObject({ status: 503, body: { type: "QUERY_TIMEOUT", data: { limit: "DB_STATEMENT_TIMEOUT_MS" } } });
		expect(Date.now() - started).toBeLessThan(3_000);
		const idle = await call(gateway, "POST", "/api/drill/idle-transaction", attacker, { idleMs: 1_500 });
		expect(idle).toMatchObject({ status: 503, body: { type: "DATABASE_SESSION_ENDED", data: { limit: "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS" } } });

		// Twice the pool (10) in slow queries at once: each is cut, so the pool keeps serving others.
		const flood = Promise.all(Array.from({ length: 20 }, () => call(gateway, "POST", "/api/drill/slow-query", attacker, { seconds: 5 })));
		await new Promise(r => setTimeout(r, 100));
		const victimStarted = Date.now();
		const [health, victim] = await Promise.all([getJson(`${gateway.url}/health`), call(gateway, "GET", "/api/memory/memories", token("victim"))]);
		const victimMs = Date.now() - victimStarted;
		expect(health.status).toBe(200);
		expect(victim.status).toBe(200);
		expect(victimMs).toBeLessThan(2_500);
		expect((await flood).map(r => r.status)).toEqual(Array(20).fill(503));
	});

	it("keeps user ids and team ids apart: user t1 cannot write team t1's public memory", async () => {
		const member = token("u1", [], ["t1"]);
		const impostor = token("t1");
		const teamPublic = await call(gateway, "POST", "/api/memory/memories", member, { scope: "public", owner_id: "t1", owner_type: "team", kind: "fact", key: "motto", content: "ours" });
		expect(teamPublic).toMatchObject({ status: 200, body: { owner_type: "team" } });
		const overwrite = await call(gateway, "PATCH", `/api/memory/memories/${teamPublic.body.id}`, impostor, { version: 1, content: "mine now" });
		expect(overwrite).toMatchObject({ status: 403, body: { type: "FORBIDDEN" } });
		const create = await call(gateway, "POST", "/api/memory/memories", impostor, { scope: "public", owner_id: "t1", owner_type: "team", kind: "fact", key: "motto", content: "mine" });
		expect(create.status).toBe(403);
		expect(create.body.message).toBe("Not allowed to create a public memory owned by team t1");
		const wrongType = await call(gateway, "POST", "/api/memory/memories", member, { scope: "team", owner_id: "t1", owner_type: "user", kind: "fact", key: "k", content: "c" });
		expect(wrongType).toMatchObject({ status: 422, body: { data: [{ field: "owner_type" }] } });
		expect((await call(gateway, "GET", `/api/memory/memories/${teamPublic.body.id}`, member)).body.content).toBe("ours");
	});

	it("serves /metrics only with METRICS_TOKEN, without identifying process or OS series", async () => {
		expect((await getJson(`${gateway.url}/metrics`)).status).toBe(401);
		expect((await getJson(`${gateway.url}/metrics`, { headers: { authorization: `Bearer ${METRICS_TOKEN}x` } })).status).toBe(401);
		const res = await fetch(`${gateway.url}/metrics`, { headers: { authorization: `Bearer ${METRICS_TOKEN}` } });
		expect(res.status).toBe(200);
		const text = await res.text();
		expect(text).toMatch(/^http_requests_total\{/m);
		for (const name of ["os_user_username", "os_user_homedir", "os_network_mac", "os_network_address", "process_arguments", "os_hostname"]) expect(text).not.toContain(name);
		expect(text).not.toContain(os.homedir());
		expect(text).not.toContain("run-node.ts");
	});

	it("answers over-long headers with a JSON 431, serves no development login with a real JWT_SECRET, and says so in the log", async () => {
		const tooLong = await getJson(`${gateway.url}/health`, { headers: { "x-padding": "a".repeat(20_000) } });
		expect(tooLong).toMatchObject({ status: 431, body: { code: 431, type: "HEADERS_TOO_LARGE" } });
		expect((await getJson(`${gateway.url}/auth/dev-token?user=alice`)).status).toBe(404);
		expect(gateway.logs.some(l => l.includes("Development login GET /auth/dev-token: off (JWT_SECRET is set"))).toBe(true);
	});
});

describeWithNatsAndPostgres("a development node on the development secret: its login and /health are rate-limited", () => {
	let node: NodeProcess;
	beforeAll(async () => {
		const databaseUrl = await freshDatabase("hardrate");
		node = await startNodeProcess({ MESH_NAMESPACE: uniqueNamespace("hrate"), NATS_URL: LOCAL_NATS_URL, DATABASE_URL: databaseUrl, SERVICES: "api,mesh", RATE_LIMIT_PER_KEY: "2", RATE_LIMIT_BURST: "4" });
		await waitForMesh(node, ["mesh"]);
	});
	afterAll(() => stopAll([node]));

	it("serves the login (and says so), then answers 429 to a flood of /health and /auth/dev-token", async () => {
		expect(node.logs.some(l => l.includes("Development login GET /auth/dev-token: SERVED (the development JWT secret is in use"))).toBe(true);
		await new Promise(r => setTimeout(r, 2_100));
		const answers = [];
		for (let i = 0; i < 5; i++) answers.push((await getJson(`${node.url}/auth/dev-token?user=u${i}`)).status);
		for (let i = 0; i < 3; i++) answers.push((await getJson(`${node.url}/health`)).status);
		expect(answers.slice(0, 4)).toEqual([200, 200, 200, 200]);
		expect(answers.slice(4)).toContain(429);
		expect(answers[answers.length - 1]).toBe(429);
	});
});

describeWithNatsAndPostgres("a production node: test hooks unreachable, the pool free for everyone", () => {
	const namespace = uniqueNamespace("hprod");
	let node: NodeProcess;
	let databaseUrl: string;
	beforeAll(async () => {
		databaseUrl = await freshDatabase("hardprod");
		await runMigrations(databaseUrl, "up");
		node = await startNodeProcess({
			NODE_ENV: "production",
			MESH_NAMESPACE: namespace,
			NATS_URL: LOCAL_NATS_URL,
			DATABASE_URL: databaseUrl,
			JWT_SECRET,
			MEMORY_ENCRYPTION_KEY: randomBytes(32).toString("base64"),
			RATE_LIMIT_PER_KEY: "0",
			SERVICES: "api,audit,memory,mesh",
		});
		// A GET route (moleculer-web answers 404 for a GET on the POST-only /records).
		await waitForMesh(node, ["audit", "memory", "mesh"], 1, 40_000, "/api/audit/events");
	});
	afterAll(() => stopAll([node]));

	it("announces no test parameter in any action schema", async () => {
		const catalogue = await readCatalogue(namespace, ["audit", "memory", "mesh"]);
		const params = catalogue.flatMap(a => Object.keys(a.params ?? {}).map(p => `${a.name}.${p}`));
		expect(params).toEqual(expect.arrayContaining(["audit.record.action", "mesh.echo.message"]));
		expect(params.filter(p => /holdMs|delayMs|crash/i.test(p))).toEqual([]);
		expect(catalogue.map(a => a.name).filter(n => n.startsWith("drill."))).toEqual([]);
	});

	it("ignores holdMs and delayMs: 20 parallel 'held' writes neither pin the pool nor slow another user or /health", async () => {
		// An operator (audit.record's access) trying the test hook that used to hold a connection.
		const attacker = token("attacker", ["operator"]);
		const started = Date.now();
		const flood = Promise.all(Array.from({ length: 20 }, (_, i) => call(node, "POST", "/api/audit/records", attacker, { action: "hold.test", subject: `hold-${i}`, holdMs: 4_000 })));
		await new Promise(r => setTimeout(r, 50));
		const [health, victim, echo] = await Promise.all([
			getJson(`${node.url}/health`),
			call(node, "GET", "/api/memory/memories", token("victim")),
			call(node, "POST", "/api/mesh/echo", token("victim"), { message: "hi", delayMs: 4_000 }),
		]);
		expect({ health: health.status, victim: victim.status, echo: echo.status }).toEqual({ health: 200, victim: 200, echo: 200 });
		const written = await flood;
		expect(written.map(r => r.status)).toEqual(Array(20).fill(200));
		expect(Date.now() - started).toBeLessThan(3_000);
		// holdMs was dropped, not stored: the 20 notes are in the outbox (written with the answer; this node runs no relay) without it.
		const notes = await query<{ payload: { details: Record<string, unknown> } }>(databaseUrl, "SELECT payload FROM outbox WHERE event_type = 'audit.operator.hold.test'");
		expect(notes).toHaveLength(20);
		expect(notes.filter(r => JSON.stringify(r.payload).includes("holdMs"))).toEqual([]);
		expect((await getJson(`${node.url}/auth/dev-token?user=alice`)).status).toBe(404);
	});
});
