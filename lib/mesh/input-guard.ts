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
 * Served actions are checked before fastest-validator (which would turn null into a default and
 * "1e30" into a number); calls this node makes to other nodes are checked before they are serialized.
 */
import type { Middleware } from "moleculer";
import { Errors } from "moleculer";

export const MAX_DEPTH = 32;

/** NUL, a high surrogate not followed by a low one, or a low surrogate not preceded by a high one. */
// eslint-disable-next-line no-control-regex -- NUL is exactly what this pattern is for
const UNSTORABLE = /\u0000|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

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

function textProblem(field: string, text: string): Problem | null {
	if (!UNSTORABLE.test(text)) return null;
	return text.includes("\u0000")
		? { field, type: "stringNul", message: `The '${field}' field must not contain NUL (\\u0000) characters.` }
		: { field, type: "stringSurrogate", message: `The '${field}' field must not contain lone UTF-16 surrogates (invalid Unicode).` };
}

/** The first unstorable string or key, or the first place nested deeper than MAX_DEPTH; iterative, so any depth is safe to inspect. */
export function findUnsafeValue(params: unknown): Problem | null {
	const stack: Array<{ value: unknown; path: string; depth: number }> = [{ value: params, path: "", depth: 0 }];
	while (stack.length) {
		const { value, path, depth } = stack.pop()!;
		if (typeof value === "string") {
			const problem = textProblem(path || "params", value);
			if (problem) return problem;
			continue;
		}
		// Only JSON-shaped data: moleculer-web hands its own `api.rest` action the live req/res objects,
		// and streams or Buffers are not text.
		if (!isPlainData(value)) continue;
		if (depth > MAX_DEPTH) return { field: path, type: "objectDepth", message: `The '${path}' field is nested deeper than ${MAX_DEPTH} levels.` };
		if (Array.isArray(value)) {
			value.forEach((item, i) => stack.push({ value: item, path: join(path, i), depth: depth + 1 }));
			continue;
		}
		for (const [key, item] of Object.entries(value)) {
			const field = join(path, key);
			const keyProblem = textProblem(field, key);
			if (keyProblem) return keyProblem;
			stack.push({ value: item, path: field, depth: depth + 1 });
		}
	}
	return null;
}

/** Declared top-level fields: null where the schema does not say `nullable`, inexact integers. */
export function findSchemaProblem(params: Record<string, unknown>, schema: Record<string, Rule> | undefined): Problem | null {
	if (!schema) return null;
	for (const [field, value] of Object.entries(params)) {
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
		remoteAction: (next: Handler, action: { params?: Record<string, Rule> }) => guard(ctx => checkParams(ctx.params, action.params))(next),
	} as unknown as Middleware;
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
