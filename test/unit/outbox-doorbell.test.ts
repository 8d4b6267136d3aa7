/**
 * The outbox doorbell (lib/data/outbox/doorbell.ts): rings are spaced per node (the first at once, a burst's
 * rest as one trailing ring), leave only after the transaction that wrote the rows committed (none after a
 * rollback), and reach the `outbox` services alone, through a real broker and a real PostgreSQL transaction.
 */
import { ServiceBroker } from "moleculer";
import { Sequelize } from "sequelize";
import { Doorbell, installOutboxDoorbell, OUTBOX_DUE_EVENT, ringOutbox } from "../../lib/data/outbox/doorbell";
import { describeWithPostgres, LOCAL_DATABASE_URL } from "../helpers/requirements";

const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms));

describe("Doorbell", () => {
	it("sends the first ring at once and a burst's rest as one ring a gap later", async () => {
		let sent = 0;
		const bell = new Doorbell(() => sent++, 80);
		for (let i = 0; i < 5; i++) bell.ring();
		expect(sent).toBe(1);
		await sleep(40);
		bell.ring();
		expect(sent).toBe(1);
		await sleep(80);
		expect(sent).toBe(2);
		// a ring a gap after the last send leaves at once again
		await sleep(100);
		bell.ring();
		expect(sent).toBe(3);
	});

	it("sends nothing more when nothing rang during the gap", async () => {
		let sent = 0;
		const bell = new Doorbell(() => sent++, 30);
		bell.ring();
		await sleep(100);
		expect(sent).toBe(1);
	});
});

describeWithPostgres("ringOutbox", () => {
	let broker: ServiceBroker;
	let sequelize: Sequelize;
	const rings: string[] = [];

	beforeAll(async () => {
		broker = new ServiceBroker({ logger: false, metrics: false, transporter: null });
		broker.createService({ name: "outbox", events: { [OUTBOX_DUE_EVENT]: () => void rings.push("outbox") } });
		// Any other service listening to the same event name is not rung: the ring goes to the relay's group.
		broker.createService({ name: "bystander", events: { [OUTBOX_DUE_EVENT]: () => void rings.push("bystander") } });
		await broker.start();
		sequelize = new Sequelize(LOCAL_DATABASE_URL, { logging: false, pool: { max: 2 } });
		installOutboxDoorbell(sequelize, broker);
	});
	afterAll(async () => {
		await sequelize?.close();
		await broker?.stop();
	});

	/** Each case waits out the doorbell's gap first, so its ring leaves at once. */
	beforeEach(() => sleep(50).then(() => (rings.length = 0)));

	it("rings after the transaction commits, not while it is open", async () => {
		await sequelize.transaction(async t => {
			await sequelize.query("SELECT 1", { transaction: t });
			ringOutbox(sequelize, t);
			await sleep(50);
			expect(rings).toEqual([]);
		});
		await sleep(10);
		expect(rings).toEqual(["outbox"]);
	});

	it("does not ring for a transaction that rolled back", async () => {
		await expect(
			sequelize.transaction(async t => {
				ringOutbox(sequelize, t);
				throw new Error("the write failed");
			}),
		).rejects.toThrow("the write failed");
		await sleep(50);
		expect(rings).toEqual([]);
	});

	it("rings at once for rows a statement of its own wrote, and not at all through a handle without a doorbell", async () => {
		ringOutbox(sequelize);
		await sleep(10);
		expect(rings).toEqual(["outbox"]);
		const other = new Sequelize(LOCAL_DATABASE_URL, { logging: false });
		try {
			await sleep(50);
			ringOutbox(other);
			await sleep(10);
			expect(rings).toEqual(["outbox"]);
		} finally {
			await other.close();
		}
	});
});
