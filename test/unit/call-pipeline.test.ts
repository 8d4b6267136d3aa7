/**
 * The broker's middleware chain with ServingGate (bulkhead + tracking + metrics in one wrapper) and the
 * local-caller Timeout: the behaviour Moleculer's own Bulkhead, ContextTracker and Timeout gave.
 */
import { Errors, ServiceBroker } from "moleculer";
import { meshInternalMiddlewares, retryDelayMs, timedOutHere } from "../../lib/mesh/call-pipeline";
import { pendingRequestsOf } from "../../lib/mesh/moleculer-internals";
import { actionPolicy, FailoverStrategy, RETRY_POLICY } from "../../lib/mesh/failover-policy";

type MetricValue = { labels: Record<string, string | number | null | undefined>; value: number };

/** The values of metric `name` on `broker`, one per label set (none before its first update). */
function metricValues(broker: ServiceBroker, name: string): MetricValue[] {
	return (broker.metrics.list({ includes: name }) as unknown as Array<{ values: MetricValue[] }>)[0]?.values ?? [];
}

/** An action timeout, as actionPolicy() declares it (Moleculer's typings do not list `timeout`). */
const fiftyMs = { timeout: 50 };

function brokerWithPipeline(): ServiceBroker {
	return new ServiceBroker({
		logger: false,
		metrics: { enabled: true },
		bulkhead: { enabled: true, concurrency: 2, maxQueueSize: 1 },
		tracking: { enabled: true, shutdownTimeout: 5_000 },
		internalMiddlewares: false,
		middlewares: meshInternalMiddlewares() as never,
	});
}

/** A handler that waits until the test opens the gate. */
function gate() {
	let open!: () => void;
	const opened = new Promise<void>(resolve => (open = resolve));
	return { open, opened };
}

describe("call pipeline", () => {
	const broker = brokerWithPipeline();
	let held = gate();
	let running = 0;
	let peak = 0;
	broker.createService({
		name: "slow",
		actions: {
			async hold() {
				peak = Math.max(peak, ++running);
				await held.opened;
				running--;
				return "done";
			},
			timed: { ...fiftyMs, handler: () => new Promise(resolve => setTimeout(() => resolve("late"), 300)) },
			pause: (ctx: { params: { ms: number } }) => new Promise(resolve => setTimeout(() => resolve("finished"), ctx.params.ms)),
			budget: (ctx: { options: { timeout?: number | null } }) => ctx.options.timeout,
			spendThenAsk: {
				timeout: 1_000,
				async handler(ctx: { call(action: string): Promise<unknown> }) {
					await new Promise(resolve => setTimeout(resolve, 200));
					return ctx.call("slow.budget");
				},
			},
		},
	});
	beforeAll(() => broker.start());

	const gauge = (name: string) => metricValues(broker, name).find(v => v.labels.action === "slow.hold")?.value;

	it("runs at most `concurrency` calls, queues up to maxQueueSize, refuses the rest with a retryable 429", async () => {
		held = gate();
		const calls = [1, 2, 3].map(() => broker.call("slow.hold"));
		const refused = broker.call("slow.hold");
		await expect(refused).rejects.toBeInstanceOf(Errors.QueueIsFullError);
		await expect(refused).rejects.toMatchObject({ code: 429, retryable: true });
		expect(running).toBe(2);
		expect(gauge("moleculer.request.bulkhead.inflight")).toBe(2);
		expect(gauge("moleculer.request.bulkhead.queue.size")).toBe(1);
		held.open();
		await expect(Promise.all(calls)).resolves.toEqual(["done", "done", "done"]);
		expect(peak).toBe(2);
		expect(gauge("moleculer.request.bulkhead.inflight")).toBe(0);
		expect(gauge("moleculer.request.bulkhead.queue.size")).toBe(0);
		expect(gauge("moleculer.request.active")).toBe(0);
	});

	it("still times out calls that start on this node", async () => {
		await expect(broker.call("slow.timed")).rejects.toBeInstanceOf(Errors.RequestTimeoutError);
	});

	it("gives a call made while serving another the rest of that call's budget (distributed timeouts)", async () => {
		const budget = (await broker.call("slow.spendThenAsk")) as number;
		expect(budget).toBeGreaterThan(600);
		expect(budget).toBeLessThanOrEqual(800);
	});

	it("makes a stopping broker wait for the calls it is serving", async () => {
		const inFlight = broker.call("slow.pause", { ms: 300 });
		await new Promise(resolve => setTimeout(resolve, 20));
		const stopped = broker.stop().then(() => "stopped");
		const first = await Promise.race([inFlight, stopped]);
		expect(first).toBe("finished");
		await stopped;
	});
});

