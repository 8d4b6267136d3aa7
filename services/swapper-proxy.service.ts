/**
 * swapper-proxy: fronts this node's model runtimes (lib/inference/providers: Ollama, any
 * OpenAI-compatible server, the built-in local-echo) behind one set of actions, and keeps their
 * models under the lifecycle rules of lib/inference/model-lifecycle.ts (lazy load, idle unload,
 * LRU, per-model concurrency and queue). Every node advertises its models and load to the mesh
 * (lib/inference/capacity-board.ts), so `models` answers for the whole mesh and the router places
 * requests without polling. Request content never appears in a log line, event or metric label.
 */
import type { Context, Service, ServiceSchema, ServiceSettingSchema } from "moleculer";
import { Errors } from "moleculer";
import { NotFoundError } from "../lib/mesh/errors";
import { INTERNAL_ACCESS } from "../lib/http/auth";
import { ADVERT_EVENT, capacityBoardOf, type NodeAdvert } from "../lib/inference/capacity-board";
import { toMeshError } from "../lib/inference/errors";
import { CANCEL_EVENT, cancelBoardOf, cancelKeyOf, cancelledError } from "../lib/inference/cancellation";
import { errorWindowOf } from "../lib/inference/error-window";
import { GpuReader, type GpuReading } from "../lib/inference/gpu";
import { ModelLifecycle } from "../lib/inference/model-lifecycle";
import { PieceStream } from "../lib/inference/piece-stream";
import type { ChatMessage, GenerateAnswer, GenerateParams, GenerateRequest, ModelProvider } from "../lib/inference/provider";
import { providersFrom } from "../lib/inference/providers";
import { nodeContextOf } from "../lib/runtime/node-resources";
import { actionPolicy } from "../lib/mesh/failover-policy";

/** What `generate` streams, one object per chunk: text pieces, then one `done`. */
interface SwapperThis extends Service {
	lifecycle: ModelLifecycle;
	providers: ModelProvider[];
	pendingDiscovery: Set<ModelProvider>;
	/** every generation running here, aborted when the node stops */
	running: Set<AbortController>;
	gpu: GpuReading | null;
	gpuReader: GpuReader;
	advertTimer: NodeJS.Timeout | null;
	advertSoon: NodeJS.Timeout | null;
	lastStates: string;
	discover(): Promise<void>;
	advert(): NodeAdvert;
	advertise(): void;
	scheduleAdvertise(): void;
	generateOnce(ctx: Context<GenerateParams>, request: GenerateRequest, controller: AbortController, onPiece?: (text: string) => void, held?: () => void): Promise<GenerateAnswer>;
	checkModelParam(model: string): void;
}

const MESSAGE = {
	type: "object",
	props: {
		role: { type: "enum", values: ["system", "user", "assistant", "tool"] },
		content: { type: "string", max: 1_000_000 },
		tool_call_id: { type: "string", optional: true, max: 200 },
		tool_calls: { type: "array", optional: true, max: 16, items: "object" },
	},
	$$strict: "remove",
} as const;

const TOOL = {
	type: "object",
	props: { name: { type: "string", min: 1, max: 64 }, description: { type: "string", max: 1_000 }, parameters: { type: "object" } },
	$$strict: "remove",
} as const;

const MODEL = { type: "string", min: 1, max: 200 } as const;
const NODE = { type: "string", min: 1, max: 200, optional: true } as const;

function messagesOf(params: GenerateParams): ChatMessage[] {
	if (params.messages?.length) return params.messages;
	if (params.prompt) return [{ role: "user", content: params.prompt }];
	throw new Errors.ValidationError("prompt or messages is required", "VALIDATION_ERROR", [{ field: "prompt", message: "give a prompt or a non-empty messages array" }]);
}

