/**
 * The two callers the remote-call benches compare, each with its serving process: bare Moleculer calling
 * bench/mesh/bare-server.ts's echo.echo, and the project (moleculer.config.ts) calling a full node's mesh.echo
 * (scripts/run-node.ts SERVICES=mesh), both over real NATS and making the same call (params + meta.user).
 * Used by bench/mesh/run.ts, call-curve.ts and paced-tail.ts; the caller stops the processes (stopProcesses).
 */
import type { ChildProcess } from "child_process";
import { ServiceBroker } from "moleculer";
import { createBrokerOptions } from "../../moleculer.config";
import { loadSettings } from "../../lib/runtime/settings";
import { resolveTransport } from "../../lib/runtime/transport";
import { startProcess } from "../lib/harness";

export interface CallPair {
	bare: ServiceBroker;
	project: ServiceBroker;
	bareServer: ChildProcess;
	server: ChildProcess;
	/** the same call from each side: params + meta.user */
	bareCall: () => Promise<unknown>;
	projectCall: () => Promise<unknown>;
	payload: { message: string };
	user: { id: string; roles: string[]; teams: string[] };
	stopCallers(): Promise<void>;
}

/**
 * `env` goes to both serving processes (on top of this process's env, as startProcess does) and, as the
 * project caller's settings, to its broker; node IDs start with `prefix`. The bare pair gets a namespace of
 * its own: its 10 s heartbeats would trip the project's 2.5 s failure detector (every node of one mesh must
 * share heartbeat settings; docs/FAILOVER.md).
 */
export async function startCallPair(env: Record<string, string>, prefix: string, callerSettingsEnv: Record<string, string | undefined> = env): Promise<CallPair> {
	const bareNamespace = `${env.MESH_NAMESPACE}-bare`;
	const bareServer = await startProcess("bench/mesh/bare-server.ts", { ...env, MESH_NAMESPACE: bareNamespace });
	const server = await startProcess("scripts/run-node.ts", { ...env, NODE_ID: `${prefix}-actors`, SERVICES: "mesh", PORT: "0", LOG_LEVEL: "info" }, "Service 'mesh' started");
	const bare = new ServiceBroker({ namespace: bareNamespace, nodeID: `${prefix}-bare-caller`, transporter: { type: "NATS", options: { url: env.NATS_URL } }, logger: false });
	const settings = loadSettings({ ...callerSettingsEnv, NODE_ID: `${prefix}-project-caller` });
	const project = new ServiceBroker(createBrokerOptions(settings, await resolveTransport(settings)));
	await Promise.all([bare.start(), project.start()]);
	await Promise.all([bare.waitForServices("echo"), project.waitForServices("mesh")]);
	const payload = { message: "hello mesh" };
	const user = { id: "bench", roles: ["admin"], teams: [] };
	return {
		bare,
		project,
		bareServer,
		server,
		bareCall: () => bare.call("echo.echo", payload, { meta: { user } }),
		projectCall: () => project.call("mesh.echo", payload, { meta: { user } }),
		payload,
		user,
		stopCallers: async () => {
			await Promise.all([bare.stop(), project.stop()]);
		},
	};
}
