/**
 * local-echo: the built-in development model. No weights, no server: it answers with a fixed,
 * deterministic sentence about the last user message, counted in real tokens (lib/inference/provider.ts
 * countTokens), and every answer says it comes from a development model. Lets `npm start` route agents
 * on a laptop with no model runtime.
 */
import { countTokens, ProviderError, type CallOptions, type GenerateRequest, type GenerateResult, type ModelProvider } from "../provider";

export const DEVELOPMENT_MARK = "[development model local-echo]";

/** The answer for a conversation: the same input always gives the same text. */
export function echoAnswer(request: GenerateRequest): string {
	const lastUser = [...request.messages].reverse().find(m => m.role === "user")?.content ?? "";
	const words = countTokens(lastUser);
	return `${DEVELOPMENT_MARK} ${request.model} heard ${words} token${words === 1 ? "" : "s"}: ${lastUser}`;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
	return new Promise((resolve, reject) => {
		if (signal.aborted) return reject(signal.reason);
		const timer = setTimeout(() => {
			signal.removeEventListener("abort", onAbort);
			resolve();
		}, ms);
		const onAbort = () => {
			clearTimeout(timer);
			reject(signal.reason);
		};
		signal.addEventListener("abort", onAbort, { once: true });
	});
}

export class LocalEchoProvider implements ModelProvider {
	readonly name = "local-echo";
	readonly locality = "local" as const;

	constructor(
		private readonly models: string[],
		/** pause between streamed pieces, ms (SWAPPER_LOCAL_ECHO_TOKEN_MS) */
		private readonly tokenMs = 0,
	) {}

	async listModels(): Promise<string[]> {
		return [...this.models];
	}

	async loadedModels(): Promise<string[] | null> {
		return null;
	}

	async load(model: string): Promise<void> {
		this.check(model);
	}

	async unload(model: string): Promise<void> {
		this.check(model);
	}

	async generate(request: GenerateRequest, options: CallOptions): Promise<GenerateResult> {
		this.check(request.model);
		const text = echoAnswer(request);
		const tokensIn = request.messages.reduce((sum, m) => sum + countTokens(m.content), 0);
		if (options.onPiece || this.tokenMs > 0) {
			// Pieces are the text split before each space, so that joining them gives the text back.
			for (const piece of text.match(/\s*\S+/g) ?? []) {
				if (this.tokenMs > 0) await sleep(this.tokenMs, options.signal).catch(() => this.throwAborted(options.signal));
				if (options.signal.aborted) this.throwAborted(options.signal);
				options.onPiece?.(piece);
			}
		}
		return { text, tokens_in: tokensIn, tokens_out: countTokens(text), tool_calls: [], development: true };
	}

	private check(model: string): void {
		if (!this.models.includes(model)) throw new ProviderError(this.name, "not_found", `no model '${model}' (has ${this.models.join(", ")})`, 404);
	}

	private throwAborted(signal: AbortSignal): never {
		const timedOut = (signal.reason as Error | undefined)?.name === "TimeoutError";
		throw new ProviderError(this.name, timedOut ? "timeout" : "cancelled", timedOut ? "no answer in time" : "cancelled by the caller");
	}
}
