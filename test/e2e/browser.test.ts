/// <reference lib="dom" />
/**
 * The web page end to end in real headless Chromium (playwright-core), two pages on two node
 * processes: each sees the other online, a message typed in one appears in the other, hiding one turns
 * it offline in the other. Screenshots (desktop 1280×800 and phone width) go to test-artifacts/.
 * The page cannot be steered into other API calls by its address (`?room=<id>%2Fleave%3F`), and a
 * private room's owner invites and removes members from the page.
 */
import fs from "fs";
import path from "path";
import { chromium, type Browser, type Page } from "playwright-core";
import { signToken } from "../../lib/http/auth";
import { getJson, ROOT, startNodeProcess, stopAll, uniqueNamespace, waitForMesh, type NodeProcess } from "../helpers/cluster";
import { dropFreshDatabases, freshDatabase, isolatedMeshEnv } from "../helpers/databases";
import { connectSocket } from "../helpers/sockets";
import { CHROMIUM_PATH, describeWithBrowser } from "../helpers/requirements";

jest.setTimeout(90_000);
const JWT_SECRET = "browser-test-secret-0123456789abcdef";
const ARTIFACTS = path.join(ROOT, "test-artifacts");

describeWithBrowser("the web page in Chromium, one page on each node", () => {
	const namespace = uniqueNamespace("browser");
	const room = "plaza";
	let node1: NodeProcess;
	let node2: NodeProcess;
	let browser: Browser;

	beforeAll(async () => {
		const env = {
			...isolatedMeshEnv(namespace, await freshDatabase("browser"), JWT_SECRET),
			PRESENCE_GRACE_MS: "500",
			// Public rooms readable without a token (the anonymous socket below).
			WS_PUBLIC_READ: "true",
			PRESENCE_HEARTBEAT_MS: "1000",
			// The page signs in through the development login, which a node with JWT_SECRET serves only on request.
			DEV_LOGIN: "true",
		};
		[node1, node2] = await Promise.all([startNodeProcess({ ...env, NODE_ID: "web-node1", NODE_ROLE: "node1" }), startNodeProcess({ ...env, NODE_ID: "web-node2", NODE_ROLE: "node2" })]);
		await Promise.all([node1, node2].map(n => waitForMesh(n, ["city", "presence"], 2, 40_000, "/api/city/rooms")));
		const created = await getJson(`${node1.url}/api/city/rooms`, {
			method: "POST",
			headers: { authorization: `Bearer ${signToken(JWT_SECRET, { id: "host", roles: [], teams: [] })}`, "content-type": "application/json" },
			body: JSON.stringify({ id: room, name: "Plaza" }),
		});
		expect(created.status).toBe(200);
		browser = await chromium.launch({ executablePath: CHROMIUM_PATH, args: ["--no-sandbox", "--disable-dev-shm-usage"] });
		fs.mkdirSync(ARTIFACTS, { recursive: true });
	});
	afterAll(async () => {
		await browser?.close();
		await stopAll([node1, node2]);
		await dropFreshDatabases();
	});

	function reportingErrors(page: Page, user: string): Page {
		page.on("pageerror", err => process.stdout.write(`[browser ${user}] ${err.message}\n`));
		page.on("console", msg => msg.type() === "error" && process.stdout.write(`[browser ${user} console] ${msg.text()}\n`));
		return page;
	}

	async function signIn(node: NodeProcess, user: string, viewport = { width: 1280, height: 800 }): Promise<Page> {
		const context = await browser.newContext({ viewport });
		const page = reportingErrors(await context.newPage(), user);
		await page.goto(`${node.url}/?hb=1000&room=${room}`);
		await page.fill("#login-user", user);
		await page.click("#login button");
		await page.waitForSelector(`[data-testid=room-title]:has-text("# ${room}")`);
		expect(await page.isHidden("[data-testid=login]")).toBe(true);
		return page;
	}

	const statusOf = (page: Page, user: string, status: string) => page.waitForSelector(`[data-testid=online] li[data-user="${user}"][data-status="${status}"]`, { timeout: 10_000 });

	it("shows each user online to the other, carries a message across nodes, and turns a hidden page offline", async () => {
		const alice = await signIn(node1, "alice");
		const bob = await signIn(node2, "bob");
		await statusOf(alice, "bob", "online");
		await statusOf(bob, "alice", "online");
		await alice.waitForSelector('[data-testid=node]:has-text("web-node1")', { timeout: 5_000 });
		await bob.waitForSelector('[data-testid=node]:has-text("web-node2")', { timeout: 5_000 });

		// With WS_PUBLIC_READ, an anonymous socket may read a public room but not post in it.
		const anonymous = await connectSocket(node2.url, `/city/rooms/${room}`, {});
		await alice.fill("[data-testid=message-input]", "Hello from NODE1");
		await alice.click("[data-testid=send]");
		await bob.waitForSelector('[data-testid=messages] li:has-text("Hello from NODE1")', { timeout: 10_000 });
		expect(await bob.textContent("[data-testid=messages] li .author")).toBe("alice");
		expect((await anonymous.next("message", m => m.body === "Hello from NODE1")).author_id).toBe("alice");
		expect(await anonymous.socket.emitWithAck("message", { body: "anonymous" })).toMatchObject({ ok: false, error: { code: 401 } });
		anonymous.close();
		await alice.screenshot({ path: path.join(ARTIFACTS, "city-desktop-alice.png") });
		await bob.screenshot({ path: path.join(ARTIFACTS, "city-desktop-bob.png") });

		// Headless pages never become hidden by themselves: flip visibilityState and fire the event the
		// browser would fire when the tab goes to the background; the page's own handler does the rest.
		await bob.evaluate(() => {
			Object.defineProperty(document, "visibilityState", { value: "hidden", configurable: true });
			document.dispatchEvent(new Event("visibilitychange"));
		});
		await statusOf(alice, "bob", "offline");
		await bob.evaluate(() => {
			Object.defineProperty(document, "visibilityState", { value: "visible", configurable: true });
			document.dispatchEvent(new Event("visibilitychange"));
		});
		await statusOf(alice, "bob", "online");

		const phone = await signIn(node2, "carol", { width: 390, height: 844 });
		await statusOf(phone, "alice", "online");
		await phone.screenshot({ path: path.join(ARTIFACTS, "city-phone-carol.png"), fullPage: true });
		// Tidy at phone width: nothing wider than the screen.
		expect(await phone.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(390);
	});

	/** Signs in on a page opened at `query`; every request the page makes is recorded (path and method). */
	async function signInAt(node: NodeProcess, user: string, query: string): Promise<{ page: Page; requests: string[] }> {
		const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
		const page = reportingErrors(await context.newPage(), user);
		const requests: string[] = [];
		page.on("request", request => requests.push(`${request.method()} ${new URL(request.url()).pathname}${new URL(request.url()).search}`));
		await page.goto(`${node.url}/${query}`);
		await page.fill("#login-user", user);
		await page.click("#login button");
		await page.waitForSelector("[data-testid=rooms] li");
		return { page, requests };
	}

	it("cannot be steered into other API calls by the room in its address; every value it puts into a URL is checked and encoded", async () => {
		const hideout = "hideout";
		const ownerHeaders = { authorization: `Bearer ${signToken(JWT_SECRET, { id: "ora", roles: [], teams: [] })}`, "content-type": "application/json" };
		expect((await getJson(`${node1.url}/api/city/rooms`, { method: "POST", headers: ownerHeaders, body: JSON.stringify({ id: hideout, name: "Hideout", is_public: false }) })).status).toBe(200);
		const steerings = [`${hideout}/leave?`, `${hideout}/members/ora?`, `../../presence/online?`, `${hideout}%2Fleave`, `${hideout}\\leave`, "Hideout", `${hideout}#x`];
		const { page, requests } = await signInAt(node1, "ora", `?room=${encodeURIComponent(steerings[0])}`);
		for (const steering of steerings) {
			// Signed in already (the token is in sessionStorage): each address starts the page again.
			if (steering !== steerings[0]) {
				requests.length = 0;
				await page.goto(`${node1.url}/?room=${encodeURIComponent(steering)}`);
			}
			await page.waitForSelector('[data-testid=error]:has-text("Not a room id")', { timeout: 10_000 });
			await page.waitForTimeout(300);
			// Only the page's fixed start-up calls, none built from the address: the room list, the agent
			// panel's agent list (public/agents.js loads it when the app shows) and the node list (polled, so
			// it may come more than once).
			const apiCalls = [...new Set(requests.filter(r => r.includes("/api/")))].sort();
			expect({ steering, apiCalls }).toEqual({ steering, apiCalls: ["GET /api/city/rooms", "GET /api/router/agents", "GET /api/v1/nodes?limit=200"] });
		}
		await page.context().close();
		const members = await getJson(`${node1.url}/api/city/rooms/${hideout}/members`, { headers: ownerHeaders });
		expect(members.body.members.map((m: { user_id: string }) => m.user_id)).toEqual(["ora"]);
	});

	it("a private room's owner invites a member from the page; the member sees the room; removal closes the member's room at once", async () => {
		const room = "atelier";
		const { page: ora } = await signInAt(node1, "ora", "");
		await ora.fill("#new-room-id", room);
		await ora.check("[data-testid=new-room-private]");
		await ora.click("#new-room button");
		await ora.waitForSelector(`[data-testid=room-title]:has-text("# ${room}")`);
		await ora.waitForSelector('[data-testid=members] li[data-user="ora"]:has-text("owner")');
		expect(await ora.isVisible("[data-testid=invite]")).toBe(true);
		await ora.fill("[data-testid=invite-user]", "bea");
		await ora.click("[data-testid=invite] button");
		await ora.waitForSelector('[data-testid=members] li[data-user="bea"]');

		const { page: bea } = await signInAt(node2, "bea", "");
		await bea.click(`[data-testid=rooms] button[data-room="${room}"]`);
		await bea.waitForSelector(`[data-testid=room-title]:has-text("# ${room}")`);
		await bea.waitForSelector('[data-testid=members] li[data-user="ora"]');
		expect(await bea.isVisible("[data-testid=invite]")).toBe(false);
		await ora.fill("[data-testid=message-input]", "welcome, bea");
		await ora.click("[data-testid=send]");
		await bea.waitForSelector('[data-testid=messages] li:has-text("welcome, bea")', { timeout: 10_000 });
		await ora.screenshot({ path: path.join(ARTIFACTS, "city-members-owner.png") });

		await ora.click('[data-testid=members] li[data-user="bea"] [data-testid=remove-member]');
		await ora.waitForSelector('[data-testid=members] li[data-user="bea"]', { state: "detached" });
		await bea.waitForSelector('[data-testid=error]:has-text("no longer a member")', { timeout: 5_000 });
		await ora.fill("[data-testid=message-input]", "after bea left");
		await ora.click("[data-testid=send]");
		await ora.waitForSelector('[data-testid=messages] li:has-text("after bea left")');
		await bea.waitForTimeout(500);
		expect(await bea.isVisible('[data-testid=messages] li:has-text("after bea left")')).toBe(false);
	});

	it("renews an expired token by itself: the server closes its sockets, the page reconnects with a new token and carries on", async () => {
		const alice = await signIn(node1, "alice");
		const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
		const shortLived = signToken(JWT_SECRET, { id: "dora", roles: [], teams: [] }, 2);
		// Signed in already, with a token that expires in 1-2 s (as a page left open for an hour would be).
		await context.addInitScript(([token]) => {
			if (!sessionStorage.getItem("token")) sessionStorage.setItem("token", token);
			sessionStorage.setItem("user", "dora");
		}, [shortLived]);
		const dora = reportingErrors(await context.newPage(), "dora");
		await dora.goto(`${node2.url}/?hb=1000&room=${room}`);
		await dora.waitForSelector(`[data-testid=room-title]:has-text("# ${room}")`);
		await statusOf(alice, "dora", "online");

		await dora.waitForFunction(token => sessionStorage.getItem("token") !== token, shortLived, { timeout: 10_000 });
		await new Promise(resolve => setTimeout(resolve, 1_500)); // past the grace period, were she gone
		await statusOf(alice, "dora", "online");
		await dora.fill("[data-testid=message-input]", "still here after renewal");
		await dora.click("[data-testid=send]");
		await alice.waitForSelector('[data-testid=messages] li:has-text("still here after renewal")', { timeout: 10_000 });
		expect(await dora.textContent("[data-testid=error]")).toBe("");
	});
});
