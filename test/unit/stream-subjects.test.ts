/**
 * The event stream captures what the services declare (`metadata.publishes`), not a list kept in lib/:
 * declaredSubjects reads the registry (and the caller's own metadata, before it is registered), and
 * ensureStream only ever adds, even when two nodes bring the stream to different lists at once.
 */
import { ServiceBroker } from "moleculer";
import { connect, type NatsConnection } from "nats";
import { declaredSubjects, ensureStream, PUBLISHES } from "../../lib/data/outbox/relay";
import { attachNodeContext, type NodeContext } from "../../lib/runtime/node-resources";
import { loadSettings } from "../../lib/runtime/settings";
import { describeWithNats, LOCAL_NATS_URL } from "../helpers/requirements";

describe("declaredSubjects", () => {
	const broker = new ServiceBroker({ nodeID: "subjects", logger: false });
	beforeAll(async () => {
		broker.createService({ name: "writer", metadata: { [PUBLISHES]: ["memory.>", "audit.>"] } });
		broker.createService({ name: "chatter", metadata: { [PUBLISHES]: ["message.>", "audit.>"] } });
		broker.createService({ name: "quiet" });
		await broker.start();
	});
	afterAll(() => broker.stop());

	it("unites what the registry's services declare with the caller's own, sorted, once each", () => {
		expect(declaredSubjects(broker)).toEqual(["audit.>", "memory.>", "message.>"]);
		expect(declaredSubjects(broker, { [PUBLISHES]: ["ops.>", "memory.>"] })).toEqual(["audit.>", "memory.>", "message.>", "ops.>"]);
	});

	it("adds what the node's code base declares, for producers that are not in the mesh now", () => {
		const other = new ServiceBroker({ nodeID: "code-base", logger: false });
		attachNodeContext(other, { codeBaseMetadata: () => [{ [PUBLISHES]: ["agent.>"] }, {}] } as unknown as NodeContext);
		expect(declaredSubjects(other, { [PUBLISHES]: ["ops.>"] })).toEqual(["agent.>", "ops.>"]);
	});
});

describeWithNats("ensureStream", () => {
	let nc: NatsConnection;
	const prefix = `subj_${process.pid}`;
	const events = { ...loadSettings({}).events, stream: `T_SUBJ_${process.pid}`, subjectPrefix: prefix, streamReplicas: 1 };

	beforeAll(async () => {
		nc = await connect({ servers: new URL(LOCAL_NATS_URL).host });
	});
	afterAll(async () => {
		const jsm = await nc.jetstreamManager();
		await jsm.streams.delete(events.stream).catch(() => undefined);
		await nc.close();
	});

	it("creates the stream with the declared subjects, then only adds, also under concurrent updates", async () => {
		expect(await ensureStream(nc, events, ["audit.>"])).toMatch(/created/);
		expect(await ensureStream(nc, events, ["audit.>"])).toBeNull();
		await Promise.all([ensureStream(nc, events, ["memory.>"]), ensureStream(nc, events, ["message.>"]), ensureStream(nc, events, ["ops.>"])]);
		const info = await (await nc.jetstreamManager()).streams.info(events.stream);
		expect([...(info.config.subjects ?? [])].sort()).toEqual(["audit.>", "memory.>", "message.>", "ops.>"].map(s => `${prefix}.${s}`));
	});
});
