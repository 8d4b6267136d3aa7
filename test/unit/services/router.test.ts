/**
 * router, in process with swapper-proxy serving the built-in development model (local-echo) and a
 * fresh PostgreSQL database for its agent.run events: routing, the privacy gate, the admin-only
 * registry reload, and what events may carry.
 */
import fs from "fs";
import os from "os";
import path from "path";
import { Errors } from "moleculer";
import { ADVERT_EVENT, type NodeAdvert } from "../../../lib/inference/capacity-board";
import { waitFor } from "../../helpers/cluster";
import { query } from "../../helpers/databases";
import { describeWithPostgres } from "../../helpers/requirements";
import { startInProcessNode, stopInProcessNodes, user, type InProcessNode } from "../../helpers/service-broker";

const REGISTRY = `version: "unit-1"
agents:
  - id: helper
    model: local-echo
    system_prompt: You help.
  - id: cloudy
    model: gpt-cloud
    system_prompt: You live in the cloud.
`;

/** Another node's advert: it serves gpt-cloud through a remote (cloud) provider. */
const cloudAdvert = (): NodeAdvert => ({
	node: "cloud-node",
	at: Date.now(),
	limits: { max_concurrency: 4, queue: 4, max_loaded: 2 },
	gpu: null,
	models: [{ model: "gpt-cloud", provider: "openai", locality: "remote", state: "loaded", last_used: null, in_flight: 0, queued: 0 }],
});

interface RouteAnswer {
	agent: string;
	node: string;
	response: string;
	development_model: boolean;
	rules_version: string;
	decision: { privacy: { mode: string; consent: boolean; context: string; history_dropped: number; remote_provider: boolean } };
}

