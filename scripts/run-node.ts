/**
 * `npm run node`: one mesh node from the environment. This is how NODE1/NODE2 and the tests start nodes.
 * Exits non-zero with one clear line when the configuration or the transport is unusable.
 */
import { startNode, stopOnSignals } from "../lib/runtime/node-runtime";
import { loadSettings } from "../lib/runtime/settings";

async function main(): Promise<void> {
	const settings = loadSettings();
	const starting = startNode(settings);
	stopOnSignals(starting, { whenStdinEnds: settings.stopWhenStdinEnds });
	await starting;
}

main().catch(err => {
	const line = { timestamp: new Date().toISOString(), level: "fatal", service: "node", message: `Node failed to start: ${(err as Error).message}` };
	process.stderr.write(JSON.stringify(line) + "\n");
	process.exit(1);
});
