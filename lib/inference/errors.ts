/**
 * Inference failures as the mesh's typed errors. Every one says in `data.retry_elsewhere` whether the
 * same request may succeed on another node, and the router acts on exactly that flag.
 */
import { Errors } from "moleculer";
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
		if (err.type === "MODEL_NOT_FOUND") return new Errors.MoleculerClientError(err.message, 404, "MODEL_NOT_FOUND", data);
		return new Errors.MoleculerClientError(err.message, 499, "CANCELLED", data);
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
