/**
 * Cancelling inference work when its client goes away, end to end and the same way for every entry
 * point (the HTTP gateway, socket.io). Moleculer cannot cancel a call in flight, so a run carries a
 * *cancel key*:
 *   1. the entry point puts a fresh key in the call's meta (`cancelMeta`) — meta travels with every call
 *      the run makes, on any node — and when its client leaves before the answer it broadcasts the key
 *      (`requestCancel`, one small mesh event; clients leaving is rare);
 *   2. every node tracks the work it runs under a key (`cancelBoardOf(broker).track`); on the event the
 *      router abandons its pending mesh call (no retry, no further tool round; the run ends "failed,
 *      CANCELLED", never "completed") and swapper-proxy aborts the provider's HTTP request through its
 *      AbortSignal, which frees the model's slot.
 * A cancel may overtake the call it cancels (the event and the request travel separately): keys
 * cancelled in the last minute are remembered, and work tracked under one is aborted at once.
 */
import type { Context, ServiceBroker } from "moleculer";
import { CancelledError } from "../mesh/errors";

/** The mesh event carrying `{ key }`; router and swapper-proxy listen to it. */
export const CANCEL_EVENT = "inference.cancel";

/** Anything that can be stopped: an AbortController, a CancelScope. */
export interface Cancellable {
	abort(reason?: unknown): void;
}

export interface CancelMeta {
	cancel_key?: string;
}

const REMEMBER_MS = 60_000;
const REMEMBER_MAX = 10_000;

/** The error a cancelled run ends with: the client's doing, so 499, not retried, not an agent error. */
export function cancelledError(message = "The client went away"): CancelledError {
	return new CancelledError(message, "CANCELLED", { retry_elsewhere: false });
}

/** Whether a failure is a cancellation (ours, the lifecycle's CANCELLED, a provider's PROVIDER_CANCELLED). */
export function isCancellation(err: unknown): boolean {
	return (err as { code?: unknown } | undefined)?.code === 499;
}

/** What one node runs under each cancel key. */
export class CancelBoard {
	/** One piece of work per key is the common case (a run, or its generation): no Set for it. */
	private readonly running = new Map<string, Cancellable | Set<Cancellable>>();
	private readonly cancelled = new Map<string, number>();

	constructor(private readonly now: () => number = Date.now) {}

	/** Tracks work under `key`; call the returned function when it is over. Aborted at once if the key was cancelled. */
	track(key: string, work: Cancellable): () => void {
		if (this.cancelled.has(key)) {
			work.abort(cancelledError());
			return () => undefined;
		}
		const held = this.running.get(key);
		if (!held) this.running.set(key, work);
		else if (held instanceof Set) held.add(work);
		else this.running.set(key, new Set([held, work]));
		return () => this.untrack(key, work);
	}

	/** Aborts everything running under `key` here and remembers the key a while; returns how much was aborted. */
	cancel(key: string, reason: Error = cancelledError()): number {
		this.remember(key);
		const held = this.running.get(key);
		if (!held) return 0;
		this.running.delete(key);
		const works = held instanceof Set ? [...held] : [held];
		for (const work of works) work.abort(reason);
		return works.length;
	}

	/** Keys with work running now (tests, status). */
	size(): number {
		return this.running.size;
	}

	private untrack(key: string, work: Cancellable): void {
		const held = this.running.get(key);
		if (held === work) this.running.delete(key);
		else if (held instanceof Set) {
			held.delete(work);
			if (!held.size) this.running.delete(key);
		}
	}

	private remember(key: string): void {
		const now = this.now();
		this.cancelled.set(key, now);
		// Oldest first (insertion order): drop the expired, and the oldest beyond the cap.
		for (const [k, at] of this.cancelled) {
			if (now - at <= REMEMBER_MS && this.cancelled.size <= REMEMBER_MAX) break;
			this.cancelled.delete(k);
		}
	}
}

const boards = new WeakMap<ServiceBroker, CancelBoard>();

/** The node's one board, shared by router and swapper-proxy. */
export function cancelBoardOf(broker: ServiceBroker): CancelBoard {
	let board = boards.get(broker);
	if (!board) boards.set(broker, (board = new CancelBoard()));
	return board;
}

/** Meta for a call the entry point may cancel later with `requestCancel(broker, key)`. */
export function cancelMeta(key: string): CancelMeta {
	return { cancel_key: key };
}

/** The cancel key a call carries, if its entry point gave one. */
export function cancelKeyOf(ctx: Context): string | undefined {
	const key = (ctx.meta as CancelMeta | undefined)?.cancel_key;
	return typeof key === "string" && key ? key : undefined;
}

/** The client of `key` went away: stop its work on every node (this one included). */
export function requestCancel(broker: ServiceBroker, key: string): void {
	cancelBoardOf(broker).cancel(key);
	broker.broadcast(CANCEL_EVENT, { key }).catch(err => broker.logger.warn(`Cancel not sent: ${(err as Error).message}`));
}

/** A closable response (HTTP ServerResponse, or anything with the same two members). */
interface Response {
	once(event: "close", listener: () => void): unknown;
	readonly writableFinished: boolean;
}

/** HTTP: when the connection closes before the response was fully written, cancel `key` mesh-wide. */
export function cancelWhenClientLeaves(broker: ServiceBroker, key: string, res: Response): void {
	res.once("close", () => {
		if (!res.writableFinished) requestCancel(broker, key);
	});
}

/**
 * One run's cancellation as the router sees it: `race` abandons a pending call the moment the run is
 * cancelled (the call itself is stopped on its node by the same broadcast), `onAbort` runs clean-ups.
 * No AbortController per run: this is on the router's hot path.
 */
export class CancelScope implements Cancellable {
	reason: Error | null = null;
	private readonly waiting = new Set<(err: Error) => void>();

	abort(reason?: unknown): void {
		if (this.reason) return;
		this.reason = isCancellation(reason) ? (reason as Error) : cancelledError();
		for (const reject of this.waiting) reject(this.reason);
		this.waiting.clear();
	}

	/** Throws the cancellation if the run was cancelled. */
	check(): void {
		if (this.reason) throw this.reason;
	}

	/** `call`'s outcome, or the cancellation if that comes first (a late outcome is then ignored). */
	race<T>(call: Promise<T>): Promise<T> {
		if (this.reason) {
			call.catch(() => undefined);
			return Promise.reject(this.reason);
		}
		return new Promise<T>((resolve, reject) => {
			this.waiting.add(reject);
			call.then(
				value => {
					this.waiting.delete(reject);
					resolve(value);
				},
				err => {
					this.waiting.delete(reject);
					reject(err);
				},
			);
		});
	}

	/** Runs `fn` when the run is cancelled (at once if it already was). */
	onAbort(fn: (reason: Error) => void): void {
		if (this.reason) return fn(this.reason);
		this.waiting.add(fn);
	}
}
