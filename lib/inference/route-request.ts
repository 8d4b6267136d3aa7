/**
 * What a client may ask an agent (router.route over HTTP, `ask` on the /agents socket namespace): one
 * fastest-validator schema for both, so a socket client meets the same 422s as an HTTP client.
 */
import { MODES } from "./agent-registry";

const MESSAGE = {
	type: "object",
	props: { role: { type: "enum", values: ["system", "user", "assistant"] }, content: { type: "string", max: 1_000_000 } },
	$$strict: "remove",
} as const;

export const ROUTE_REQUEST_PARAMS = {
	agent: { type: "string", min: 1, max: 64 },
	message: { type: "string", min: 1, trim: true, optional: true },
	messages: { type: "array", optional: true, min: 1, max: 200, items: MESSAGE },
	mode: { type: "enum", values: [...MODES], optional: true, default: "public" },
	consent: { type: "boolean", optional: true, default: false, convert: true },
	dao_id: { type: "string", min: 1, max: 200, optional: true },
	metadata: { type: "object", optional: true },
} as const;

/**
 * A streamed run as objects (the socket gateway asks for these through `ctx.meta`, which HTTP clients
 * cannot set): `start` {request_id, agent, model, node, decision}, `piece` {text} …, then `done` (the
 * final answer without its text) or `error` {name, message, code, type, retryable, request_id}.
 */
export type RouteStreamFrame = { event: "start" | "piece" | "done" | "error"; data: Record<string, unknown> };

/** `ctx.meta` key: "objects" → router.route streams RouteStreamFrame objects instead of SSE text. */
export const STREAM_FRAMING_META = "streamFraming";
