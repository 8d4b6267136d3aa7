/**
 * The one input rule (lib/mesh/input-guard.ts) on a real in-process broker with the mesh's middleware
 * chain: it runs before the validator (null is not turned into a default, "1e30" is not converted)
 * and names the field by its path.
 */
import { Errors, ServiceBroker } from "moleculer";
import { meshInternalMiddlewares } from "../../lib/mesh/call-pipeline";
import { findUnsafeValue, InputGuardMiddleware, MAX_DEPTH } from "../../lib/mesh/input-guard";

function nested(levels: number): Record<string, unknown> {
	let value: Record<string, unknown> = { leaf: 1 };
	for (let i = 0; i < levels; i++) value = { a: value };
	return value;
}

describe("input guard", () => {
	const broker = new ServiceBroker({ logger: false, internalMiddlewares: false, middlewares: [...meshInternalMiddlewares(), InputGuardMiddleware()] as never });
	const seen: unknown[] = [];
	broker.createService({
		name: "t",
		actions: {
			write: {
				params: {
					text: { type: "string", optional: true },
					flag: { type: "boolean", optional: true, default: false },
					offset: { type: "number", integer: true, optional: true, convert: true },
					note: { type: "string", optional: true, nullable: true },
					details: { type: "object", optional: true },
				},
				handler(ctx) {
					seen.push(ctx.params);
					return "written";
				},
			},
		},
	});
	beforeAll(() => broker.start());
	afterAll(() => broker.stop());

	it.each([
		["NUL in a string", { text: "a\u0000b" }, "text", "stringNul"],
		["a lone high surrogate", { text: "a\ud800b" }, "text", "stringSurrogate"],
		["a lone low surrogate", { text: "\udc00" }, "text", "stringSurrogate"],
		["NUL deep in an object", { details: { x: [{ y: "\u0000" }] } }, "details.x[0].y", "stringNul"],
		["NUL in an object key", { details: { "k\u0000": 1 } }, "details.k\u0000", "stringNul"],
		["thousands of levels", { details: nested(5_000) }, "details" + ".a".repeat(MAX_DEPTH), "objectDepth"],
		["null for an optional field", { text: null }, "text", "notNull"],
		["null for a field with a default", { flag: null }, "flag", "notNull"],
		["an integer beyond 2^53", { offset: 1e30 }, "offset", "numberRange"],
		["a query-string integer beyond 2^53", { offset: "99999999999999999999" }, "offset", "numberRange"],
	])("refuses %s with 422 naming the field", async (_what, params, field, type) => {
		const before = seen.length;
		const err = await broker.call("t.write", params).catch(e => e);
		expect(err).toBeInstanceOf(Errors.ValidationError);
		expect(err).toMatchObject({ code: 422, data: [{ field, type }] });
		expect(seen.length).toBe(before);
	});

	it("lets well-formed input through: surrogate pairs, null where nullable, 32 levels, safe integers", async () => {
		await expect(broker.call("t.write", { text: "emoji 😀 ok", note: null, details: nested(MAX_DEPTH - 1), offset: "9007199254740991" })).resolves.toBe("written");
		expect(findUnsafeValue({ a: ["x", { b: "y" }] })).toBeNull();
	});
});
