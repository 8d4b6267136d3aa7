// Profiling aid (not part of npm run bench:memory): memory.get from another process for 6 s, for node --cpu-prof.
import { ServiceBroker } from "moleculer";
import { createBrokerOptions } from "../../moleculer.config";
import { loadSettings } from "../../lib/runtime/settings";
import { resolveTransport } from "../../lib/runtime/transport";
import { closedLoop } from "../lib/harness";
(async () => {
	const settings = loadSettings({ ...process.env, NODE_ID: "pc", LOG_LEVEL: "warn" });
	const b = new ServiceBroker(createBrokerOptions(settings, await resolveTransport(settings)));
	await b.start(); await b.waitForServices("memory");
	const user = { id: "bench", roles: ["admin"], teams: [] };
	const m = (await b.call("memory.create", { scope: "public", owner_id: "bench", kind: "fact", key: "k", content: "c" }, { meta: { user } })) as { id: string };
	await closedLoop(() => b.call("memory.get", { id: m.id }, { meta: { user } }), 50, 1000);
	const r = await closedLoop(() => b.call("memory.get", { id: m.id }, { meta: { user } }), 50, 6000);
	process.stdout.write(`get/s ${Math.round(r.perSecond)}\n`);
	await b.stop(); process.exit(0);
})();
