/**
 * Ollama (OLLAMA_URL), a local runtime. Protocol from Ollama's API reference (docs/api.md):
 *   GET  /api/tags   installed models           {models: [{name, ...}]}
 *   GET  /api/ps     models held in memory      {models: [{name, expires_at, size_vram, ...}]}
 *   POST /api/chat   {model, messages, stream, options, keep_alive, tools} → NDJSON lines
 *                    {message: {role, content, tool_calls?}, done, prompt_eval_count?, eval_count?}
 *   POST /api/generate {model, keep_alive}  with no prompt: loads (keep_alive -1) or unloads (0)
 * Errors come as {error: "..."} with an HTTP status.
 *
 * Every request sets keep_alive -1: swapper-proxy decides when a model leaves memory (its idle timeout
 * and LRU), not Ollama's own 5-minute default.
 */
import { callRuntime, countTokens, fetchFailure, ProviderError, readLines, type CallOptions, type ChatMessage, type GenerateRequest, type GenerateResult, type ModelProvider, type ToolCall } from "../provider";

interface OllamaMessage {
	role: string;
	content?: string;
	tool_calls?: Array<{ function?: { name?: string; arguments?: Record<string, unknown> } }>;
}

interface OllamaChatLine {
	message?: OllamaMessage;
	done?: boolean;
	prompt_eval_count?: number;
	eval_count?: number;
	error?: string;
}

function toOllamaMessage(m: ChatMessage): Record<string, unknown> {
	const out: Record<string, unknown> = { role: m.role, content: m.content };
	if (m.tool_calls?.length) out.tool_calls = m.tool_calls.map(c => ({ function: { name: c.name, arguments: c.arguments } }));
	return out;
}

function toolCallsOf(message: OllamaMessage | undefined, seen: number): ToolCall[] {
	return (message?.tool_calls ?? []).map((c, i) => ({ id: `call_${seen + i}`, name: c.function?.name ?? "", arguments: c.function?.arguments ?? {} }));
}

export class OllamaProvider implements ModelProvider {
	readonly name = "ollama";
	readonly locality = "local" as const;
	private readonly base: string;

	constructor(baseUrl: string) {
		this.base = baseUrl.replace(/\/+$/, "");
	}

	async listModels(signal: AbortSignal): Promise<string[]> {
		const body = (await this.json("GET", "/api/tags", undefined, signal)) as { models?: Array<{ name?: string }> };
		return (body.models ?? []).map(m => m.name).filter((n): n is string => !!n);
	}

	async loadedModels(signal: AbortSignal): Promise<string[] | null> {
		const body = (await this.json("GET", "/api/ps", undefined, signal)) as { models?: Array<{ name?: string }> };
		return (body.models ?? []).map(m => m.name).filter((n): n is string => !!n);
	}

	async load(model: string, signal: AbortSignal): Promise<void> {
		await this.json("POST", "/api/generate", { model, keep_alive: -1, stream: false }, signal);
	}

	async unload(model: string, signal: AbortSignal): Promise<void> {
		await this.json("POST", "/api/generate", { model, keep_alive: 0, stream: false }, signal);
	}

	async generate(request: GenerateRequest, options: CallOptions): Promise<GenerateResult> {
		const body = {
			model: request.model,
			messages: request.messages.map(toOllamaMessage),
			stream: true,
			keep_alive: -1,
			options: { ...(request.max_tokens ? { num_predict: request.max_tokens } : {}), ...(request.temperature !== undefined ? { temperature: request.temperature } : {}) },
			...(request.tools?.length ? { tools: request.tools.map(t => ({ type: "function", function: t })) } : {}),
		};
		const res = await this.send("POST", "/api/chat", body, options.signal);
		let text = "";
		const toolCalls: ToolCall[] = [];
		let counts: { in?: number; out?: number } = {};
		try {
			for await (const line of readLines(res.body as ReadableStream<Uint8Array>)) {
				if (!line.trim()) continue;
				const parsed = JSON.parse(line) as OllamaChatLine;
				if (parsed.error) throw new ProviderError(this.name, "failed", `stream error: ${parsed.error}`);
				const piece = parsed.message?.content ?? "";
				if (piece) {
					text += piece;
					options.onPiece?.(piece);
				}
				toolCalls.push(...toolCallsOf(parsed.message, toolCalls.length));
				if (parsed.done) counts = { in: parsed.prompt_eval_count, out: parsed.eval_count };
			}
		} catch (err) {
			throw err instanceof SyntaxError ? new ProviderError(this.name, "failed", "malformed NDJSON line") : fetchFailure(this.name, err, options.signal);
		}
		return {
			text,
			tokens_in: counts.in ?? request.messages.reduce((s, m) => s + countTokens(m.content), 0),
			tokens_out: counts.out ?? countTokens(text),
			tool_calls: toolCalls,
			development: false,
		};
	}

	private send(method: string, path: string, body: unknown, signal: AbortSignal): Promise<Response> {
		return callRuntime(this.name, `${this.base}${path}`, { method, signal, body }, b => (b as { error?: string }).error);
	}

	private async json(method: string, path: string, body: unknown, signal: AbortSignal): Promise<unknown> {
		const res = await this.send(method, path, body, signal);
		try {
			return await res.json();
		} catch (err) {
			throw err instanceof SyntaxError ? new ProviderError(this.name, "failed", `malformed JSON from ${path}`) : fetchFailure(this.name, err, signal);
		}
	}
}
