/**
 * Inference failures as the mesh's typed errors. Every one says in `data.retry_elsewhere` whether the
 * same request may succeed on another node, and the router acts on exactly that flag.
 */
import { Errors } from "moleculer";
import { CancelledError, NotFoundError } from "../mesh/errors";
import { CapacityError } from "./model-lifecycle";
import { ProviderError } from "./provider";

const STATUS_OF_KIND: Record<ProviderError["kind"], number> = {
	unavailable: 503,
	overloaded: 503,
	timeout: 504,
	not_found: 404,
	auth: 502,
	bad_request: 422,
	cancelled: 499,
	failed: 502,
};

export function toMeshError(err: unknown, node: string): Error {
	if (err instanceof CapacityError) {
		const data = { node, retry_elsewhere: err.type !== "CANCELLED" };
		if (err.type === "QUEUE_FULL") return new Errors.MoleculerRetryableError(err.message, 429, "QUEUE_FULL", data);
		if (err.type === "NO_ROOM_TO_LOAD") return new Errors.MoleculerRetryableError(err.message, 503, "NO_ROOM_TO_LOAD", data);
		if (err.type === "MODEL_NOT_FOUND") return new NotFoundError(err.message, "MODEL_NOT_FOUND", data);
		return new CancelledError(err.message, "CANCELLED", data);
	}
	if (err instanceof ProviderError) {
		const data = { node, provider: err.provider, kind: err.kind, retry_elsewhere: err.retryElsewhere };
		const type = `PROVIDER_${err.kind.toUpperCase()}`;
		const status = STATUS_OF_KIND[err.kind];
		if (err.retryElsewhere) return new Errors.MoleculerRetryableError(err.message, status, type, data);
		return status < 500 ? new Errors.MoleculerClientError(err.message, status, type, data) : new Errors.MoleculerServerError(err.message, status, type, data);
	}
	return err as Error;
}

/** Whether a failed call to one node may succeed on another: our flag, or Moleculer's own retryable errors (node lost, timeout). */
export function retryElsewhere(err: unknown): boolean {
	const e = err as { data?: { retry_elsewhere?: boolean }; retryable?: boolean } | undefined;
	if (e?.data && typeof e.data.retry_elsewhere === "boolean") return e.data.retry_elsewhere;
	return !!e?.retryable;
}

/**
 * Circuit-breaker check for inference actions: like the broker's (5xx counts), except errors that report
 * how one model fared (they carry `retry_elsewhere`). A model that fails, is busy or is missing says
 * nothing about the node's health; counting it would open the breaker for every model and agent of that
 * node (a router's own endpoint refused all agents for 5 s after one agent's model broke).
 */
export function nodeHealthFailure(err: Error & { code?: number; data?: { retry_elsewhere?: unknown } }): boolean {
	if (err.data && typeof err.data.retry_elsewhere === "boolean") return false;
	return !err.code || err.code >= 500;
}
