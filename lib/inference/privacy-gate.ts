/**
 * What of a request reaches a model. Without the user's consent only a sanitized context does: the
 * agent's system prompt and the current message — no history, no memory, no tool results. With
 * consent the conversation history goes too. Client-sent `system` turns are dropped either way: the
 * agent's system prompt is the only one.
 */
import type { ChatMessage } from "./provider";

export interface RouteInput {
	message?: string;
	messages?: Array<{ role: string; content: string }>;
	consent?: boolean;
}

export interface GatedContext {
	messages: ChatMessage[];
	context: "full" | "sanitized";
	history_dropped: number;
}

/** The current message: `message`, else the last user turn of `messages`. */
export function currentMessage(input: RouteInput): string {
	if (input.message !== undefined) return input.message;
	return [...(input.messages ?? [])].reverse().find(m => m.role === "user")?.content ?? "";
}

export function gateContext(systemPrompt: string, input: RouteInput): GatedContext {
	const system: ChatMessage[] = systemPrompt ? [{ role: "system", content: systemPrompt }] : [];
	const current = currentMessage(input);
	const turns = (input.messages ?? []).filter(m => m.role === "user" || m.role === "assistant");
	// `messages` alone: its last user turn is the current message, the rest is history.
	const history = input.message !== undefined ? turns : turns.slice(0, turns.map(m => m.role).lastIndexOf("user"));
	if (!input.consent) {
		return { messages: [...system, { role: "user", content: current }], context: "sanitized", history_dropped: history.length };
	}
	return { messages: [...system, ...(history as ChatMessage[]), { role: "user", content: current }], context: "full", history_dropped: 0 };
}

/** UTF-8 bytes of everything the client sent as prompt (the 413 limit). */
export function promptBytes(input: RouteInput): number {
	let bytes = input.message ? Buffer.byteLength(input.message, "utf8") : 0;
	for (const m of input.messages ?? []) bytes += Buffer.byteLength(m.content ?? "", "utf8");
	return bytes;
}
