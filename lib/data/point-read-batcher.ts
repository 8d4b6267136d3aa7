/**
 * Coalesces concurrent point reads by key into one query per event-loop turn (the DataLoader pattern).
 *
 * A node serving many `get`s at once otherwise sends PostgreSQL one query per get: one write to the
 * socket, one statement to plan, one reply to parse, each. On loopback those syscalls and wake-ups,
 * not the lookups, were the cost of memory.get (bench/memory). Reads that arrive while a batch is being
 * collected share one `WHERE key = ANY($1)` query; a read alone waits only for the end of the current
 * turn (setImmediate), so latency at low load is unchanged.
 *
 * Batched reads see one snapshot, as separate reads at the same moment would. Reads that must happen
 * inside a transaction (SELECT … FOR UPDATE) do not belong here.
 */

interface Waiter<T> {
	resolve(row: T | undefined): void;
	reject(err: unknown): void;
}

export interface PointReadBatcherOptions<T> {
	/** loads the rows for these keys (any order, missing keys simply absent) */
	load(keys: string[]): Promise<T[]>;
	/** the key a loaded row answers */
	keyOf(row: T): string;
	/** largest number of keys in one query */
	maxBatch?: number;
}

export class PointReadBatcher<T> {
	private pending = new Map<string, Array<Waiter<T>>>();
	private scheduled = false;
	private readonly maxBatch: number;

	constructor(private readonly options: PointReadBatcherOptions<T>) {
		this.maxBatch = options.maxBatch ?? 200;
	}

	/** The row for `key`, or undefined when there is none. */
	get(key: string): Promise<T | undefined> {
		return new Promise((resolve, reject) => {
			const waiters = this.pending.get(key);
			if (waiters) waiters.push({ resolve, reject });
			else this.pending.set(key, [{ resolve, reject }]);
			if (!this.scheduled) {
				this.scheduled = true;
				setImmediate(() => this.flush());
			}
		});
	}

	private flush(): void {
		const batch = this.pending;
		this.pending = new Map();
		this.scheduled = false;
		const keys = [...batch.keys()];
		for (let i = 0; i < keys.length; i += this.maxBatch) void this.loadChunk(keys.slice(i, i + this.maxBatch), batch);
	}

	private async loadChunk(keys: string[], waitersByKey: Map<string, Array<Waiter<T>>>): Promise<void> {
		try {
			const rows = await this.options.load(keys);
			const byKey = new Map(rows.map(row => [this.options.keyOf(row), row]));
			for (const key of keys) for (const waiter of waitersByKey.get(key)!) waiter.resolve(byKey.get(key));
		} catch (err) {
			for (const key of keys) for (const waiter of waitersByKey.get(key)!) waiter.reject(err);
		}
	}
}
