/**
 * Steady, bounded HTTP load for chaos tests and the failover benchmark: an open loop at a fixed rate
 * (requests do not wait for each other, like independent users), capped in concurrency so a dead
 * node cannot make the generator itself pile up without bound.
 */
export interface Sample {
	/** ms since the load started */
	start: number;
	end: number;
	ok: boolean;
	status: number;
	servedBy?: string;
	error?: string;
}

export interface LoadOptions {
	url: string;
	ratePerSecond: number;
	maxInFlight?: number;
	init?: RequestInit;
	/** how to read the serving node from a 2xx JSON body */
	servedBy?: (body: unknown) => string | undefined;
	/** per-request client timeout; a request slower than this counts as failed */
	clientTimeoutMs?: number;
}

export interface RunningLoad {
	startedAt: number;
	/** ms since start, for marking events (kill, resume) on the same clock as the samples */
	now(): number;
	stop(): Promise<LoadReport>;
}

export interface LoadReport {
	samples: Sample[];
	/** requests not sent because maxInFlight was reached */
	shed: number;
	/**
	 * Times the load generator's own event loop was late by over STALL_MS (a GC of this process, no core for it):
	 * `at` ms since start, `ms` how late. A response that arrived meanwhile is timed late by as much, and no answer
	 * is seen in that time, so a slow request or a gap at the same moment is the client's, not the mesh's.
	 */
	stalls: Array<{ at: number; ms: number }>;
}

/** The generator's tick runs every TICK_MS; later than this beyond it counts as a stall of the client. */
const TICK_MS = 5;
const STALL_MS = 25;

async function oneRequest(opts: LoadOptions, startedAt: number): Promise<Sample> {
	const start = performance.now() - startedAt;
	try {
		const res = await fetch(opts.url, { ...opts.init, signal: AbortSignal.timeout(opts.clientTimeoutMs ?? 10_000) });
		const text = await res.text();
		let servedBy: string | undefined;
		if (res.ok && opts.servedBy) servedBy = opts.servedBy(JSON.parse(text));
		return { start, end: performance.now() - startedAt, ok: res.ok, status: res.status, servedBy, error: res.ok ? undefined : text.slice(0, 300) };
	} catch (err) {
		return { start, end: performance.now() - startedAt, ok: false, status: 0, error: (err as Error).message };
	}
}

export function startLoad(opts: LoadOptions): RunningLoad {
	const startedAt = performance.now();
	const samples: Sample[] = [];
	const pending = new Set<Promise<void>>();
	const maxInFlight = opts.maxInFlight ?? 500;
	let sent = 0;
	let shed = 0;
	const stalls: LoadReport["stalls"] = [];
	let lastTick = startedAt;
	const tick = setInterval(() => {
		const now = performance.now();
		if (now - lastTick - TICK_MS > STALL_MS) stalls.push({ at: Math.round(lastTick - startedAt), ms: Math.round(now - lastTick - TICK_MS) });
		lastTick = now;
		const due = Math.floor(((now - startedAt) / 1000) * opts.ratePerSecond) - sent - shed;
		for (let i = 0; i < due; i++) {
			if (pending.size >= maxInFlight) {
				shed++;
				continue;
			}
			sent++;
			const p = oneRequest(opts, startedAt).then(sample => {
				samples.push(sample);
				pending.delete(p);
			});
			pending.add(p);
		}
	}, TICK_MS);
	return {
		startedAt,
		now: () => performance.now() - startedAt,
		async stop() {
			clearInterval(tick);
			await Promise.all(pending);
			return { samples: samples.sort((a, b) => a.start - b.start), shed, stalls };
		},
	};
}

export interface WindowStats {
	requests: number;
	failed: number;
	/** longest time without a successful answer, from the window start to its end */
	longestGapMs: number;
	p50Ms: number;
	p99Ms: number;
	maxMs: number;
	/** failures by status/error text, for assertion messages */
	failures: string[];
}

export function percentile(sorted: number[], p: number): number {
	if (!sorted.length) return 0;
	return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

/** Stats over the requests *started* in [from, to). */
export function windowStats(samples: Sample[], from: number, to: number): WindowStats {
	const inWindow = samples.filter(s => s.start >= from && s.start < to);
	const latencies = inWindow.map(s => s.end - s.start).sort((a, b) => a - b);
	const successEnds = inWindow.filter(s => s.ok).map(s => s.end).sort((a, b) => a - b);
	let longestGap = 0;
	let previous = from;
	for (const end of successEnds) {
		longestGap = Math.max(longestGap, end - previous);
		previous = end;
	}
	longestGap = Math.max(longestGap, Math.min(to, inWindow.at(-1)?.end ?? to) - previous);
	const failures = inWindow.filter(s => !s.ok);
	return {
		requests: inWindow.length,
		failed: failures.length,
		longestGapMs: Math.round(longestGap),
		p50Ms: Math.round(percentile(latencies, 50) * 10) / 10,
		p99Ms: Math.round(percentile(latencies, 99) * 10) / 10,
		maxMs: Math.round(latencies.at(-1) ?? 0),
		failures: [...new Set(failures.map(f => `${f.status} ${f.error ?? ""}`.slice(0, 200)))].slice(0, 5),
	};
}

/** The load generator's stalls that ended at or after `from` (ms since start): those that could slow a request started then. */
export function stallsAfter(stalls: LoadReport["stalls"], from: number): LoadReport["stalls"] {
	return stalls.filter(st => st.at + st.ms >= from);
}

/** When each node last answered (ms since start), and how many answers each gave after `from`. */
export function servedCounts(samples: Sample[], from = 0): Record<string, number> {
	const counts: Record<string, number> = {};
	for (const s of samples) if (s.ok && s.servedBy && s.start >= from) counts[s.servedBy] = (counts[s.servedBy] ?? 0) + 1;
	return counts;
}
