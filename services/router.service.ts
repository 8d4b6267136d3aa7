/**
 * router: agents by name → a model on whichever node serves it. Stateless (every node runs it): the
 * agent registry and rules come from ROUTER_AGENTS_FILE (lib/inference/agent-registry.ts, hot
 * reloaded), live figures from the nodes' adverts (lib/inference/capacity-board.ts) and this node's
 * error window. Each request: privacy gate (lib/inference/privacy-gate.ts) → decision
 * (lib/inference/routing-rules.ts) → swapper-proxy.generate on the chosen node, retried on the next
 * node when the failure says another node can help (non-streaming, or before the first piece).
 * Events agent.run.* go through the outbox; logs, events and metric labels carry ids and figures,
 * never prompt or answer text.
 */
import path from "path";
import fs from "fs";
import { PassThrough, type Readable } from "stream";
import type { Context, Service, ServiceSchema, ServiceSettingSchema } from "moleculer";
import { Errors } from "moleculer";
import { NotFoundError, PayloadTooLargeError, UnavailableError, ValidationError } from "../lib/mesh/errors";
import { requireUser, type MeshUser } from "../lib/http/auth";
import { OutboxBatch } from "../lib/data/outbox-batch";
import { setHealthSection } from "../lib/http/health";
import { InPlaceSeries } from "../lib/mesh/request-metrics";
import { agentsView, loadRegistryFile, RegistryError, type AgentRegistry, type AgentSpec, type Mode } from "../lib/inference/agent-registry";
import { ADVERT_EVENT, capacityBoardOf, type NodeAdvert } from "../lib/inference/capacity-board";
import { retryElsewhere } from "../lib/inference/errors";
import { CANCEL_EVENT, CancelScope, cancelBoardOf, cancelKeyOf, isCancellation, requestCancel } from "../lib/inference/cancellation";
import { errorWindowOf, withRemote, type ErrorFigures, type ErrorWindow } from "../lib/inference/error-window";
import { gateContext, promptBytes, type GatedContext } from "../lib/inference/privacy-gate";
import type { ChatMessage, GenerateAnswer, GenerateChunk, GenerateParams, ToolCall } from "../lib/inference/provider";
import { ROUTE_REQUEST_PARAMS, STREAM_FRAMING_META, type RouteStreamFrame } from "../lib/inference/route-request";
import { decide, type Decision } from "../lib/inference/routing-rules";
import { TOOL_CATALOGUE, toolByFunctionName } from "../lib/inference/tools";
import { logsAt } from "../lib/runtime/logger";
import { nodeContextOf } from "../lib/runtime/node-resources";
import { actionPolicy } from "../lib/mesh/failover-policy";
import { PUBLISHES } from "../lib/data/outbox/relay";

export const AGENT_METRICS = {
	latency: "agent_latency_seconds",
	tokensIn: "agent_tokens_in_total",
	tokensOut: "agent_tokens_out_total",
	errorRate: "agent_error_rate",
	toolCalls: "agent_tool_calls_total",
} as const;

const AGENT_LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

interface RouteParams {
	agent: string;
	message?: string;
	messages?: Array<{ role: string; content: string }>;
	mode: Mode;
	consent: boolean;
	dao_id?: string;
	metadata?: Record<string, unknown>;
	stream?: boolean;
}

type RouteMeta = { user?: MeshUser; $responseType?: string; $responseHeaders?: Record<string, string>; [STREAM_FRAMING_META]?: "objects" };
type RouteContext = Context<RouteParams, RouteMeta>;

/** One run as it goes: what events, logs and the answer say about it (ids and figures only). */
interface Run {
	requestId: string;
	user: MeshUser;
	params: RouteParams;
	registry: AgentRegistry;
	decision: Decision;
	agent: AgentSpec;
	gated: GatedContext;
	started: number;
	attempts: Array<{ node: string; error_type: string }>;
	tools: Array<{ tool: string; allowed: boolean }>;
	/** the entry point's cancel key (ctx.meta.cancel_key), else this call's id; passed to every generation */
	cancelKey: string;
	/** cancelled when the client goes away (lib/inference/cancellation.ts) */
	cancel: CancelScope;
}

