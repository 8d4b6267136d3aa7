/**
 * `npm start`: the local two-node mesh as separate OS processes.
 *   NODE1 (role node1, gateway on PORT, default 9300) and NODE2 (role node2, gateway on PORT+1),
 *   both running every actor service, over NATS when it answers, else the TCP transporter (loudly),
 *   with PostgreSQL from DATABASE_URL/DB_* or, when none is set, one embedded PostgreSQL in ./data/pg.
 * Ctrl-C (or SIGTERM, SIGHUP) stops both nodes gracefully, then the embedded PostgreSQL. PostgreSQL runs in a
 * session of its own (dev/pg-server.ts), so the terminal's Ctrl-C does not reach it before the nodes are done with it.
 */
import { spawn, type ChildProcess } from "child_process";
import os from "os";
import path from "path";
import { startPgServerProcess, type PgServerProcess } from "./embedded-postgres";
import { loadSettings, type MeshSettings } from "../lib/runtime/settings";
import { resolveTransport, type TransportChoice } from "../lib/runtime/transport";

const ROOT = path.resolve(__dirname, "..");

function say(level: "info" | "warn" | "error", message: string): void {
	process.stdout.write(JSON.stringify({ timestamp: new Date().toISOString(), level, service: "launcher", message }) + "\n");
}

function transportEnv(transport: TransportChoice, settings: MeshSettings): Record<string, string> {
	if (transport.kind === "tcp") return { TRANSPORTER: "TCP" };
	if (transport.kind === "nats") return { NATS_URL: settings.nats.url ?? "nats://127.0.0.1:4222" };
	return {};
}

function startChild(nodeID: string, role: string, port: number, env: Record<string, string>): ChildProcess {
	const child = spawn(process.execPath, ["--import", "tsx", path.join(ROOT, "scripts", "run-node.ts")], {
		cwd: ROOT,
		// A pipe the node reads to its end: if this launcher is killed outright, the node stops by itself.
		env: { ...process.env, ...env, NODE_ID: nodeID, NODE_ROLE: role, PORT: String(port), STOP_WHEN_STDIN_ENDS: "1" },
		stdio: ["pipe", "inherit", "inherit"],
	});
	child.once("exit", (code, signal) => say(code === 0 ? "info" : "warn", `${nodeID} exited (code ${code}, signal ${signal ?? "none"})`));
	return child;
}

function exitOf(child: ChildProcess): Promise<void> {
	if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
	return new Promise(resolve => child.once("exit", () => resolve()));
}

async function main(): Promise<void> {
	const settings = loadSettings();
	const transport = await resolveTransport(settings);
	if (transport.warning) say("warn", transport.warning);
	let embedded: PgServerProcess | undefined;
	let databaseUrl = settings.database.url;
	if (!databaseUrl) {
		say("warn", `No DATABASE_URL/DB_HOST: starting embedded PostgreSQL in ${settings.embeddedPgDir} on port ${settings.embeddedPgPort} (development only)`);
		embedded = await startPgServerProcess(settings.embeddedPgDir, settings.embeddedPgPort, { ownSession: true });
		for (const note of embedded.notes) say("warn", note);
		databaseUrl = embedded.url;
	}

	const shared = { ...transportEnv(transport, settings), DATABASE_URL: databaseUrl };
	const host = os.hostname();
	const children = [
		startChild(`node1-${host}`, "node1", settings.port, shared),
		startChild(`node2-${host}`, "node2", settings.port + 1, shared),
	];
	say(
		"info",
		`Local mesh over ${transport.kind}: NODE1 http://127.0.0.1:${settings.port}  NODE2 http://127.0.0.1:${settings.port + 1}  ` +
			`(try /health, /api/mesh/whoami, /api/mesh/nodes, /metrics; operator console: npm run repl)`,
	);

	let stopping = false;
	const stop = async (why: string) => {
		if (stopping) return;
		stopping = true;
		say("info", `${why}: stopping both nodes`);
		for (const child of children) if (child.exitCode === null) child.kill("SIGTERM");
		await Promise.all(children.map(exitOf));
		if (embedded?.owned) await embedded.stop();
		say("info", "Local mesh stopped");
		process.exit(0);
	};
	for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(signal, () => void stop(signal));
	await Promise.all(children.map(exitOf));
	if (!stopping) await stop("Both nodes exited");
}

main().catch(err => {
	say("error", `Local mesh failed to start: ${(err as Error).message}`);
	process.exit(1);
});
