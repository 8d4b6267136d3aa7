/**
 * Real node processes for integration and chaos tests: `tsx scripts/run-node.ts` with its own env,
 * logs captured line by line, killed with real signals.
 */
import { spawn, type ChildProcess } from "child_process";
import { randomBytes } from "crypto";
import net from "net";
import path from "path";

export const ROOT = path.resolve(__dirname, "..", "..");

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

/** `script`: the entry point, relative to the checkout (test/helpers/run-node-with-doubles.ts adds test doubles). */
export async function startNodeProcess(env: Record<string, string>, script = path.join("scripts", "run-node.ts")): Promise<NodeProcess> {
	const port = env.PORT ? Number(env.PORT) : await freePort();
	const nodeID = env.NODE_ID ?? `node-${port}`;
	const child = spawn(process.execPath, ["--import", "tsx", path.join(ROOT, script)], {
		cwd: ROOT,
		env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/root", LOG_LEVEL: "info", ...env, PORT: String(port), NODE_ID: nodeID },
		stdio: ["ignore", "pipe", "pipe"],
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
export async function startPgServer(dir: string, port: number, placement?: { checkout: string; outside: string }): Promise<{ url: string; notes: string[]; stop(): Promise<number | null> }> {
	const args = placement ? [placement.checkout, placement.outside] : [];
	const child = spawn(process.execPath, ["--import", "tsx", path.join(ROOT, "test", "helpers", "pg-server.ts"), dir, String(port), ...args], {
		cwd: ROOT,
		stdio: ["ignore", "pipe", "pipe"],
	});
	const exited = new Promise<number | null>(resolve => child.once("exit", code => resolve(code)));
	let output = "";
	const url = await new Promise<string>((resolve, reject) => {
		child.stdout?.on("data", (chunk: Buffer) => {
			output += chunk.toString();
			const match = /READY (\S+)/.exec(output);
			if (match) resolve(match[1]);
		});
		child.stderr?.on("data", (chunk: Buffer) => (output += chunk.toString()));
		exited.then(code => reject(new Error(`pg-server exited (${code}): ${output}`)));
	});
	return {
		url,
		notes: [...output.matchAll(/^NOTE (.*)$/gm)].map(m => m[1]),
		stop: () => {
			child.kill("SIGTERM");
			return exited;
		},
	};
}
