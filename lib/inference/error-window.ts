/**
 * An agent's recent error rate on this node: outcomes counted in ten buckets spanning the window,
 * so recording is O(1) at any request rate and old outcomes fall out a bucket at a time.
 *
 * The routing rule wants the mesh-wide rate: each node's counts go out with its capacity advert
 * (`counts()`, lib/inference/capacity-board.ts), and the router adds the other nodes' counts to its own
 * (`withRemote`). The node's one window is shared by router (records) and swapper-proxy (advertises).
 */
import type { ServiceBroker } from "moleculer";

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

	/** Every agent's [runs, errors] in the window now, for the advert; agents with no runs left out. */
	counts(): AgentCounts {
		const horizon = this.now() - this.span * BUCKETS;
		const out: AgentCounts = {};
		for (const [agent, buckets] of this.agents) {
			let total = 0;
			let errors = 0;
			for (const b of buckets) {
				if (b.start <= horizon) continue;
				total += b.total;
				errors += b.errors;
			}
			if (total) out[agent] = [total, errors];
			else this.agents.delete(agent);
		}
		return out;
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

/** Per agent: [runs, errors] in the sender's window (compact: it rides every advert). */
export type AgentCounts = Record<string, [number, number]>;

/** This node's figures plus other nodes' advertised runs and errors; `byType` stays this node's. */
export function withRemote(local: ErrorFigures, remote: { total: number; errors: number }): ErrorFigures {
	const total = local.total + remote.total;
	const errors = local.errors + remote.errors;
	return { total, errors, rate: total ? errors / total : 0, byType: local.byType };
}

const windows = new WeakMap<ServiceBroker, ErrorWindow>();

/** The node's one window; created by the router with its window length, read by swapper-proxy's advert. */
export function errorWindowOf(broker: ServiceBroker, windowMs?: number): ErrorWindow | undefined {
	let window = windows.get(broker);
	if (!window && windowMs !== undefined) windows.set(broker, (window = new ErrorWindow(windowMs)));
	return window;
}
