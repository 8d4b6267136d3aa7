/**
 * The project's circuit breaker (lib/mesh/circuit-breaker.ts, counted by the gates in lib/mesh/call-pipeline.ts)
 * against Moleculer's own, scenario by scenario: the same calls through a broker with Moleculer's internal
 * middlewares and through one with the project's chain must give the same outcomes, the same `$circuit-breaker.*`
 * events and the same breaker metrics, for calls to another node and for calls served on the calling node.
 */
import { Errors, ServiceBroker, type BrokerOptions } from "moleculer";
import { meshInternalMiddlewares } from "../../lib/mesh/call-pipeline";

type Outcome = "ok" | "fail" | "relayed" | "ignored";
/** A step: a call whose handler answers with `Outcome`, or a pause (ms) to let the breaker's timers run. */
type Step = Outcome | number;

const HALF_OPEN_MS = 60;
const BREAKER = { enabled: true, threshold: 0.5, minRequestCount: 4, windowTime: 60, halfOpenTime: HALF_OPEN_MS, check: (err: Error & { code?: number }) => (err.code ?? 500) >= 500 };

/** The scenarios, each a list of steps; every one ends in a different breaker state. */
const SCENARIOS: Record<string, Step[]> = {
	"stays closed under the threshold": ["ok", "fail", "ok", "ok", "fail", "ok", "ok"],
	"opens at the threshold and refuses calls while open": ["ok", "fail", "fail", "fail", "ok", "ok"],
	"opens at exactly the threshold (2 failures in 4 calls)": ["ok", "fail", "ok", "fail", "ok"],
	"half-opens after halfOpenTime and closes on the call let through": ["fail", "fail", "fail", "fail", "ok", HALF_OPEN_MS + 40, "ok", "ok", "ok"],
	"re-opens when the call let through fails": ["fail", "fail", "fail", "fail", HALF_OPEN_MS + 40, "fail", "ok", HALF_OPEN_MS + 40, "ok", "ok"],
	"does not count errors its check rejects": ["ignored", "ignored", "ignored", "ignored", "ignored", "ok"],
	"does not count an error another node relayed": ["relayed", "relayed", "relayed", "relayed", "relayed", "ok"],
};

interface Trace {
	outcomes: string[];
	events: string[];
	metrics: string[];
}

function errorFor(outcome: Outcome): Error | null {
	if (outcome === "fail") return new Errors.MoleculerError("server error", 500, "BOOM");
	if (outcome === "ignored") return new Errors.MoleculerError("bad request", 400, "BAD");
	// An error that says it came from a third node: this endpoint only passed it on.
	if (outcome === "relayed") return Object.assign(new Errors.MoleculerError("from elsewhere", 500, "BOOM"), { nodeID: "third" });
	return null;
}

function brokerOptions(nodeID: string, namespace: string, chain: "moleculer" | "project"): BrokerOptions {
	const options: BrokerOptions = { nodeID, namespace, transporter: "Fake", logger: false, metrics: { enabled: true }, circuitBreaker: BREAKER };
	return chain === "moleculer" ? options : { ...options, internalMiddlewares: false, middlewares: meshInternalMiddlewares() as never };
}

async function runScenario(steps: Step[], chain: "moleculer" | "project", where: "remote" | "local"): Promise<Trace> {
	const namespace = `cb-${chain}-${where}-${process.pid}-${Math.random().toString(36).slice(2)}`;
	const caller = new ServiceBroker(brokerOptions("caller", namespace, chain));
	const server = where === "remote" ? new ServiceBroker(brokerOptions("server", namespace, chain)) : caller;
	let next: Outcome = "ok";
	server.createService({
		name: "flip",
		actions: {
			call() {
				const err = errorFor(next);
				if (err) throw err;
				return "ok";
			},
		},
	});
	const trace: Trace = { outcomes: [], events: [], metrics: [] };
	let stepsDone = false;
	for (const state of ["opened", "half-opened", "closed"]) {
		caller.localBus.on(`$circuit-breaker.${state}`, (payload: { nodeID: string; action: string; failures?: number }) => {
			if (!stepsDone) trace.events.push(`${state} ${payload.nodeID} ${payload.action}${payload.failures === undefined ? "" : ` failures=${payload.failures}`}`);
		});
	}
	await Promise.all(where === "remote" ? [server.start(), caller.start()] : [caller.start()]);
	await caller.waitForServices("flip", 10_000, 20);
	try {
		for (const step of steps) {
			if (typeof step === "number") {
				await new Promise(resolve => setTimeout(resolve, step));
				continue;
			}
			next = step;
			trace.outcomes.push(
				await caller.call("flip.call").then(
					() => "ok",
					(err: Error & { type?: string }) => err.type ?? err.name,
				),
			);
		}
		for (const name of ["moleculer.circuit-breaker.opened.active", "moleculer.circuit-breaker.opened.total", "moleculer.circuit-breaker.half-opened.active"]) {
			const metric = caller.metrics.getMetric(name) as unknown as { snapshot(): Array<{ labels: Record<string, string>; value: number }> } | null;
			for (const item of metric?.snapshot() ?? []) trace.metrics.push(`${name} ${item.labels.affectedNodeID} ${item.labels.action} ${item.value}`);
		}
		// What happened during the steps: a half-open timer may fire while the brokers stop.
		stepsDone = true;
	} finally {
		await Promise.all(where === "remote" ? [caller.stop(), server.stop()] : [caller.stop()]);
	}
	return trace;
}

describe.each(["remote", "local"] as const)("circuit breaker, calls %s: the project's chain does what Moleculer's does", where => {
	it.each(Object.entries(SCENARIOS))("%s", async (_name, steps) => {
		// side by side (each pair of brokers has its own namespace): a broker's start waits ~0.5 s
		const [moleculer, project] = await Promise.all([runScenario(steps, "moleculer", where), runScenario(steps, "project", where)]);
		expect(project).toEqual(moleculer);
		// and the scenario did something: every call has an outcome, and the breaker was used where it should be
		expect(project.outcomes).toHaveLength(steps.filter(step => typeof step !== "number").length);
	});

	it("the scenarios tell the states apart (an open breaker refuses, a half-open one lets one call through)", async () => {
		const [opened, reopened] = await Promise.all([
			runScenario(SCENARIOS["opens at the threshold and refuses calls while open"], "project", where),
			runScenario(SCENARIOS["re-opens when the call let through fails"], "project", where),
		]);
		expect(opened.outcomes.slice(-2)).toEqual(["SERVICE_NOT_AVAILABLE", "SERVICE_NOT_AVAILABLE"]);
		expect(opened.events).toEqual([`opened ${where === "remote" ? "server" : "caller"} flip.call failures=3`]);
		expect(reopened.events.map(event => event.split(" ")[0])).toEqual(["opened", "half-opened", "opened", "half-opened", "closed"]);
		expect(reopened.outcomes.slice(-2)).toEqual(["ok", "ok"]);
	});
});
