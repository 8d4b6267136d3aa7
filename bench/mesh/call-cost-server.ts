// The serving side of bench/mesh/call-cost.ts: one broker per variant (call-cost-variants.ts), each in the
// namespace its caller uses, in this one process. Only one variant is under load at a time, so this process's
// CPU during a round is that variant's serving cost (plus the idle timers of the others, the same for all).
import { ServiceBroker } from "moleculer";
import { costVariants, echoService, variantOptions } from "./call-cost-variants";

async function main(): Promise<void> {
	const env = process.env as Record<string, string>;
	const brokers = await Promise.all(
		costVariants().map(async (variant, i) => {
			const broker = new ServiceBroker(await variantOptions(variant, i, "server", env));
			broker.createService(echoService(variant, broker.nodeID));
			return broker;
		}),
	);
	await Promise.all(brokers.map(b => b.start()));
	process.stdout.write("READY\n");
}

main().catch(err => {
	process.stderr.write(`call-cost server failed: ${(err as Error).stack}\n`);
	process.exit(1);
});