describe("a served action's error, named before the rest of the chain sees it (servedError)", () => {
	const named = (err: unknown) => (err instanceof Error && err.message === "raw driver error" ? new Errors.MoleculerServerError("named", 503, "NAMED_LIMIT") : null);
	const broker = new ServiceBroker({
		logger: false,
		metrics: { enabled: true },
		internalMiddlewares: false,
		middlewares: meshInternalMiddlewares({ servedError: named }) as never,
	});
	broker.createService({
		name: "db",
		actions: {
			limited() {
				throw new Error("raw driver error");
			},
			other() {
				throw new Errors.MoleculerClientError("not named", 409, "CONFLICT");
			},
		},
	});
	beforeAll(() => broker.start());
	afterAll(() => broker.stop());

	const errorTypes = (action: string) =>
		metricValues(broker, "moleculer.request.error.total")
			.filter(v => v.labels.action === action)
			.map(v => v.labels.errorType);

	it("the caller and the request metrics get the named error; an error the naming leaves alone passes as it is", async () => {
		await expect(broker.call("db.limited")).rejects.toMatchObject({ code: 503, type: "NAMED_LIMIT" });
		await expect(broker.call("db.other")).rejects.toMatchObject({ code: 409, type: "CONFLICT" });
		expect(errorTypes("db.limited")).toEqual(["NAMED_LIMIT"]);
		expect(errorTypes("db.other")).toEqual(["CONFLICT"]);
	});
});

