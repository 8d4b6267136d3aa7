/**
 * A test-owned nats-server on its own port, so chaos tests can stop and restart NATS without touching
 * the machine's shared server.
 */
import { spawn, spawnSync, type ChildProcess } from "child_process";
import { freePort, waitFor } from "./cluster";

export const natsServerInstalled = spawnSync("nats-server", ["--version"]).status === 0;

export interface TestNatsServer {
	port: number;
	url: string;
	stop(): Promise<void>;
	/** starts again on the same port, with other arguments when given (e.g. -js added) */
	start(args?: string[]): Promise<void>;
}

function portAnswers(port: number): boolean {
	return spawnSync("bash", ["-c", `exec 3<>/dev/tcp/127.0.0.1/${port}`]).status === 0;
}

export async function startNatsServer(extraArgs: string[] = []): Promise<TestNatsServer> {
	if (!natsServerInstalled) throw new Error("nats-server binary not found (Debian package nats-server)");
	const port = await freePort();
	let child: ChildProcess | null = null;
	const server: TestNatsServer = {
		port,
		url: `nats://127.0.0.1:${port}`,
		async start(args = extraArgs) {
			child = spawn("nats-server", ["-a", "127.0.0.1", "-p", String(port), ...args], { stdio: "ignore" });
			await waitFor(`nats-server on ${port}`, async () => portAnswers(port), 10_000, 50);
		},
		async stop() {
			const running = child;
			child = null;
			if (!running || running.exitCode !== null) return;
			const exited = new Promise(resolve => running.once("exit", resolve));
			running.kill("SIGTERM");
			await exited;
		},
	};
	await server.start();
	return server;
}
