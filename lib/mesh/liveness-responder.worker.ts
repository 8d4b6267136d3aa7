/**
 * The liveness responder's worker thread (lib/mesh/liveness-responder.ts starts it): its own NATS connection,
 * one subscription to the node's loop-probe subject, and an answer that says how long ago the node's main
 * event loop last ran — read from the clock the main thread stamps, so a saturated main loop does not delay
 * the answer. The answer is the silence in whole milliseconds, as ASCII digits.
 */
import { parentPort, workerData } from "worker_threads";
import { connect, type ConnectionOptions } from "nats";

export interface ResponderWorkerData {
	/** nats.js connection options (the transporter's, structured-cloned) */
	options: ConnectionOptions;
	subject: string;
	/** one BigInt64: process.hrtime.bigint() when the main loop last ran */
	clock: SharedArrayBuffer;
}

async function main(): Promise<void> {
	const { options, subject, clock } = workerData as ResponderWorkerData;
	const lastRan = new BigInt64Array(clock);
	const encoder = new TextEncoder();
	const nc = await connect({ ...options, name: `${options.name ?? "mesh"}-liveness` });
	nc.subscribe(subject, {
		callback: (_err, msg) => {
			const silentNs = process.hrtime.bigint() - Atomics.load(lastRan, 0);
			msg.respond(encoder.encode(String(silentNs > 0n ? silentNs / 1_000_000n : 0n)));
		},
	});
	// Subscribed on the server before the main thread advertises this subject (its node INFO).
	await nc.flush();
	parentPort!.postMessage("ready");
}

main().catch(err => parentPort!.postMessage({ error: (err as Error).message }));
