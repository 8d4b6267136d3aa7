/**
 * One input rule for every action, however it is reached (HTTP, socket event, mesh call), applied
 * before any handler runs so that nothing is half-written:
 *
 * - text: no NUL and no lone UTF-16 surrogate, in any string or object key at any depth. PostgreSQL
 *   cannot store U+0000 in text or jsonb, and a lone surrogate has no UTF-8 form (it would be stored
 *   as U+FFFD): refusing both is the only way to store exactly what was sent or nothing.
 * - nesting: at most MAX_DEPTH levels. Thousands of levels overflow the stack of JSON.stringify
 *   (the serializer between nodes) and PostgreSQL's jsonb parser.
 * - null: refused for a declared field that is not `nullable` (fastest-validator lets null through
 *   `optional`, and a NOT NULL column would then fail as a 500).
 * - integers: within ±2^53 (beyond it a number is not exact, and SQL sees `1e+30`).
 *
 * Each refusal is a ValidationError (422) naming the field by its path, like the validator's own.
 * The rule is applied where an action is served, before fastest-validator (which would turn null into
 * a default and "1e30" into a number): that check protects the data whoever the caller is, so a caller
 * does not repeat it for the calls it sends (it would walk every request's params twice per call).
 * The one input a caller cannot send is nesting deep enough to overflow the serializer's stack:
 * guardedSerializer turns that failure into the same ValidationError, at no cost to calls that succeed.
 */
import type { BrokerOptions, Middleware } from "moleculer";
import * as moleculer from "moleculer";
import { Errors } from "moleculer";

export const MAX_DEPTH = 32;

/** NUL, a high surrogate not followed by a low one, or a low surrogate not preceded by a high one. */
// eslint-disable-next-line no-control-regex -- NUL is exactly what this pattern is for
const UNSTORABLE_EXACT = /\u0000|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
/** The cheap first look (no lookaround): most text has neither NUL nor any surrogate at all. */
// eslint-disable-next-line no-control-regex -- as above
const MAYBE_UNSTORABLE = /[\u0000\uD800-\uDFFF]/;
const UNSTORABLE = { test: (text: string) => MAYBE_UNSTORABLE.test(text) && UNSTORABLE_EXACT.test(text) };

interface Problem {
	field: string;
	type: string;
	message: string;
}

type Rule = { type?: string; integer?: boolean; nullable?: boolean } | string | unknown[];

function join(path: string, key: string | number): string {
	if (typeof key === "number") return `${path}[${key}]`;
	return path ? `${path}.${key}` : key;
}

/**
 * The first unstorable string or key, or the first place nested deeper than MAX_DEPTH. Recursion stops
 * at MAX_DEPTH, so any input is safe to inspect; paths are only built for the value that is refused
 * (this runs on every call: a few hundred ns for a typical body).
 */
export function findUnsafeValue(params: unknown): Problem | null {
	const found = unsafeAt(params, 0);
	return found ? describe(found.path.reverse(), found.kind) : null;
}

type Kind = "stringNul" | "stringSurrogate" | "objectDepth";

function unsafeAt(value: unknown, depth: number): { path: Array<string | number>; kind: Kind } | null {
	if (typeof value === "string") return UNSTORABLE.test(value) ? { path: [], kind: value.includes("\u0000") ? "stringNul" : "stringSurrogate" } : null;
	// Only JSON-shaped data: moleculer-web hands its own `api.rest` action the live req/res objects,
	// and streams or Buffers are not text.
	if (!isPlainData(value)) return null;
	if (depth > MAX_DEPTH) return { path: [], kind: "objectDepth" };
	if (Array.isArray(value)) {
		for (let i = 0; i < value.length; i++) {
			const found = unsafeAt(value[i], depth + 1);
			if (found) return found.path.push(i), found;
		}
		return null;
	}
	for (const key in value) {
		if (UNSTORABLE.test(key)) return { path: [key], kind: key.includes("\u0000") ? "stringNul" : "stringSurrogate" };
		const found = unsafeAt((value as Record<string, unknown>)[key], depth + 1);
		if (found) return found.path.push(key), found;
	}
	return null;
}