interface RouterThis extends Service {
	registry: AgentRegistry;
	/** agent metrics updated in place (no label hashing per request); null when metrics are off */
	series: InPlaceSeries | null;
	lastReloadError: string | null;
	/** LOG_LEVEL lets info lines through: the per-run info lines are not even built otherwise (hot path) */
	logsInfo: boolean;
	errors: ErrorWindow;
	outbox: OutboxBatch | null;
	watching: string | null;
	reload(reason: string): AgentRegistry;
	meshErrors(agent: string): ErrorFigures;
	emitRun(run: Pick<Run, "requestId" | "user" | "params" | "registry"> & Partial<Run>, phase: "requested" | "started" | "completed" | "failed", extra?: Record<string, unknown>): void;
	generateWithRetry(ctx: RouteContext, run: Run, request: Omit<GenerateParams, "model">): Promise<GenerateAnswer>;
	runTools(ctx: RouteContext, run: Run, calls: ToolCall[]): Promise<ChatMessage[]>;
	routeOnce(ctx: RouteContext, run: Run): Promise<Record<string, unknown>>;
	routeStream(ctx: RouteContext, run: Run): Promise<Readable>;
	finish(run: Run, outcome: { answer?: GenerateAnswer; usage?: { tokens_in: number; tokens_out: number }; error?: unknown }): void;
	infoLater(message: string, fields: Record<string, unknown>): void;
	answerOf(run: Run, answer: GenerateAnswer, text: string, usage: { tokens_in: number; tokens_out: number }): Record<string, unknown>;
}

function errorType(err: unknown): string {
	return (err as { type?: string }).type ?? (err as Error).name ?? "ERROR";
}

/** SSE framing: one event, JSON data on one line. */
function sse(data: unknown, event?: string): string {
	return `${event ? `event: ${event}\n` : ""}data: ${JSON.stringify(data)}\n\n`;
}

/** How a streamed run is written: SSE text for HTTP clients (pieces are unnamed `data:` events), or objects. */
type Framing = { objectMode: boolean; frame(event: RouteStreamFrame["event"], data: Record<string, unknown>): unknown };
const SSE_FRAMING: Framing = { objectMode: false, frame: (event, data) => sse(data, event === "piece" ? undefined : event) };
const OBJECT_FRAMING: Framing = { objectMode: true, frame: (event, data) => ({ event, data }) satisfies RouteStreamFrame };