describe("call pipeline across two brokers (in-memory transporter)", () => {
	const options = (nodeID: string) => ({
		nodeID,
		namespace: `pipeline-${process.pid}`,
		transporter: "Fake" as const,
		logger: false,
		metrics: { enabled: true },
		tracking: { enabled: true, shutdownTimeout: 5_000 },
		retryPolicy: { enabled: false, retries: 2, delay: 10, maxDelay: 50, factor: 2, check: (err: Error & { retryable?: boolean }) => !!err.retryable },
		internalMiddlewares: false,
		middlewares: meshInternalMiddlewares() as never,
	});
	const caller = new ServiceBroker(options("caller"));
	const server = new ServiceBroker(options("server"));
	// A caller whose broker-wide errorHandler answers instead of rethrowing (BrokerOptions.errorHandler).
	const forgiving = new ServiceBroker({
		...options("forgiving"),
		errorHandler: (err: Error & { ctx?: { action?: { name: string } } }) => ({ handled: err.message, action: err.ctx?.action?.name }),
	});
	let flaky = 0;
	let failures = 0;
	const retryTwice = { retryPolicy: { enabled: true, retries: 2 } };
	server.createService({
		name: "far",
		actions: {
			pause: (ctx: { params: { ms: number } }) => new Promise(resolve => setTimeout(() => resolve("finished"), ctx.params.ms)),
			fails() {
				failures++;
				throw new Errors.MoleculerRetryableError("always fails", 503, "FAILS");
			},
			failsRetried: {
				...retryTwice,
				handler() {
					failures++;
					throw new Errors.MoleculerRetryableError("always fails", 503, "FAILS");
				},
			},
			timesOut() {
				throw new Errors.RequestTimeoutError({ action: "elsewhere.slow", nodeID: "elsewhere" });
			},
			flaky: {
				...retryTwice,
				handler() {
					if (flaky++ === 0) throw new Errors.MoleculerRetryableError("first attempt fails");
					return "second attempt";
				},
			},
		},
	});
	beforeAll(async () => {
		await Promise.all([server.start(), caller.start(), forgiving.start()]);
		await Promise.all([caller.waitForServices("far"), forgiving.waitForServices("far")]);
	});
	afterAll(() => Promise.all([server.stop(), forgiving.stop()]));

	/** A metric's value for `action` as called from `broker` (metrics without a `type` label count as such). */
	const remoteCount = (broker: ServiceBroker, metric: string, action: string) =>
		metricValues(broker, metric).find(v => v.labels.action === action && (v.labels.type ?? "remote") === "remote")?.value ?? 0;

	it("gives up after `retries` attempts: the last error reaches the caller with its context, counted as failed, nothing left pending", async () => {
		const before = { failures, errors: remoteCount(caller, "moleculer.request.error.total", "far.failsRetried") };
		const err = (await caller.call("far.failsRetried").catch((e: Error) => e)) as Error & { ctx?: { action?: { name: string } }; code?: number };
		expect(err).toBeInstanceOf(Errors.MoleculerRetryableError);
		expect(err.code).toBe(503);
		expect(failures - before.failures).toBe(3);
		expect(err.ctx?.action?.name).toBe("far.failsRetried");
		expect(Object.keys(err)).not.toContain("ctx");
		// the outer call and its two retries, each through the whole chain
		expect(remoteCount(caller, "moleculer.request.error.total", "far.failsRetried") - before.errors).toBe(3);
		expect(pendingRequestsOf(caller)?.size).toBe(0);
	});

	it("answers a failed call with the caller's fallbackResponse (a value or a function of the error), counted as a fallback", async () => {
		const before = remoteCount(caller, "moleculer.request.fallback.total", "far.fails");
		await expect(caller.call("far.fails", {}, { fallbackResponse: "plan b" })).resolves.toBe("plan b");
		await expect(caller.call("far.fails", {}, { fallbackResponse: (_ctx: unknown, err: Error) => `after: ${err.message}` })).resolves.toBe("after: always fails");
		expect(remoteCount(caller, "moleculer.request.fallback.total", "far.fails") - before).toBe(2);
		// a fallback that fails itself reaches the caller as its error
		const err = await caller.call("far.fails", {}, { fallbackResponse: () => Promise.reject(new Error("no plan b")) }).catch((e: Error) => e);
		expect((err as Error).message).toBe("no plan b");
	});

	it("hands a failure to the broker's errorHandler, whose answer the caller gets", async () => {
		await expect(forgiving.call("far.fails")).resolves.toEqual({ handled: "always fails", action: "far.fails" });
		const timedOut = await forgiving.call("far.pause", { ms: 300 }, { timeout: 30 });
		expect(timedOut).toEqual({ handled: expect.stringContaining("far.pause"), action: "far.pause" });
	});

	it("retries a retryable failure on the caller's side, and counts the outgoing call in the remote request metrics", async () => {
		await expect(caller.call("far.flaky")).resolves.toBe("second attempt");
		expect(flaky).toBe(2);
		// Moleculer's Retry sends the second attempt through the whole chain again: two requests counted.
		expect(remoteCount(caller, "moleculer.request.total", "far.flaky")).toBe(2);
	});

	const timeoutCount = () => remoteCount(caller, "moleculer.request.timeout.total", "far.pause");

	it("times out a call to another node: RequestTimeoutError at its timeout, counted once, gone from the pending list, a late answer dropped", async () => {
		const before = timeoutCount();
		const started = performance.now();
		const err = await caller.call("far.pause", { ms: 300 }, { timeout: 50 }).catch((e: Error) => e);
		const waited = performance.now() - started;
		expect(err).toBeInstanceOf(Errors.RequestTimeoutError);
		expect(timedOutHere(err)).toBe(true);
		expect(waited).toBeGreaterThanOrEqual(45);
		expect(waited).toBeLessThan(250);
		expect(timeoutCount()).toBe(before + 1);
		expect(pendingRequestsOf(caller)?.size).toBe(0);
		// the late answer (at 300 ms) finds no pending call, and the next call is unaffected
		await new Promise(resolve => setTimeout(resolve, 300));
		await expect(caller.call("far.pause", { ms: 1 }, { timeout: 1_000 })).resolves.toBe("finished");
	});

	it("a call answered in time leaves no timer behind; a timeout another node sends back is not one given here", async () => {
		const timers = () => process.getActiveResourcesInfo().filter(kind => kind === "Timeout").length;
		const before = timers();
		await Promise.all(Array.from({ length: 100 }, () => caller.call("far.pause", { ms: 0 }, { timeout: 60_000 })));
		expect(timers()).toBeLessThan(before + 10);
		const relayed = await caller.call("far.timesOut").catch((e: Error) => e);
		expect(relayed).toBeInstanceOf(Errors.RequestTimeoutError);
		expect(timedOutHere(relayed)).toBe(false);
	});

	it("makes a stopping caller wait for the calls it has in flight on another node", async () => {
		const inFlight = caller.call("far.pause", { ms: 300 });
		await new Promise(resolve => setTimeout(resolve, 20));
		const stopped = caller.stop().then(() => "stopped");
		expect(await Promise.race([inFlight, stopped])).toBe("finished");
		await stopped;
	});
});

