/**
 * The input rule is applied where an action is served, not by the caller (lib/mesh/input-guard.ts):
 * a caller that runs no guard at all — bare Moleculer — still gets every class of bad input refused
 * by the serving node with a 422 naming the field, and the handler never runs. Input too deep to
 * serialize cannot leave a caller; the project's serializer refuses it the same way and leaves no
 * pending request behind.
 */
import { Errors, ServiceBroker } from "moleculer";
import { meshInternalMiddlewares } from "../../lib/mesh/call-pipeline";
import { guardedSerializer, InputGuardMiddleware, MAX_DEPTH } from "../../lib/mesh/input-guard";
import { uniqueNamespace } from "../helpers/cluster";
import { describeWithNats, LOCAL_NATS_URL } from "../helpers/requirements";

function nested(levels: number): Record<string, unknown> {
	let value: Record<string, unknown> = { leaf: 1 };
	for (let i = 0; i < levels; i++) value = { a: value };
	return value;
}

describeWithNats("input guard on the serving node, reached over NATS", () => {
	const namespace = uniqueNamespace("guard-remote");
	const transporter = { type: "NATS" as const, options: { url: LOCAL_NATS_URL } };
	const meshChain = () => [...meshInternalMiddlewares(), InputGuardMiddleware()] as never;
	const server = new ServiceBroker({ namespace, nodeID: "serving", transporter, logger: false, internalMiddlewares: false, middlewares: meshChain() });
	const bareCaller = new ServiceBroker({ namespace, nodeID: "bare-caller", transporter, logger: false });
	const projectCaller = new ServiceBroker({ namespace, nodeID: "project-caller", transporter, logger: false, internalMiddlewares: false, middlewares: meshChain(), serializer: guardedSerializer("JSON") });
	const seen: unknown[] = [];
	server.createService({
		name: "guarded",
		actions: {
			write: {
				params: {
					text: { type: "string", optional: true },
					offset: { type: "number", integer: true, optional: true, convert: true },
					details: { type: "object", optional: true },
				},
				handler(ctx) {
					seen.push(ctx.params);
					return { servedBy: server.nodeID };
				},
			},
		},
	});

	beforeAll(async () => {
		await Promise.all([server.start(), bareCaller.start(), projectCaller.start()]);
		await Promise.all([bareCaller.waitForServices("guarded", 10_000), projectCaller.waitForServices("guarded", 10_000)]);
	});
	afterAll(() => Promise.all([bareCaller.stop(), projectCaller.stop(), server.stop()]));

	it.each([
		["NUL in a string", { text: "a\u0000b" }, "text", "stringNul"],
		["a lone surrogate", { text: "a\ud800b" }, "text", "stringSurrogate"],
		["NUL deep in an object", { details: { x: [{ y: "\u0000" }] } }, "details.x[0].y", "stringNul"],
		["null for an optional field", { text: null }, "text", "notNull"],
		["an integer beyond 2^53", { offset: 1e30 }, "offset", "numberRange"],
		[`${MAX_DEPTH + 10} levels of nesting`, { details: nested(MAX_DEPTH + 10) }, "details" + ".a".repeat(MAX_DEPTH), "objectDepth"],
	])("a caller with no guard sending %s gets the server's 422 naming the field", async (_what, params, field, type) => {
		const before = seen.length;
		const err = await bareCaller.call("guarded.write", params, { nodeID: "serving" }).catch(e => e);
		expect(err).toBeInstanceOf(Errors.ValidationError);
		expect(err).toMatchObject({ code: 422, data: [{ field, type }] });
		expect(seen.length).toBe(before);
	});

	it("serves well-formed input from the same caller (the refusals above are about the input)", async () => {
		await expect(bareCaller.call("guarded.write", { text: "emoji 😀 ok", offset: 7 })).resolves.toEqual({ servedBy: "serving" });
	});

	it("refuses input too deep to serialize on the caller as a 422, leaving no pending request", async () => {
		const before = seen.length;
		const err = await projectCaller.call("guarded.write", { details: nested(20_000) }).catch(e => e);
		expect(err).toBeInstanceOf(Errors.ValidationError);
		expect(err).toMatchObject({ code: 422, data: [{ field: "details" + ".a".repeat(MAX_DEPTH), type: "objectDepth" }] });
		expect(seen.length).toBe(before);
		expect((projectCaller.transit as unknown as { pendingRequests: Map<string, unknown> }).pendingRequests.size).toBe(0);
		// Without the guarded serializer the same call fails as a RangeError, a 500 at the gateway.
		await expect(bareCaller.call("guarded.write", { details: nested(20_000) })).rejects.toBeInstanceOf(RangeError);
	});
});
