/**
 * What swapper-proxy keeps per model on one node: its state, when it was last used, how many
 * generations run and wait — and the rules that move it between states:
 *
 *   unloaded → loading → loaded → unloading → unloaded      (failed: the last load failed)
 *
 * - Lazy load: the first generation loads the model; generations arriving meanwhile wait for the
 *   same load (one load per model at a time).
 * - Idle unload: a loaded model with nothing running or waiting for idleTimeoutMs is unloaded.
 * - LRU: loading one more local model than maxLoaded first unloads the least recently used *idle*
 *   loaded model. A model in use (running, waiting or loading) is never evicted; when every loaded
 *   model is in use the load is refused with a retryable error (another node may have room).
 * - Per-model concurrency: maxConcurrency generations at once, then a FIFO queue of at most `queue`;
 *   beyond that QUEUE_FULL at once. A waiting caller that goes away leaves the queue.
 *
 * Remote models (the runtime lives elsewhere) have nothing to load: always "loaded", never counted
 * against maxLoaded, never unloaded; concurrency limits still apply.
 */
import type { Locality, ModelProvider } from "./provider";

export type ModelState = "unloaded" | "loading" | "loaded" | "unloading" | "failed";

export interface LifecycleLimits {
	idleTimeoutMs: number;
	maxLoaded: number;
	maxConcurrency: number;
	queue: number;
	/** one load or unload call, ms */
	timeoutMs: number;
}

export interface ModelView {
	model: string;
	provider: string;
	locality: Locality;
	state: ModelState;
	last_used: string | null;
	in_flight: number;
	queued: number;
	/** why the last load failed (runtime message, no request content) */
	error?: string;
}

interface Waiter {
	resolve(): void;
	reject(err: Error): void;
	signal: AbortSignal;
	onAbort(): void;
}

interface Entry {
	model: string;
	provider: ModelProvider;
	state: ModelState;
	lastUsed: number | null;
	inFlight: number;
	queue: Waiter[];
	loading: Promise<void> | null;
	idleTimer: NodeJS.Timeout | null;
	error?: string;
}

/** The reasons a generation is refused before it reaches the runtime. */
export class CapacityError extends Error {
	constructor(
		readonly type: "QUEUE_FULL" | "NO_ROOM_TO_LOAD" | "MODEL_NOT_FOUND" | "CANCELLED",
		message: string,
	) {
		super(message);
		this.name = "CapacityError";
	}
}

export class ModelLifecycle {
	private readonly entries = new Map<string, Entry>();
	/** called after every state or load change (swapper-proxy advertises the new figures) */
	onChange: () => void = () => undefined;

	constructor(
		private readonly limits: LifecycleLimits,
		private readonly log: { info(msg: string, extra?: object): void; warn(msg: string, extra?: object): void } = { info: () => undefined, warn: () => undefined },
	) {}

	/** Adds the models a provider offers; a name two providers offer stays with the first. */
	register(provider: ModelProvider, models: string[], loadedNow: string[] | null = null): void {
		for (const model of models) {
			const known = this.entries.get(model);
			if (known) {
				if (known.provider !== provider) this.log.warn(`Model ${model} is offered by ${known.provider.name} and ${provider.name}; ${known.provider.name} serves it`);
				continue;
			}
			const state: ModelState = provider.locality === "remote" || loadedNow?.includes(model) ? "loaded" : "unloaded";
			this.entries.set(model, { model, provider, state, lastUsed: null, inFlight: 0, queue: [], loading: null, idleTimer: null });
		}
		this.onChange();
	}

	has(model: string): boolean {
		return this.entries.has(model);
	}

	providerOf(model: string): ModelProvider {
		return this.entry(model).provider;
	}

	list(): ModelView[] {
		return [...this.entries.values()].map(e => ({
			model: e.model,
			provider: e.provider.name,
			locality: e.provider.locality,
			state: e.state,
			last_used: e.lastUsed ? new Date(e.lastUsed).toISOString() : null,
			in_flight: e.inFlight,
			queued: e.queue.length,
			...(e.error ? { error: e.error } : {}),
		}));
	}