describeWithPostgres("router service (in-process broker)", () => {
	let node: InProcessNode;
	let dir: string;
	let agentsFile: string;
	const alice = user("alice");

	beforeAll(async () => {
		dir = fs.mkdtempSync(path.join(os.tmpdir(), "router-unit-"));
		agentsFile = path.join(dir, "agents.yml");
		fs.writeFileSync(agentsFile, REGISTRY);
		node = await startInProcessNode({
			services: ["api", "swapper-proxy", "router"],
			database: true,
			env: { ROUTER_AGENTS_FILE: agentsFile, SWAPPER_LOCAL_ECHO: "true", ROUTER_MAX_PROMPT_BYTES: "200" },
		});
		await node.broker.broadcast(ADVERT_EVENT, cloudAdvert());
	});
	afterAll(async () => {
		await stopInProcessNodes(node);
		fs.rmSync(dir, { recursive: true, force: true });
	});

	it("routes an agent to the development model on this node", async () => {
		const answer = await node.callAs<RouteAnswer>(alice, "router.route", { agent: "helper", message: "hello there" });
		expect(answer).toMatchObject({ agent: "helper", node: node.broker.nodeID, development_model: true, rules_version: "unit-1" });
		expect(answer.response).toContain("hello there");
		const agents = await node.callAs<unknown>(alice, "router.agents");
		expect(JSON.stringify(agents)).toContain("cloudy");
	});

	describe("privacy gate", () => {
		const history = [
			{ role: "user", content: "my account number is 12345" },
			{ role: "assistant", content: "noted" },
			{ role: "user", content: "what is the weather" },
		];

		it("without consent sends only the agent's prompt and the current message: the history is dropped", async () => {
			const answer = await node.callAs<RouteAnswer>(alice, "router.route", { agent: "helper", messages: history, mode: "confidential" });
			expect(answer.decision.privacy).toEqual({ mode: "confidential", consent: false, context: "sanitized", history_dropped: 2, remote_provider: false });
			expect(answer.response).toContain("what is the weather");
			expect(answer.response).not.toContain("12345");
		});

		it("with consent sends the whole conversation", async () => {
			const answer = await node.callAs<RouteAnswer>(alice, "router.route", { agent: "helper", messages: history, mode: "confidential", consent: true });
			expect(answer.decision.privacy).toMatchObject({ context: "full", history_dropped: 0 });
		});

		it("refuses a confidential run whose model only a remote provider serves (403 naming mode)", async () => {
			await expect(node.callAs(alice, "router.route", { agent: "cloudy", message: "secret plans", mode: "confidential" })).rejects.toMatchObject({
				code: 403,
				type: "CONFIDENTIAL_NEEDS_LOCAL_MODEL",
				data: { field: "mode", model: "gpt-cloud" },
			});
		});

		it("never writes prompt or answer text into agent.run events", async () => {
			await node.callAs(alice, "router.route", { agent: "helper", message: "the vault code is 8842" });
			const rows = await waitFor("agent.run.completed in the outbox", async () => {
				const found = await query<{ event_type: string; payload: object }>(node.databaseUrl!, "SELECT event_type, payload FROM outbox WHERE event_type LIKE 'agent.run.%'");
				return found.some(r => r.event_type === "agent.run.completed") && found;
			});
			expect(JSON.stringify(rows)).not.toContain("8842");
		});
	});

	it("writes a run's decision line after its generation request has gone out, not before it", async () => {
		const router = node.broker.getLocalService("router") as unknown as { logsInfo: boolean; logger: { info(...args: unknown[]): void } };
		const order: string[] = [];
		const call = node.broker.call.bind(node.broker);
		const calls = jest.spyOn(node.broker, "call").mockImplementation(((action: string, ...rest: unknown[]) => {
			if (action === "swapper-proxy.generate") order.push("generation request");
			return (call as (...args: unknown[]) => unknown)(action, ...rest);
		}) as typeof node.broker.call);
		const lines = jest.spyOn(router.logger, "info").mockImplementation((_message: unknown, fields?: unknown) => {
			if ((fields as { event?: string } | undefined)?.event === "router.decision") order.push("decision line");
		});
		router.logsInfo = true; // this node logs at "error": the line is built only for info
		try {
			await node.callAs(alice, "router.route", { agent: "helper", message: "which comes first?" });
			await new Promise(resolve => setImmediate(resolve));
			expect(order).toEqual(["generation request", "decision line"]);
		} finally {
			router.logsInfo = false;
			calls.mockRestore();
			lines.mockRestore();
		}
	});

	it("refuses bad input as a ValidationError naming the field, an unknown agent as 404, a long prompt as 413", async () => {
		const noAgent = node.callAs(alice, "router.route", { message: "hi" });
		await expect(noAgent).rejects.toBeInstanceOf(Errors.ValidationError);
		await expect(noAgent).rejects.toMatchObject({ data: [expect.objectContaining({ field: "agent" })] });
		await expect(node.callAs(alice, "router.route", { agent: "helper", message: "hi", mode: "secret" })).rejects.toMatchObject({ data: [expect.objectContaining({ field: "mode" })] });
		await expect(node.callAs(alice, "router.route", { agent: "helper", message: "   " })).rejects.toMatchObject({ name: "ValidationError", data: [expect.objectContaining({ field: "message" })] });
		await expect(node.callAs(alice, "router.route", { agent: "nobody", message: "hi" })).rejects.toMatchObject({ code: 404, type: "AGENT_NOT_FOUND", data: { field: "agent" } });
		await expect(node.callAs(alice, "router.route", { agent: "helper", message: "x".repeat(201) })).rejects.toMatchObject({ code: 413, data: { field: "message" } });
	});

	describe("access rules through the gateway", () => {
		it("route needs a token", async () => {
			expect((await node.http("POST", "/api/router/route", { body: { agent: "helper", message: "hi" } })).status).toBe(401);
			expect((await node.http("POST", "/api/router/route", { user: alice, body: { agent: "helper", message: "hi" } })).status).toBe(200);
		});

		it("reload is for admins only, and a bad file is a 422 naming the line while the old version stays", async () => {
			expect((await node.http("POST", "/api/router/reload", { user: alice, body: {} })).status).toBe(403);
			fs.writeFileSync(agentsFile, 'version: "unit-2"\nagents:\n  - id: broken\n');
			const refused = await node.http("POST", "/api/router/reload", { user: user("root", ["admin"]), body: {} });
			expect(refused).toMatchObject({ status: 422, body: { name: "ValidationError", type: "REGISTRY_INVALID", data: { active_version: "unit-1" } } });
			expect(refused.body.data.line).toEqual(expect.any(Number));
			fs.writeFileSync(agentsFile, REGISTRY.replace("unit-1", "unit-2"));
			const reloaded = await node.http("POST", "/api/router/reload", { user: user("root", ["admin"]), body: {} });
			expect(reloaded).toMatchObject({ status: 200, body: { version: "unit-2" } });
		});
	});
});
