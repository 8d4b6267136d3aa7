/**
 * What a socket client is told when something is refused or fails: one small JSON shape, `{code, type,
 * message, field?, retryAfter?, retryable?}`, in `connect_error.data`, `error_event`, failed acks and
 * `agent.error`. `asWsError` is the one place errors become that shape.
 */
import { AuthError } from "../http/auth";

export interface WsError {
	code: number;
	type: string;
	message: string;
	field?: string;
	retryAfter?: number;
	/** set on faults worth sending again (the database restarting, a node lost, a full queue) */
	retryable?: boolean;
}

function isWsErrorShape(err: unknown): err is WsError {
	const e = err as Partial<WsError> | null;
	return typeof e === "object" && e !== null && !(err instanceof Error) && typeof e.code === "number" && typeof e.type === "string" && typeof e.message === "string";
}

/**
 * Moleculer and auth errors, and refusals already in the socket shape, as the JSON sockets get. A
 * server fault without a known code is a plain 500: its message may carry internals.
 */
export function asWsError(err: unknown): WsError {
	if (isWsErrorShape(err)) {
		// Only the shape's own fields: a refusal built elsewhere (a router's stream error) may carry more.
		const { code, type, message, field, retryAfter, retryable } = err;
		return { code, type, message, ...(field ? { field } : {}), ...(retryAfter !== undefined ? { retryAfter } : {}), ...(retryable ? { retryable } : {}) };
	}
	const e = err as { code?: number; status?: number; type?: string; message?: string; data?: unknown };
	const field = Array.isArray(e.data) ? (e.data[0] as { field?: string })?.field : (e.data as { field?: string } | undefined)?.field;
	const status = e.code ?? (err instanceof AuthError ? e.status : undefined);
	const code = typeof status === "number" && status >= 400 && status < 600 ? status : 500;
	// A database fault (or a lost node, a timeout, a full queue) is retryable: the client may send again.
	const retryable = (err as { retryable?: boolean }).retryable === true && (code >= 500 || code === 429);
	return {
		code,
		type: e.type ?? (code === 500 ? "INTERNAL" : "ERROR"),
		message: code === 500 ? "Internal error" : (e.message ?? "error"),
		...(field ? { field } : {}),
		...(retryable ? { retryable } : {}),
	};
}

/** A handshake refusal: socket.io hands `data` to the client's `connect_error`. */
export function connectError(problem: WsError): Error & { data: WsError } {
	return Object.assign(new Error(problem.message), { data: problem });
}

export const NO_TOKEN: WsError = { code: 401, type: "NO_TOKEN", message: "A token is required" };
