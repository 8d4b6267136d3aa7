/**
 * The readable a streamed generation answers with (swapper-proxy.generate, stream: true): GenerateChunk
 * objects, text pieces then one `done`.
 *
 * Moleculer sends a streamed answer one mesh message per chunk, and reads the next chunk only once the
 * previous one is handed to the transporter (transit.sendResponse: pause, publish, resume). Each message
 * costs every hop CPU: the model node, NATS, the receiving node's transit, the router's framing, the
 * gateway's socket write, the client's parser. A piece that finds the reader waiting goes out at once,
 * alone; pieces that come while the reader is still busy are joined into the next piece instead of
 * queueing as messages of their own. Nothing is held back to wait for more text: merging only happens
 * to text that would otherwise wait in a queue. A provider that answers a burst at once (local-echo, a
 * runtime whose HTTP reads carry many tokens) thus costs a few messages rather than one per token, and
 * the burst no longer competes with its own first piece for the cores of every hop.
 */
import { Readable } from "stream";
import type { GenerateChunk } from "./provider";

type DoneChunk = Extract<GenerateChunk, { type: "done" }>;

export class PieceStream extends Readable {
	/** text that came while the reader was busy, sent as one piece at its next read */
	private pending: string | null = null;
	private done: DoneChunk | null = null;
	/** the reader asked for a chunk and got none: the next piece is pushed as it comes */
	private waiting = false;

	/** `onDestroy`: the reader went away (or the stream failed); the generation should stop. */
	constructor(private readonly onDestroy: () => void) {
		// One chunk ready at most: everything past it merges into the next piece.
		super({ objectMode: true, highWaterMark: 1 });
	}

	/** A text piece from the provider. */
	piece(text: string): void {
		if (this.waiting) {
			this.waiting = false;
			this.push({ type: "piece", text } satisfies GenerateChunk);
		} else this.pending = (this.pending ?? "") + text;
	}

	/** The generation is over: the pending text, then `done`, then the end. */
	finish(done: DoneChunk): void {
		this.done = done;
		if (this.waiting) {
			this.waiting = false;
			this.handOver();
		}
	}

	override _read(): void {
		if (!this.handOver()) this.waiting = true;
	}

	override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
		this.onDestroy();
		callback(err);
	}

	/** Pushes what is ready: the pending text as one piece, else `done` and the end; false when nothing is. */
	private handOver(): boolean {
		if (this.pending !== null) {
			const text = this.pending;
			this.pending = null;
			this.push({ type: "piece", text } satisfies GenerateChunk);
			return true;
		}
		if (this.done) {
			const done = this.done;
			this.done = null;
			this.push(done);
			this.push(null);
			return true;
		}
		return false;
	}
}
