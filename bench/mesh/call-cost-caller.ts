// The calling side of one bench/mesh/call-cost.ts variant (COST_VARIANT): one broker with the variant's options,
// in a process of its own (brokers of several variants in one process share Moleculer's functions, and what one
// variant teaches V8 about them slows the others). On each message {concurrency, ms} it runs a closed loop of
// calls and answers with the result and the CPU this process used meanwhile; on {settle: true} (after the pair was
// resumed from SIGSTOP) it answers once a call goes through again.
import { ServiceBroker } from "moleculer";
import { closedLoop } from "../lib/harness";
import { costVariants, variantOptions } from "./call-cost-variants";

/** `calls` ends the round after that many calls (bench/mesh/call-instructions.ts counts per call, not per second) */
export type RoundRequest = { concurrency: number; ms: number; calls?: number } | { settle: true };

export interface RoundAnswer {
	calls: number;
	errors: number;
	perSecond: number;
	p99: number;
	cpuMs: number;
}

/**
 * Resumed after a pause longer than the heartbeat timeout, a project broker may first drop its peer as gone
 * and find it again at its next heartbeat: wait until calls go through, then a short warm-up.
 */
async function settle(call: () => Promise<unknown>): Promise<void> {
	for (let ok = 0; ok < 20; ) {
		ok = await call().then(
			() => ok + 1,
			() => new Promise<number>(resolve => setTimeout(() => resolve(0), 20)),
		);
	}
	await closedLoop(call, 10, 200);
}

async function main(): Promise<void> {
	const index = Number(process.env.COST_VARIANT);
	const variant = costVariants()[index];
	const broker = new ServiceBroker(await variantOptions(variant, index, "caller", process.env as Record<string, string>));
	await broker.start();
	const action = variant.edit ? "mesh.echo" : "echo.echo";
	await broker.waitForServices(action.split(".")[0], 60_000);
	const params = { message: "hello mesh" };
	const meta = { user: { id: "bench", roles: ["admin"], teams: [] } };
	const call = () => broker.call(action, params, { meta });
	process.on("message", (request: RoundRequest) => {
		if ("settle" in request) {
			void settle(call).then(() => process.send!({ settled: true }));
			return;
		}
		const before = process.cpuUsage();
		void closedLoop(call, request.concurrency, request.ms, request.calls).then(result => {
			const used = process.cpuUsage(before);
			const answer: RoundAnswer = { calls: result.calls, errors: result.errors, perSecond: result.perSecond, p99: result.p99, cpuMs: (used.user + used.system) / 1000 };
			process.send!(answer);
		});
	});
	process.stdout.write("READY\n");
}

main().catch(err => {
	process.stderr.write(`call-cost caller failed: ${(err as Error).stack}\n`);
	process.exit(1);
});
