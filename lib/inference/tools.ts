/**
 * Tools an agent may be allowed (config/agents.yml `tools:`): each maps a model's tool call to one
 * mesh action, called with the *caller's* identity, so a tool can never read more than the user
 * asking could read through the API. Start with one safe, read-only tool.
 */
import type { ToolSpec } from "./provider";

export interface ToolDefinition {
	/** what the model sees (function name: letters, digits, _ and - only) */
	spec: ToolSpec;
	/** the mesh action it runs */
	action: string;
	/** the model's arguments → the action's params, clamped to safe values */
	params(args: Record<string, unknown>): Record<string, unknown>;
	/** the action's answer → the text handed back to the model (short) */
	summarize(result: unknown): string;
}

const clampInt = (value: unknown, min: number, max: number, fallback: number) => {
	const n = Math.floor(Number(value));
	return Number.isFinite(n) ? Math.min(max, Math.max(min, n)) : fallback;
};

export const TOOL_CATALOGUE: Record<string, ToolDefinition> = {
	"memory.search": {
		spec: {
			name: "memory_search",
			description: "Search public, indexed memories by words. Returns up to `limit` matches (key and content).",
			parameters: { type: "object", properties: { q: { type: "string", description: "words to search for" }, limit: { type: "integer", minimum: 1, maximum: 10 } }, required: ["q"] },
		},
		action: "memory.list",
		params: args => ({ scope: "public", q: String(args.q ?? "").slice(0, 200) || "-", limit: clampInt(args.limit, 1, 10, 5) }),
		summarize: result => {
			const rows = ((result as { rows?: Array<{ key: string; content: string }> }).rows ?? []).map(r => ({ key: r.key, content: r.content.slice(0, 500) }));
			return JSON.stringify({ matches: rows });
		},
	},
};

/** The catalogue entry for a function name a model used, if any. */
export function toolByFunctionName(name: string): [string, ToolDefinition] | undefined {
	return Object.entries(TOOL_CATALOGUE).find(([, t]) => t.spec.name === name);
}
