/**
 * Agent runs over the /agents socket.io namespace, with two real node processes (real NATS, real
 * PostgreSQL in a database of its own) and a stand-in Ollama server (test/fixtures/ollama-server.ts):
 *   NODE1: a gateway only (SERVICES=api): the router is on another node, so a cancel must reach it by name;
 *   NODE2: gateway, router, swapper-proxy with local-echo (a piece every 30 ms) and Ollama "slow:1b".
 * Covers the stream in order with the decision at the end, cancel and a socket going away (the fixture
 * sees its request closed, the model's in-flight count is back to 0), every bad input generated from the
 * event schemas, the router's own 404/413/422 refusals, run caps, and no content in logs or metrics.
 */
import { signToken } from "../../lib/http/auth";
import { MAX_RUNS_PER_SOCKET } from "../../lib/realtime/channels/agents";
import { SOCKET_EVENTS } from "../../lib/realtime/socket-events";
import fs from "fs";
import os from "os";
import path from "path";
import { getJson, startNodeProcess, stopAll, uniqueNamespace, waitFor, waitForMesh, type NodeProcess } from "../helpers/cluster";
import { dropFreshDatabases, freshDatabase, isolatedMeshEnv } from "../helpers/databases";
import { describeWithNatsAndPostgres } from "../helpers/requirements";
import { connectSocket, type Recorder } from "../helpers/sockets";
import { startOllamaFixture, type OllamaFixture } from "../fixtures/ollama-server";

jest.setTimeout(120_000);
const JWT_SECRET = "agents-socket-secret-0123456789abcdef";
const SECRET = "confidential-socket-plan-kq17";
const token = (id: string) => signToken(JWT_SECRET, { id, roles: [], teams: [] });
const sleep = (ms: number) => new Promise(r => setTimeout(r, ms));
/** Under the socket's event budget (WS_EVENT_RATE 10/s): the budget is tested in realtime-security. */
const PACE_MS = 120;

const REGISTRY = `version: "s1"
agents:
  - id: echo-agent
    model: local-echo
  - id: slow-agent
    model: slow:1b
`;

type Rule = { type: string; optional?: boolean; min?: number; max?: number; pattern?: RegExp; values?: string[]; items?: unknown };

/** Bad payloads for one event, from its schema: each names the field it breaks (validated before anything runs). */
function badPayloads(schema: Record<string, unknown>, valid: Record<string, unknown>): Array<{ payload: unknown; field: string }> {
	const fields = Object.entries(schema).filter(([name]) => !name.startsWith("$$")) as Array<[string, Rule]>;
	const required = fields.filter(([, rule]) => !rule.optional).map(([name]) => name);
	const cases: Array<{ payload: unknown; field: string }> = [];
	for (const notAnObject of ["a string", 42, [1, 2], null, true]) cases.push({ payload: notAnObject, field: required[0] });
	const wrongTypes: Record<string, unknown[]> = {
		string: [42, true, { nested: "x" }, ["x"]],
		enum: [42, true, "not-one-of-them"],
		boolean: ["yes", { nested: true }, [true]],
		array: ["x", 42, { nested: true }],
		object: ["x", 42, [1]],
	};
	for (const [name, rule] of fields) {
		if (!rule.optional) {
			const without = { ...valid };
			delete without[name];
			cases.push({ payload: without, field: name });
		}
		for (const wrong of wrongTypes[rule.type] ?? []) cases.push({ payload: { ...valid, [name]: wrong }, field: name });
		if (rule.type === "string" && rule.min) cases.push({ payload: { ...valid, [name]: "" }, field: name });
		if (rule.type === "string" && rule.max) cases.push({ payload: { ...valid, [name]: "x".repeat(rule.max + 1) }, field: name });
		if (rule.pattern) for (const off of ["has spaces", "a/b", "<script>"]) cases.push({ payload: { ...valid, [name]: off }, field: name });
		if (rule.type === "array" && rule.min) cases.push({ payload: { ...valid, [name]: [] }, field: name });
		if (rule.type === "array" && rule.max) cases.push({ payload: { ...valid, [name]: Array.from({ length: rule.max + 1 }, () => ({ role: "user", content: "x" })) }, field: name });
		if (rule.type === "array" && rule.items) {
			cases.push({ payload: { ...valid, [name]: [42] }, field: name });
			cases.push({ payload: { ...valid, [name]: [{ role: "robot", content: "x" }] }, field: name });
		}
	}
	return cases;
}