const RouterService: ServiceSchema<ServiceSettingSchema, Record<string, never>, Record<string, never>, RouterThis> = {
	name: "router",
	/** Published through the outbox (the event stream captures it): agent.run.{phase}.{agent_id} (lib/data/outbox-batch.ts), and its audit events. */
	metadata: { [PUBLISHES]: ["agent.>", "audit.>"] },

	actions: {
		route: {
			// Not retried by Moleculer: the router retries generations itself, on another node.
			...actionPolicy({ idempotent: false, timeout: "slow" }),
			rest: "POST /route",
			access: "user",
			// The gateway gives the call a cancel key and cancels it when the client disconnects.
			cancellable: true,
			params: {
				...ROUTE_REQUEST_PARAMS,
				stream: { type: "boolean", optional: true, convert: true },
				$$strict: "remove",
			},
			async handler(this: RouterThis, ctx: RouteContext) {
				const user = requireUser(ctx);
				const registry = this.registry;
				const params = ctx.params;
				const agent = registry.agents.get(params.agent);
				if (!agent) throw new NotFoundError(`No agent '${params.agent}' in registry version ${registry.version}`, "AGENT_NOT_FOUND", { field: "agent", agent: params.agent });
				const gated = gateContext(agent.system_prompt, params);
				if (!gated.messages[gated.messages.length - 1].content.trim()) {
					throw new Errors.ValidationError("The message is empty", "VALIDATION_ERROR", [{ field: "message", message: "give a non-empty message, or messages ending with a user turn" }]);
				}
				const bytes = promptBytes(params);
				const limit = nodeContextOf(this.broker).settings.router.maxPromptBytes;
				if (bytes > limit) throw new PayloadTooLargeError(`The prompt is ${bytes} bytes; the limit is ${limit}`, "PROMPT_TOO_LARGE", { field: "message", bytes, limit });

				const requestId = ctx.requestID ?? ctx.id;
				this.emitRun({ requestId, user, params, registry }, "requested");
				const board = capacityBoardOf(this.broker);
				let decision: Decision & { agentSpec: AgentSpec };
				try {
					decision = decide(registry, { agent, mode: params.mode }, { placements: m => board.placements(m), errors: a => this.meshErrors(a) });
				} catch (err) {
					this.emitRun({ requestId, user, params, registry }, "failed", { error_type: errorType(err) });
					throw err;
				}
				const { agentSpec, ...plain } = decision;
				// The sanitized context is rebuilt for a backup agent: its own system prompt.
				const run: Run = {
					requestId,
					user,
					params,
					registry,
					decision: plain,
					agent: agentSpec,
					gated: agentSpec === agent ? gated : gateContext(agentSpec.system_prompt, params),
					started: Date.now(),
					attempts: [],
					tools: [],
					// The context id when no entry point gave a key: a client chooses its X-Request-ID, so two runs may share one.
					cancelKey: cancelKeyOf(ctx) ?? ctx.id,
					cancel: new CancelScope(),
				};
				if (this.logsInfo) this.infoLater(`Route ${requestId}: ${plain.explanation}`, { event: "router.decision", request_id: requestId, agent_id: plain.agent, model: plain.model, node: plain.node, mode: params.mode, rules: plain.rules });
				this.emitRun(run, "started");
				return params.stream ? this.routeStream(ctx, run) : this.routeOnce(ctx, run);
			},
		},

		agents: {
			...actionPolicy({ idempotent: true, timeout: "fast" }),
			rest: "GET /agents",
			access: "user",
			params: { $$strict: "remove" },
			handler(this: RouterThis) {
				return agentsView(this.registry);
			},
		},

		rules: {
			...actionPolicy({ idempotent: true, timeout: "fast" }),
			rest: "GET /rules",
			access: "user",
			params: { $$strict: "remove" },
			handler(this: RouterThis) {
				const r = this.registry;
				return { version: r.version, file: r.file, loaded_at: r.loadedAt, default_rules: r.defaultRules, rules: r.rules, tools: Object.keys(TOOL_CATALOGUE), last_reload_error: this.lastReloadError };
			},
		},

		/** Reads the file now (it is also watched); a bad file answers 422 naming the line and changes nothing. */
		reload: {
			...actionPolicy({ idempotent: true, timeout: "fast" }),
			rest: "POST /reload",
			access: ["admin"],
			params: { $$strict: "remove" },
			handler(this: RouterThis) {
				try {
					const r = this.reload("requested");
					return { version: r.version, loaded_at: r.loadedAt };
				} catch (err) {
					if (!(err instanceof RegistryError)) throw err;
					throw new ValidationError(err.message, "REGISTRY_INVALID", { line: err.line, active_version: this.registry.version });
				}
			},
		},
	},

	events: {
		[ADVERT_EVENT](this: RouterThis, ctx: Context<NodeAdvert>) {
			capacityBoardOf(this.broker).update(ctx.params);
		},
		[CANCEL_EVENT](this: RouterThis, ctx: Context<{ key?: unknown }>) {
			if (typeof ctx.params?.key === "string") cancelBoardOf(this.broker).cancel(ctx.params.key);
		},
		"$node.disconnected"(this: RouterThis, ctx: Context<{ node: { id: string } }>) {
			capacityBoardOf(this.broker).drop(ctx.params.node.id);
		},
	},

	methods: {
		/** Loads the file; on success it becomes active, on failure the old version stays and the error is kept. */
		reload(this: RouterThis, reason: string): AgentRegistry {
			const file = path.resolve(nodeContextOf(this.broker).settings.router.agentsFile);
			try {
				const registry = loadRegistryFile(file);
				const previous = this.registry?.version;
				this.registry = registry;
				this.lastReloadError = null;
				this.logger.info(`Agent registry ${registry.version} active (${registry.agents.size} agents, ${registry.rules.length} rules${previous ? `; was ${previous}` : ""}; ${reason})`, {
					event: "router.registry.loaded",
					version: registry.version,
				});
				return registry;
			} catch (err) {
				this.lastReloadError = (err as Error).message;
				if (this.registry) this.logger.warn(`Agent registry refused, ${this.registry.version} stays active: ${this.lastReloadError}`, { event: "router.registry.refused", line: (err as RegistryError).line });
				throw err;
			}
		},

		/** The agent's error figures across the mesh: this node's window plus the other nodes' adverts. */
		meshErrors(this: RouterThis, agent: string): ErrorFigures {
			const windowMs = nodeContextOf(this.broker).settings.router.errorWindowMs;
			return withRemote(this.errors.figures(agent), capacityBoardOf(this.broker).remoteOutcomes(agent, windowMs));
		},

		emitRun(this: RouterThis, run, phase, extra = {}) {
			if (!this.outbox) return;
			const agentId = phase === "requested" ? run.params.agent : (run.decision?.agent ?? run.params.agent);
			// Ids, mode and figures only: never the message, the history or the answer.
			const payload = {
				request_id: run.requestId,
				agent_id: agentId,
				agent_requested: run.params.agent,
				user_id: run.user.id,
				mode: run.params.mode,
				consent: run.params.consent,
				dao_id: run.params.dao_id ?? null,
				rules_version: run.registry.version,
				node: this.broker.nodeID,
				...(run.decision ? { model: run.decision.model, target_node: run.decision.node, provider: run.decision.provider, locality: run.decision.locality, rules: run.decision.rules } : {}),
				...extra,
				at: new Date().toISOString(),
			};
			this.outbox.add({ aggregateType: "agent_run", aggregateId: run.requestId, eventType: `agent.run.${phase}`, subject: `agent.run.${phase}.${agentId}`, payload });
		},

		/** Down the decision's candidates: the next node only when the failure says another node can help. */
		async generateWithRetry(this: RouterThis, ctx: RouteContext, run: Run, request: Omit<GenerateParams, "model">): Promise<GenerateAnswer> {
			const board = capacityBoardOf(this.broker);
			const nodes = run.decision.candidates.slice(0, 3).map(c => c.node);
			let lastError: unknown;
			for (const node of nodes) {
				run.cancel.check();
				const done = board.begin(node, run.decision.model);
				try {
					const call = ctx.call("swapper-proxy.generate", { ...request, model: run.decision.model, cancel_key: run.cancelKey }, { nodeID: node }) as Promise<GenerateAnswer>;
					// Abandoned at once when the client goes away; the same cancel stops it on its node.
					const answer = await run.cancel.race(call);
					run.decision.node = node;
					return answer;
				} catch (err) {
					if (run.cancel.reason) throw run.cancel.reason;
					lastError = err;
					run.attempts.push({ node, error_type: errorType(err) });
					this.logger.warn(`Route ${run.requestId}: generation on ${node} failed (${errorType(err)})${retryElsewhere(err) ? "; trying the next node" : ""}`, {
						event: "router.attempt_failed",
						request_id: run.requestId,
						node,
						type: errorType(err),
					});
					if (!retryElsewhere(err)) throw err;
				} finally {
					done();
				}
			}
			const e = lastError as Errors.MoleculerError;
			const status = e.code === 429 ? 429 : 503;
			throw new Errors.MoleculerRetryableError(`No node answered for model ${run.decision.model} (${run.attempts.map(a => `${a.node}: ${a.error_type}`).join(", ")})`, status, status === 429 ? "QUEUE_FULL" : "NO_NODE_ANSWERED", {
				model: run.decision.model,
				attempts: run.attempts,
				retry_elsewhere: true,
			});
		},

		/** Runs the model's tool calls that the agent is allowed, as the caller; the others are answered "not allowed". */
		async runTools(this: RouterThis, ctx: RouteContext, run: Run, calls: ToolCall[]): Promise<ChatMessage[]> {
			const replies: ChatMessage[] = [];
			for (const call of calls) {
				const found = toolByFunctionName(call.name);
				const allowed = !!found && run.agent.tools.includes(found[0]);
				run.tools.push({ tool: found?.[0] ?? call.name, allowed });
				if (!found || !allowed) {
					replies.push({ role: "tool", tool_call_id: call.id, content: JSON.stringify({ error: `tool ${call.name} is not allowed for agent ${run.agent.id}` }) });
					continue;
				}
				const [name, tool] = found;
				const started = process.hrtime.bigint();
				let content: string;
				try {
					content = tool.summarize(await ctx.call(tool.action, tool.params(call.arguments), { meta: { user: run.user } }));
				} catch (err) {
					content = JSON.stringify({ error: `${name} failed: ${errorType(err)}` });
				}
				this.series?.increment(AGENT_METRICS.toolCalls, `tool|${run.agent.id}|${name}`, { agent_id: run.agent.id, tool: name });
				this.series?.observe(AGENT_METRICS.latency, `${run.agent.id}|tool`, { agent_id: run.agent.id, operation: "tool" }, Number(process.hrtime.bigint() - started) / 1e9);
				replies.push({ role: "tool", tool_call_id: call.id, content });
			}
			return replies;
		},

		async routeOnce(this: RouterThis, ctx: RouteContext, run: Run) {
			// Tools only with consent: their results are memory, which a sanitized context never carries.
			const tools = run.params.consent ? run.agent.tools.map(t => TOOL_CATALOGUE[t].spec) : [];
			const untrack = cancelBoardOf(this.broker).track(run.cancelKey, run.cancel);
			try {
				let answer = await this.generateWithRetry(ctx, run, { messages: run.gated.messages, ...(tools.length ? { tools } : {}) });
				const usage = { ...answer.usage };
				if (answer.tool_calls.length && tools.length) {
					const replies = await this.runTools(ctx, run, answer.tool_calls);
					const messages: ChatMessage[] = [...run.gated.messages, { role: "assistant", content: answer.text, tool_calls: answer.tool_calls }, ...replies];
					answer = await this.generateWithRetry(ctx, run, { messages });
					usage.tokens_in += answer.usage.tokens_in;
					usage.tokens_out += answer.usage.tokens_out;
				}
				// A cancel that came after the last answer: the client is gone, the run did not reach it.
				run.cancel.check();
				this.finish(run, { answer, usage });
				return this.answerOf(run, answer, answer.text, usage);
			} catch (err) {
				this.finish(run, { error: err });
				throw err;
			} finally {
				untrack();
			}
		},

		/**
		 * text/event-stream: `event: start` (node, model, decision), `data: {text}` per piece, then
		 * `event: done` with usage and decision (or `event: error`); the same events as objects when the
		 * caller asked for them (lib/inference/route-request.ts). A failure before the stream opens is
		 * retried on the next node like a non-streaming run; after the first piece it ends the stream.
		 */
		async routeStream(this: RouterThis, ctx: RouteContext, run: Run) {
			const framing = ctx.meta[STREAM_FRAMING_META] === "objects" ? OBJECT_FRAMING : SSE_FRAMING;
			if (framing === SSE_FRAMING) {
				ctx.meta.$responseType = "text/event-stream; charset=utf-8";
				ctx.meta.$responseHeaders = { "Cache-Control": "no-cache", "X-Accel-Buffering": "no" };
			}
			const untrack = cancelBoardOf(this.broker).track(run.cancelKey, run.cancel);
			let upstream: Readable;
			try {
				upstream = (await this.generateWithRetry(ctx, run, { messages: run.gated.messages, stream: true })) as unknown as Readable;
			} catch (err) {
				untrack();
				this.finish(run, { error: err });
				throw err;
			}
			const out = new PassThrough({ objectMode: framing.objectMode });
			const node = run.decision.node;
			out.write(framing.frame("start", { request_id: run.requestId, agent: run.decision.agent, model: run.decision.model, node, decision: run.decision }));
			let finished = false;
			const end = (outcome: Parameters<RouterThis["finish"]>[1], last?: unknown) => {
				if (finished) return false;
				finished = true;
				untrack();
				// The caller's last event first, the run's metrics, events and log line after it.
				if (last !== undefined) out.end(last);
				this.finish(run, outcome);
				return true;
			};
			upstream.on("data", (chunk: GenerateChunk) => {
				if (finished) return;
				if (chunk.type === "piece") {
					out.write(framing.frame("piece", { text: chunk.text }));
					return;
				}
				const answer: GenerateAnswer = { ...chunk, text: "" };
				// The text went out piece by piece; the final event carries everything else.
				const final: Record<string, unknown> = this.answerOf(run, answer, "", answer.usage);
				delete final.response;
				end({ answer, usage: answer.usage }, framing.frame("done", final));
			});
			upstream.on("error", err => {
				const e = err as Errors.MoleculerError;
				end({ error: err }, framing.frame("error", { name: e.name, message: e.message, code: e.code ?? 503, type: e.type ?? "STREAM_FAILED", retryable: true, request_id: run.requestId }));
			});
			upstream.on("end", () => {
				const err = new UnavailableError("The stream ended without a final answer", "STREAM_INCOMPLETE");
				end({ error: err }, framing.frame("error", { name: err.name, message: err.message, code: 503, type: err.type, retryable: true, request_id: run.requestId }));
			});
			// Cancelled (the client went away, seen here or by the gateway): stop reading and end the run.
			run.cancel.onAbort(reason => {
				if (!end({ error: reason })) return;
				upstream.destroy();
				out.destroy();
			});
			// The reader of our stream went away: cancel the run on every node (the generation's included).
			out.on("close", () => {
				if (!finished) requestCancel(this.broker, run.cancelKey);
			});
			return out;
		},

		finish(this: RouterThis, run: Run, outcome) {
			const seconds = (Date.now() - run.started) / 1000;
			const agentId = run.decision.agent;
			const failed = outcome.error !== undefined;
			const cancelled = failed && isCancellation(outcome.error);
			const type = failed ? (cancelled ? "CANCELLED" : errorType(outcome.error)) : null;
			// Cancellations are the client's doing, not the agent's: they do not move its error rate.
			if (!cancelled) this.errors.record(agentId, type);
			const figures = this.errors.figures(agentId);
			const series = this.series;
			if (series) {
				const operation = failed ? "route_failed" : "route";
				series.observe(AGENT_METRICS.latency, `${agentId}|${operation}`, { agent_id: agentId, operation }, seconds);
				if (outcome.answer) series.observe(AGENT_METRICS.latency, `${agentId}|generate`, { agent_id: agentId, operation: "generate" }, outcome.answer.latency_ms / 1000);
				if (outcome.usage) {
					const labels = { agent_id: agentId, model: run.decision.model };
					series.increment(AGENT_METRICS.tokensIn, `in|${agentId}|${labels.model}`, labels, outcome.usage.tokens_in);
					series.increment(AGENT_METRICS.tokensOut, `out|${agentId}|${labels.model}`, labels, outcome.usage.tokens_out);
				}
				series.set(AGENT_METRICS.errorRate, `rate|${agentId}|any`, { agent_id: agentId, error_type: "any" }, figures.rate);
				for (const [t, n] of Object.entries(figures.byType)) series.set(AGENT_METRICS.errorRate, `rate|${agentId}|${t}`, { agent_id: agentId, error_type: t }, n / Math.max(1, figures.total));
			}
			const fields = { request_id: run.requestId, agent_id: agentId, model: run.decision.model, node: run.decision.node, mode: run.params.mode, latency_ms: Math.round(seconds * 1000) };
			if (failed) {
				this.emitRun(run, "failed", { error_type: type, latency_ms: fields.latency_ms, attempts: run.attempts });
				this.logger.warn(`Agent run ${run.requestId} failed: ${type}`, { event: "agent.run.failed", ...fields, error_type: type });
			} else {
				this.emitRun(run, "completed", { latency_ms: fields.latency_ms, tokens_in: outcome.usage?.tokens_in, tokens_out: outcome.usage?.tokens_out, attempts: run.attempts, tools: run.tools });
				if (this.logsInfo) this.infoLater(`Agent run ${run.requestId} completed`, { event: "agent.run.completed", ...fields, tokens_in: outcome.usage?.tokens_in, tokens_out: outcome.usage?.tokens_out });
			}
		},

		/**
		 * A per-run info line, written once this turn of the event loop is over. Formatted and written to
		 * stdout at once (synchronously), the decision line sat between the decision and the generation
		 * request going out: the first token waited for it (docs/BENCHMARKS.md, "Router first token").
		 */
		infoLater(this: RouterThis, message: string, fields: Record<string, unknown>) {
			setImmediate(() => this.logger.info(message, fields));
		},

		answerOf(this: RouterThis, run: Run, answer: GenerateAnswer, text: string, usage: { tokens_in: number; tokens_out: number }) {
			return {
				agent: run.decision.agent,
				provider: answer.provider,
				model: answer.model,
				node: answer.node,
				response: text,
				usage,
				latency_ms: Date.now() - run.started,
				request_id: run.requestId,
				rules_version: run.registry.version,
				development_model: answer.development,
				decision: {
					...run.decision,
					node: answer.node,
					privacy: { mode: run.params.mode, consent: run.params.consent, context: run.gated.context, history_dropped: run.gated.history_dropped, remote_provider: answer.locality === "remote" },
					attempts: run.attempts,
					tools: run.tools,
				},
			};
		},
	},

	created(this: RouterThis) {
		const { settings, sequelize } = nodeContextOf(this.broker);
		this.errors = errorWindowOf(this.broker, settings.router.errorWindowMs) as ErrorWindow;
		this.logsInfo = logsAt("info", settings.logLevel);
		this.lastReloadError = null;
		this.watching = null;
		// A bad file at start stops the node with the line named: there is no older version to keep.
		this.reload("start");
		this.outbox = sequelize
			? new OutboxBatch(sequelize, settings.events, { onError: (err, rows) => this.logger.warn(`agent.run events not written yet (${rows} rows): ${err.message}`) })
			: null;
		if (!this.outbox) this.logger.warn("router: no database on this node; agent.run.* events are not recorded");
		this.series = this.broker.isMetricsEnabled() ? new InPlaceSeries(this.broker, AGENT_LATENCY_BUCKETS) : null;
		if (this.series && !this.broker.metrics.getMetric(AGENT_METRICS.latency)) {
			const m = this.broker.metrics;
			m.register({ name: AGENT_METRICS.latency, type: "histogram", labelNames: ["agent_id", "operation"], buckets: AGENT_LATENCY_BUCKETS, description: "Agent run latency by operation (route, route_failed, generate, tool), seconds" });
			m.register({ name: AGENT_METRICS.tokensIn, type: "counter", labelNames: ["agent_id", "model"], description: "Prompt tokens sent to models per agent" });
			m.register({ name: AGENT_METRICS.tokensOut, type: "counter", labelNames: ["agent_id", "model"], description: "Tokens generated per agent" });
			m.register({ name: AGENT_METRICS.errorRate, type: "gauge", labelNames: ["agent_id", "error_type"], description: "Share of an agent's runs failing in the sliding window (ROUTER_ERROR_WINDOW_MS), by error type and any" });
			m.register({ name: AGENT_METRICS.toolCalls, type: "counter", labelNames: ["agent_id", "tool"], description: "Tool calls executed for agents" });
		}
		setHealthSection(this.broker, "router", () => ({ rules_version: this.registry.version, agents: this.registry.agents.size, last_reload_error: this.lastReloadError }));
	},

	started(this: RouterThis) {
		const file = path.resolve(nodeContextOf(this.broker).settings.router.agentsFile);
		this.watching = file;
		// Polling, not fs.watch: editors replace the file (a new inode), which fs.watch loses track of.
		fs.watchFile(file, { interval: 250, persistent: false }, (now, before) => {
			if (now.mtimeMs === before.mtimeMs && now.size === before.size) return;
			try {
				this.reload("file changed");
			} catch {
				/* logged by reload; the old version stays */
			}
		});
	},

	async stopped(this: RouterThis) {
		if (this.watching) fs.unwatchFile(this.watching);
		setHealthSection(this.broker, "router", null);
		await this.outbox?.close();
	},
};

export default RouterService;
