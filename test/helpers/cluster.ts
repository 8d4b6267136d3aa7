/**
 * Real node processes for integration and chaos tests: `tsx scripts/run-node.ts` with its own env,
 * logs captured line by line, killed with real signals.
 */
import { spawn, type ChildProcess } from "child_process";
import { randomBytes } from "crypto";
import net from "net";
import path from "path";
import { startPgServerProcess, type PgServerProcess } from "../../dev/embedded-postgres";

export const ROOT = path.resolve(__dirname, "..", "..");

/**
 * Env that lets a development node run the test doubles in test/fixtures/services (the `drill`
 * service: writes held open, slow echoes, slow queries). Production nodes refuse it.
 */
export const TEST_SERVICES_ENV = { TEST_SERVICES_DIR: path.join(ROOT, "test", "fixtures", "services") };

export interface NodeProcess {
	nodeID: string;
	port: number;
	url: string;
	child: ChildProcess;
	logs: string[];
	exited: Promise<number | null>;
	/** parsed JSON log lines (non-JSON lines are skipped) */
	jsonLogs(): Array<Record<string, unknown>>;
	kill(signal?: NodeJS.Signals): Promise<number | null>;
}

export function uniqueNamespace(prefix = "test"): string {
	return `${prefix}-${randomBytes(4).toString("hex")}`;
}

export function freePort(): Promise<number> {
	return new Promise((resolve, reject) => {
		const server = net.createServer();
		server.listen(0, "127.0.0.1", () => {
			const { port } = server.address() as net.AddressInfo;
			server.close(() => resolve(port));
		});
		server.once("error", reject);
	});
}

/** How a node starts: from the TypeScript source of a checkout through tsx (benchmarks run an older commit's checkout for their "before" numbers), or the compiled build (`npm run build` first). */
export const tsxNode = (root = ROOT) => ["--import", "tsx", path.join(root, "scripts", "run-node.ts")];
export const TSX_NODE = tsxNode();
export const COMPILED_NODE = [path.join(ROOT, "dist", "scripts", "run-node.js")];

/** `ownProcessGroup`: the process leads a group of its own, as a terminal runs a command, so `process.kill(-pid)` is a Ctrl-C to it and its children. */
export async function startNodeProcess(env: Record<string, string>, args: string[] = TSX_NODE, cwd = ROOT, { ownProcessGroup = false } = {}): Promise<NodeProcess> {
	const port = env.PORT ? Number(env.PORT) : await freePort();
	const nodeID = env.NODE_ID ?? `node-${port}`;
	const child = spawn(process.execPath, args, {
		cwd,
		env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/root", LOG_LEVEL: "info", ...env, PORT: String(port), NODE_ID: nodeID },
		stdio: ["ignore", "pipe", "pipe"],
		detached: ownProcessGroup,
	});
	const logs: string[] = [];
	const collect = (chunk: Buffer) => logs.push(...chunk.toString("utf8").split("\n").filter(Boolean));
	child.stdout?.on("data", collect);
	child.stderr?.on("data", collect);
	const exited = new Promise<number | null>(resolve => child.once("exit", code => resolve(code)));
	return {
		nodeID,
		port,
		url: `http://127.0.0.1:${port}`,
		child,
		logs,
		exited,
		jsonLogs: () =>
			logs.flatMap(line => {
				try {
					return [JSON.parse(line) as Record<string, unknown>];
				} catch {
					return [];
				}
			}),
		kill: async (signal: NodeJS.Signals = "SIGTERM") => {
			if (child.exitCode === null && child.signalCode === null) child.kill(signal);
			return exited;
		},
	};
}

export async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false>, timeoutMs = 30_000, everyMs = 100): Promise<T> {
	const deadline = Date.now() + timeoutMs;
	let lastError: unknown;
	while (Date.now() < deadline) {
		try {
			const value = await probe();
			if (value) return value;
		} catch (err) {
			lastError = err;
		}
		await new Promise(r => setTimeout(r, everyMs));
	}
	throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: ${(lastError as Error).message}` : ""}`);
}

export async function getJson(url: string, init?: RequestInit): Promise<{ status: number; body: any; headers: Headers }> {
	const res = await fetch(url, init);
	const text = await res.text();
	let body: unknown = text;
	try {
		body = JSON.parse(text);
	} catch {
		/* not JSON: keep the text for the assertion message */
	}
	return { status: res.status, body, headers: res.headers };
}

/**
 * Waits until the node's gateway answers /health, its mesh lists `services` as available, and (when
 * `mesh` is among them) its REST aliases route /api/mesh/whoami, or `routedPath` answers anything but
 * 404: moleculer-web builds aliases shortly after the registry learns of a service.
 */
export async function waitForMesh(node: NodeProcess, services: string[], nodesSeen = 1, timeoutMs = 40_000, routedPath?: string): Promise<void> {
	await waitFor(
		`${node.nodeID} to see ${services.join(",")} on ${nodesSeen} node(s)`,
		async () => {
			if (node.child.exitCode !== null) throw new Error(`${node.nodeID} exited: ${node.logs.slice(-5).join("\n")}`);
			const { body } = await getJson(`${node.url}/health`);
			const mesh = body?.mesh;
			const listed = mesh && mesh.nodes_available >= nodesSeen && services.every((s: string) => mesh.services_available.includes(s));
			if (!listed) return false;
			if (routedPath) return (await fetch(`${node.url}${routedPath}`)).status !== 404;
			if (!services.includes("mesh")) return true;
			return (await fetch(`${node.url}/api/mesh/whoami`)).status === 200;
		},
		timeoutMs,
	);
}

export async function stopAll(nodes: Array<NodeProcess | undefined>): Promise<void> {
	await Promise.all(nodes.filter((n): n is NodeProcess => !!n).map(n => n.kill("SIGKILL")));
}

/**
 * Starts a test-owned embedded PostgreSQL process; resolves once it accepts connections, with the notes
 * it printed. `placement` points it at another checkout and outside-checkout directory.
 */
export async function startPgServer(dir: string, port: number, placement?: { checkout: string; outside: string }): Promise<PgServerProcess> {
	return startPgServerProcess(dir, port, { placement });
}