function describe(path: Array<string | number>, kind: Kind): Problem {
	const field = path.reduce<string>((at, key) => join(at, key), "") || "params";
	if (kind === "objectDepth") return { field, type: kind, message: `The '${field}' field is nested deeper than ${MAX_DEPTH} levels.` };
	return kind === "stringNul"
		? { field, type: kind, message: `The '${field}' field must not contain NUL (\\u0000) characters.` }
		: { field, type: kind, message: `The '${field}' field must not contain lone UTF-16 surrogates (invalid Unicode).` };
}

/** Declared top-level fields: null where the schema does not say `nullable`, inexact integers. */
export function findSchemaProblem(params: Record<string, unknown>, schema: Record<string, Rule> | undefined): Problem | null {
	if (!schema) return null;
	for (const field in params) {
		const value = params[field];
		const rule = schema[field];
		if (rule === undefined || field.startsWith("$$")) continue;
		const ruleObject = typeof rule === "object" && !Array.isArray(rule) ? rule : null;
		if (value === null && !ruleObject?.nullable) return { field, type: "notNull", message: `The '${field}' field must not be null (leave it out instead).` };
		// Before the validator converts query strings: "1e30" is checked as the number it would become.
		const number = typeof value === "number" ? value : typeof value === "string" && value.trim() !== "" ? Number(value) : NaN;
		if (ruleObject?.integer && !Number.isNaN(number) && !Number.isSafeInteger(number) && Number.isInteger(number)) {
			return { field, type: "numberRange", message: `The '${field}' field must be an integer between -${Number.MAX_SAFE_INTEGER} and ${Number.MAX_SAFE_INTEGER}.` };
		}
	}
	return null;
}

function refuse(problem: Problem): Errors.ValidationError {
	return new Errors.ValidationError("Parameters validation error!", "VALIDATION_ERROR", [{ ...problem }]);
}

type Handler = (ctx: { params: unknown }) => Promise<unknown>;

export function InputGuardMiddleware(): Middleware {
	const guard = (check: (ctx: { params: unknown }) => Problem | null) => (next: Handler) => (ctx: { params: unknown }) => {
		const problem = check(ctx);
		return problem ? Promise.reject(refuse(problem)) : next(ctx);
	};
	return {
		name: "InputGuard",
		localAction: (next: Handler, action: { params?: Record<string, Rule> }) => guard(ctx => checkParams(ctx.params, action.params))(next),
	} as unknown as Middleware;
}

/** Moleculer's packet type for a request (packets.js PACKET_REQUEST). */
const REQUEST_PACKET = "REQ";

interface SerializerWithBroker {
	broker?: { transit?: { removePendingRequest(id: string): void } };
	serialize(payload: Record<string, unknown>, type: string): Buffer;
}

/**
 * The serializer named `name`, whose failure on a request's params (JSON.stringify overflows its stack
 * thousands of levels deep) becomes the ValidationError the serving node would have answered, instead
 * of a RangeError (a 500). Moleculer registered the request as pending before serializing it; the
 * refusal removes it, or each refused request would stay in that map with its params.
 */
export function guardedSerializer(name: string): NonNullable<BrokerOptions["serializer"]> {
	const { Serializers } = moleculer as unknown as { Serializers: { resolve(name: string): SerializerWithBroker } };
	const serializer = Serializers.resolve(name);
	const serialize = serializer.serialize.bind(serializer);
	serializer.serialize = (payload, type) => {
		try {
			return serialize(payload, type);
		} catch (err) {
			const problem = type === REQUEST_PACKET ? findUnsafeValue(payload.params) : null;
			if (!problem) throw err;
			serializer.broker?.transit?.removePendingRequest(payload.id as string);
			throw refuse(problem);
		}
	};
	return serializer as unknown as NonNullable<BrokerOptions["serializer"]>;
}

function checkParams(params: unknown, schema: Record<string, Rule> | undefined): Problem | null {
	return findUnsafeValue(params) ?? (isRecord(params) ? findSchemaProblem(params, schema) : null);
}

function isPlainData(value: unknown): value is object {
	if (value === null || typeof value !== "object") return false;
	if (Array.isArray(value)) return true;
	const proto = Object.getPrototypeOf(value);
	return proto === Object.prototype || proto === null;
}

function isRecord(value: unknown): value is Record<string, unknown> {
	return value !== null && typeof value === "object" && !Array.isArray(value);
}
