/**
 * Answers liveness probes off the main event loop, so that a caller can tell a saturated node from a hung one.
 *
 * Why: a node answering probes from its main loop is silent while that loop works through a chunk of calls —
 * nats.js hands it every message of one socket read in a single synchronous pass, ~400 ms at 16 callers × 25 ms
 * of work — exactly as silent as a SIGSTOPped one, so the probe's 100 ms bound called overload a hang
 * (docs/FAILOVER.md, "An overloaded node is not a hung one"). Here a worker thread with its own NATS connection
 * answers `<prefix>.ALIVE-LOOP.<nodeID>` with how long ago the main loop last ran:
 * - SIGSTOP stops every thread and a dead process holds no subscription: no answer, or "no responders", as before;
 * - a busy main loop still stamps the shared clock once per loop turn (its timers phase), so the answer says
 *   "alive, loop silent X ms", X about one chunk;
 * - a main loop stuck in a synchronous loop stops stamping: X grows until the caller's bound calls it hung.
 *
 * Cost: one worker thread and one NATS connection per node (RSS and idle CPU in docs/BENCHMARKS.md), one timer
 * stamping the clock every STAMP_EVERY_MS; nothing per call.
 */
import path from "path";
import { Worker } from "worker_threads";
import type { ConnectionOptions } from "nats";
import type { ResponderWorkerData } from "./liveness-responder.worker";

/** How often the main loop stamps the clock: the answer's resolution, well under the 100 ms probe timeout. */
export const STAMP_EVERY_MS = 50;
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
		private readonly timer: NodeJS.Timeout,
	) {}

	/**
	 * Starts stamping and the worker; resolves once the worker's subscription is on the server, or null if the
	 * worker could not start (the caller then keeps answering probes from the main loop only).
	 * `onLost`: the worker died after it was ready (its subject now has no responder).
	 */
	static async start(options: ConnectionOptions, subject: string, onLost: (why: string) => void): Promise<LivenessResponder | { error: string }> {
		const lastRan = new BigInt64Array(new SharedArrayBuffer(BigInt64Array.BYTES_PER_ELEMENT));
		const stamp = () => Atomics.store(lastRan, 0, process.hrtime.bigint());
		stamp();
		const timer = setInterval(stamp, STAMP_EVERY_MS);
		timer.unref();
		const { entry, eval: isSource } = workerEntry();
		const workerData: ResponderWorkerData = { options, subject, clock: lastRan.buffer as SharedArrayBuffer };
		// A small heap: the worker holds one connection and one subscription.
		const worker = new Worker(entry, { eval: isSource, workerData, resourceLimits: { maxOldGenerationSizeMb: 32 }, stdout: false, stderr: false });
		worker.unref();
		const ready = await new Promise<string | null>(resolve => {
			const timeout = setTimeout(() => resolve(`not ready within ${READY_TIMEOUT_MS} ms`), READY_TIMEOUT_MS);
			worker.once("message", (m: "ready" | { error: string }) => {
				clearTimeout(timeout);
				resolve(m === "ready" ? null : m.error);
			});
			worker.once("error", err => resolve(err.message));
			worker.once("exit", code => resolve(`exited with ${code}`));
		});
		if (ready !== null) {
			clearInterval(timer);
			await worker.terminate();
			return { error: ready };
		}
		const responder = new LivenessResponder(worker, timer);
		worker.on("error", err => onLost(err.message));
		worker.once("exit", code => responder.stopping || onLost(`exited with ${code}`));
		return responder;
	}

	async stop(): Promise<void> {
		this.stopping = true;
		clearInterval(this.timer);
		await this.worker.terminate();
	}
}
