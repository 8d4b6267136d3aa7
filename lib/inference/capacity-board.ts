/**
 * What every node knows about every node's models, without polling: each swapper-proxy broadcasts
 * an advert (its models with state and in-flight counts, its limits, GPU reading) every
 * SWAPPER_ADVERTISE_MS and at once when a model changes state; this board keeps the latest advert
 * per node and forgets a node when the mesh drops it. The router places requests from it.
 *
 * Between adverts the board also counts the requests this node itself has sent to each node and
 * model and not seen answered, so a burst from one router spreads before the next advert arrives.
 */
import type { ServiceBroker } from "moleculer";
import type { AgentCounts } from "./error-window";
import type { GpuReading } from "./gpu";
import type { ModelView } from "./model-lifecycle";

export interface NodeAdvert {
	node: string;
	/** sender's clock, ms; a late advert older than the one held is ignored */
	at: number;
	limits: { max_concurrency: number; queue: number; max_loaded: number };
	gpu: GpuReading | null;
	models: ModelView[];
	/** the sender's router outcomes per agent in its error window (absent on a node without a router) */
	agents?: AgentCounts;
}

export interface Placement {
	node: string;
	model: string;
	provider: string;
	locality: ModelView["locality"];
	state: ModelView["state"];
	in_flight: number;
	queued: number;
	gpu: number | null;
	/** max(GPU utilisation, (running + waiting + sent-unanswered) / per-model concurrency) */
	load: number;
	local: boolean;
}

export interface MeshModelView extends ModelView {
	node: string;
}

export class CapacityBoard {
	private readonly adverts = new Map<string, NodeAdvert>();
	private readonly pending = new Map<string, number>();
	/** when each node's advert arrived, by this node's clock (senders' clocks may differ) */
	private readonly received = new Map<string, number>();

	constructor(
		readonly localNode: string,
		private readonly now: () => number = Date.now,
	) {}

	update(advert: NodeAdvert): void {
		const held = this.adverts.get(advert.node);
		if (held && held.at > advert.at) return;
		this.adverts.set(advert.node, advert);
		this.received.set(advert.node, this.now());
	}

	drop(node: string): void {
		this.adverts.delete(node);
		this.received.delete(node);
		for (const key of this.pending.keys()) if (key.startsWith(`${node}\u0000`)) this.pending.delete(key);
	}

	nodes(): string[] {
		return [...this.adverts.keys()].sort();
	}

	advertOf(node: string): NodeAdvert | undefined {
		return this.adverts.get(node);
	}

	models(): MeshModelView[] {
		return [...this.adverts.values()].flatMap(a => a.models.map(m => ({ ...m, node: a.node }))).sort((a, b) => a.model.localeCompare(b.model) || a.node.localeCompare(b.node));
	}

	/** Every node that can serve `model`, least loaded first, this node first on a tie. */
	placements(model: string): Placement[] {
		const out: Placement[] = [];
		for (const advert of this.adverts.values()) {
			const m = advert.models.find(v => v.model === model);
			if (!m) continue;
			const sent = this.pending.get(`${advert.node}\u0000${model}`) ?? 0;
			const occupancy = (m.in_flight + m.queued + sent) / Math.max(1, advert.limits.max_concurrency);
			const gpu = advert.gpu?.utilization ?? null;
			out.push({
				node: advert.node,
				model,
				provider: m.provider,
				locality: m.locality,
				state: m.state,
				in_flight: m.in_flight,
				queued: m.queued,
				gpu,
				load: Math.round(Math.max(gpu ?? 0, occupancy) * 1000) / 1000,
				local: advert.node === this.localNode,
			});
		}
		return out.sort((a, b) => a.load - b.load || Number(b.local) - Number(a.local) || a.node.localeCompare(b.node));
	}

	/**
	 * Runs and errors of `agent` that the *other* nodes' routers advertised (this node's own are live in
	 * its window). An advert older than `maxAgeMs` no longer counts: its window has moved on.
	 */
	remoteOutcomes(agent: string, maxAgeMs: number): { total: number; errors: number } {
		const horizon = this.now() - maxAgeMs;
		let total = 0;
		let errors = 0;
		for (const [node, advert] of this.adverts) {
			const counts = advert.agents?.[agent];
			if (!counts || node === this.localNode || (this.received.get(node) ?? 0) < horizon) continue;
			total += counts[0];
			errors += counts[1];
		}
		return { total, errors };
	}

	/** This node sent a generation to `node`; call the returned function when it is answered. */
	begin(node: string, model: string): () => void {
		const key = `${node}\u0000${model}`;
		this.pending.set(key, (this.pending.get(key) ?? 0) + 1);
		let ended = false;
		return () => {
			if (ended) return;
			ended = true;
			const left = (this.pending.get(key) ?? 1) - 1;
			if (left > 0) this.pending.set(key, left);
			else this.pending.delete(key);
		};
	}
}

const boards = new WeakMap<ServiceBroker, CapacityBoard>();

/** The node's one board, shared by router and swapper-proxy (whichever of them the node runs). */
export function capacityBoardOf(broker: ServiceBroker): CapacityBoard {
	let board = boards.get(broker);
	if (!board) boards.set(broker, (board = new CapacityBoard(broker.nodeID)));
	return board;
}

/** The mesh event carrying adverts. */
export const ADVERT_EVENT = "swapper-proxy.advert";
