/**
 * Token buckets like nginx `limit_req rate=10r/s burst=20`: each key refills `ratePerSecond` tokens
 * per second up to `burst`; a request takes one token or is refused with the seconds until the next one.
 */
export interface RateDecision {
	allowed: boolean;
	/** whole seconds until a token is available (for Retry-After), 0 when allowed */
	retryAfterSeconds: number;
}

interface Bucket {
	tokens: number;
	updatedAt: number;
}

const ALLOWED: RateDecision = { allowed: true, retryAfterSeconds: 0 };

export class TokenBucketLimiter {
	private readonly buckets = new Map<string, Bucket>();
	private lastSweep = 0;

	constructor(
		private readonly ratePerSecond: number,
		private readonly burst: number,
		private readonly now: () => number = Date.now,
		private readonly maxKeys = 100_000,
	) {}

	get enabled(): boolean {
		return this.ratePerSecond > 0;
	}

	take(key: string): RateDecision {
		if (!this.enabled) return ALLOWED;
		const now = this.now();
		const bucket = this.refilled(key, now);
		if (bucket.tokens >= 1) {
			bucket.tokens -= 1;
			return ALLOWED;
		}
		const wait = (1 - bucket.tokens) / this.ratePerSecond;
		return { allowed: false, retryAfterSeconds: Math.max(1, Math.ceil(wait)) };
	}

	private refilled(key: string, now: number): Bucket {
		const capacity = Math.max(1, this.burst);
		let bucket = this.buckets.get(key);
		if (!bucket) {
			this.sweep(now);
			bucket = { tokens: capacity, updatedAt: now };
			this.buckets.set(key, bucket);
			return bucket;
		}
		const elapsed = (now - bucket.updatedAt) / 1000;
		bucket.tokens = Math.min(capacity, bucket.tokens + elapsed * this.ratePerSecond);
		bucket.updatedAt = now;
		return bucket;
	}

	/** Forgets full buckets (idle keys) so that many distinct clients cannot grow memory without bound. */
	private sweep(now: number): void {
		if (this.buckets.size < this.maxKeys && now - this.lastSweep < 60_000) return;
		this.lastSweep = now;
		const fullAfterMs = (Math.max(1, this.burst) / this.ratePerSecond) * 1000;
		for (const [key, bucket] of this.buckets) {
			if (now - bucket.updatedAt > fullAfterMs) this.buckets.delete(key);
		}
	}
}
