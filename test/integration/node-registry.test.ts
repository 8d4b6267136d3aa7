/**
 * The seed's node registry on every gateway (real NATS, real PostgreSQL in a database of its own, real
 * node processes): mesh nodes register themselves with capabilities and heartbeat; a SIGKILLed node is
 * offline in GET /api/v1/nodes within 5 s and online again after a restart; an external node registers
 * and heartbeats over HTTP with a service token and ages to degraded/offline without heartbeats; bad
 * input (table-driven from the register schema), unknown nodes, missing tokens, wrong roles and a
 * heartbeat flood get 422/404/401/403/429; /api/v1/broadcast reaches NATS and the page's sockets.
 */
import { ServiceBroker } from "moleculer";
import { connect, type NatsConnection, type Subscription } from "nats";
import { signToken } from "../../lib/http/auth";
import { loadSettings } from "../../lib/runtime/settings";
import { createBrokerOptions } from "../../moleculer.config";
import { meshTable } from "../../scripts/repl";
import { REGISTER_PARAMS } from "../../services/node-registry.service";
import { getJson, startNodeProcess, stopAll, uniqueNamespace, waitFor, waitForMesh, type NodeProcess } from "../helpers/cluster";
import { dropFreshDatabases, freshDatabase, isolatedMeshEnv, streamFor, subjectPrefixFor } from "../helpers/databases";
import { describeWithNatsAndPostgres, LOCAL_NATS_URL } from "../helpers/requirements";
import { connectSocket } from "../helpers/sockets";

const JWT_SECRET = "integration-secret-0123456789abcdef";

interface Rule {
	type: string;
	optional?: boolean;
	min?: number;
	pattern?: RegExp;
	props?: Record<string, Rule>;
}

/** Bad values for every field of a fastest-validator schema, one per rule it declares (nested props too). */
function badValues(schema: Record<string, Rule>, prefix = ""): Array<[string, unknown]> {
	return Object.entries(schema)
		.filter(([key]) => !key.startsWith("$$"))
		.flatMap(([key, rule]): Array<[string, unknown]> => {
			const field = `${prefix}${key}`;
			const cases: Array<[string, unknown]> = [];
			if (!rule.optional) cases.push([field, undefined]);
			if (rule.type === "string") {
				cases.push([field, 42]);
				if (rule.min) cases.push([field, ""]);
				if (rule.pattern) cases.push([field, "has spaces & symbols!"]);
			}
			if (rule.type === "enum") cases.push([field, "not-one-of-them"]);
			if (rule.type === "number") cases.push([field, "many"], [field, (rule.min ?? 0) - 1]);
			if (rule.type === "array") cases.push([field, "not-a-list"], [field, [7, 8]]);
			if (rule.type === "object") {
				cases.push([field, "not-an-object"]);
				if (rule.props) cases.push(...badValues(rule.props, `${field}.`));
			}
			return cases;
		});
}
const bearer = (id: string, roles: string[]) => ({ authorization: `Bearer ${signToken(JWT_SECRET, { id, roles, teams: [] })}` });
const service = bearer("edge-agent", ["service"]);
const admin = bearer("op", ["admin"]);
const user = bearer("u1", []);

