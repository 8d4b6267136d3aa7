/**
 * Events that describe no database change of their own (agent runs) still go through the outbox, so
 * they reach JetStream through the same relay, retries and DLQ as every other event. Inserting one
 * row per event would put a database round trip on every routed request; instead events are
 * buffered and written in one multi-row INSERT every `flushMs` (or sooner at `maxRows`). The cost:
 * events buffered when a node dies (at most flushMs worth) are lost — acceptable for run telemetry,
 * not for state changes, which keep writing their events in their own transaction (lib/data/outbox/enqueue.ts).
 */
import type { Sequelize } from "sequelize";
import { enqueueEvents, type OutboxEvent } from "./outbox/enqueue";
import type { EventSettings } from "../runtime/settings";

export interface OutboxBatchOptions {
	flushMs?: number;
	maxRows?: number;
	/** beyond this many buffered (database down), the oldest are dropped and counted */
	maxBuffered?: number;
	onError?: (err: Error, rows: number) => void;
}

export class OutboxBatch {
	private buffer: OutboxEvent[] = [];
	private timer: NodeJS.Timeout | null = null;
	private flushing: Promise<void> = Promise.resolve();
	dropped = 0;

	constructor(
		private readonly sequelize: Sequelize,
		private readonly events: EventSettings,
		private readonly options: OutboxBatchOptions = {},
	) {}

	add(event: OutboxEvent): void {
		this.buffer.push(event);
		const max = this.options.maxBuffered ?? 20_000;
		if (this.buffer.length > max) {
			this.dropped += this.buffer.length - max;
			this.buffer.splice(0, this.buffer.length - max);
		}
		if (this.buffer.length >= (this.options.maxRows ?? 500)) void this.flush();
		else this.timer ??= setTimeout(() => void this.flush(), this.options.flushMs ?? 25);
	}

	/**
	 * Writes what is buffered now, one multi-row INSERT with no BEGIN/COMMIT around it (one statement is
	 * atomic): a third of the round trips, under half the CPU on this node's event loop, which the runs it
	 * serves share (docs/BENCHMARKS.md, "Router first token"). Resolves when written or given up.
	 */
	flush(): Promise<void> {
		if (this.timer) clearTimeout(this.timer);
		this.timer = null;
		const rows = this.buffer.splice(0);
		if (!rows.length) return this.flushing;
		this.flushing = this.flushing.then(() =>
			enqueueEvents(this.sequelize, null, this.events, rows).catch(err => {
				// Put them back once (the next flush retries); the buffer bound keeps memory flat.
				this.buffer.unshift(...rows);
				this.options.onError?.(err as Error, rows.length);
			}),
		);
		return this.flushing;
	}

	async close(): Promise<void> {
		await this.flush();
		if (this.timer) clearTimeout(this.timer);
		this.timer = null;
	}
}