describe("Retry: the delay, and no delay for a call known lost (its node gone)", () => {
	const DELAY = 400;
	const options = (nodeID: string) => ({
		nodeID,
		namespace: `retry-${process.pid}`,
		transporter: "Fake" as const,
		logger: false,
		metrics: { enabled: true },
		registry: { strategy: FailoverStrategy },
		retryPolicy: { ...RETRY_POLICY, delay: DELAY },
		internalMiddlewares: false,
		middlewares: meshInternalMiddlewares() as never,
	});
	const caller = new ServiceBroker(options("caller"));
	const nodes = ["s1", "s2"].map(id => new ServiceBroker(options(id)));
	const runs: Record<string, number> = {};
	/** s1 fails every attempt the way the liveness probe rejects a call (lost or not), s2 answers. */
	for (const node of nodes) {
		node.createService({
			name: "twin",
			actions: {
				answer: {
					...actionPolicy({ idempotent: true, timeout: "fast" }),
					handler(ctx: { params: { lost: boolean; everywhere?: boolean } }) {
						runs[node.nodeID] = (runs[node.nodeID] ?? 0) + 1;
						if (node.nodeID === "s1" || ctx.params.everywhere) throw new Errors.RequestRejectedError({ action: "twin.answer", nodeID: node.nodeID, lost: ctx.params.lost });
						return node.nodeID;
					},
				},
			},
		});
	}
	beforeAll(async () => {
		await Promise.all([caller.start(), ...nodes.map(n => n.start())]);
		await caller.waitForServices("twin");
		await new Promise(resolve => setTimeout(resolve, 50));
	});
	afterAll(() => Promise.all([caller.stop(), ...nodes.map(n => n.stop())]));
	beforeEach(() => {
		for (const id of Object.keys(runs)) delete runs[id];
	});

	/** Round robin alternates: call until one attempt has gone to s1 first. */
	async function timedCallStartingOnS1(params: object): Promise<{ ms: number; answer: unknown }> {
		for (let i = 0; i < 4; i++) {
			for (const id of Object.keys(runs)) delete runs[id];
			const started = performance.now();
			const answer = await caller.call("twin.answer", params);
			if (runs.s1) return { ms: performance.now() - started, answer };
		}
		throw new Error("no call went to s1 first");
	}

	it("retries at once on the other node when the call is known lost", async () => {
		const { ms, answer } = await timedCallStartingOnS1({ lost: true });
		expect(answer).toBe("s2");
		expect(ms).toBeLessThan(DELAY / 2);
	});

	it("waits the retry delay when the failure does not say the call is lost", async () => {
		const { ms, answer } = await timedCallStartingOnS1({ lost: false });
		expect(answer).toBe("s2");
		expect(ms).toBeGreaterThanOrEqual(DELAY - 5);
	});

	it("waits the delay when no other node offers the action, and gives up after `retries`", async () => {
		const started = performance.now();
		await expect(caller.call("twin.answer", { lost: true, everywhere: true })).rejects.toBeInstanceOf(Errors.RequestRejectedError);
		// Three attempts over two nodes: the first retry leaves at once for the untried node, the second
		// finds none left untried, so it waits its delay (delay x factor, capped at maxDelay).
		expect((runs.s1 ?? 0) + (runs.s2 ?? 0)).toBe(3);
		expect(performance.now() - started).toBeGreaterThanOrEqual(Math.min(DELAY * RETRY_POLICY.factor, RETRY_POLICY.maxDelay) - 5);
		const retried = metricValues(caller, "moleculer.request.retry.attempts.total").find(v => v.labels.action === "twin.answer");
		expect(retried?.value).toBeGreaterThanOrEqual(2);
	});

	it("retryDelayMs: 0 only for a lost call with an untried node available; otherwise delay x factor^(attempt-1), capped", () => {
		const opts = { ...RETRY_POLICY, delay: 20 };
		const lost = Object.assign(new Error("x"), { data: { lost: true } });
		const at = (nodeID: string, attempt: number, failedBefore: string[] = []) => ({ nodeID, _retryAttempts: attempt, locals: { "failover:avoidNodes": new Set(failedBefore) } }) as never;
		expect(retryDelayMs(caller, opts, "twin.answer", at("s1", 1), lost)).toBe(0);
		expect(retryDelayMs(caller, opts, "twin.answer", at("s1", 1), new Error("x"))).toBe(20);
		expect(retryDelayMs(caller, opts, "twin.answer", at("s1", 2), new Error("x"))).toBe(20 * RETRY_POLICY.factor);
		expect(retryDelayMs(caller, opts, "twin.answer", at("s1", 9), new Error("x"))).toBe(RETRY_POLICY.maxDelay);
		expect(retryDelayMs(caller, opts, "no.such.action", at("s1", 1), lost)).toBe(20);
		expect(retryDelayMs(caller, opts, "twin.answer", at("s1", 2, ["s2"]), lost)).toBe(20 * RETRY_POLICY.factor);
	});
});
