// The serving side of one bench/mesh/call-cost.ts variant (COST_VARIANT: its index in call-cost-variants.ts):
// one broker with the variant's options and its echo action, in the variant's own namespace.
import { ServiceBroker } from "moleculer";
import { costVariants, echoService, variantOptions } from "./call-cost-variants";

async function main(): Promise<void> {
	const index = Number(process.env.COST_VARIANT);
	const variant = costVariants()[index];
	const broker = new ServiceBroker(await variantOptions(variant, index, "server", process.env as Record<string, string>));
	broker.createService(echoService(variant, broker.nodeID));
	await broker.start();
	process.stdout.write("READY\n");
}

main().catch(err => {
	process.stderr.write(`call-cost server failed: ${(err as Error).stack}\n`);
	process.exit(1);
});