const SwapperProxyService: ServiceSchema<ServiceSettingSchema, Record<string, never>, Record<string, never>, SwapperThis> = {
	name: "swapper-proxy",

	actions: {
		models: {
			...actionPolicy({ idempotent: true, timeout: "fast" }),
			rest: "GET /models",
			access: "user",
			params: { $$strict: "remove" },
			handler(this: SwapperThis) {
				const board = capacityBoardOf(this.broker);
				return { models: board.models(), nodes: board.nodes() };
			},
		},

		status: {
			...actionPolicy({ idempotent: true, timeout: "fast" }),
			rest: "GET /status",
			access: "user",
			params: { $$strict: "remove" },
			handler(this: SwapperThis) {
				const { swapper } = nodeContextOf(this.broker).settings;
				return {
					node: this.broker.nodeID,
					providers: this.providers.map(p => ({ name: p.name, locality: p.locality, discovered: !this.pendingDiscovery.has(p) })),
					limits: { max_loaded: swapper.maxLoaded, max_concurrency: swapper.maxConcurrency, queue: swapper.queue, idle_timeout_ms: swapper.idleTimeoutMs },
					totals: this.lifecycle.totals(),
					gpu: this.gpu,
					models: this.lifecycle.list(),
				};
			},
		},

		load: {
			...actionPolicy({ idempotent: true, timeout: "slow" }),
			rest: "POST /models/:model/load",
			access: INTERNAL_ACCESS,
			params: { model: MODEL, node: NODE, $$strict: "remove" },
			async handler(this: SwapperThis, ctx: Context<{ model: string; node?: string }>) {
				if (ctx.params.node && ctx.params.node !== this.broker.nodeID) return ctx.call("swapper-proxy.load", { model: ctx.params.model }, { nodeID: ctx.params.node });
				this.checkModelParam(ctx.params.model);
				try {
					return { node: this.broker.nodeID, ...(await this.lifecycle.load(ctx.params.model)) };
				} catch (err) {
					throw toMeshError(err, this.broker.nodeID);
				}
			},
		},

		unload: {
			...actionPolicy({ idempotent: true, timeout: "slow" }),
			rest: "POST /models/:model/unload",
			access: INTERNAL_ACCESS,
			params: { model: MODEL, node: NODE, $$strict: "remove" },
			async handler(this: SwapperThis, ctx: Context<{ model: string; node?: string }>) {
				if (ctx.params.node && ctx.params.node !== this.broker.nodeID) return ctx.call("swapper-proxy.unload", { model: ctx.params.model }, { nodeID: ctx.params.node });
				this.checkModelParam(ctx.params.model);
				try {
					return { node: this.broker.nodeID, ...(await this.lifecycle.unload(ctx.params.model)) };
				} catch (err) {
					throw toMeshError(err, this.broker.nodeID);
				}
			},
		},

		/**
		 * One generation on this node. Not retried by Moleculer (idempotent: false): the router chooses
		 * the node and decides itself whether another node should be tried.
		 */
		generate: {
			...actionPolicy({ idempotent: false, timeout: "slow" }),
			rest: "POST /generate",
			access: INTERNAL_ACCESS,
			// The gateway gives the call a cancel key and cancels it when the client disconnects.
			cancellable: true,
			params: {
				model: MODEL,
				prompt: { type: "string", min: 1, optional: true },
				messages: { type: "array", optional: true, max: 200, items: MESSAGE },
				max_tokens: { type: "number", integer: true, min: 1, max: 100_000, optional: true, convert: true },
				temperature: { type: "number", min: 0, max: 2, optional: true, convert: true },
				tools: { type: "array", optional: true, max: 32, items: TOOL },
				stream: { type: "boolean", optional: true, convert: true },
				cancel_key: { type: "string", min: 1, max: 100, optional: true },
				$$strict: "remove",
			},
			async handler(this: SwapperThis, ctx: Context<GenerateParams>) {
				this.checkModelParam(ctx.params.model);
				const request: GenerateRequest = {
					model: ctx.params.model,
					messages: messagesOf(ctx.params),
					max_tokens: ctx.params.max_tokens,
					temperature: ctx.params.temperature,
					tools: ctx.params.tools,
				};
				const controller = new AbortController();
				// The router's key for its run, else the entry point's (a direct HTTP call), else this call's.
				const untrack = cancelBoardOf(this.broker).track(ctx.params.cancel_key ?? cancelKeyOf(ctx) ?? ctx.id, controller);
				this.running.add(controller);
				const finish = () => {
					untrack();
					this.running.delete(controller);
				};
				if (!ctx.params.stream) {
					return this.generateOnce(ctx, request, controller).finally(finish);
				}
				// Slot and load first: a full queue or no room is the call's error, before any stream exists.
				let release: () => void;
				try {
					release = await this.lifecycle.begin(request.model, controller.signal);
				} catch (err) {
					finish();
					throw toMeshError(err, this.broker.nodeID);
				}
				// Pieces that come while the mesh is still sending the previous one travel joined (lib/inference/piece-stream.ts).
				const stream = new PieceStream(() => controller.abort(new Error("reader went away")));
				this.generateOnce(ctx, request, controller, text => stream.piece(text), release)
					.then(({ text: _text, ...done }) => stream.finish({ type: "done", ...done }))
					.catch(err => stream.destroy(err as Error))
					.finally(finish);
				return stream;
			},
		},

		/**
		 * Stops the generations of this node running under a cancel key. The router and the gateway cancel
		 * mesh-wide with the CANCEL_EVENT broadcast instead (lib/inference/cancellation.ts); this is for a
		 * caller that knows the node.
		 */
		cancel: {
			...actionPolicy({ idempotent: true, timeout: "fast" }),
			visibility: "public",
			params: { id: { type: "string", min: 1, max: 100 }, $$strict: "remove" },
			handler(this: SwapperThis, ctx: Context<{ id: string }>) {
				return { cancelled: cancelBoardOf(this.broker).cancel(ctx.params.id, cancelledError("Cancelled by the caller")) > 0 };
			},
		},
	},

	events: {
		[ADVERT_EVENT](this: SwapperThis, ctx: Context<NodeAdvert>) {
			capacityBoardOf(this.broker).update(ctx.params);
		},
		"$node.disconnected"(this: SwapperThis, ctx: Context<{ node: { id: string } }>) {
			capacityBoardOf(this.broker).drop(ctx.params.node.id);
		},
		[CANCEL_EVENT](this: SwapperThis, ctx: Context<{ key?: unknown }>) {
			if (typeof ctx.params?.key === "string") cancelBoardOf(this.broker).cancel(ctx.params.key);
		},
		"$node.connected"(this: SwapperThis) {
			// A newcomer knows nothing yet: tell it now rather than at the next tick.
			this.scheduleAdvertise();
		},
	},

	methods: {
		checkModelParam(this: SwapperThis, model: string) {
			if (!this.lifecycle.has(model)) {
				throw new NotFoundError(`Node ${this.broker.nodeID} serves no model '${model}'`, "MODEL_NOT_FOUND", {
					field: "model",
					node: this.broker.nodeID,
					retry_elsewhere: true,
				});
			}
		},

		/** One generation; `held` is the release of a slot the caller already took (streams), else one is taken here. */
		async generateOnce(this: SwapperThis, ctx: Context<GenerateParams>, request: GenerateRequest, controller: AbortController, onPiece?: (text: string) => void, held?: () => void): Promise<GenerateAnswer> {
			const { swapper } = nodeContextOf(this.broker).settings;
			// The caller's own timeout when it set one (it stops waiting then), else ours.
			const callerTimeout = Number(ctx.options?.timeout) || 0;
			const timeoutMs = Math.max(1, Math.floor(callerTimeout > 0 ? Math.min(callerTimeout, swapper.timeoutMs) : swapper.timeoutMs));
			// One controller and one timer per call: AbortSignal.any/timeout cost a third of a local-echo
			// call in garbage collection (docs/BENCHMARKS.md, router section).
			const timer = setTimeout(() => controller.abort(new DOMException("no answer in time", "TimeoutError")), timeoutMs);
			const signal = controller.signal;
			const provider = this.lifecycle.providerOf(request.model);
			const started = Date.now();
			try {
				const generate = () => provider.generate(request, { signal, onPiece });
				const result = held ? await generate().finally(held) : await this.lifecycle.run(request.model, signal, generate);
				return {
					model: request.model,
					provider: provider.name,
					locality: provider.locality,
					node: this.broker.nodeID,
					text: result.text,
					usage: { tokens_in: result.tokens_in, tokens_out: result.tokens_out },
					tool_calls: result.tool_calls,
					development: result.development,
					latency_ms: Date.now() - started,
				};
			} catch (err) {
				const meshError = toMeshError(err, this.broker.nodeID);
				this.logger.warn(`Generation on ${request.model} failed: ${(meshError as Error).message}`, {
					event: "generate.failed",
					model: request.model,
					provider: provider.name,
					type: (meshError as { type?: string }).type,
				});
				throw meshError;
			} finally {
				clearTimeout(timer);
			}
		},

		/** Asks each provider for its models; one that does not answer is asked again at the next tick. */
		async discover(this: SwapperThis) {
			for (const provider of [...this.pendingDiscovery]) {
				try {
					const signal = AbortSignal.timeout(5_000);
					const [models, loaded] = await Promise.all([provider.listModels(signal), provider.loadedModels(signal)]);
					this.lifecycle.register(provider, models, loaded);
					this.pendingDiscovery.delete(provider);
					this.logger.info(`Provider ${provider.name} (${provider.locality}) offers ${models.length} model(s): ${models.join(", ")}`);
				} catch (err) {
					this.logger.warn(`Provider ${provider.name} did not list its models (${(err as Error).message}); retrying`);
				}
			}
		},

		advert(this: SwapperThis): NodeAdvert {
			const { swapper } = nodeContextOf(this.broker).settings;
			return {
				node: this.broker.nodeID,
				at: Date.now(),
				limits: { max_concurrency: swapper.maxConcurrency, queue: swapper.queue, max_loaded: swapper.maxLoaded },
				gpu: this.gpu,
				models: this.lifecycle.list(),
				// This node's router outcomes ride along, so every router sees the mesh-wide error rate.
				agents: errorWindowOf(this.broker)?.counts(),
			};
		},

		advertise(this: SwapperThis) {
			const advert = this.advert();
			this.lastStates = advert.models.map(m => `${m.model}:${m.state}`).join(",");
			capacityBoardOf(this.broker).update(advert);
			this.broker.broadcast(ADVERT_EVENT, advert).catch(err => this.logger.warn(`Advert not sent: ${(err as Error).message}`));
		},

		/** Soon, once: state changes come in bursts (a load is loading → loaded within milliseconds). */
		scheduleAdvertise(this: SwapperThis) {
			if (this.advertSoon) return;
			this.advertSoon = setTimeout(() => {
				this.advertSoon = null;
				this.advertise();
			}, 20);
		},
	},

	created(this: SwapperThis) {
		const { swapper } = nodeContextOf(this.broker).settings;
		this.providers = providersFrom(swapper);
		this.pendingDiscovery = new Set(this.providers);
		this.running = new Set();
		this.gpu = null;
		this.gpuReader = new GpuReader();
		this.advertTimer = null;
		this.advertSoon = null;
		this.lastStates = "";
		this.lifecycle = new ModelLifecycle(
			{ idleTimeoutMs: swapper.idleTimeoutMs, maxLoaded: swapper.maxLoaded, maxConcurrency: swapper.maxConcurrency, queue: swapper.queue, timeoutMs: swapper.timeoutMs },
			this.logger,
		);
		// Running/waiting counts change with every call and go out with the periodic advert; a model's
		// state change (loaded, unloaded, failed) goes out at once.
		this.lifecycle.onChange = () => {
			const states = this.lifecycle
				.list()
				.map(m => `${m.model}:${m.state}`)
				.join(",");
			if (states !== this.lastStates) this.scheduleAdvertise();
		};
		if (!this.providers.length) this.logger.warn("swapper-proxy: no model runtime configured (OLLAMA_URL, OPENAI_BASE_URL, SWAPPER_LOCAL_ECHO)");
		if (swapper.localEcho) this.logger.warn(`swapper-proxy: the development model local-echo answers as ${swapper.localEchoModels.join(", ")}; not a real model`);
	},

	async started(this: SwapperThis) {
		await this.discover();
		this.gpu = await this.gpuReader.current();
		this.advertise();
		const { swapper } = nodeContextOf(this.broker).settings;
		this.advertTimer = setInterval(() => {
			void (async () => {
				if (this.pendingDiscovery.size) await this.discover();
				this.gpu = await this.gpuReader.current();
				this.advertise();
			})();
		}, swapper.advertiseMs);
		this.advertTimer.unref();
	},

	stopped(this: SwapperThis) {
		if (this.advertTimer) clearInterval(this.advertTimer);
		if (this.advertSoon) clearTimeout(this.advertSoon);
		for (const controller of this.running) controller.abort(new Error("node stopping"));
		this.lifecycle.close();
	},
};

export default SwapperProxyService;
