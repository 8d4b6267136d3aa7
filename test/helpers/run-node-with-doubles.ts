/**
 * A mesh node like `npm run node`, plus the test doubles in test/helpers/doubles (chaos drills).
 */
import { startNode, stopOnSignals } from "../../lib/node-runtime";
import { loadSettings } from "../../lib/settings";
import DrillService from "./doubles/drill.service";

startNode(loadSettings(), [DrillService])
	.then(stopOnSignals)
	.catch(err => {
		process.stderr.write(`${JSON.stringify({ level: "fatal", service: "node", message: `Node failed to start: ${(err as Error).message}` })}\n`);
		process.exit(1);
	});
