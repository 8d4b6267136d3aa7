// Profiling aid (not part of npm run bench): a project caller driving mesh.echo on a separately
// started node for PROFILE_SECONDS at 100 concurrent, to run under `node --cpu-prof`.
import { ServiceBroker } from "moleculer";
import { createBrokerOptions } from "../../moleculer.config";
import { loadSettings } from "../../lib/runtime/settings";
import { resolveTransport } from "../../lib/runtime/transport";
import { closedLoop, formatNumber } from "../lib/harness";

async function main(): Promise<void> {
	const settings = loadSettings({ ...process.env, NODE_ID: `profile-caller-${process.pid}`, LOG_LEVEL: "warn" });
	const broker = new ServiceBroker(createBrokerOptions(settings, await resolveTransport(settings)));
	await broker.start();
	await broker.waitForServices("mesh");
	const user = { id: "bench", roles: ["admin"], teams: [] };
	const call = () => broker.call("mesh.echo", { message: "hello mesh" }, { meta: { user } });
	await closedLoop(call, 100, 1_000);
	const result = await closedLoop(call, 100, Number(process.env.PROFILE_SECONDS ?? 6) * 1000);
	process.stdout.write(`${formatNumber(result.perSecond)} calls/s\n`);
	await broker.stop();
	process.exit(0);
}

void main();
