/// <reference lib="dom" />
/**
 * The agent panel in real headless Chromium: the page is served by NODE1, which has no model; the
 * agent's model (local-echo, streaming a piece every 40 ms) lives on NODE2. The answer must arrive over
 * the /agents socket.io namespace (not HTTP), piece by piece; then the panel names NODE2 and the model
 * and shows the decision; Stop ends a run and frees NODE2's model.
 */
import fs from "fs";
import path from "path";
import { chromium, type Browser } from "playwright-core";
import { ROOT, startNodeProcess, stopAll, uniqueNamespace, waitFor, waitForMesh, type NodeProcess } from "../helpers/cluster";
import { dropFreshDatabases, freshDatabase, isolatedMeshEnv } from "../helpers/databases";
import { CHROMIUM_PATH, describeWithBrowser } from "../helpers/requirements";

jest.setTimeout(90_000);
const JWT_SECRET = "agents-browser-secret-0123456789abcdef";
const ARTIFACTS = path.join(ROOT, "test-artifacts");

describeWithBrowser("the agent panel in Chromium", () => {
	const namespace = uniqueNamespace("agentsweb");
	let node1: NodeProcess;
	let node2: NodeProcess;
	let browser: Browser;

	beforeAll(async () => {
		// The page signs in through the development login, which a node with a real JWT_SECRET serves only on request.
		const env = { ...isolatedMeshEnv(namespace, await freshDatabase("agentsweb"), JWT_SECRET), SWAPPER_ADVERTISE_MS: "300", DEV_LOGIN: "true" };
		[node1, node2] = await Promise.all([
			startNodeProcess({ ...env, NODE_ID: "agents-node1", SWAPPER_LOCAL_ECHO: "false" }),
			startNodeProcess({ ...env, NODE_ID: "agents-node2", SWAPPER_LOCAL_ECHO_TOKEN_MS: "40" }),
		]);
		await Promise.all([node1, node2].map(n => waitForMesh(n, ["router", "swapper-proxy", "city"], 2, 60_000, "/api/router/agents")));
		browser = await chromium.launch({ executablePath: CHROMIUM_PATH, args: ["--no-sandbox", "--disable-dev-shm-usage"] });
		fs.mkdirSync(ARTIFACTS, { recursive: true });
	});
	afterAll(async () => {
		await browser?.close();
		await stopAll([node1, node2]);
		await dropFreshDatabases();
	});

	it("asks an agent on NODE1's page, streams the answer from NODE2's model, and shows node, model and decision", async () => {
		const page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
		page.on("pageerror", err => process.stdout.write(`[browser] ${err.message}\n`));
		const routeRequests: string[] = [];
		page.on("request", req => req.url().includes("/api/router/route") && routeRequests.push(req.url()));
		const sentFrames: string[] = [];
		page.on("websocket", ws => ws.on("framesent", frame => sentFrames.push(String(frame.payload))));
		await page.goto(`${node1.url}/`);
		await page.fill("#login-user", "ada");
		await page.click("#login button");
		await page.waitForSelector("[data-testid=agent-pick] option[value=assistant]", { state: "attached", timeout: 15_000 });
		await page.selectOption("[data-testid=agent-pick]", "assistant");
		await page.fill("[data-testid=agent-message]", "which node are you on today");
		await page.click("[data-testid=agent-ask]");

		// Mid-stream: part of the answer is shown while the final event has not arrived yet.
		await page.waitForSelector('[data-testid=agent-where]:has-text("answering:")', { timeout: 15_000 });
		const partial = await page.waitForFunction(() => {
			const text = document.querySelector("[data-testid=agent-answer]")?.textContent ?? "";
			const where = document.querySelector("[data-testid=agent-where]")?.textContent ?? "";
			return text.length > 0 && where.startsWith("answering:") ? text : false;
		});
		const partialText = (await partial.jsonValue()) as string;

		await page.waitForSelector("[data-testid=agent-where][data-node=agents-node2]", { timeout: 15_000 });
		const answer = (await page.textContent("[data-testid=agent-answer]")) ?? "";
		expect(answer.startsWith(partialText)).toBe(true);
		expect(answer.length).toBeGreaterThan(partialText.length);
		expect(answer).toContain("which node are you on today");
		expect(answer).toContain("[development model local-echo]");
		expect(await page.textContent("[data-testid=agent-where]")).toMatch(/assistant · local-echo on agents-node2 \(local-echo, development model\)/);
		expect(await page.textContent("[data-testid=agent-why]")).toContain("local-echo on agents-node2");
		// It came over the socket: an `ask` on /agents, and no HTTP route call.
		expect(sentFrames.some(f => f.startsWith("42/agents,") && f.includes('"ask"') && f.includes("which node are you on today"))).toBe(true);
		expect(routeRequests).toEqual([]);
		await page.click("details summary");
		await page.screenshot({ path: path.join(ARTIFACTS, "agents-panel.png"), fullPage: true });

		// Stop: the run ends at once, the panel says so, and NODE2's model has nothing in flight.
		await page.fill("[data-testid=agent-message]", Array.from({ length: 120 }, (_, i) => `word${i}`).join(" "));
		await page.click("[data-testid=agent-ask]");
		await page.waitForFunction(() => (document.querySelector("[data-testid=agent-answer]")?.textContent ?? "").includes("word3"));
		await page.click("[data-testid=agent-stop]");
		await page.waitForSelector('[data-testid=agent-answer]:has-text("⚠ stopped")', { timeout: 5_000 });
		expect(await page.isEnabled("[data-testid=agent-ask]")).toBe(true);
		expect(await page.isHidden("[data-testid=agent-stop]")).toBe(true);
		expect(await page.textContent("[data-testid=agent-answer]")).not.toContain("word119");
		const bearer = { authorization: `Bearer ${await page.evaluate(() => sessionStorage.getItem("token"))}` };
		await waitFor("NODE2's local-echo to have nothing in flight", async () => {
			const status = await fetch(`${node2.url}/api/swapper-proxy/status`, { headers: bearer }).then(r => r.json());
			return status.models.find((m: { model: string }) => m.model === "local-echo")?.in_flight === 0;
		}, 5_000, 50);

		// A refusal is shown, not swallowed: an unknown agent (the picker offers only known ones).
		await page.evaluate(() => {
			const option = document.createElement("option");
			option.value = "nobody";
			document.getElementById("agent-pick")?.appendChild(option);
		});
		await page.selectOption("[data-testid=agent-pick]", "nobody");
		await page.fill("[data-testid=agent-message]", "hello?");
		await page.click("[data-testid=agent-ask]");
		await page.waitForSelector('[data-testid=agent-answer]:has-text("⚠ No agent")', { timeout: 5_000 });

		// Refusals are shown, not swallowed: the empty question never leaves the page (required field).
		await page.fill("[data-testid=agent-message]", "");
		await page.click("[data-testid=agent-ask]");
		expect(await page.evaluate(() => (document.getElementById("agent-message") as HTMLInputElement).validity.valueMissing)).toBe(true);
	});
});