describeWithNatsAndPostgres("node registry: /api/v1/nodes on every gateway", () => {
	const namespace = uniqueNamespace("registry");
	const prefix = subjectPrefixFor(namespace);
	let env: Record<string, string>;
	let gateway: NodeProcess;
	let node1: NodeProcess;
	let node2: NodeProcess;
	let nc: NatsConnection;

	beforeAll(async () => {
		const databaseUrl = await freshDatabase("registry");
		env = { ...isolatedMeshEnv(namespace, databaseUrl, JWT_SECRET), LEASE_TTL_MS: "2000", NODE_HEARTBEAT_MS: "500", NODE_OFFLINE_AFTER_MS: "3000" };
		node1 = await startNodeProcess({ ...env, NODE_ID: "reg-node1", NODE_ROLE: "node1", SERVICES: "node-registry,presence,audit,outbox" });
		[gateway, node2] = await Promise.all([
			startNodeProcess({ ...env, NODE_ID: "reg-gateway", NODE_ROLE: "edge", SERVICES: "api" }),
			startNodeProcess({ ...env, NODE_ID: "reg-node2", NODE_ROLE: "node2", SERVICES: "node-registry" }),
		]);
		await waitForMesh(gateway, ["node-registry"], 3, 40_000);
		nc = await connect({ servers: new URL(LOCAL_NATS_URL).host });
	});
	afterAll(async () => {
		await stopAll([gateway, node1, node2]);
		if (nc) {
			await (await nc.jetstreamManager()).streams.delete(streamFor(namespace)).catch(() => undefined);
			await nc.close();
		}
		await dropFreshDatabases();
	});

	const v1 = (path: string, init: RequestInit = {}) => getJson(`${gateway.url}/api/v1${path}`, init);
	const post = (path: string, body: unknown, headers: Record<string, string> = service) =>
		v1(path, { method: "POST", headers: { ...headers, "content-type": "application/json" }, body: JSON.stringify(body) });
	const statusOf = async (nodeID: string) => ((await v1("/nodes", { headers: user })).body.nodes as Array<{ node_id: string; status: string }>).find(n => n.node_id === nodeID)?.status;

	it("mesh nodes register themselves with capabilities and heartbeat; list and get answer on the gateway", async () => {
		await waitFor("both mesh nodes online", async () => (await statusOf("reg-node1")) === "online" && (await statusOf("reg-node2")) === "online");
		const list = await v1("/nodes?role=node1", { headers: user });
		expect(list.status).toBe(200);
		expect(list.body).toMatchObject({ total: 1, nodes: [{ node_id: "reg-node1", role: "node1", kind: "mesh", status: "online" }] });
		expect(list.body.nodes[0].capabilities.services).toEqual(expect.arrayContaining(["node-registry", "presence", "audit"]));
		expect(list.body.nodes[0].capabilities.cpu_count).toBeGreaterThan(0);
		const one = await waitFor("heartbeats logged", async () => {
			const answer = await v1("/nodes/reg-node2", { headers: user });
			return answer.body.heartbeats?.length >= 2 && answer;
		});
		expect(one.body).toMatchObject({ node_id: "reg-node2", role: "node2", kind: "mesh", status: "online", version: expect.any(String) });
	});

	it("a SIGKILLed node is offline within 5 s and online again after a restart", async () => {
		node2.child.kill("SIGKILL");
		const killedAt = Date.now();
		await waitFor("reg-node2 offline", async () => (await statusOf("reg-node2")) === "offline", 5_000, 100);
		const offlineAfterMs = Date.now() - killedAt;
		expect(offlineAfterMs).toBeLessThanOrEqual(5_000);
		node2 = await startNodeProcess({ ...env, NODE_ID: "reg-node2", NODE_ROLE: "node2", SERVICES: "node-registry" });
		await waitFor("reg-node2 online again", async () => (await statusOf("reg-node2")) === "online", 30_000, 200);
		process.stdout.write(`node registry: SIGKILLed node offline after ${offlineAfterMs} ms\n`);
	});

	it("an external node registers and heartbeats over HTTP with a service token, and ages to degraded and offline", async () => {
		const events: string[] = [];
		const sub: Subscription = nc.subscribe(`${prefix}.node.ext-1.events`, { callback: (_e, m) => events.push(m.json<{ event: string }>().event) });
		const registered = await post("/nodes/register", { node_id: "ext-1", name: "GPU box", role: "worker", hostname: "gpu1", ip: "10.0.0.7", version: "1.0.0", capabilities: { models: ["qwen3:8b"], cpu_count: 16, gpu: { name: "RTX", vram_gb: 24 }, labels: { zone: "a" } } });
		expect(registered.status).toBe(200);
		expect(registered.body).toMatchObject({ node_id: "ext-1", kind: "external", status: "online", capabilities: { models: ["qwen3:8b"], gpu: { vram_gb: 24 } } });
		const beat = await post("/nodes/ext-1/heartbeat", { status: "degraded", metrics: { gpu_util: 0.93 } });
		expect(beat.body).toMatchObject({ success: true, node_id: "ext-1", status: "degraded" });
		expect(await statusOf("ext-1")).toBe("degraded");
		expect((await post("/nodes/ext-1/heartbeat", { status: "online" })).status).toBe(200);
		expect(await statusOf("ext-1")).toBe("online");
		await waitFor("ext-1 offline without heartbeats", async () => (await statusOf("ext-1")) === "offline", 6_000, 250);
		await waitFor("node events on NATS", async () => events.includes("registered") && events.includes("status"), 5_000);
		sub.unsubscribe();
		const generated = await post("/nodes/register", { role: "worker", hostname: "box-2" });
		expect(generated.body.node_id).toMatch(/^node-box-2-[0-9a-f]{8}$/);
	});

	it("bad input: unknown node 404, invalid payloads 422 naming the field, no token 401, wrong role 403", async () => {
		expect((await v1("/nodes/no-such-node", { headers: user })).status).toBe(404);
		expect((await post("/nodes/no-such-node/heartbeat", {})).status).toBe(404);
		const valid = { node_id: "ext-bad", role: "worker" };
		const cases = badValues(REGISTER_PARAMS as unknown as Record<string, Rule>);
		expect(cases.length).toBeGreaterThan(15);
		for (const [field, value] of cases) {
			const body: Record<string, unknown> = { ...valid };
			if (field.startsWith("capabilities.")) body.capabilities = { [field.split(".")[1]]: value };
			else if (value === undefined) delete body[field];
			else body[field] = value;
			const answer = await post("/nodes/register", body);
			expect([field, value, answer.status]).toEqual([field, value, 422]);
			expect(answer.body.data[0].field).toMatch(new RegExp(`^${field.replace(".", "\\.")}`));
		}
		const heartbeatCases: Array<[string, unknown]> = [
			["status", "gone"],
			["metrics", "fast"],
			["metrics", { blob: "x".repeat(5_000) }],
		];
		for (const [field, value] of heartbeatCases) {
			const answer = await post("/nodes/ext-1/heartbeat", { [field]: value });
			expect([field, answer.status]).toEqual([field, 422]);
			expect(answer.body.data[0].field).toBe(field);
		}
		expect((await v1("/nodes")).status).toBe(401);
		expect((await v1("/nodes/register", { method: "POST", headers: { "content-type": "application/json" }, body: "{}" })).status).toBe(401);
		expect((await post("/nodes/register", valid, user)).status).toBe(403);
		expect((await post("/nodes/ext-1/heartbeat", {}, user)).status).toBe(403);
		expect((await post("/broadcast", { message: "hi" }, service)).status).toBe(403);
	});

	it("a heartbeat flood is rate-limited (429) without losing the accepted heartbeats", async () => {
		await post("/nodes/register", { node_id: "ext-flood", role: "worker" });
		const answers = await Promise.all(Array.from({ length: 30 }, () => post("/nodes/ext-flood/heartbeat", {})));
		const statuses = answers.map(a => a.status);
		expect(statuses.filter(s => s === 429).length).toBeGreaterThan(0);
		expect(statuses.filter(s => s === 200).length).toBeGreaterThanOrEqual(5);
		expect(statuses.every(s => s === 200 || s === 429)).toBe(true);
		expect(answers.find(a => a.status === 429)?.body).toMatchObject({ type: "RATE_LIMITED", data: { node_id: "ext-flood" } });
	});

	it("the REPL's mesh view shows registry status, external nodes included", async () => {
		const settings = loadSettings({ MESH_NAMESPACE: namespace, NODE_ID: `${namespace}-repl`, NATS_URL: LOCAL_NATS_URL, LOG_LEVEL: "error" });
		const repl = new ServiceBroker(createBrokerOptions(settings, { kind: "nats", transporter: { type: "NATS", options: { servers: [new URL(LOCAL_NATS_URL).host] } }, reason: "test" }));
		await repl.start();
		try {
			const table = await waitFor("the mesh table with the registry column", async () => {
				const rows = await meshTable(repl);
				return rows.some(r => r[0] === "reg-node1" && r[8] === "online") && rows;
			});
			expect(table[0][8]).toBe("Registry");
			expect(table.find(r => r[0] === "ext-1")).toEqual(["ext-1", "worker", "external", "-", "-", "-", "-", "-", "offline"]);
		} finally {
			await repl.stop();
		}
	});

	it("POST /api/v1/broadcast (admin) reaches NATS system.broadcast and every page's socket as a banner", async () => {
		const received: Array<{ message: string }> = [];
		const sub = nc.subscribe(`${prefix}.system.broadcast`, { callback: (_e, m) => received.push(m.json()) });
		const page = await connectSocket(gateway.url, "/city/presence", { token: signToken(JWT_SECRET, { id: "viewer", roles: [], teams: [] }) });
		try {
			const sent = await post("/broadcast", { message: "maintenance at 23:00", severity: "warning" }, admin);
			expect(sent.status).toBe(200);
			expect(await page.next("banner")).toMatchObject({ message: "maintenance at 23:00", severity: "warning", id: sent.body.id });
			await waitFor("the NATS subject", async () => received.some(r => r.message === "maintenance at 23:00"), 5_000);
			expect((await post("/broadcast", { message: "" }, admin)).status).toBe(422);
		} finally {
			page.close();
			sub.unsubscribe();
		}
	});
});
