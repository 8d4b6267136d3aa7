/** The providers a node runs, from its settings (SWAPPER_LOCAL_ECHO, OLLAMA_URL, OPENAI_*), in serving priority order. */
import type { SwapperSettings } from "../../runtime/settings";
import type { ModelProvider } from "../provider";
import { LocalEchoProvider } from "./local-echo";
import { OllamaProvider } from "./ollama";
import { OpenAiProvider } from "./openai";

export function providersFrom(settings: SwapperSettings): ModelProvider[] {
	const providers: ModelProvider[] = [];
	if (settings.ollamaUrl) providers.push(new OllamaProvider(settings.ollamaUrl));
	if (settings.openai.baseUrl) {
		providers.push(
			new OpenAiProvider({
				baseUrl: settings.openai.baseUrl,
				apiKey: settings.openai.apiKey,
				models: settings.openai.models,
				locality: settings.openai.local ? "local" : "remote",
			}),
		);
	}
	if (settings.localEcho) providers.push(new LocalEchoProvider(settings.localEchoModels, settings.localEchoTokenMs));
	return providers;
}
