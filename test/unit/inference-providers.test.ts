/**
 * The three providers against stand-in runtimes (test/fixtures, written from the public API docs):
 * model lists, load state, streamed and joined answers, token counts, tool calls, typed errors that
 * say whether another node may help, timeouts and cancellation.
 */
import { LocalEchoProvider, DEVELOPMENT_MARK } from "../../lib/inference/providers/local-echo";
import { OllamaProvider } from "../../lib/inference/providers/ollama";
import { OpenAiProvider } from "../../lib/inference/providers/openai";
import { countTokens, ProviderError, type GenerateRequest } from "../../lib/inference/provider";
import { startOllamaFixture, type OllamaFixture } from "../fixtures/ollama-server";
import { startOpenAiFixture, type OpenAiFixture } from "../fixtures/openai-server";

const ask = (model: string, content: string): GenerateRequest => ({ model, messages: [{ role: "system", content: "be brief" }, { role: "user", content }] });
const signal = () => AbortSignal.timeout(5_000);

async function failure(promise: Promise<unknown>): Promise<ProviderError> {
	try {
		await promise;
	} catch (err) {
		expect(err).toBeInstanceOf(ProviderError);
		return err as ProviderError;
	}
	throw new Error("expected a ProviderError");
}

describe("local-echo", () => {
	const echo = new LocalEchoProvider(["echo-a", "echo-b"]);

	it("answers deterministically, marked as a development model, with real token counts", async () => {
		const first = await echo.generate(ask("echo-a", "hello mesh, how are you?"), { signal: signal() });
		const again = await echo.generate(ask("echo-a", "hello mesh, how are you?"), { signal: signal() });
		expect(first.text).toBe(again.text);
		expect(first.text.startsWith(DEVELOPMENT_MARK)).toBe(true);
		expect(first.development).toBe(true);
		expect(first.tokens_in).toBe(countTokens("be brief") + countTokens("hello mesh, how are you?"));
		expect(first.tokens_in).toBe(2 + 7);
		expect(first.tokens_out).toBe(countTokens(first.text));
		const other = await echo.generate(ask("echo-a", "something else entirely"), { signal: signal() });
		expect(other.text).not.toBe(first.text);
	});

	it("streams pieces that join to the answer, and refuses unknown models as not_found", async () => {
		const pieces: string[] = [];
		const result = await echo.generate(ask("echo-b", "stream me"), { signal: signal(), onPiece: p => pieces.push(p) });
		expect(pieces.length).toBeGreaterThan(3);
		expect(pieces.join("")).toBe(result.text);
		const err = await failure(echo.generate(ask("nope", "x"), { signal: signal() }));
		expect(err.kind).toBe("not_found");
		expect(err.retryElsewhere).toBe(true);
	});

	it("stops when cancelled mid-stream", async () => {
		const slow = new LocalEchoProvider(["echo-a"], 20);
		const controller = new AbortController();
		const pieces: string[] = [];
		const run = slow.generate(ask("echo-a", "one two three four five six"), { signal: controller.signal, onPiece: p => pieces.push(p) });
		setTimeout(() => controller.abort(new Error("caller left")), 50);
		const err = await failure(run);
		expect(err.kind).toBe("cancelled");
		expect(err.retryElsewhere).toBe(false);
		expect(pieces.length).toBeLessThan(6);
	});
});

