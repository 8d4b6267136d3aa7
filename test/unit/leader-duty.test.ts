/**
 * LeaderDutyMixin on in-process brokers (no transporter) sharing one real PostgreSQL database: a
 * periodic duty runs on one node only and moves when that node stops, a round never overlaps the
 * next, a failing round does not end the duty, and a looping duty ends before its lease is released.
 */
import { ServiceBroker, type Service } from "moleculer";
import type { Sequelize } from "sequelize";
import { createSequelize } from "../../lib/data/database";
import type { LeaderLease } from "../../lib/data/leader-lease";
import { runMigrations } from "../../lib/data/migrations";
import { attachNodeContext } from "../../lib/runtime/node-resources";
import { loadSettings, resolveDatabaseSettings } from "../../lib/runtime/settings";
import type { TransportChoice } from "../../lib/runtime/transport";
import type { GatewayPrometheusReporter } from "../../lib/http/prometheus";
import { LeaderDutyMixin, type LeaderDutyOptions } from "../../mixins/leader-duty.mixin";
import { dropFreshDatabases, freshDatabase, query } from "../helpers/databases";
import { describeWithPostgres } from "../helpers/requirements";

const NAMESPACE = `duty-${process.pid}`;
const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms));

async function until(check: () => boolean, timeoutMs = 10_000): Promise<void> {
	const deadline = Date.now() + timeoutMs;
	while (!check()) {
		if (Date.now() > deadline) throw new Error("condition not met in time");
		await sleep(20);
	}
}

describeWithPostgres("LeaderDutyMixin", () => {
	let url: string;
	const pools: Sequelize[] = [];
	const brokers: ServiceBroker[] = [];

	beforeAll(async () => {
		url = await freshDatabase("duty");
		await runMigrations(url, "up");
	});

	afterEach(async () => {
		await Promise.all(brokers.splice(0).map(b => b.stop()));
	});

	afterAll(async () => {
		await Promise.all(pools.map(p => p.close()));
		await dropFreshDatabases();
	});

	/** A node of the test mesh running one service with the given duty. */
	async function node(nodeID: string, options: LeaderDutyOptions, extra: Partial<Record<string, unknown>> = {}): Promise<ServiceBroker> {
		const settings = loadSettings({ NODE_ID: nodeID, LEASE_TTL_MS: "1000" });
		const sequelize = createSequelize({ ...resolveDatabaseSettings({}), url });
		pools.push(sequelize);
		const broker = new ServiceBroker({ namespace: NAMESPACE, nodeID, logger: false });
		attachNodeContext(broker, { settings, transport: {} as TransportChoice, sequelize, metricsReporter: {} as GatewayPrometheusReporter, startedAt: Date.now() });
		broker.createService({ name: "dutiful", mixins: [LeaderDutyMixin(options)], ...extra });
		await broker.start();
		brokers.push(broker);
		return broker;
	}

	const leaseOf = (broker: ServiceBroker) => (broker.getLocalService("dutiful") as Service & { lease: LeaderLease }).lease;

	it("runs a periodic duty on the lease holder only, and on the other node once the holder stops", async () => {
		const rounds = new Map<string, number>();
		const options: LeaderDutyOptions = {
			duty: "count",
			everyMs: 50,
			what: "count",
			async run(this: Service) {
				rounds.set(this.broker.nodeID, (rounds.get(this.broker.nodeID) ?? 0) + 1);
			},
		};
		const a = await node("a", options);
		const b = await node("b", options);
		await until(() => (rounds.get("a") ?? 0) + (rounds.get("b") ?? 0) >= 5);
		const [leader, follower] = leaseOf(a).isLeader() ? [a, b] : [b, a];
		expect(rounds.get(follower.nodeID) ?? 0).toBe(0);

		await leader.stop();
		brokers.splice(brokers.indexOf(leader), 1);
		const stoppedAt = rounds.get(leader.nodeID) ?? 0;
		await until(() => (rounds.get(follower.nodeID) ?? 0) >= 3);
		expect(rounds.get(leader.nodeID) ?? 0).toBe(stoppedAt);
		const [row] = await query<{ holder: string }>(url, "SELECT holder FROM leader_leases WHERE name = $1", [`${NAMESPACE}:count`]);
		expect(row.holder).toBe(follower.nodeID);
	});

	it("never starts a round while the previous one still runs, and keeps going after a failed one", async () => {
		let running = 0;
		let mostAtOnce = 0;
		let rounds = 0;
		await node("solo", {
			duty: "slow",
			everyMs: 10,
			what: "slow round",
			async run() {
				running++;
				mostAtOnce = Math.max(mostAtOnce, running);
				rounds++;
				await sleep(60);
				running--;
				if (rounds === 1) throw new Error("first round fails");
			},
		});
		await until(() => rounds >= 4);
		expect(mostAtOnce).toBe(1);
	});

	it("starts a loop once, cuts its pauses short on stop, and releases the lease only after the loop returned", async () => {
		const seen: string[] = [];
		let lease: LeaderLease | null = null;
		const broker = await node("looper", {
			duty: "loop",
			leaseKey: "loopLease",
			async loop(duty) {
				lease = duty.lease;
				seen.push("started");
				while (duty.running) await duty.pause(60_000);
				seen.push(`returned while leader: ${duty.lease.isLeader()}`);
			},
		});
		expect((broker.getLocalService("dutiful") as Service & { loopLease: LeaderLease }).loopLease).toBe(lease);
		await until(() => lease!.isLeader());
		const stopping = Date.now();
		await broker.stop();
		brokers.splice(brokers.indexOf(broker), 1);
		expect(Date.now() - stopping).toBeLessThan(5_000);
		expect(seen).toEqual(["started", "returned while leader: true"]);
		expect(lease!.isLeader()).toBe(false);
	});
});
