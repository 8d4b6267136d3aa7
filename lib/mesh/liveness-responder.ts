/**
 * Answers liveness probes off the main event loop, so that a caller can tell a saturated node from a hung one.
 *
 * Why: a node answering probes from its main loop is silent while that loop works through a chunk of calls —
 * nats.js hands it every message of one socket read in a single synchronous pass, ~400 ms at 16 callers × 25 ms
 * of work — exactly as silent as a SIGSTOPped one, so the probe's 100 ms bound called overload a hang
 * (docs/FAILOVER.md, "An overloaded node is not a hung one"). Here a worker thread with its own NATS connection
 * answers `<prefix>.ALIVE-LOOP.<nodeID>` with how long ago the main loop last ran:
 * - SIGSTOP stops every thread and a dead process holds no subscription: no answer, or "no responders", as before;
 * - a busy main loop still stamps the shared clock (lib/mesh/loop-clock.ts) once per loop turn (its timers
 *   phase), so the answer says "alive, loop silent X ms", X about one chunk;
 * - a main loop stuck in a synchronous loop stops stamping: X grows until the caller's bound calls it hung.
 *
 * The same worker keeps the node in the mesh while its main loop is late with a heartbeat (`heartbeat`): a loop
 * busy for seconds (a long synchronous job, a GC storm, a CPU-starved container) otherwise stops beating, and after
 * the heartbeat timeout (2.5 s) every other node removes it — failing the calls they have pending on it, writes
 * included, and rediscovering it on its next beat. From `coverAfterMs` of silence the worker sends the node's own
 * HEARTBEAT packet once per heartbeat interval, up to `leaveAfterMs` (MESH_STUCK_LEAVE_MS, 10 s): a loop stuck
 * longer is left to the heartbeat timeout as before. Meanwhile callers do not wait on it: the probe's answer says
 * the loop is silent, and past 1 s that makes the node suspect (lib/mesh/liveness-probe.ts). A SIGSTOPped or dead
 * process stops every thread, so nothing changes for those.
 *
 * Cost: one worker thread and one NATS connection per node (RSS and idle CPU in docs/FAILOVER.md); a timer
 * stamping the clock every 50 ms only while probes come in; a look at the heartbeat stamp every 250 ms in the
 * worker; nothing per call.
 */
import path from "path";
import { Worker } from "worker_threads";
import type { ConnectionOptions } from "nats";
import type { CoveredBeat, ResponderWorkerData } from "./liveness-responder.worker";
import { createLoopClock, LoopStamper, stampHeartbeatSent } from "./loop-clock";

const READY_TIMEOUT_MS = 5_000;

/**
 * The worker's source sits beside this file: JavaScript once built; TypeScript under tsx or ts-jest, whose
 * loaders a worker (a fresh isolate) does not inherit, so it registers tsx's CommonJS hook itself first.
 */
function workerEntry(): { entry: string; eval: boolean } {
	const ext = path.extname(__filename);
	const file = path.join(__dirname, `liveness-responder.worker${ext}`);
	if (ext !== ".ts") return { entry: file, eval: false };
	return { entry: `require(${JSON.stringify(require.resolve("tsx/cjs"))}); require(${JSON.stringify(file)});`, eval: true };
}

export class LivenessResponder {
	private stopping = false;

	private constructor(
		private readonly worker: Worker,
		private readonly stamper: LoopStamper,
		private readonly clock: SharedArrayBuffer,
	) {}

	/** The main thread is sending the node's heartbeat now (the worker covers only for a late one). */
	heartbeatSent(): void {
		stampHeartbeatSent(this.clock);
	}

	/**
	 * Starts the worker; resolves once its subscription is on the server, or with the reason it could not start
	 * (the node then answers probes from its main loop only).
	 * `onLost`: the worker died after it was ready (its subject now has no responder).
	 */
	static async start(
		options: ConnectionOptions,
		subject: string,
		onLost: (why: string) => void,
		heartbeat: ResponderWorkerData["heartbeat"] = null,
		onCovered: (silentMs: number) => void = () => undefined,
	): Promise<LivenessResponder | { error: string }> {
		const clock = createLoopClock();
		const stamper = new LoopStamper(clock);
		const { entry, eval: isSource } = workerEntry();
		const workerData: ResponderWorkerData = { options, subject, clock, heartbeat };
		// A small heap: the worker holds one connection and one subscription.
		const worker = new Worker(entry, { eval: isSource, workerData, resourceLimits: { maxOldGenerationSizeMb: 32 }, stdout: false, stderr: false });
		worker.unref();
		worker.on("message", (m: unknown) => {
			if (m === "stamp") stamper.start();
			else if (typeof m === "object" && m !== null && "covered" in m) onCovered((m as CoveredBeat).covered);
		});
		const ready = await new Promise<string | null>(resolve => {
			const timeout = setTimeout(() => resolve(`not ready within ${READY_TIMEOUT_MS} ms`), READY_TIMEOUT_MS);
			const settle = (why: string | null) => {
				clearTimeout(timeout);
				resolve(why);
			};
			worker.on("message", (m: "ready" | "stamp" | { error: string }) => (m === "ready" ? settle(null) : typeof m === "object" && settle(m.error)));
			worker.once("error", err => settle(err.message));
			worker.once("exit", code => settle(`exited with ${code}`));
		});
		if (ready !== null) {
			stamper.stop();
			await worker.terminate();
			return { error: ready };
		}
		const responder = new LivenessResponder(worker, stamper, clock);
		worker.on("error", err => onLost(err.message));
		worker.once("exit", code => responder.stopping || onLost(`exited with ${code}`));
		return responder;
	}

	async stop(): Promise<void> {
		this.stopping = true;
		this.stamper.stop();
		await this.worker.terminate();
	}
}
