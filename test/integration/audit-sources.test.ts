/**
 * Every audited source produces its `audit.{service}.{action}` row in audit_log, with actor, request
 * id, target, outcome and node — one table, one row per source (real nodes, NATS JetStream and
 * PostgreSQL). Confidential memory content and keys never reach the trail, and a flood of bad tokens
 * is recorded a handful of times with the rest counted as suppressed.
 */
import { signToken } from "../../lib/http/auth";
import { getJson, startNodeProcess, stopAll, uniqueNamespace, waitFor, waitForMesh, type NodeProcess } from "../helpers/cluster";
import { dropFreshDatabases, freshDatabase, isolatedMeshEnv, query } from "../helpers/databases";
import { describeWithNatsAndPostgres } from "../helpers/requirements";
import { connectSocket } from "../helpers/sockets";

const JWT_SECRET = "integration-secret-0123456789abcdef";
const tokenOf = (id: string, roles: string[] = []) => signToken(JWT_SECRET, { id, roles, teams: [] });
const SECRET = "confidential-launch-code-4711";

interface AuditRow {
	service: string;
	action: string;
	actor: string;
	request_id: string | null;
	target: string | null;
	outcome: string;
	node: string;
	details: Record<string, unknown>;
}

interface Source {
	name: string;
	service: string;
	action: string;
	/** does it; returns the target the row must name and the request id it must carry (null: not an HTTP request) */
	trigger: () => Promise<{ target: string; requestID: string | null; actor: string; outcome?: string }>;
	check?: (row: AuditRow) => void;
}

