/**
 * Any OpenAI-compatible server (OPENAI_BASE_URL, e.g. https://host/v1; vLLM, llama.cpp, hosted APIs).
 * Protocol from the OpenAI API reference:
 *   GET  {base}/models             {data: [{id}]}              (skipped when OPENAI_MODELS lists them)
 *   POST {base}/chat/completions   {model, messages, stream: true, stream_options: {include_usage: true},
 *                                   max_tokens, temperature, tools}
 *        → SSE `data: {choices: [{delta: {content, tool_calls}}], usage?}` lines, then `data: [DONE]`
 * Errors come as {error: {message, type, code}} with an HTTP status. A remote provider (the prompt
 * leaves the mesh) unless OPENAI_LOCAL=true. Nothing to load: load/unload only check the model exists.
 */
import { callRuntime, countTokens, fetchFailure, ProviderError, readLines, type CallOptions, type ChatMessage, type GenerateRequest, type GenerateResult, type Locality, type ModelProvider, type ToolCall } from "../provider";

interface DeltaToolCall {
	index?: number;
	id?: string;
	function?: { name?: string; arguments?: string };
}

interface ChunkChoice {
	delta?: { content?: string | null; tool_calls?: DeltaToolCall[] };
}

interface Chunk {
	choices?: ChunkChoice[];
	usage?: { prompt_tokens?: number; completion_tokens?: number } | null;
	error?: { message?: string };
}

export interface OpenAiOptions {
	baseUrl: string;
	apiKey: string | null;
	/** fixed model list (OPENAI_MODELS); null = ask GET /models */
	models: string[] | null;
	locality: Locality;
}

function toOpenAiMessage(m: ChatMessage): Record<string, unknown> {
	const out: Record<string, unknown> = { role: m.role, content: m.content };
	if (m.tool_call_id) out.tool_call_id = m.tool_call_id;
	if (m.tool_calls?.length) out.tool_calls = m.tool_calls.map(c => ({ id: c.id, type: "function", function: { name: c.name, arguments: JSON.stringify(c.arguments) } }));
	return out;
}

/** Streamed tool calls arrive as fragments keyed by index; arguments are a JSON string built up piece by piece. */
function mergeToolCall(partial: Map<number, { id: string; name: string; args: string }>, delta: DeltaToolCall): void {
	const index = delta.index ?? 0;
	const entry = partial.get(index) ?? { id: "", name: "", args: "" };
	if (delta.id) entry.id = delta.id;
	if (delta.function?.name) entry.name += delta.function.name;
	if (delta.function?.arguments) entry.args += delta.function.arguments;
	partial.set(index, entry);
}

function parseArguments(raw: string): Record<string, unknown> {
	try {
		const value = JSON.parse(raw || "{}") as unknown;
		return value && typeof value === "object" && !Array.isArray(value) ? (value as Record<string, unknown>) : {};
	} catch {
		return {};
	}
}

export class OpenAiProvider implements ModelProvider {
	readonly name = "openai";
	readonly locality: Locality;
	private readonly base: string;

	constructor(private readonly options: OpenAiOptions) {
		this.base = options.baseUrl.replace(/\/+$/, "");
		this.locality = options.locality;
	}

	async listModels(signal: AbortSignal): Promise<string[]> {
		if (this.options.models) return [...this.options.models];
		const res = await this.send("GET", "/models", undefined, signal);
		const body = (await res.json().catch(() => ({}))) as { data?: Array<{ id?: string }> };
		return (body.data ?? []).map(m => m.id).filter((id): id is string => !!id);
	}

	async loadedModels(): Promise<string[] | null> {
		return null;
	}

	async load(model: string, signal: AbortSignal): Promise<void> {
		const models = await this.listModels(signal);
		if (!models.includes(model)) throw new ProviderError(this.name, "not_found", `no model '${model}'`, 404);
	}

	async unload(): Promise<void> {
		// A remote server keeps its models; there is nothing to free here.
	}

	async generate(request: GenerateRequest, options: CallOptions): Promise<GenerateResult> {
		const body = {
			model: request.model,
			messages: request.messages.map(toOpenAiMessage),
			stream: true,
			stream_options: { include_usage: true },
			...(request.max_tokens ? { max_tokens: request.max_tokens } : {}),
			...(request.temperature !== undefined ? { temperature: request.temperature } : {}),
			...(request.tools?.length ? { tools: request.tools.map(t => ({ type: "function", function: t })) } : {}),
		};
		const res = await this.send("POST", "/chat/completions", body, options.signal);
		let text = "";
		const partialCalls = new Map<number, { id: string; name: string; args: string }>();
		let usage: Chunk["usage"] = null;
		try {
			for await (const line of readLines(res.body as ReadableStream<Uint8Array>)) {
				if (!line.startsWith("data:")) continue;
				const data = line.slice(5).trim();
				if (data === "[DONE]") break;
				const chunk = JSON.parse(data) as Chunk;
				if (chunk.error) throw new ProviderError(this.name, "failed", `stream error: ${chunk.error.message ?? "unknown"}`);
				if (chunk.usage) usage = chunk.usage;
				for (const choice of chunk.choices ?? []) {
					const piece = choice.delta?.content ?? "";
					if (piece) {
						text += piece;
						options.onPiece?.(piece);
					}
					for (const call of choice.delta?.tool_calls ?? []) mergeToolCall(partialCalls, call);
				}
			}
		} catch (err) {
			throw err instanceof SyntaxError ? new ProviderError(this.name, "failed", "malformed SSE data line") : fetchFailure(this.name, err, options.signal);
		}
		const toolCalls: ToolCall[] = [...partialCalls.values()].map((c, i) => ({ id: c.id || `call_${i}`, name: c.name, arguments: parseArguments(c.args) }));
		return {
			text,
			tokens_in: usage?.prompt_tokens ?? request.messages.reduce((s, m) => s + countTokens(m.content), 0),
			tokens_out: usage?.completion_tokens ?? countTokens(text),
			tool_calls: toolCalls,
			development: false,
		};
	}

	private send(method: string, path: string, body: unknown, signal: AbortSignal): Promise<Response> {
		const headers: Record<string, string> = this.options.apiKey ? { authorization: `Bearer ${this.options.apiKey}` } : {};
		return callRuntime(this.name, `${this.base}${path}`, { method, signal, headers, body }, b => (b as { error?: { message?: string } }).error?.message);
	}
}