describeWithNatsAndPostgres("agent runs over the /agents socket namespace", () => {
	const namespace = uniqueNamespace("agentsock");
	let node1: NodeProcess;
	let node2: NodeProcess;
	let ollama: OllamaFixture;
	let dir: string;
	const open: Recorder[] = [];
	const track = (r: Recorder) => (open.push(r), r);

	beforeAll(async () => {
		ollama = await startOllamaFixture({ models: ["slow:1b"], pieceDelayMs: 150 });
		dir = fs.mkdtempSync(path.join(os.tmpdir(), "agents-socket-"));
		const agentsFile = path.join(dir, "agents.yml");
		fs.writeFileSync(agentsFile, REGISTRY);
		const env = { ...isolatedMeshEnv(namespace, await freshDatabase("agentsock"), JWT_SECRET), ROUTER_AGENTS_FILE: agentsFile, LOG_LEVEL: "debug", SWAPPER_ADVERTISE_MS: "300" };
		[node1, node2] = await Promise.all([
			startNodeProcess({ ...env, NODE_ID: "agentsock-n1", SERVICES: "api" }),
			startNodeProcess({ ...env, NODE_ID: "agentsock-n2", SERVICES: "api,router,swapper-proxy", SWAPPER_LOCAL_ECHO_TOKEN_MS: "30", OLLAMA_URL: ollama.url }),
		]);
		await Promise.all([node1, node2].map(n => waitForMesh(n, ["router", "swapper-proxy"], 2, 60_000, "/api/router/agents")));
		await waitFor("slow:1b on NODE1's view of the mesh", async () => {
			const { body } = await getJson(`${node1.url}/api/swapper-proxy/models`, { headers: { authorization: `Bearer ${token("u1")}` } });
			return (body.models ?? []).some((m: { model: string }) => m.model === "slow:1b");
		});
	});
	afterEach(() => {
		for (const r of open.splice(0)) r.close();
	});
	afterAll(async () => {
		await stopAll([node1, node2]);
		await ollama?.close();
		await dropFreshDatabases();
		fs.rmSync(dir, { recursive: true, force: true });
	});

	const inFlight = async () => {
		const { body } = await getJson(`${node2.url}/api/swapper-proxy/status`, { headers: { authorization: `Bearer ${token("u1")}` } });
		return body.models.find((m: { model: string }) => m.model === "slow:1b")?.in_flight as number;
	};
	const runEvents = (r: Recorder, id: string) => r.events.filter(e => e.event.startsWith("agent.") && e.data?.request_id === id).map(e => e.event);

	it("streams a run in order through a gateway without a router: start, every piece, then done with the decision", async () => {
		const http = await getJson(`${node2.url}/api/router/route`, {
			method: "POST",
			headers: { authorization: `Bearer ${token("ada")}`, "content-type": "application/json" },
			body: JSON.stringify({ agent: "echo-agent", message: "tell me about the river district" }),
		});
		expect(http.status).toBe(200);

		const ada = track(await connectSocket(node1.url, "/agents", { token: token("ada") }));
		const ack = await ada.socket.timeout(10_000).emitWithAck("ask", { agent: "echo-agent", message: "tell me about the river district", mode: "team" });
		expect(ack).toEqual({ ok: true, request_id: expect.any(String) });
		const id = ack.request_id as string;
		const done = await ada.next("agent.done", d => d.request_id === id, 15_000);
		const kinds = runEvents(ada, id);
		expect(kinds[0]).toBe("agent.start");
		expect(kinds.at(-1)).toBe("agent.done");
		expect(kinds.filter(k => k === "agent.chunk").length).toBeGreaterThan(3);
		expect(kinds.slice(1, -1).every(k => k === "agent.chunk")).toBe(true);
		const text = ada.events.filter(e => e.event === "agent.chunk" && e.data.request_id === id).map(e => e.data.text as string).join("");
		expect(text).toBe(http.body.response);
		expect(await ada.next("agent.start", d => d.request_id === id)).toEqual({ request_id: id, agent: "echo-agent", model: "local-echo", node: "agentsock-n2" });
		expect(done).toMatchObject({ request_id: id, agent: "echo-agent", model: "local-echo", node: "agentsock-n2", provider: "local-echo", rules_version: "s1", usage: { tokens_in: 6 } });
		expect(done.usage.tokens_out).toBeGreaterThan(6);
		expect(typeof done.latency_ms).toBe("number");
		expect(done.decision).toMatchObject({ agent_requested: "echo-agent", node: "agentsock-n2", privacy: { mode: "team", context: "sanitized" } });
		expect(done.decision.explanation).toContain("local-echo on agentsock-n2");
		expect(done).not.toHaveProperty("response");
	});

	it("correlates by a client-chosen request_id without an ack", async () => {
		const bo = track(await connectSocket(node2.url, "/agents", { token: token("bo") }));
		bo.socket.emit("ask", { request_id: "bo-1", agent: "echo-agent", message: "short one" });
		const done = await bo.next("agent.done", d => d.request_id === "bo-1", 15_000);
		expect(done.node).toBe("agentsock-n2");
		expect(runEvents(bo, "bo-1")[0]).toBe("agent.start");
	});

	it("cancel aborts the provider's request on the serving node, though the router runs on another node than the socket", async () => {
		const cancelledBefore = ollama.chatsCancelled;
		const cy = track(await connectSocket(node1.url, "/agents", { token: token("cy") }));
		const ack = await cy.socket.timeout(15_000).emitWithAck("ask", { request_id: "cy-1", agent: "slow-agent", message: "one two three four five six seven eight nine ten eleven twelve" });
		expect(ack).toEqual({ ok: true, request_id: "cy-1" });
		await cy.next("agent.chunk", d => d.request_id === "cy-1", 10_000);
		expect(await inFlight()).toBe(1);
		expect(await cy.socket.timeout(5_000).emitWithAck("cancel", { request_id: "cy-1" })).toEqual({ ok: true, request_id: "cy-1", cancelled: true });
		expect(await cy.next("agent.error", d => d.request_id === "cy-1")).toEqual({ request_id: "cy-1", code: 499, type: "CANCELLED", message: "Cancelled by the client", retryable: false });
		await waitFor("the runtime's request to be closed", async () => ollama.chatsCancelled > cancelledBefore, 5_000, 20);
		await waitFor("NODE2's slot freed", async () => (await inFlight()) === 0, 5_000, 50);
		await sleep(400);
		expect(runEvents(cy, "cy-1").filter(k => k === "agent.done" || k === "agent.error")).toEqual(["agent.error"]);
		// A cancelled id is free again, and cancelling what is not open is a 404.
		expect(await cy.socket.timeout(5_000).emitWithAck("cancel", { request_id: "cy-1" })).toMatchObject({ ok: false, error: { code: 404, type: "RUN_NOT_FOUND", field: "request_id" } });
	});

	it("a socket that goes away cancels its runs (router on the socket's own node)", async () => {
		const cancelledBefore = ollama.chatsCancelled;
		const di = await connectSocket(node2.url, "/agents", { token: token("di") });
		di.socket.emit("ask", { request_id: "di-1", agent: "slow-agent", message: "one two three four five six seven eight nine ten eleven twelve" });
		await di.next("agent.chunk", d => d.request_id === "di-1", 10_000);
		di.close();
		await waitFor("the runtime's request to be closed", async () => ollama.chatsCancelled > cancelledBefore, 5_000, 20);
		await waitFor("NODE2's slot freed", async () => (await inFlight()) === 0, 5_000, 50);
	});

	it("refuses the router's way: unknown agent 404, no message 422, prompt too large 413 — as agent.error with the request id and a failed ack", async () => {
		const ed = track(await connectSocket(node1.url, "/agents", { token: token("ed") }));
		const cases: Array<[Record<string, unknown>, Record<string, unknown>]> = [
			[{ request_id: "ed-404", agent: "nobody", message: "hi" }, { code: 404, type: "AGENT_NOT_FOUND", field: "agent" }],
			[{ request_id: "ed-422", agent: "echo-agent" }, { code: 422, type: "VALIDATION_ERROR", field: "message" }],
			[{ request_id: "ed-413", agent: "echo-agent", message: "x".repeat(40_000) }, { code: 413, type: "PROMPT_TOO_LARGE", field: "message" }],
		];
		for (const [payload, error] of cases) {
			const answer = await ed.socket.timeout(10_000).emitWithAck("ask", payload);
			expect({ payload: payload.request_id, answer }).toMatchObject({ payload: payload.request_id, answer: { ok: false, error } });
			expect(await ed.next("agent.error", d => d.request_id === payload.request_id)).toMatchObject({ ...error, retryable: false });
			await sleep(PACE_MS);
		}
		expect(ed.events.some(e => e.event === "error_event")).toBe(false);
		// No token: the handshake is refused.
		await expect(connectSocket(node1.url, "/agents", {})).rejects.toMatchObject({ data: { code: 401, type: "NO_TOKEN" } });
		await expect(connectSocket(node1.url, "/agents", { token: "not.a.token" })).rejects.toMatchObject({ data: { code: 401 } });
	});

	it("every /agents event refuses bad input with a 422 naming the field (cases generated from the event schemas); unknown events are 404", async () => {
		const valid: Record<string, Record<string, unknown>> = {
			ask: { request_id: "ok-1", agent: "echo-agent", message: "hi", messages: [{ role: "user", content: "hi" }], mode: "public", consent: false, dao_id: "dao", metadata: {} },
			cancel: { request_id: "ok-1" },
		};
		const fy = track(await connectSocket(node1.url, "/agents", { token: token("fy") }));
		let checked = 0;
		for (const [event, schema] of Object.entries(SOCKET_EVENTS.agents)) {
			for (const { payload, field } of badPayloads(schema, valid[event])) {
				const answer = await fy.socket.timeout(5_000).emitWithAck(event, payload);
				expect({ event, payload, answer }).toMatchObject({ event, payload, answer: { ok: false, error: { code: 422, type: "VALIDATION_ERROR" } } });
				expect({ event, payload, field: answer.error.field }).toEqual({ event, payload, field: expect.stringMatching(new RegExp(`^${field}($|[.[])`)) });
				checked++;
				await sleep(PACE_MS);
			}
		}
		for (const unknown of ["no-such-event", "constructor", "__proto__", "agent.done"]) {
			expect(await fy.socket.timeout(5_000).emitWithAck(unknown, {})).toMatchObject({ ok: false, error: { code: 404, type: "UNKNOWN_EVENT" } });
			await sleep(PACE_MS);
		}
		expect(checked).toBeGreaterThan(40);
		expect(fy.socket.connected).toBe(true);
		// Nothing of the bad input started a run.
		expect(fy.events.some(e => e.event === "agent.start")).toBe(false);
	});

	it(`caps open runs per socket at ${MAX_RUNS_PER_SOCKET} and refuses a request_id that is still open`, async () => {
		const gus = track(await connectSocket(node1.url, "/agents", { token: token("gus") }));
		const long = { agent: "echo-agent", message: Array.from({ length: 60 }, (_, i) => `word${i}`).join(" ") };
		const acks = await Promise.all(Array.from({ length: MAX_RUNS_PER_SOCKET }, (_, i) => gus.socket.timeout(10_000).emitWithAck("ask", { ...long, request_id: `gus-${i}` })));
		expect(acks.every(a => a.ok)).toBe(true);
		expect(await gus.socket.timeout(5_000).emitWithAck("ask", { ...long, request_id: "gus-0" })).toMatchObject({ ok: false, error: { code: 409, type: "RUN_EXISTS", field: "request_id" } });
		expect(await gus.socket.timeout(5_000).emitWithAck("ask", { ...long, request_id: "gus-x" })).toMatchObject({ ok: false, error: { code: 429, type: "TOO_MANY_RUNS", retryable: true } });
		await Promise.all(Array.from({ length: MAX_RUNS_PER_SOCKET }, (_, i) => gus.next("agent.done", d => d.request_id === `gus-${i}`, 20_000)));
		expect(await gus.socket.timeout(10_000).emitWithAck("ask", { ...long, request_id: "gus-x" })).toMatchObject({ ok: true, request_id: "gus-x" });
	});

	it("puts no prompt or answer text in either node's logs or metrics", async () => {
		const hal = track(await connectSocket(node1.url, "/agents", { token: token("hal") }));
		hal.socket.emit("ask", { request_id: "hal-1", agent: "echo-agent", message: `the plan is ${SECRET}`, mode: "confidential" });
		const chunks = await hal.next("agent.done", d => d.request_id === "hal-1", 15_000).then(() => hal.events.filter(e => e.event === "agent.chunk").map(e => e.data.text).join(""));
		expect(chunks).toContain(SECRET);
		const metrics = await Promise.all([node1, node2].map(async n => (await fetch(`${n.url}/metrics`)).text()));
		expect(metrics[0]).toMatch(/ws_agent_runs_total\{[^}]*outcome="done"[^}]*\} \d+/);
		for (const text of [...metrics, node1.logs.join("\n"), node2.logs.join("\n")]) expect(text).not.toContain(SECRET);
	});
});