describe("Ollama provider against the stand-in Ollama", () => {
	let fixture: OllamaFixture;
	let ollama: OllamaProvider;
	beforeAll(async () => {
		fixture = await startOllamaFixture({ models: ["llama3.2:1b", "qwen2.5:0.5b"] });
		ollama = new OllamaProvider(fixture.url);
	});
	afterAll(() => fixture.close());

	it("lists models from /api/tags and loaded ones from /api/ps; loads and unloads through keep_alive", async () => {
		expect(await ollama.listModels(signal())).toEqual(["llama3.2:1b", "qwen2.5:0.5b"]);
		expect(await ollama.loadedModels(signal())).toEqual([]);
		await ollama.load("qwen2.5:0.5b", signal());
		expect(await ollama.loadedModels(signal())).toEqual(["qwen2.5:0.5b"]);
		expect(fixture.received.at(-2)?.body).toMatchObject({ model: "qwen2.5:0.5b", keep_alive: -1 });
		await ollama.unload("qwen2.5:0.5b", signal());
		expect(fixture.received.at(-1)?.body).toMatchObject({ model: "qwen2.5:0.5b", keep_alive: 0 });
		expect(await ollama.loadedModels(signal())).toEqual([]);
	});

	it("streams /api/chat NDJSON into pieces, with the runtime's token counts", async () => {
		const pieces: string[] = [];
		const result = await ollama.generate({ ...ask("llama3.2:1b", "tell me about nodes"), max_tokens: 50 }, { signal: signal(), onPiece: p => pieces.push(p) });
		expect(result.text).toBe("ollama says: tell me about nodes");
		expect(pieces.join("")).toBe(result.text);
		expect(pieces.length).toBe(6);
		expect(result.tokens_in).toBe(6);
		expect(result.tokens_out).toBe(6);
		const sent = fixture.received.at(-1)?.body;
		expect(sent).toMatchObject({ model: "llama3.2:1b", stream: true, keep_alive: -1, options: { num_predict: 50 } });
	});

	it("returns tool calls the model asks for", async () => {
		fixture.toolCallNext("memory_search", { q: "zebra" });
		const result = await ollama.generate({ ...ask("llama3.2:1b", "find zebra"), tools: [{ name: "memory_search", description: "search", parameters: { type: "object" } }] }, { signal: signal() });
		expect(result.tool_calls).toEqual([{ id: "call_0", name: "memory_search", arguments: { q: "zebra" } }]);
		expect(fixture.received.at(-1)?.body.tools[0]).toMatchObject({ type: "function", function: { name: "memory_search" } });
	});

	it("maps errors: 404 not_found, 503 overloaded (retry elsewhere), 400 bad_request (not), refused connection unavailable, slow answer timeout", async () => {
		expect((await failure(ollama.generate(ask("missing:1b", "x"), { signal: signal() }))).kind).toBe("not_found");
		fixture.failNext(503);
		const overloaded = await failure(ollama.generate(ask("llama3.2:1b", "x"), { signal: signal() }));
		expect([overloaded.kind, overloaded.retryElsewhere, overloaded.status]).toEqual(["overloaded", true, 503]);
		fixture.failNext(400);
		const bad = await failure(ollama.generate(ask("llama3.2:1b", "x"), { signal: signal() }));
		expect([bad.kind, bad.retryElsewhere]).toEqual(["bad_request", false]);
		const down = await failure(new OllamaProvider("http://127.0.0.1:1").listModels(signal()));
		expect([down.kind, down.retryElsewhere]).toEqual(["unavailable", true]);
		fixture.setPieceDelay(200);
		try {
			const slow = await failure(ollama.generate(ask("llama3.2:1b", "a b c d"), { signal: AbortSignal.timeout(300) }));
			expect([slow.kind, slow.retryElsewhere]).toEqual(["timeout", true]);
			const controller = new AbortController();
			setTimeout(() => controller.abort(new Error("caller left")), 100);
			expect((await failure(ollama.generate(ask("llama3.2:1b", "a b c d"), { signal: controller.signal }))).kind).toBe("cancelled");
		} finally {
			fixture.setPieceDelay(0);
		}
	});
});

describe("OpenAI-compatible provider against the stand-in server", () => {
	let fixture: OpenAiFixture;
	beforeAll(async () => {
		fixture = await startOpenAiFixture({ models: ["gpt-test", "gpt-mini"], apiKey: "sk-test-key" });
	});
	afterAll(() => fixture.close());
	const provider = (extra: Partial<ConstructorParameters<typeof OpenAiProvider>[0]> = {}) => new OpenAiProvider({ baseUrl: fixture.url, apiKey: "sk-test-key", models: null, locality: "remote", ...extra });

	it("lists models from /v1/models unless OPENAI_MODELS names them, with the bearer key", async () => {
		expect(await provider().listModels(signal())).toEqual(["gpt-test", "gpt-mini"]);
		expect(fixture.received.at(-1)?.authorization).toBe("Bearer sk-test-key");
		const before = fixture.received.length;
		expect(await provider({ models: ["gpt-mini"] }).listModels(signal())).toEqual(["gpt-mini"]);
		expect(fixture.received.length).toBe(before);
	});

	it("streams SSE chunks into pieces and takes usage from the last chunk", async () => {
		const pieces: string[] = [];
		const result = await provider().generate(ask("gpt-test", "hello remote world"), { signal: signal(), onPiece: p => pieces.push(p) });
		expect(result.text).toBe("remote says: hello remote world");
		expect(pieces.join("")).toBe(result.text);
		expect(result.tokens_in).toBe(2 + 3);
		expect(result.tokens_out).toBe(5);
		expect(fixture.received.at(-1)?.body).toMatchObject({ stream: true, stream_options: { include_usage: true } });
	});

	it("assembles streamed tool calls", async () => {
		fixture.toolCallNext("memory_search", { q: "zebra", limit: 3 });
		const result = await provider().generate(ask("gpt-test", "find"), { signal: signal() });
		expect(result.tool_calls).toEqual([{ id: expect.stringMatching(/^call_/), name: "memory_search", arguments: { q: "zebra", limit: 3 } }]);
	});

	it("maps errors: wrong key auth, 429 overloaded, unknown model not_found", async () => {
		const auth = await failure(provider({ apiKey: "sk-wrong" }).generate(ask("gpt-test", "x"), { signal: signal() }));
		expect([auth.kind, auth.status]).toEqual(["auth", 401]);
		fixture.failNext(429);
		expect((await failure(provider().generate(ask("gpt-test", "x"), { signal: signal() }))).kind).toBe("overloaded");
		expect((await failure(provider().generate(ask("gpt-x", "x"), { signal: signal() }))).kind).toBe("not_found");
		expect((await failure(provider().load("gpt-x", signal()))).kind).toBe("not_found");
	});
});
