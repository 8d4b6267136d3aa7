/**
 * An error as the client sees it: the one place that decides status, body and what stays hidden, for
 * HTTP (services/api) and sockets (mixins/socket-io) alike. Errors of the family (lib/mesh/errors.ts)
 * and Moleculer's own say who they are; anything else is a bug and answers a bare 500 without internals.
 */
import { Errors } from "moleculer";

export interface HttpErrorBody {
	name: string;
	message: string;
	code: number;
	type: string | undefined;
	data?: unknown;
	retryable?: boolean;
}

export interface HttpErrorAnswer {
	status: number;
	body: HttpErrorBody;
	/** seconds for Retry-After: set for errors safe to send again (lost node, timeout, database restarting) */
	retryAfterSeconds: number | null;
}

/** The small shape socket clients get, in `error_event` and in a failed ack. */
export interface WsError {
	code: number;
	type: string;
	message: string;
	field?: string;
	retryAfter?: number;
	/** set on 5xx faults worth sending again (the database restarting, a node lost) */
	retryable?: boolean;
}

type ErrorLike = { name?: string; message?: string; code?: unknown; type?: string; data?: unknown; retryable?: boolean };

/** The HTTP status an error stands for: its `code` when that is one, else 500. */
export function statusOf(err: unknown): number {
	// Moleculer gives "no node offers this service now" the code 404; for a client it is a 503 to retry
	// (the service exists and its nodes are away), not a missing endpoint.
	if (err instanceof Errors.ServiceNotAvailableError) return 503;
	const code = (err as ErrorLike | null)?.code;
	return typeof code === "number" && code >= 400 && code < 600 ? code : 500;
}

/** The field a validation or client error names: `data[0].field` (validator lists) or `data.field`. */
function fieldOf(data: unknown): string | undefined {
	const first = Array.isArray(data) ? data[0] : data;
	const field = (first as { field?: unknown } | null | undefined)?.field;
	return typeof field === "string" ? field : undefined;
}

/** Every HTTP error is JSON {name, message, code, type, data, retryable}; server errors that are not ours hide their internals. */
export function httpErrorAnswer(err: unknown): HttpErrorAnswer {
	const status = statusOf(err);
	const e = (err ?? {}) as ErrorLike;
	const known = err instanceof Errors.MoleculerError;
	if (status >= 500 && !known) return { status, body: { name: "InternalServerError", message: "Internal server error", code: 500, type: "INTERNAL" }, retryAfterSeconds: null };
	return {
		status,
		body: { name: e.name ?? "Error", message: e.message ?? "", code: status, type: e.type, data: e.data, retryable: !!e.retryable },
		retryAfterSeconds: known && e.retryable ? 1 : null,
	};
}

/** The same decision for a socket: a 500's message is never shown; only 5xx faults and full queues say they are retryable. */
export function socketErrorAnswer(err: unknown): WsError {
	const code = statusOf(err);
	const e = (err ?? {}) as ErrorLike;
	const field = fieldOf(e.data);
	// A database fault, a lost node, or any 429 (a full queue, a spent budget): the client may send again.
	const retryable = code === 429 || (e.retryable === true && code >= 500);
	return {
		code,
		type: e.type ?? (code === 500 ? "INTERNAL" : "ERROR"),
		message: code === 500 ? "Internal error" : (e.message ?? "error"),
		...(field ? { field } : {}),
		...(retryable ? { retryable } : {}),
	};
}
