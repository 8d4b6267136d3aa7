/// <reference lib="dom" />
/**
 * The page's node list in real headless Chromium (playwright-core), live from GET /api/v1/nodes with the
 * signed-in user's token: each node with its role, status and heartbeat age; a node that registers appears
 * without a reload (pushed: that page polls only once a minute); a SIGKILLed node turns offline and
 * an external node that stops heartbeating ages to degraded and offline (and is online again after a
 * heartbeat), all followed by the page's poll.
 * Screenshot to test-artifacts/registry-desktop.png.
 */
import fs from "fs";
import path from "path";
import { chromium, type Browser, type Page } from "playwright-core";
import { signToken } from "../../lib/http/auth";
import { getJson, ROOT, startNodeProcess, stopAll, uniqueNamespace, waitForMesh, type NodeProcess } from "../helpers/cluster";
import { dropFreshDatabases, freshDatabase, isolatedMeshEnv } from "../helpers/databases";
import { CHROMIUM_PATH, describeWithBrowser } from "../helpers/requirements";

jest.setTimeout(150_000);
const JWT_SECRET = "registry-page-secret-0123456789abcdef";
const ARTIFACTS = path.join(ROOT, "test-artifacts");
const service = { authorization: `Bearer ${signToken(JWT_SECRET, { id: "edge-agent", roles: ["service"], teams: [] })}`, "content-type": "application/json" };

describeWithBrowser("the page shows the node registry, live", () => {
	const namespace = uniqueNamespace("regpage");
	let env: Record<string, string>;
	let node1: NodeProcess;
	let extra: NodeProcess | undefined;
	let browser: Browser;

	beforeAll(async () => {
		env = {
			...isolatedMeshEnv(namespace, await freshDatabase("regpage"), JWT_SECRET),
			DEV_LOGIN: "true",
			LEASE_TTL_MS: "2000",
			NODE_HEARTBEAT_MS: "500",
			// Degraded after 3 s without a heartbeat, offline after 6 s.
			NODE_OFFLINE_AFTER_MS: "6000",
		};
		node1 = await startNodeProcess({ ...env, NODE_ID: "reg-web1", NODE_ROLE: "node1" });
		await waitForMesh(node1, ["node-registry", "presence"], 1, 60_000, "/api/v1/nodes");
		browser = await chromium.launch({ executablePath: CHROMIUM_PATH, args: ["--no-sandbox", "--disable-dev-shm-usage"] });
		fs.mkdirSync(ARTIFACTS, { recursive: true });
	});
	afterAll(async () => {
		await browser?.close();
		await stopAll([node1, extra]);
		await dropFreshDatabases();
	});

	async function signIn(user: string, nodesPollMs: number): Promise<Page> {
		const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
		page.on("pageerror", err => process.stdout.write(`[browser ${user}] ${err.message}\n`));
		await page.goto(`${node1.url}/?nodes=${nodesPollMs}`);
		await page.fill("#login-user", user);
		await page.click("#login button");
		await page.waitForSelector("[data-testid=me]:not([hidden])");
		return page;
	}

	const nodeRow = (page: Page, nodeID: string, status: string, timeout = 10_000) => page.waitForSelector(`[data-testid=nodes] li[data-node="${nodeID}"][data-status="${status}"]`, { timeout });

	it("lists nodes with role, status and last heartbeat; a new node appears without a reload, a killed one turns offline", async () => {
		const polling = await signIn("olga", 1_000);
		const row = await nodeRow(polling, "reg-web1", "online");
		expect(await row.getAttribute("data-role")).toBe("node1");
		expect(await row.textContent()).toMatch(/reg-web1\s*node1 · online · \d+ s ago/);

		// A page that polls once a minute: only the gateway's push can bring a new node in within seconds.
		const pushed = await signIn("petr", 60_000);
		await nodeRow(pushed, "reg-web1", "online");
		const registered = await getJson(`${node1.url}/api/v1/nodes/register`, { method: "POST", headers: service, body: JSON.stringify({ node_id: "ext-pushed", role: "edge" }) });
		expect(registered.status).toBe(200);
		await nodeRow(pushed, "ext-pushed", "online", 5_000);

		// A mesh node starting (slow on a loaded machine) and then SIGKILLed, followed by the polling page.
		extra = await startNodeProcess({ ...env, NODE_ID: "reg-extra", NODE_ROLE: "node2", SERVICES: "node-registry" });
		await nodeRow(polling, "reg-extra", "online", 60_000);
		await polling.screenshot({ path: path.join(ARTIFACTS, "registry-desktop.png") });

		const killedAt = Date.now();
		await extra.kill("SIGKILL");
		await nodeRow(polling, "reg-extra", "offline", 15_000);
		process.stdout.write(`[registry-page] SIGKILLed node offline on the page after ${Date.now() - killedAt} ms (registry bound 5 s + poll 1 s)\n`);
		expect(await polling.getAttribute('[data-testid=nodes] li[data-node="reg-web1"]', "data-status")).toBe("online");
	});

	it("an external node registered over HTTP shows online, then degraded when its heartbeats stop", async () => {
		const page = await signIn("rita", 500);
		await nodeRow(page, "reg-web1", "online");
		const registered = await getJson(`${node1.url}/api/v1/nodes/register`, { method: "POST", headers: service, body: JSON.stringify({ node_id: "ext-page", role: "edge" }) });
		expect(registered.status).toBe(200);
		const row = await nodeRow(page, "ext-page", "online", 3_000);
		expect(await row.getAttribute("data-role")).toBe("edge");
		await nodeRow(page, "ext-page", "degraded", 15_000);
		await nodeRow(page, "ext-page", "offline", 15_000);
		const beat = await getJson(`${node1.url}/api/v1/nodes/ext-page/heartbeat`, { method: "POST", headers: service, body: JSON.stringify({ status: "online" }) });
		expect(beat.status).toBe(200);
		await nodeRow(page, "ext-page", "online", 10_000);
	});
});
