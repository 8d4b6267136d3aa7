/**
 * Circuit breakers as operators see them: a caller whose calls to one node keep failing opens that
 * endpoint's breaker, the metric says so, and the REPL's `breakers` table (asked over the mesh) shows it.
 * Three real brokers in this process over real NATS, with the project's broker config.
 */
import { Errors, ServiceBroker } from "moleculer";
import { createBrokerOptions } from "../../moleculer.config";
import { loadSettings } from "../../lib/runtime/settings";
import { breakerTable } from "../../scripts/repl";
import { uniqueNamespace } from "../helpers/cluster";
import { describeWithNats, LOCAL_NATS_URL } from "../helpers/requirements";

function broker(namespace: string, nodeID: string): ServiceBroker {
	const settings = loadSettings({ MESH_NAMESPACE: namespace, NODE_ID: nodeID, NATS_URL: LOCAL_NATS_URL, LOG_LEVEL: "error" });
	return new ServiceBroker(createBrokerOptions(settings, { kind: "nats", transporter: { type: "NATS", options: { servers: [new URL(LOCAL_NATS_URL).host] } }, reason: "test" }));
}

describeWithNats("circuit breaker state, per endpoint, visible to operators", () => {
	const namespace = uniqueNamespace("breakers");
	const callee = broker(namespace, "flaky-node");
	const caller = broker(namespace, "caller-node");
	const operator = broker(namespace, "operator-node");
	callee.createService({
		name: "flaky",
		actions: {
			fail() {
				throw new Errors.MoleculerServerError("always fails", 500, "BROKEN");
			},
		},
	});

	beforeAll(async () => {
		await Promise.all([callee.start(), caller.start(), operator.start()]);
		await caller.waitForServices("flaky", 10_000);
		await new Promise(r => setTimeout(r, 1_500)); // operator learns every node
	});
	afterAll(() => Promise.all([callee.stop(), caller.stop(), operator.stop()]));

	it("opens after repeated server errors, then fails fast; `breakers` lists it as OPEN for that node and action", async () => {
		for (let i = 0; i < 12; i++) await caller.call("flaky.fail").catch(() => undefined);
		const fastFail = await caller.call("flaky.fail").catch((err: Error) => err);
		expect((fastFail as Errors.MoleculerError).name).toBe("ServiceNotAvailableError");

		const rows = await breakerTable(operator);
		expect(rows).toContainEqual(["caller-node", "flaky-node", "flaky.fail", "OPEN", "1"]);
		// Moleculer wraps the callee's local endpoint in a breaker too: the failing node sheds load itself.
		expect(rows).toContainEqual(["flaky-node", "flaky-node", "flaky.fail", "OPEN", "1"]);
		expect(rows).toHaveLength(3);
	});
});
