/**
 * What a socket client is told when something is refused or fails: one small JSON shape, `{code, type,
 * message, field?, retryAfter?, retryable?}`, in `connect_error.data`, `error_event`, failed acks and
 * `agent.error`. `asWsError` is the one place errors become that shape: refusals already in it pass
 * through, everything else goes by lib/http/error-answer.ts, as HTTP answers do.
 */
import { socketErrorAnswer, type WsError } from "../http/error-answer";

export type { WsError };

function isWsErrorShape(err: unknown): err is WsError {
	const e = err as Partial<WsError> | null;
	return typeof e === "object" && e !== null && !(err instanceof Error) && typeof e.code === "number" && typeof e.type === "string" && typeof e.message === "string";
}

/**
 * Refusals already in the socket shape keep only its fields; errors go by socketErrorAnswer (a server
 * fault without a known code is a plain 500: its message may carry internals).
 */
export function asWsError(err: unknown): WsError {
	if (isWsErrorShape(err)) {
		// Only the shape's own fields: a refusal built elsewhere (a router's stream error) may carry more.
		const { code, type, message, field, retryAfter, retryable } = err;
		return { code, type, message, ...(field ? { field } : {}), ...(retryAfter !== undefined ? { retryAfter } : {}), ...(retryable ? { retryable } : {}) };
	}
	return socketErrorAnswer(err);
}

/** A handshake refusal: socket.io hands `data` to the client's `connect_error`. */
export function connectError(problem: WsError): Error & { data: WsError } {
	return Object.assign(new Error(problem.message), { data: problem });
}

export const NO_TOKEN: WsError = { code: 401, type: "NO_TOKEN", message: "A token is required" };
