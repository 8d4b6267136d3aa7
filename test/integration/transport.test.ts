/**
 * Transport choice with real processes: production refuses to start without a usable NATS, and a
 * development node with no NATS anywhere falls back to the TCP transporter, loudly, and still forms a
 * mesh. The fallback runs in a private network namespace where truly nothing answers on port 4222.
 */
import { spawn, spawnSync, type ChildProcess } from "child_process";
import { randomBytes } from "crypto";
import fs from "fs";
import os from "os";
import path from "path";
import { freePort, ROOT, startNodeProcess, uniqueNamespace, waitFor, type NodeProcess } from "../helpers/cluster";
import { describeWithNats, LOCAL_DATABASE_URL } from "../helpers/requirements";

const PRODUCTION = { NODE_ENV: "production", JWT_SECRET: randomBytes(36).toString("base64"), MEMORY_ENCRYPTION_KEY: randomBytes(32).toString("base64"), DATABASE_URL: LOCAL_DATABASE_URL, MESH_NAMESPACE: uniqueNamespace("prod") };

async function fatalLine(node: NodeProcess): Promise<string> {
	expect(await node.exited).toBe(1);
	return node.logs.join("\n");
}

describe("production mode refuses an unusable NATS", () => {
	it("exits non-zero with a clear message when NATS does not answer", async () => {
		const port = await freePort();
		const node = await startNodeProcess({ ...PRODUCTION, NATS_URL: `nats://127.0.0.1:${port}` });
		expect(await fatalLine(node)).toMatch(new RegExp(`"level":"fatal".*NATS at nats://127.0.0.1:${port} is not usable`));
	});

	it("exits non-zero when NODE_ENV=production has no NATS_URL at all", async () => {
		const node = await startNodeProcess({ ...PRODUCTION });
		expect(await fatalLine(node)).toContain("NATS_URL: required when NODE_ENV=production");
	});
});

const natsServerInstalled = spawnSync("nats-server", ["--version"]).status === 0;
describeWithNats("production mode refuses wrong NATS credentials", () => {
	let server: ChildProcess;
	let port: number;
	beforeAll(async () => {
		if (!natsServerInstalled) throw new Error("nats-server binary not found (Debian package nats-server)");
		port = await freePort();
		server = spawn("nats-server", ["-a", "127.0.0.1", "-p", String(port), "--user", "mesh", "--pass", "right-password"], { stdio: "ignore" });
		await waitFor("the test NATS server", async () => spawnSync("bash", ["-c", `exec 3<>/dev/tcp/127.0.0.1/${port}`]).status === 0, 10_000);
	});
	afterAll(() => server?.kill("SIGTERM"));

	it("exits non-zero naming the authorization failure, and never prints the password", async () => {
		const node = await startNodeProcess({ ...PRODUCTION, NATS_URL: `nats://127.0.0.1:${port}`, NATS_USER: "mesh", NATS_PASSWORD: "wrong-password" });
		const output = await fatalLine(node);
		expect(output).toMatch(/not usable: .*AUTHORIZATION_VIOLATION|Authorization Violation/i);
		expect(output).not.toContain("wrong-password");
	});

	it("starts with the right credentials", async () => {
		const node = await startNodeProcess({ ...PRODUCTION, NATS_URL: `nats://127.0.0.1:${port}`, NATS_USER: "mesh", NATS_PASSWORD: "right-password", SERVICES: "api,mesh" });
		try {
			await waitFor("the node to serve", async () => (await fetch(`${node.url}/health`)).status === 200, 30_000);
			expect(node.logs.join("\n")).not.toContain("right-password");
		} finally {
			await node.kill("SIGTERM");
		}
	});
});

/** A process holding a fresh network namespace with only loopback; other processes join it via nsenter. */
function canUseNetworkNamespaces(): boolean {
	return spawnSync("unshare", ["-n", "true"]).status === 0 && spawnSync("nsenter", ["--version"]).status === 0;
}

