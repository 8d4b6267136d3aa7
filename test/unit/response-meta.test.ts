/**
 * lib/mesh/response-meta.ts: a response carries back only the meta keys the serving side set, and the caller
 * ends with the same meta as with Moleculer's whole-meta answer. Real brokers on Moleculer's in-memory
 * transporter (its transit, JSON serializer and merge), with a spy on what the caller receives.
 */
import { ServiceBroker, type BrokerOptions, type Context, type Middleware } from "moleculer";
import { changedMeta, ChangedMetaOnlyMiddleware } from "../../lib/mesh/response-meta";

type Meta = Record<string, unknown>;

/** Records the meta of every response packet this broker receives, as it came off the wire. */
function responseSpy(seen: Meta[]): Middleware {
	return {
		name: "ResponseSpy",
		transitMessageHandler: (next: (cmd: string, packet: { payload: { meta?: Meta } }) => unknown) => (cmd: string, packet: { payload: { meta?: Meta } }) => {
			if (cmd === "RES") seen.push(JSON.parse(JSON.stringify(packet.payload.meta ?? null)));
			return next(cmd, packet);
		},
	} as unknown as Middleware;
}

const user = { id: "u1", roles: ["admin"], teams: ["t1"] };

const served: Record<string, (ctx: Context<unknown, Meta>) => unknown> = {
	untouched: () => "ok",
	setsKey: ctx => {
		ctx.meta.$statusCode = 201;
		return "ok";
	},
	replacesKey: ctx => {
		ctx.meta.$responseHeaders = { ...(ctx.meta.$responseHeaders as object), "Idempotent-Replayed": "true" };
		return "ok";
	},
	mutatesInside: ctx => {
		const arrivedUser = ctx.meta.user as { roles: string[]; name?: string };
		arrivedUser.roles.push("x");
		arrivedUser.name = "changed inside";
		return "ok";
	},
	replacesMeta: ctx => {
		ctx.meta = { fresh: true };
		return "ok";
	},
	setsKeyThenFails: ctx => {
		ctx.meta.failedAt = "step 2";
		throw new Error("boom");
	},
	callsOnward: async ctx => {
		await ctx.call("far.setsKey");
		return "ok";
	},
};

describe("responses carry the changed meta keys only", () => {
	const seen: Meta[] = [];
	let caller: ServiceBroker;
	let near: ServiceBroker;
	let far: ServiceBroker;
	let oldCaller: ServiceBroker;
	const oldSeen: Meta[] = [];
	let keptMeta: Meta | null = null;

	beforeAll(async () => {
		const options = (nodeID: string, middlewares: Middleware[]): BrokerOptions => ({ namespace: "respmeta", nodeID, transporter: "Fake", logger: false, middlewares });
		caller = new ServiceBroker(options("caller", [ChangedMetaOnlyMiddleware(), responseSpy(seen)]));
		oldCaller = new ServiceBroker(options("old-caller", [responseSpy(oldSeen)]));
		near = new ServiceBroker(options("near", [ChangedMetaOnlyMiddleware()]));
		far = new ServiceBroker(options("far", [ChangedMetaOnlyMiddleware()]));
		near.createService({ name: "near", actions: served });
		near.createService({ name: "keeper", actions: { keep: (ctx: Context<unknown, Meta>) => ((keptMeta = ctx.meta), "ok") } });
		far.createService({ name: "far", actions: { setsKey: served.setsKey } });
		await Promise.all([caller.start(), oldCaller.start(), near.start(), far.start()]);
		await caller.waitForServices(["near", "far", "keeper"]);
		await oldCaller.waitForServices(["near"]);
	});

	afterAll(() => Promise.all([caller.stop(), oldCaller.stop(), near.stop(), far.stop()]));

	beforeEach(() => {
		seen.length = 0;
		oldSeen.length = 0;
	});

	async function call(action: string, broker = caller): Promise<{ meta: Meta; error?: Error }> {
		const meta: Meta = { user: structuredClone(user), $responseHeaders: { "X-A": "1" } };
		try {
			await broker.call(`near.${action}`, {}, { meta });
			return { meta };
		} catch (error) {
			return { meta, error: error as Error };
		}
	}

	it.each([
		["the action leaves meta alone: nothing comes back", "untouched", {}, { user, $responseHeaders: { "X-A": "1" } }],
		["the action sets a key: that key", "setsKey", { $statusCode: 201 }, { user, $responseHeaders: { "X-A": "1" }, $statusCode: 201 }],
		[
			"the action replaces a key: that key",
			"replacesKey",
			{ $responseHeaders: { "X-A": "1", "Idempotent-Replayed": "true" } },
			{ user, $responseHeaders: { "X-A": "1", "Idempotent-Replayed": "true" } },
		],
		["the action replaces ctx.meta: all of it", "replacesMeta", { fresh: true }, { user, $responseHeaders: { "X-A": "1" }, fresh: true }],
		["a key set before the action fails", "setsKeyThenFails", { failedAt: "step 2" }, { user, $responseHeaders: { "X-A": "1" }, failedAt: "step 2" }],
		["a key set further down a chain of calls", "callsOnward", { $statusCode: 201 }, { user, $responseHeaders: { "X-A": "1" }, $statusCode: 201 }],
	])("%s", async (_what, action, onTheWire, callerEndsWith) => {
		const { meta } = await call(action);
		expect(seen).toEqual([onTheWire]);
		expect(meta).toEqual(callerEndsWith);
	});

	it("does not send back a change made inside an object that arrived (the documented rule: assign the key)", async () => {
		const { meta } = await call("mutatesInside");
		expect(seen).toEqual([{}]);
		expect(meta.user).toEqual(user);
	});

	it("answers a caller without the middleware (an older node) with the same smaller object, which it merges the same way", async () => {
		const { meta } = await call("setsKey", oldCaller);
		expect(oldSeen).toEqual([{ $statusCode: 201 }]);
		expect(meta).toEqual({ user, $responseHeaders: { "X-A": "1" }, $statusCode: 201 });
	});

	it("keeps nothing of its own in a served meta once the response has left (nothing to log or leak)", async () => {
		await caller.call("keeper.keep", {}, { meta: { user } });
		expect(Object.getOwnPropertySymbols(keptMeta!)).toEqual([]);
		expect(keptMeta).toEqual({ user });
	});
});

describe("changedMeta", () => {
	const before = { a: 1, b: { x: 1 } };
	it.each([
		["nothing known about the arrival: all of it", { a: 1 }, undefined, { a: 1 }],
		["same values", { ...before }, before, {}],
		["a new key", { ...before, c: 3 }, before, { c: 3 }],
		["a replaced object, equal content", { ...before, b: { x: 1 } }, before, { b: { x: 1 } }],
		["a key set to what it was", { a: 1, b: before.b }, before, {}],
		["a key that arrived as undefined and is now set", { a: 1, u: 2 }, { a: 1, u: undefined }, { u: 2 }],
		["a key newly set to undefined (JSON drops it, as Moleculer's answer would)", { a: 1, n: undefined }, { a: 1 }, { n: undefined }],
	])("%s", (_what, meta, arrived, expected) => {
		expect(changedMeta(meta as Meta, arrived as Meta | undefined)).toEqual(expected);
	});
});