	/**
	 * Runs one generation under the model's limits: takes a slot (or waits in the queue), loads the
	 * model if needed, runs `work`, releases the slot. The slot is taken before the load so that a
	 * model being loaded for a caller counts as in use and cannot be evicted meanwhile.
	 */
	async run<T>(model: string, signal: AbortSignal, work: () => Promise<T>): Promise<T> {
		const release = await this.begin(model, signal);
		try {
			return await work();
		} finally {
			release();
		}
	}

	/**
	 * The first half of run(): a slot taken and the model loaded; call the returned function exactly once
	 * when the generation is over. For streams, whose refusal (queue full, no room) must come back as the
	 * call's error before the stream opens, so that the caller can still try another node.
	 */
	async begin(model: string, signal: AbortSignal): Promise<() => void> {
		const entry = this.entry(model);
		await this.acquire(entry, signal);
		try {
			await this.ensureLoaded(entry);
		} catch (err) {
			this.release(entry);
			throw err;
		}
		entry.lastUsed = Date.now();
		let released = false;
		return () => {
			if (released) return;
			released = true;
			entry.lastUsed = Date.now();
			this.release(entry);
		};
	}

	/** Explicit load (admin): same path as a lazy load. */
	async load(model: string): Promise<ModelView> {
		const entry = this.entry(model);
		entry.lastUsed = Date.now();
		await this.ensureLoaded(entry);
		this.scheduleIdleUnload(entry);
		return this.view(entry);
	}

	/** Explicit unload (admin): refused while the model is in use. */
	async unload(model: string): Promise<ModelView> {
		const entry = this.entry(model);
		if (this.inUse(entry)) throw new CapacityError("NO_ROOM_TO_LOAD", `${model} is in use (${entry.inFlight} running, ${entry.queue.length} waiting); not unloaded`);
		await this.unloadEntry(entry, "requested");
		return this.view(entry);
	}

	/** Figures for the mesh: generations running and waiting, models loaded. */
	totals(): { in_flight: number; queued: number; loaded: number } {
		let inFlight = 0;
		let queued = 0;
		let loaded = 0;
		for (const e of this.entries.values()) {
			inFlight += e.inFlight;
			queued += e.queue.length;
			if (e.state === "loaded" && e.provider.locality === "local") loaded++;
		}
		return { in_flight: inFlight, queued, loaded };
	}

	/** Stops timers and refuses waiters (node stopping). */
	close(): void {
		for (const e of this.entries.values()) {
			if (e.idleTimer) clearTimeout(e.idleTimer);
			e.idleTimer = null;
			for (const w of e.queue.splice(0)) w.reject(new CapacityError("CANCELLED", "swapper-proxy is stopping"));
		}
	}

	private view(entry: Entry): ModelView {
		return this.list().find(v => v.model === entry.model) as ModelView;
	}

	private entry(model: string): Entry {
		const entry = this.entries.get(model);
		if (!entry) throw new CapacityError("MODEL_NOT_FOUND", `This node serves no model '${model}'`);
		return entry;
	}

	private inUse(entry: Entry): boolean {
		return entry.inFlight > 0 || entry.queue.length > 0 || entry.state === "loading" || entry.state === "unloading";
	}

	private acquire(entry: Entry, signal: AbortSignal): Promise<void> {
		if (signal.aborted) return Promise.reject(new CapacityError("CANCELLED", "cancelled before it started"));
		this.cancelIdleUnload(entry);
		if (entry.inFlight < this.limits.maxConcurrency) {
			entry.inFlight++;
			this.onChange();
			return Promise.resolve();
		}
		if (entry.queue.length >= this.limits.queue) {
			return Promise.reject(
				new CapacityError("QUEUE_FULL", `${entry.model}: ${entry.inFlight} running and ${entry.queue.length} waiting (limits ${this.limits.maxConcurrency}/${this.limits.queue})`),
			);
		}
		return new Promise<void>((resolve, reject) => {
			const waiter: Waiter = {
				resolve,
				reject,
				signal,
				onAbort: () => {
					const at = entry.queue.indexOf(waiter);
					if (at >= 0) entry.queue.splice(at, 1);
					reject(new CapacityError("CANCELLED", "cancelled while waiting in the queue"));
					this.onChange();
				},
			};
			signal.addEventListener("abort", waiter.onAbort, { once: true });
			entry.queue.push(waiter);
			this.onChange();
		});
	}