const describeNetns = canUseNetworkNamespaces() ? describe : process.env.CI ? describe : describe.skip;
if (!canUseNetworkNamespaces()) process.stdout.write("SKIP TCP fallback: needs root for unshare -n/nsenter (CI runs it)\n");

describeNetns("development fallback to the TCP transporter when no NATS answers", () => {
	let holder: ChildProcess;
	const pgDir = fs.mkdtempSync(path.join(os.tmpdir(), "daarion-netns-pg-"));
	const children: ChildProcess[] = [];
	const logs: Record<string, string[]> = { a: [], b: [] };

	const inNamespace = (args: string[], options = {}) =>
		spawn("nsenter", ["-t", String(holder.pid), "-n", "--", ...args], { cwd: ROOT, ...options });

	function fetchInside(url: string): { status: number; body: any } | null {
		const script = `fetch(${JSON.stringify(url)}).then(async r => console.log(JSON.stringify({ status: r.status, body: await r.json() }))).catch(() => process.exit(1))`;
		const res = spawnSync("nsenter", ["-t", String(holder.pid), "-n", "--", process.execPath, "-e", script], { encoding: "utf8", timeout: 5_000 });
		return res.status === 0 ? JSON.parse(res.stdout) : null;
	}

	function startInside(name: "a" | "b", env: Record<string, string>): void {
		const child = inNamespace([process.execPath, "--import", "tsx", "scripts/run-node.ts"], {
			env: { PATH: process.env.PATH, HOME: process.env.HOME, MESH_NAMESPACE: "fallback", EMBEDDED_PG_DIR: pgDir, EMBEDDED_PG_PORT: "55432", ...env },
			stdio: ["ignore", "pipe", "pipe"],
		});
		const collect = (chunk: Buffer) => logs[name].push(...chunk.toString().split("\n").filter(Boolean));
		child.stdout?.on("data", collect);
		child.stderr?.on("data", collect);
		children.push(child);
	}

	beforeAll(async () => {
		holder = spawn("unshare", ["-n", "bash", "-c", "ip link set lo up && exec sleep 600"], { stdio: "ignore" });
		await new Promise(r => setTimeout(r, 300));
		// Node A starts the embedded PostgreSQL inside the namespace; B finds it already answering.
		startInside("a", { NODE_ID: "fallback-a", PORT: "9300", SERVICES: "api" });
		await waitFor("node A", async () => fetchInside("http://127.0.0.1:9300/health")?.status === 200, 60_000, 500);
		startInside("b", { NODE_ID: "fallback-b", NODE_ROLE: "node2", PORT: "9301", SERVICES: "api,mesh" });
	}, 90_000);

	afterAll(async () => {
		for (const child of children.reverse()) {
			child.kill("SIGTERM");
			await new Promise(r => (child.exitCode !== null ? r(null) : child.once("exit", r)));
		}
		holder?.kill("SIGKILL");
		fs.rmSync(pgDir, { recursive: true, force: true });
	});

	it("says so in one WARN line and forms a mesh over TCP: A's gateway is served by B", async () => {
		const served = await waitFor("A's gateway to reach B", async () => {
			const res = fetchInside("http://127.0.0.1:9300/api/mesh/whoami");
			return res?.status === 200 && res;
		}, 40_000, 500);
		expect(served.body).toMatchObject({ nodeID: "fallback-b", role: "node2" });
		const warnings = logs.a.map(l => JSON.parse(l)).filter(l => l.level === "warn" && /NO NATS: falling back to Moleculer's TCP transporter/.test(l.message));
		expect(warnings).toHaveLength(1);
		expect(fetchInside("http://127.0.0.1:9300/health")?.body).toMatchObject({ node: { transport: "tcp" }, dependencies: { transport: { status: "up" }, database: { status: "up" } } });
	}, 60_000);
});
