/**
 * The liveness responder's worker thread (lib/mesh/liveness-responder.ts starts it): its own NATS connection,
 * one subscription to the node's loop-probe subject, and an answer that says how long ago the node's main
 * event loop last ran — read from the clock the main thread stamps (lib/mesh/loop-clock.ts), so a saturated
 * main loop does not delay the answer. The answer is the silence in whole milliseconds, as ASCII digits.
 * With `heartbeat`, it also sends the node's HEARTBEAT while the main loop is late with it (HeartbeatCover).
 */
import { parentPort, workerData } from "worker_threads";
import { connect, type ConnectionOptions } from "nats";
import { HeartbeatCover, LoopSilence, type HeartbeatCoverTiming } from "./loop-clock";

export interface ResponderWorkerData {
	/** nats.js connection options (the transporter's, structured-cloned) */
	options: ConnectionOptions;
	subject: string;
	/** the main loop's clock (lib/mesh/loop-clock.ts) */
	clock: SharedArrayBuffer;
	/** the node's own HEARTBEAT packet, sent from here while the main loop is late with it (null: never) */
	heartbeat: (HeartbeatCoverTiming & { subject: string; packet: Uint8Array }) | null;
}

/** How often the worker looks at the main loop's heartbeat stamp. */
const COVER_CHECK_MS = 250;

/** Every beat sent from here is reported to the main thread, which counts and logs them once it runs again. */
export interface CoveredBeat {
	covered: number;
}

async function main(): Promise<void> {
	const { options, subject, clock, heartbeat } = workerData as ResponderWorkerData;
	const silence = new LoopSilence(clock, () => parentPort!.postMessage("stamp"));
	const encoder = new TextEncoder();
	const nc = await connect({ ...options, name: `${options.name ?? "mesh"}-liveness` });
	nc.subscribe(subject, {
		callback: (_err, msg) => msg.respond(encoder.encode(String(silence.probed()))),
	});
	if (heartbeat) {
		const cover = new HeartbeatCover(clock, heartbeat);
		setInterval(() => {
			const silentMs = cover.due();
			if (silentMs === null) return;
			nc.publish(heartbeat.subject, heartbeat.packet);
			parentPort!.postMessage({ covered: silentMs } satisfies CoveredBeat);
		}, COVER_CHECK_MS);
	}
	// Subscribed on the server before the main thread advertises this subject (its node INFO).
	await nc.flush();
	parentPort!.postMessage("ready");
}

main().catch(err => parentPort!.postMessage({ error: (err as Error).message }));