	/** The slot passes straight to the next waiter (inFlight unchanged), else frees up. */
	private release(entry: Entry): void {
		const next = entry.queue.shift();
		if (next) {
			next.signal.removeEventListener("abort", next.onAbort);
			next.resolve();
		} else {
			entry.inFlight--;
			this.scheduleIdleUnload(entry);
		}
		this.onChange();
	}

	private async ensureLoaded(entry: Entry): Promise<void> {
		if (entry.state === "loaded") return;
		if (entry.state === "unloading") await entry.loading?.catch(() => undefined);
		entry.loading ??= this.loadEntry(entry).finally(() => (entry.loading = null));
		await entry.loading;
	}

	private async loadEntry(entry: Entry): Promise<void> {
		await this.makeRoom(entry);
		entry.state = "loading";
		entry.error = undefined;
		this.onChange();
		const started = Date.now();
		try {
			await entry.provider.load(entry.model, AbortSignal.timeout(this.limits.timeoutMs));
			entry.state = "loaded";
			this.log.info(`Model ${entry.model} loaded (${entry.provider.name}) in ${Date.now() - started} ms`, { event: "model.loaded", model: entry.model, provider: entry.provider.name });
		} catch (err) {
			entry.state = "failed";
			entry.error = (err as Error).message;
			this.log.warn(`Model ${entry.model} failed to load: ${entry.error}`, { event: "model.load_failed", model: entry.model, provider: entry.provider.name });
			throw err;
		} finally {
			this.onChange();
		}
	}

	/** Unloads least recently used idle local models until one more fits; refuses when none is idle. */
	private async makeRoom(entry: Entry): Promise<void> {
		if (entry.provider.locality === "remote") return;
		const loaded = () => [...this.entries.values()].filter(e => e !== entry && e.provider.locality === "local" && (e.state === "loaded" || e.state === "loading"));
		while (loaded().length >= this.limits.maxLoaded) {
			const idle = loaded()
				.filter(e => !this.inUse(e))
				.sort((a, b) => (a.lastUsed ?? 0) - (b.lastUsed ?? 0));
			if (!idle.length) {
				throw new CapacityError("NO_ROOM_TO_LOAD", `cannot load ${entry.model}: ${this.limits.maxLoaded} model(s) loaded and all in use`);
			}
			await this.unloadEntry(idle[0], `least recently used, making room for ${entry.model}`);
		}
	}

	private async unloadEntry(entry: Entry, why: string): Promise<void> {
		this.cancelIdleUnload(entry);
		if (entry.provider.locality === "remote" || entry.state === "unloaded") return;
		entry.state = "unloading";
		this.onChange();
		const done = entry.provider
			.unload(entry.model, AbortSignal.timeout(this.limits.timeoutMs))
			.then(() => {
				entry.state = "unloaded";
				this.log.info(`Model ${entry.model} unloaded (${why})`, { event: "model.unloaded", model: entry.model, reason: why });
			})
			.catch(err => {
				// The runtime may still hold it; count it as unloaded here so the LRU can move on, and say so.
				entry.state = "unloaded";
				this.log.warn(`Model ${entry.model} unload failed (${(err as Error).message}); treated as unloaded`, { event: "model.unload_failed", model: entry.model });
			})
			.finally(() => this.onChange());
		entry.loading = done;
		await done;
		entry.loading = null;
	}

	private scheduleIdleUnload(entry: Entry): void {
		if (entry.provider.locality === "remote" || entry.state !== "loaded" || this.inUse(entry)) return;
		this.cancelIdleUnload(entry);
		entry.idleTimer = setTimeout(() => {
			entry.idleTimer = null;
			if (!this.inUse(entry) && entry.state === "loaded") void this.unloadEntry(entry, `idle for ${this.limits.idleTimeoutMs} ms`);
		}, this.limits.idleTimeoutMs);
		entry.idleTimer.unref();
	}

	private cancelIdleUnload(entry: Entry): void {
		if (entry.idleTimer) clearTimeout(entry.idleTimer);
		entry.idleTimer = null;
	}
}

