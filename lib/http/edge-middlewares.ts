/**
 * Connect-style middlewares for the gateway's /api route, in the order they run:
 * rate limit first (a refused client costs no body parsing), then the JSON body parser.
 */
import { randomUUID } from "crypto";
import type { IncomingMessage, ServerResponse } from "http";
import { BadRequestError, PayloadTooLargeError, RateLimitedError, UnsupportedMediaTypeError } from "../mesh/errors";
import { TokenBucketLimiter } from "./rate-limiter";
import type { RateLimitSettings } from "../runtime/settings";

type Next = (err?: unknown) => void;
export type HttpMiddleware = (req: IncomingMessage & { body?: unknown }, res: ServerResponse, next: Next) => void;

const REQUEST_ID = /^[A-Za-z0-9._:@-]{1,128}$/;

/** A client's X-Request-ID is kept when it is a sane token; anything else is replaced by a fresh uuid. */
export function acceptRequestID(header: string | string[] | undefined): string {
	const value = Array.isArray(header) ? header[0] : header;
	return value && REQUEST_ID.test(value) ? value : randomUUID();
}

export function clientKey(req: IncomingMessage): string {
	return req.socket.remoteAddress ?? "unknown";
}

export function rateLimitMiddleware(limits: RateLimitSettings): HttpMiddleware {
	const perKey = new TokenBucketLimiter(limits.perKey, limits.burst);
	const global = new TokenBucketLimiter(limits.global, Math.max(limits.global * 2, limits.burst));
	return (req, res, next) => {
		const decision = global.enabled ? global.take("*") : undefined;
		const verdict = decision && !decision.allowed ? decision : perKey.take(clientKey(req));
		if (verdict.allowed) return next();
		res.setHeader("Retry-After", String(verdict.retryAfterSeconds));
		next(
			new RateLimitedError("Rate limit exceeded, retry later", "RATE_LIMITED", {
				retryAfter: verdict.retryAfterSeconds,
			}),
		);
	};
}

const UNITS: Record<string, number> = { b: 1, kb: 1024, mb: 1024 ** 2, gb: 1024 ** 3 };

export function parseByteSize(text: string): number {
	const match = /^(\d+(?:\.\d+)?)\s*(b|kb|mb|gb)?$/i.exec(text.trim());
	if (!match) throw new Error(`Invalid size "${text}" (examples: 512kb, 1mb)`);
	return Math.floor(Number(match[1]) * UNITS[(match[2] ?? "b").toLowerCase()]);
}

function isJsonContentType(header: string | undefined): boolean {
	return !header || /^application\/([a-z.+-]*\+)?json\b/i.test(header);
}

/** Reads a JSON body up to `limit` bytes: 413 above it, 415 for other content types, 400 for broken JSON. */
export function jsonBodyMiddleware(limit: string): HttpMiddleware {
	const maxBytes = parseByteSize(limit);
	return (req, _res, next) => {
		if (req.method === "GET" || req.method === "HEAD" || req.method === "DELETE" || req.method === "OPTIONS") {
			return next();
		}
		const declared = Number(req.headers["content-length"] ?? 0);
		if (declared > maxBytes) return refuseTooLarge(req, next, maxBytes);
		const chunks: Buffer[] = [];
		let size = 0;
		let failed = false;
		req.on("data", (chunk: Buffer) => {
			if (failed) return;
			size += chunk.length;
			if (size > maxBytes) {
				failed = true;
				refuseTooLarge(req, next, maxBytes);
				return;
			}
			chunks.push(chunk);
		});
		req.on("end", () => {
			if (failed) return;
			const text = Buffer.concat(chunks).toString("utf8");
			if (text.trim() === "") {
				req.body = {};
				return next();
			}
			if (!isJsonContentType(req.headers["content-type"])) {
				return next(new UnsupportedMediaTypeError("Request body must be application/json", "UNSUPPORTED_MEDIA_TYPE", { contentType: req.headers["content-type"] }));
			}
			try {
				req.body = JSON.parse(text);
			} catch (err) {
				return next(new BadRequestError(`Invalid JSON body: ${(err as Error).message}`, "INVALID_JSON"));
			}
			if (req.body === null || typeof req.body !== "object" || Array.isArray(req.body)) {
				return next(new BadRequestError("JSON body must be an object", "INVALID_JSON"));
			}
			next();
		});
		req.on("error", err => {
			if (!failed) next(err);
		});
	};
}

function refuseTooLarge(req: IncomingMessage, next: Next, maxBytes: number): void {
	// Stop reading but let the response go out; the connection is closed after it.
	req.unpipe();
	req.resume();
	next(new PayloadTooLargeError(`Request body is larger than ${maxBytes} bytes`, "PAYLOAD_TOO_LARGE", { limit: maxBytes }));
}

/** Idempotency-Key: absent, or 1–128 visible ASCII characters (else a 400 naming the header). */
export function acceptIdempotencyKey(header: string | string[] | undefined): string | undefined {
	if (header === undefined) return undefined;
	const value = Array.isArray(header) ? header[0] : header;
	if (!/^[\x21-\x7e]{1,128}$/.test(value)) {
		throw new BadRequestError("Idempotency-Key must be 1-128 visible ASCII characters", "INVALID_HEADER", { field: "Idempotency-Key" });
	}
	return value;
}
