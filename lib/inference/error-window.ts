/**
 * An agent's recent error rate on this node: outcomes counted in ten buckets spanning the window,
 * so recording is O(1) at any request rate and old outcomes fall out a bucket at a time.
 */
interface Bucket {
	start: number;
	total: number;
	errors: number;
	byType: Map<string, number>;
}

export interface ErrorFigures {
	total: number;
	errors: number;
	/** errors / total; 0 when nothing ran */
	rate: number;
	byType: Record<string, number>;
}

const BUCKETS = 10;

export class ErrorWindow {
	private readonly agents = new Map<string, Bucket[]>();
	private readonly span: number;

	constructor(
		windowMs: number,
		private readonly now: () => number = Date.now,
	) {
		this.span = Math.max(1, Math.ceil(windowMs / BUCKETS));
	}

	record(agent: string, errorType: string | null): void {
		const bucket = this.current(agent);
		bucket.total++;
		if (errorType) {
			bucket.errors++;
			bucket.byType.set(errorType, (bucket.byType.get(errorType) ?? 0) + 1);
		}
	}

	figures(agent: string): ErrorFigures {
		const horizon = this.now() - this.span * BUCKETS;
		let total = 0;
		let errors = 0;
		const byType: Record<string, number> = {};
		for (const b of this.agents.get(agent) ?? []) {
			if (b.start <= horizon) continue;
			total += b.total;
			errors += b.errors;
			for (const [type, n] of b.byType) byType[type] = (byType[type] ?? 0) + n;
		}
		return { total, errors, rate: total ? errors / total : 0, byType };
	}

	private current(agent: string): Bucket {
		const start = Math.floor(this.now() / this.span) * this.span;
		let buckets = this.agents.get(agent);
		if (!buckets) this.agents.set(agent, (buckets = []));
		const last = buckets[buckets.length - 1];
		if (last && last.start === start) return last;
		const bucket = { start, total: 0, errors: 0, byType: new Map<string, number>() };
		buckets.push(bucket);
		if (buckets.length > BUCKETS) buckets.shift();
		return bucket;
	}
}
