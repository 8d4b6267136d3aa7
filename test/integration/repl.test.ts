/**
 * The operator REPL, driven through a real pseudo-terminal (util-linux `script`) against two live nodes.
 */
import { spawn } from "child_process";
import { ROOT, startNodeProcess, stopAll, uniqueNamespace, waitFor, waitForMesh, type NodeProcess } from "../helpers/cluster";
import { dropFreshDatabases, freshDatabase } from "../helpers/databases";
import { describeWithNatsAndPostgres, LOCAL_NATS_URL } from "../helpers/requirements";

describeWithNatsAndPostgres("REPL on a live mesh", () => {
	const namespace = uniqueNamespace("repl");
	let env: Record<string, string>;
	let node1: NodeProcess;
	let node2: NodeProcess;

	beforeAll(async () => {
		// A database of its own: nodes migrate on start.
		env = { MESH_NAMESPACE: namespace, NATS_URL: LOCAL_NATS_URL, DATABASE_URL: await freshDatabase("repl") };
		[node1, node2] = await Promise.all([
			startNodeProcess({ ...env, NODE_ID: "repl-test-node1", NODE_ROLE: "node1", SERVICES: "api,mesh" }),
			startNodeProcess({ ...env, NODE_ID: "repl-test-node2", NODE_ROLE: "node2", SERVICES: "api" }),
		]);
		await waitForMesh(node2, ["mesh"], 2);
	});
	afterAll(async () => {
		await stopAll([node1, node2]);
		await dropFreshDatabases();
	});

	it("shows both nodes with roles, actors and health, and calls an action", async () => {
		const repl = spawn("script", ["-qfec", `${process.execPath} --import tsx scripts/repl.ts`, "/dev/null"], {
			cwd: ROOT,
			env: { ...process.env, ...env, LOG_LEVEL: "warn" },
			stdio: ["pipe", "pipe", "pipe"],
		});
		let screen = "";
		repl.stdout.on("data", (chunk: Buffer) => (screen += chunk.toString()));
		const exited = new Promise(resolve => repl.once("exit", resolve));
		const type = async (line: string, expectOnScreen: RegExp) => {
			repl.stdin.write(`${line}\n`);
			await waitFor(`"${line}" to print ${expectOnScreen}`, async () => expectOnScreen.test(screen), 15_000);
		};
		try {
			await waitFor("the REPL to join", async () => /Joined mesh/.test(screen), 20_000);
			// Give discovery a heartbeat to bring in both nodes' INFO packets.
			await waitFor("both nodes in `nodes`", async () => {
				repl.stdin.write("nodes\n");
				await new Promise(r => setTimeout(r, 500));
				return /repl-test-node1/.test(screen) && /repl-test-node2/.test(screen);
			}, 15_000, 200);
			await type("mesh", /repl-test-node2[^\n]*node2[^\n]*gateway-only/);
			expect(screen).toMatch(/repl-test-node1[^\n]*node1[^\n]*api, mesh[^\n]*healthy[^\n]*up[^\n]*up/);
			await type("call mesh.whoami", /nodeID: .*repl-test-node1/);
			await type("breakers", /repl-test-node2[^\n]*all closed/);
			expect(screen).toMatch(/repl-test-node1[^\n]*all closed/);
		} catch (err) {
			throw new Error(`${(err as Error).message}\n--- REPL screen ---\n${screen.slice(-3000)}`);
		} finally {
			repl.stdin.write("quit\n");
			await Promise.race([exited, new Promise(r => setTimeout(r, 5_000).unref())]);
			repl.kill("SIGKILL");
		}
	});
});
