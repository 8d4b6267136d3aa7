/**
 * Carries the request id of the call being served into every log line written while serving it.
 * Moleculer already propagates ctx.requestID across the mesh (calls and events); this only makes it
 * visible to the logger, which has no ctx of its own.
 */
import { AsyncLocalStorage } from "async_hooks";
import type { Context, Middleware } from "moleculer";

const requestStore = new AsyncLocalStorage<string>();

export function currentRequestID(): string | undefined {
	return requestStore.getStore();
}

export function runWithRequestID<T>(requestID: string | undefined | null, fn: () => T): T {
	return requestID ? requestStore.run(requestID, fn) : fn();
}

type Handler = (ctx: Context) => unknown;

/** Broker middleware: every local action and event handler runs inside its ctx.requestID. */
export const RequestContextMiddleware: Middleware = {
	name: "RequestContext",
	localAction(next: Handler) {
		return (ctx: Context) => runWithRequestID(ctx.requestID, () => next(ctx));
	},
	localEvent(next: Handler) {
		return (ctx: Context) => runWithRequestID(ctx.requestID, () => next(ctx));
	},
} as unknown as Middleware;
