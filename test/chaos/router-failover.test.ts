/**
 * A model served by two nodes, a request entering a third (gateway-only) node, and the node running the
 * generation SIGKILLed mid-request: the router retries the run on the other node serving the model and the
 * caller gets a normal answer, with the lost node in decision.attempts — within a few seconds.
 */
import fs from "fs";
import os from "os";
import path from "path";
import { signToken } from "../../lib/http/auth";
import { getJson, startNodeProcess, stopAll, uniqueNamespace, waitFor, waitForMesh, type NodeProcess } from "../helpers/cluster";
import { dropFreshDatabases, freshDatabase, isolatedMeshEnv } from "../helpers/databases";
import { describeWithNatsAndPostgres } from "../helpers/requirements";
import { startOllamaFixture, type OllamaFixture } from "../fixtures/ollama-server";

jest.setTimeout(120_000);
const JWT_SECRET = "router-chaos-secret-0123456789abcdef";

describeWithNatsAndPostgres("router: the serving node dies mid-request, another node serving the model answers", () => {
	const namespace = uniqueNamespace("routerchaos");
	let gateway: NodeProcess;
	let modelA: NodeProcess;
	let modelB: NodeProcess;
	// One runtime per model node: the runtime that receives the chat names the node running the generation.
	let ollamaA: OllamaFixture;
	let ollamaB: OllamaFixture;
	let dir: string;
	const user = signToken(JWT_SECRET, { id: "u1", roles: [], teams: [] });

	beforeAll(async () => {
		[ollamaA, ollamaB] = await Promise.all([0, 1].map(() => startOllamaFixture({ models: ["shared:7b"], pieceDelayMs: 150 })));
		dir = fs.mkdtempSync(path.join(os.tmpdir(), "router-chaos-"));
		const agentsFile = path.join(dir, "agents.yml");
		fs.writeFileSync(agentsFile, 'version: "chaos"\nagents:\n  - id: shared-agent\n    model: shared:7b\n');
		const env = { ...isolatedMeshEnv(namespace, await freshDatabase("routerchaos"), JWT_SECRET), ROUTER_AGENTS_FILE: agentsFile, SWAPPER_ADVERTISE_MS: "200", SWAPPER_LOCAL_ECHO: "false" };
		[gateway, modelA, modelB] = await Promise.all([
			startNodeProcess({ ...env, NODE_ID: "chaos-gateway", SERVICES: "api,router" }),
			startNodeProcess({ ...env, NODE_ID: "chaos-model-a", SERVICES: "swapper-proxy", OLLAMA_URL: ollamaA.url }),
			startNodeProcess({ ...env, NODE_ID: "chaos-model-b", SERVICES: "swapper-proxy", OLLAMA_URL: ollamaB.url }),
		]);
		await waitForMesh(gateway, ["router", "swapper-proxy"], 3, 60_000, "/api/router/agents");
		await waitFor("both model nodes on the gateway's board", async () => {
			const { body } = await getJson(`${gateway.url}/api/router/route`, {
				method: "POST",
				headers: { authorization: `Bearer ${user}`, "content-type": "application/json" },
				body: JSON.stringify({ agent: "shared-agent", message: "warm" }),
			});
			return body?.decision?.candidates?.length === 2;
		});
		// The test finds the serving node by its in-flight count on the board: no warm-up run may still
		// show there (an advert sent while a warm-up ran can arrive after it finished).
		await waitFor("no warm-up run in flight on the board", async () => {
			const { body } = await getJson(`${gateway.url}/api/swapper-proxy/models`, { headers: { authorization: `Bearer ${user}` } });
			const models = (body.models ?? []) as Array<{ in_flight: number }>;
			return models.length === 2 && models.every(m => m.in_flight === 0);
		});
	});
	afterAll(async () => {
		await stopAll([gateway, modelA, modelB]);
		await Promise.all([ollamaA?.close(), ollamaB?.close()]);
		await dropFreshDatabases();
		fs.rmSync(dir, { recursive: true, force: true });
	});

	it("retries on the other node and answers 200 within a few seconds", async () => {
		const chats = (o: OllamaFixture) => o.received.filter(r => r.path === "/api/chat").length;
		const chatsBefore = [chats(ollamaA), chats(ollamaB)];
		const started = Date.now();
		const pending = getJson(`${gateway.url}/api/router/route`, {
			method: "POST",
			headers: { authorization: `Bearer ${user}`, "content-type": "application/json" },
			body: JSON.stringify({ agent: "shared-agent", message: "one two three four five six seven eight nine ten eleven twelve" }),
		});
		// Which node runs it: the one whose runtime received the chat. (Not the mesh-wide model list: an advert
		// sent during the warm-up can still show in_flight > 0 on the other node for up to SWAPPER_ADVERTISE_MS.)
		const serving = await waitFor(
			"the generation to reach a runtime",
			async () => (chats(ollamaA) > chatsBefore[0] ? modelA : chats(ollamaB) > chatsBefore[1] ? modelB : undefined),
			10_000,
			20,
		);
		const survivor = serving === modelA ? modelB : modelA;
		await serving.kill("SIGKILL");
		const { status, body } = await pending;
		const elapsed = Date.now() - started;
		expect(status).toBe(200);
		expect(body).toMatchObject({ node: survivor.nodeID, model: "shared:7b", decision: { attempts: [{ node: serving.nodeID }] } });
		expect(body.response).toContain("twelve");
		expect(elapsed).toBeLessThan(10_000);
		process.stdout.write(`[chaos] router retry after SIGKILL answered in ${elapsed} ms (${body.decision.attempts[0].error_type})\n`);
	});

	it("a stream whose node dies after it started ends with a retryable SSE error event within a few seconds", async () => {
		const res = await fetch(`${gateway.url}/api/router/route`, {
			method: "POST",
			headers: { authorization: `Bearer ${user}`, "content-type": "application/json" },
			body: JSON.stringify({ agent: "shared-agent", message: "one two three four five six seven eight nine ten eleven twelve", stream: true }),
		});
		expect(res.status).toBe(200);
		const reader = (res.body as ReadableStream<Uint8Array>).getReader();
		const decoder = new TextDecoder();
		let text = "";
		while (!text.includes('\ndata: {"text"')) text += decoder.decode((await reader.read()).value);
		const serving = /"node":"([^"]+)"/.exec(text)?.[1];
		const victim = [modelA, modelB].find(n => n.nodeID === serving);
		expect(victim).toBeDefined();
		const killedAt = Date.now();
		await victim!.kill("SIGKILL");
		for (;;) {
			const { value, done } = await reader.read();
			if (done) break;
			text += decoder.decode(value);
		}
		const elapsed = Date.now() - killedAt;
		const error = /event: error\ndata: (.*)/.exec(text)?.[1];
		expect(error).toBeDefined();
		expect(JSON.parse(error!)).toMatchObject({ retryable: true, request_id: expect.any(String) });
		expect(text).not.toContain("event: done");
		expect(elapsed).toBeLessThan(8_000);
		process.stdout.write(`[chaos] stream ended with an error event ${elapsed} ms after SIGKILL\n`);
	});
});