describeWithNatsAndPostgres("audit sources: every actor reports its audit event", () => {
	const namespace = uniqueNamespace("auditsrc");
	let databaseUrl: string;
	let env: Record<string, string>;
	let gateway: NodeProcess;
	let actors: NodeProcess;
	let visitor: NodeProcess | undefined;
	let seq = 0;

	beforeAll(async () => {
		databaseUrl = await freshDatabase("auditsrc");
		env = { ...isolatedMeshEnv(namespace, databaseUrl, JWT_SECRET), LEASE_TTL_MS: "2000" };
		actors = await startNodeProcess({ ...env, NODE_ID: "src-actors", NODE_ROLE: "node1", SERVICES: "memory,city,presence,audit,outbox,node-registry" });
		gateway = await startNodeProcess({ ...env, NODE_ID: "src-gateway", NODE_ROLE: "edge", SERVICES: "api" });
		await waitForMesh(gateway, ["memory", "city", "presence", "audit", "node-registry"], 2, 40_000, "/api/city/rooms");
	});
	afterAll(async () => {
		await stopAll([gateway, actors, visitor]);
		await dropFreshDatabases();
	});

	async function http(method: string, path: string, token: string | null, body?: unknown): Promise<{ status: number; body: any; requestID: string }> {
		const requestID = `${namespace}-req-${++seq}`;
		const answer = await getJson(`${gateway.url}${path}`, {
			method,
			headers: { "x-request-id": requestID, "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
			body: body === undefined ? undefined : JSON.stringify(body),
		});
		return { ...answer, requestID };
	}

	const owner = tokenOf("alice");
	const member = tokenOf("bob");
	const admin = tokenOf("op", ["admin"]);
	const svc = tokenOf("matrix-bridge", ["service"]);
	const room = "audited-room";

	const SOURCES: Source[] = [
		{
			name: "memory write (confidential: no content, no key)",
			service: "memory",
			action: "created",
			trigger: async () => {
				const r = await http("POST", "/api/memory/memories", owner, { scope: "personal", owner_id: "alice", kind: "fact", key: "secret-key-name", content: SECRET, confidential: true });
				expect(r.status).toBe(200);
				return { target: r.body.id, requestID: r.requestID, actor: "alice" };
			},
			check: row => {
				expect(JSON.stringify(row)).not.toContain(SECRET);
				expect(JSON.stringify(row)).not.toContain("secret-key-name");
				expect(row.details).toMatchObject({ scope: "personal", confidential: true });
			},
		},
		{
			name: "city room created",
			service: "city",
			action: "room_created",
			trigger: async () => {
				const r = await http("POST", "/api/city/rooms", owner, { id: room, name: "Audited" });
				expect(r.status).toBe(200);
				return { target: room, requestID: r.requestID, actor: "alice" };
			},
		},
		{
			name: "city membership: join",
			service: "city",
			action: "member_joined",
			trigger: async () => {
				const r = await http("POST", `/api/city/rooms/${room}/join`, member);
				expect(r.status).toBe(200);
				return { target: room, requestID: r.requestID, actor: "bob" };
			},
		},
		{
			name: "city membership: leave",
			service: "city",
			action: "member_left",
			trigger: async () => {
				const r = await http("POST", `/api/city/rooms/${room}/leave`, member);
				expect(r.status).toBe(200);
				return { target: room, requestID: r.requestID, actor: "bob" };
			},
		},
		{
			name: "city message edited (no body in the trail)",
			service: "city",
			action: "message_edited",
			trigger: async () => {
				const posted = await http("POST", `/api/city/rooms/${room}/messages`, owner, { body: "first words" });
				const r = await http("PATCH", `/api/city/rooms/${room}/messages/${posted.body.id}`, owner, { body: "second words" });
				expect(r.status).toBe(200);
				return { target: posted.body.id, requestID: r.requestID, actor: "alice" };
			},
			check: row => expect(JSON.stringify(row)).not.toMatch(/first words|second words/),
		},
		{
			name: "city message moderated (deleted by an admin)",
			service: "city",
			action: "message_deleted",
			trigger: async () => {
				const posted = await http("POST", `/api/city/rooms/${room}/messages`, owner, { body: "to be moderated" });
				const r = await http("DELETE", `/api/city/rooms/${room}/messages/${posted.body.id}`, admin);
				expect(r.status).toBe(200);
				return { target: posted.body.id, requestID: r.requestID, actor: "op" };
			},
			check: row => expect(row.details).toMatchObject({ moderated: true, author_id: "alice", room_id: room }),
		},
		{
			name: "presence admin action (a service marks a user online)",
			service: "presence",
			action: "marked_online",
			trigger: async () => {
				const r = await http("POST", "/internal/matrix/presence/online", svc, { user_id: "carol" });
				expect(r.status).toBe(200);
				return { target: "carol", requestID: r.requestID, actor: "matrix-bridge" };
			},
		},
		{
			name: "node joins the mesh",
			service: "node-registry",
			action: "node_joined",
			trigger: async () => ({ target: "src-gateway", requestID: null, actor: "node:src-actors" }),
		},
		{
			name: "node leaves the mesh",
			service: "node-registry",
			action: "node_left",
			trigger: async () => {
				visitor = await startNodeProcess({ ...env, NODE_ID: "src-visitor", NODE_ROLE: "node3", SERVICES: "api" });
				await waitFor("the visitor to be recorded as joined", async () => (await rows("node-registry", "node_joined")).some(r => r.target === "src-visitor"), 20_000);
				await visitor.kill("SIGTERM");
				return { target: "src-visitor", requestID: null, actor: "node:src-actors" };
			},
			check: row => expect(row.details).toMatchObject({ reason: "graceful" }),
		},
		{
			name: "node registers (self, with capabilities)",
			service: "node-registry",
			action: "node_registered",
			trigger: async () => ({ target: "src-actors", requestID: null, actor: "node:src-actors" }),
		},
		{
			name: "operator broadcast",
			service: "node-registry",
			action: "broadcast_sent",
			trigger: async () => {
				const r = await http("POST", "/api/v1/broadcast", admin, { message: "hello nodes" });
				expect(r.status).toBe(200);
				return { target: "system.broadcast", requestID: r.requestID, actor: "op" };
			},
		},
		{
			name: "configuration loaded at node start",
			service: "mesh",
			action: "config_loaded",
			trigger: async () => ({ target: "src-actors", requestID: null, actor: "node:src-actors" }),
			check: row => expect(JSON.stringify(row)).not.toContain(JWT_SECRET),
		},
		{
			name: "gateway: authentication failure",
			service: "api",
			action: "authn_failed",
			trigger: async () => {
				const r = await http("GET", "/api/city/rooms", "not.a.valid-token");
				expect(r.status).toBe(401);
				return { target: "city.listRooms", requestID: r.requestID, actor: "anonymous", outcome: "denied" };
			},
			check: row => expect(row.details).toMatchObject({ reason: "INVALID_TOKEN" }),
		},
		{
			name: "gateway: authorization failure",
			service: "api",
			action: "authz_failed",
			trigger: async () => {
				const r = await http("GET", "/api/audit/verify", member);
				expect(r.status).toBe(403);
				return { target: "audit.verify", requestID: r.requestID, actor: "bob", outcome: "denied" };
			},
		},
		{
			name: "socket handshake: authentication failure",
			service: "socket",
			action: "authn_failed",
			trigger: async () => {
				await expect(connectSocket(gateway.url, "/city/presence", { token: "forged.token.value" })).rejects.toThrow();
				return { target: "/city/presence", requestID: null, actor: "anonymous", outcome: "denied" };
			},
		},
		{
			name: "socket handshake: authorization failure (a private room, not a member)",
			service: "socket",
			action: "authz_failed",
			trigger: async () => {
				expect((await http("POST", "/api/city/rooms", owner, { id: "private-room", name: "Private", is_public: false })).status).toBe(200);
				await expect(connectSocket(gateway.url, "/city/rooms/private-room", { token: member })).rejects.toThrow();
				return { target: "/city/rooms/private-room", requestID: null, actor: "bob", outcome: "denied" };
			},
		},
		{
			name: "operator note",
			service: "operator",
			action: "incident.opened",
			trigger: async () => {
				const r = await http("POST", "/api/audit/records", admin, { action: "incident.opened", subject: "INC-7" });
				expect(r.status).toBe(200);
				return { target: "INC-7", requestID: r.requestID, actor: "op" };
			},
		},
	];

	const rows = (service: string, action: string) => query<AuditRow>(databaseUrl, "SELECT * FROM audit_log WHERE service = $1 AND action = $2 ORDER BY seq", [service, action]);

	it.each(SOURCES.map(s => [s.name, s] as const))("%s", async (_name, source) => {
		const expected = await source.trigger();
		const row = await waitFor(
			`audit.${source.service}.${source.action} for ${expected.target}`,
			async () => (await rows(source.service, source.action)).find(r => r.target === expected.target && (!expected.requestID || r.request_id === expected.requestID)),
			20_000,
			200,
		);
		expect(row).toMatchObject({ actor: expected.actor, outcome: expected.outcome ?? "success", target: expected.target });
		expect(row.node).toMatch(/^src-/);
		if (expected.requestID) expect(row.request_id).toBe(expected.requestID);
		source.check?.(row);
	});

	it("a flood of bad tokens is recorded a handful of times; the rest is counted as suppressed", async () => {
		const before = (await rows("api", "authn_failed")).length;
		const started = Date.now();
		await Promise.all(Array.from({ length: 60 }, () => http("GET", "/api/city/rooms", "flood.bad.token")));
		await new Promise(r => setTimeout(r, 1_500));
		const after = await http("GET", "/api/city/rooms", "flood.bad.token");
		expect(after.status).toBe(401);
		// Per client: a burst of 5, then 1 per second (however long the flood took on a loaded machine).
		const allowed = 5 + Math.ceil((Date.now() - started) / 1000);
		await waitFor("the last report", async () => (await rows("api", "authn_failed")).find(r => r.request_id === after.requestID), 20_000);
		const flood = (await rows("api", "authn_failed")).slice(before);
		expect(flood.length).toBeLessThanOrEqual(allowed);
		// Nothing unaccounted for: each of the 61 failures is either a row or counted in a later row's
		// `suppressed` (the first row may also count probes suppressed before the flood).
		const suppressed = flood.reduce((sum, r) => sum + Number(r.details.suppressed ?? 0), 0);
		expect(flood.length + suppressed).toBeGreaterThanOrEqual(61);
		expect(flood.length + suppressed).toBeLessThanOrEqual(61 + 40);
		expect(suppressed).toBeGreaterThanOrEqual(61 - allowed);
		expect(await getJson(`${gateway.url}/api/audit/verify`, { headers: { authorization: `Bearer ${admin}` } })).toMatchObject({ status: 200, body: { ok: true } });
	});
});
