/**
 * The project's error family: every error a caller (HTTP client, socket, another node) can receive is
 * a MoleculerError with `code` (the HTTP status), `type` (a stable UPPER_SNAKE reason clients switch
 * on), `data` (safe to show: field names, ids, limits — never SQL, content or secrets) and `retryable`
 * (the same request may succeed later or on another node). One class per kind of answer; the `type`
 * says which case of that kind it was (ROOM_NOT_FOUND, MEMORY_NOT_FOUND, …).
 *
 * Built on moleculer-web's classes where it has one (400, 401, 403, 404, 429), so the gateway's own refusals
 * and ours are the same classes; on Moleculer's otherwise (422 ValidationError, 503 retryable).
 * lib/http/error-answer.ts turns any of them into the client's answer (HTTP and socket).
 *
 * Errors cross the mesh by name: FAMILY lists every class so MeshErrorRegenerator (lib/data/db-faults.ts)
 * restores it on the caller's node; a new class must be added there too.
 */
import { Errors } from "moleculer";
import ApiGateway from "moleculer-web";

const Web = ApiGateway.Errors;

/** 400: a request the gateway cannot read: broken JSON, a malformed header, malformed HTTP. */
export class BadRequestError extends Web.BadRequestError {
	constructor(message: string, type = "BAD_REQUEST", data?: unknown) {
		super(type, data);
		this.message = message;
	}
}

/** 401: no token, a malformed or forged one, or an expired one. */
export class UnauthorizedError extends Web.UnAuthorizedError {
	constructor(message: string, type = "NO_TOKEN", data?: unknown) {
		super(type, data);
		this.message = message;
	}
}

/** 403: a known caller without the right to do this. */
export class ForbiddenError extends Web.ForbiddenError {
	constructor(message: string, type = "FORBIDDEN", data?: unknown) {
		super(type, data);
		this.message = message;
	}
}

/**
 * 404: no such thing, or one the caller may not see (private rooms and memories answer the same, so
 * that their names cannot be probed). The gateway answers `type: "NOT_FOUND"` with its own generic
 * 404 body (lib/http/error-answer.ts); a specific `type` keeps the message and data.
 */
export class NotFoundError extends Web.NotFoundError {
	constructor(message: string, type = "NOT_FOUND", data?: unknown) {
		super(type, data);
		this.message = message;
	}
}

/**
 * The base of a family class on Moleculer's client error: its status fixed, its type a default. Each
 * class below is named (`class X extends …`), so it travels and is restored by that name.
 */
function clientErrorWithStatus(status: number, defaultType: string) {
	return class extends Errors.MoleculerClientError {
		constructor(message: string, type = defaultType, data?: unknown) {
			super(message, status, type, data);
		}
	};
}

/** 409: the request lost to the current state (an existing id, a stale version). */
export class ConflictError extends clientErrorWithStatus(409, "CONFLICT") {}

/** 413: a body, content or prompt over its limit; `data` names the field and the limit. */
export class PayloadTooLargeError extends clientErrorWithStatus(413, "PAYLOAD_TOO_LARGE") {}

/** 415: a body in a format the gateway does not read (it reads JSON only). */
export class UnsupportedMediaTypeError extends clientErrorWithStatus(415, "UNSUPPORTED_MEDIA_TYPE") {}

/** 431: a request line or headers beyond what Node's HTTP parser accepts (refused before any route). */
export class HeadersTooLargeError extends clientErrorWithStatus(431, "HEADERS_TOO_LARGE") {}

/**
 * 499: the client went away and its run was cancelled (lib/inference/cancellation.ts). The client's
 * doing: not retried, not counted as the agent's or the node's error.
 */
export class CancelledError extends clientErrorWithStatus(499, "CANCELLED") {}

/** 429: over a rate budget; the answer carries Retry-After (set by whoever measured the budget). */
export class RateLimitedError extends Web.RateLimitExceeded {
	constructor(message: string, type = "RATE_LIMITED", data?: unknown) {
		super(type, data);
		this.message = message;
	}
}

/** 503, retryable: a dependency or a service is down for now (the gateway adds Retry-After). */
export class UnavailableError extends Errors.MoleculerRetryableError {
	constructor(message: string, type = "SERVICE_UNAVAILABLE", data?: unknown) {
		super(message, 503, type, data);
	}
}

/** 422: bad input, naming the field: `data` is a list of {field, message, type?} (fastest-validator's shape). */
export const ValidationError = Errors.ValidationError;

export function invalidField(field: string, message: string, type = "VALIDATION_ERROR", summary = `${field}: ${message}`): Errors.ValidationError {
	return new Errors.ValidationError(summary, type, [{ field, message }]);
}

type FamilyClass = new (message: string, type?: string, data?: unknown) => Errors.MoleculerError;

/** Every class of the family by name, for restoring them on the far side of a mesh call. */
export const FAMILY: Record<string, FamilyClass> = {
	BadRequestError,
	UnauthorizedError,
	ForbiddenError,
	NotFoundError,
	ConflictError,
	PayloadTooLargeError,
	UnsupportedMediaTypeError,
	HeadersTooLargeError,
	CancelledError,
	RateLimitedError,
	UnavailableError,
};

/** The family error a plain error from the wire stands for, or undefined when it is not one of ours. */
export function restoreFamilyError(plain: { name?: string; message?: string; type?: string; data?: unknown }): Errors.MoleculerError | undefined {
	const Class = plain.name !== undefined && Object.hasOwn(FAMILY, plain.name) ? FAMILY[plain.name] : undefined;
	return Class ? new Class(plain.message ?? "", plain.type, plain.data) : undefined;
}
