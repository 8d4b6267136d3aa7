/**
 * The one small interface every model runtime sits behind (Ollama, OpenAI-compatible, local-echo),
 * and the typed error a provider throws. swapper-proxy knows providers only through this file.
 */

/** local: the weights run on this node's hardware; remote: the prompt leaves the mesh. */
export type Locality = "local" | "remote";

export interface ChatMessage {
	role: "system" | "user" | "assistant" | "tool";
	content: string;
	/** tool replies: the call they answer */
	tool_call_id?: string;
	/** assistant turns that asked for tools (carried back on the second round) */
	tool_calls?: ToolCall[];
}

export interface ToolCall {
	id: string;
	name: string;
	arguments: Record<string, unknown>;
}

/** A tool offered to the model (OpenAI / Ollama `tools` shape, function only). */
export interface ToolSpec {
	name: string;
	description: string;
	parameters: Record<string, unknown>;
}

export interface GenerateRequest {
	model: string;
	messages: ChatMessage[];
	max_tokens?: number;
	temperature?: number;
	tools?: ToolSpec[];
}

export interface GenerateResult {
	text: string;
	tokens_in: number;
	tokens_out: number;
	tool_calls: ToolCall[];
	/** true for the built-in development model: never a real answer */
	development: boolean;
}

export interface CallOptions {
	/** aborted on timeout or when the caller goes away; providers must stop their HTTP call */
	signal: AbortSignal;
	/** streaming: called with each text piece as the runtime produces it */
	onPiece?: (text: string) => void;
}

export interface ModelProvider {
	/** "ollama" | "openai" | "local-echo" */
	readonly name: string;
	readonly locality: Locality;
	listModels(signal: AbortSignal): Promise<string[]>;
	/** models the runtime holds in memory right now; null when the runtime has no such notion */
	loadedModels(signal: AbortSignal): Promise<string[] | null>;
	load(model: string, signal: AbortSignal): Promise<void>;
	unload(model: string, signal: AbortSignal): Promise<void>;
	generate(request: GenerateRequest, options: CallOptions): Promise<GenerateResult>;
}

/**
 * What went wrong, in terms a caller can act on:
 *   unavailable  runtime down or unreachable      → another node may serve it
 *   overloaded   runtime answered 429/503          → another node may serve it
 *   timeout      no answer in time                 → another node may serve it
 *   not_found    runtime does not have the model   → another node may have it
 *   auth         runtime refused our credentials   → another node may be configured right
 *   bad_request  the runtime rejected the request  → the same request fails anywhere
 *   cancelled    the caller went away              → nothing to retry
 *   failed       anything else the runtime reported (5xx)
 */
export type ProviderErrorKind = "unavailable" | "overloaded" | "timeout" | "not_found" | "auth" | "bad_request" | "cancelled" | "failed";

const RETRY_ELSEWHERE: Record<ProviderErrorKind, boolean> = {
	unavailable: true,
	overloaded: true,
	timeout: true,
	not_found: true,
	auth: true,
	bad_request: false,
	cancelled: false,
	failed: true,
};

export class ProviderError extends Error {
	readonly retryElsewhere: boolean;

	constructor(
		readonly provider: string,
		readonly kind: ProviderErrorKind,
		message: string,
		readonly status?: number,
	) {
		super(`${provider}: ${message}`);
		this.name = "ProviderError";
		this.retryElsewhere = RETRY_ELSEWHERE[kind];
	}
}

/** The kind of an HTTP error status from a runtime. */
export function kindOfStatus(status: number): ProviderErrorKind {
	if (status === 401 || status === 403) return "auth";
	if (status === 404) return "not_found";
	if (status === 429 || status === 503) return "overloaded";
	if (status === 408 || status === 504) return "timeout";
	if (status >= 400 && status < 500) return "bad_request";
	return "failed";
}

/** A fetch() failure as a ProviderError: aborts become timeout/cancelled, network errors unavailable. */
export function fetchFailure(provider: string, err: unknown, signal: AbortSignal): ProviderError {
	if (err instanceof ProviderError) return err;
	if (signal.aborted) {
		const reason = signal.reason as Error | undefined;
		const timedOut = reason?.name === "TimeoutError";
		return new ProviderError(provider, timedOut ? "timeout" : "cancelled", timedOut ? "no answer in time" : "cancelled by the caller");
	}
	const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
	return new ProviderError(provider, "unavailable", `runtime unreachable (${cause})`);
}

/**
 * Tokens as this project counts them where a runtime reports none: words and single punctuation
 * marks. Real counts of the actual text, not an estimate from its length.
 */
export function countTokens(text: string): number {
	return text.match(/[\p{L}\p{N}_]+|[^\s\p{L}\p{N}_]/gu)?.length ?? 0;
}

/**
 * One HTTP call to a runtime: JSON body in, the Response out when it is 2xx; otherwise a ProviderError
 * whose message is the runtime's own (`messageOf` picks it from the JSON error body), and whose kind
 * follows the status. Network failures and aborts become unavailable / timeout / cancelled.
 */
export async function callRuntime(
	provider: string,
	url: string,
	init: { method: string; signal: AbortSignal; headers?: Record<string, string>; body?: unknown },
	messageOf: (errorBody: unknown) => string | undefined,
): Promise<Response> {
	const headers: Record<string, string> = { ...init.headers };
	if (init.body !== undefined) headers["content-type"] = "application/json";
	let res: Response;
	try {
		res = await fetch(url, { method: init.method, signal: init.signal, headers, body: init.body === undefined ? undefined : JSON.stringify(init.body) });
	} catch (err) {
		throw fetchFailure(provider, err, init.signal);
	}
	if (res.ok) return res;
	const text = await res.text().catch(() => "");
	let message = text.slice(0, 200);
	try {
		message = messageOf(JSON.parse(text)) ?? message;
	} catch {
		/* not JSON: keep the text */
	}
	const path = new URL(url).pathname;
	throw new ProviderError(provider, kindOfStatus(res.status), `HTTP ${res.status} on ${path}: ${message}`, res.status);
}

/** Reads a fetch body line by line (NDJSON, SSE), stopping when the signal aborts. */
export async function* readLines(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
	const decoder = new TextDecoder();
	let buffered = "";
	for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
		buffered += decoder.decode(chunk, { stream: true });
		let newline: number;
		while ((newline = buffered.indexOf("\n")) >= 0) {
			const line = buffered.slice(0, newline).replace(/\r$/, "");
			buffered = buffered.slice(newline + 1);
			yield line;
		}
	}
	if (buffered) yield buffered;
}

/** The `swapper-proxy.generate` call as the mesh sees it: what callers (the router) send and get back. */
export type GenerateChunk = { type: "piece"; text: string } | ({ type: "done" } & Omit<GenerateAnswer, "text">);

export interface GenerateAnswer {
	model: string;
	provider: string;
	locality: string;
	node: string;
	text: string;
	usage: { tokens_in: number; tokens_out: number };
	tool_calls: GenerateResult["tool_calls"];
	development: boolean;
	latency_ms: number;
}

export interface GenerateParams {
	model: string;
	prompt?: string;
	messages?: ChatMessage[];
	max_tokens?: number;
	temperature?: number;
	tools?: ToolSpec[];
	stream?: boolean;
	/** a handle for `cancel` (the router passes its request id) */
	cancel_key?: string;
}
