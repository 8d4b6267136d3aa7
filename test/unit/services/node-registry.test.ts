/**
 * node-registry, in process on a fresh PostgreSQL database: the node registers itself, external nodes
 * register and heartbeat (rate-limited per node), status is computed on read, and only admins broadcast.
 * The seed's /api/v1 paths are exercised through the in-process gateway.
 */
import { Errors } from "moleculer";
import { waitFor } from "../../helpers/cluster";
import { describeWithPostgres } from "../../helpers/requirements";
import { eventRecorder, startInProcessNode, stopInProcessNodes, user, type EventRecorder, type InProcessNode } from "../../helpers/service-broker";

interface NodeView {
	node_id: string;
	role: string;
	kind: string;
	status: string;
}

describeWithPostgres("node-registry service (in-process broker)", () => {
	let node: InProcessNode;
	let events: EventRecorder;
	const service = user("edge-agent", ["service"]);
	const admin = user("root", ["admin"]);
	beforeAll(async () => {
		events = eventRecorder(["system.broadcast", "node.gpu-box.events"]);
		node = await startInProcessNode({ services: ["api", "node-registry"], database: true, env: { NODE_ROLE: "node1" }, extraServices: [events.schema] });
	});
	afterAll(() => stopInProcessNodes(node));

	it("registers the node it runs on, which holds the registry lease", async () => {
		const self = await waitFor("self-registration", async () => (await node.callAs<{ nodes: NodeView[] }>(admin, "node-registry.list", {})).nodes.find(n => n.node_id === node.broker.nodeID));
		expect(self).toMatchObject({ role: "node1", kind: "mesh", status: "online" });
		expect(await node.call("node-registry.leader")).toMatchObject({ holder: node.broker.nodeID });
	});

	it("registers an external node, takes its heartbeats, and reports a status change on node.{id}.events", async () => {
		const registered = await node.callAs<NodeView>(service, "node-registry.register", { node_id: "gpu-box", role: "gpu", ip: "10.0.0.7", capabilities: { models: ["llama3"], cpu_count: 8 } });
		expect(registered).toMatchObject({ node_id: "gpu-box", role: "gpu", kind: "external", status: "online" });
		const beat = await node.callAs(service, "node-registry.heartbeat", { node_id: "gpu-box", status: "degraded", metrics: { load1: 3.5 } });
		expect(beat).toMatchObject({ success: true, node_id: "gpu-box", status: "degraded" });
		expect(await events.seen("node.gpu-box.events", (e: { event: string }) => e.event === "status")).toMatchObject({ status: "degraded", previous: "online" });
		const detail = await node.callAs<NodeView & { heartbeats: unknown[] }>(admin, "node-registry.get", { node_id: "gpu-box" });
		expect(detail).toMatchObject({ status: "degraded", heartbeats: [expect.objectContaining({ status: "degraded" })] });
		const degraded = await node.callAs<{ nodes: NodeView[] }>(admin, "node-registry.list", { status: "degraded" });
		expect(degraded.nodes.map(n => n.node_id)).toEqual(["gpu-box"]);
	});

	it("limits heartbeats per node: beyond the burst a 429 naming the node", async () => {
		await node.callAs(service, "node-registry.register", { node_id: "chatty", role: "edge" });
		const answers = [];
		for (let i = 0; i < 15; i++) answers.push(await node.callAs(service, "node-registry.heartbeat", { node_id: "chatty" }).catch(err => err));
		const limited = answers.filter(a => a instanceof Error);
		expect(limited.length).toBeGreaterThan(0);
		expect(limited[0]).toMatchObject({ code: 429, type: "RATE_LIMITED", data: { node_id: "chatty" } });
		// Another node's budget is its own.
		await expect(node.callAs(service, "node-registry.heartbeat", { node_id: "gpu-box" })).resolves.toMatchObject({ success: true });
	});

	it("answers 404 for a node it does not know", async () => {
		await expect(node.callAs(service, "node-registry.heartbeat", { node_id: "ghost" })).rejects.toMatchObject({ code: 404, type: "NODE_NOT_FOUND" });
		await expect(node.callAs(admin, "node-registry.get", { node_id: "ghost" })).rejects.toMatchObject({ code: 404 });
	});

	it("refuses bad input as a ValidationError naming the field", async () => {
		const badRole = node.callAs(service, "node-registry.register", { role: "Not Valid!" });
		await expect(badRole).rejects.toBeInstanceOf(Errors.ValidationError);
		await expect(badRole).rejects.toMatchObject({ data: [expect.objectContaining({ field: "role" })] });
		await expect(node.callAs(service, "node-registry.heartbeat", { node_id: "gpu-box", metrics: { blob: "x".repeat(5_000) } })).rejects.toMatchObject({
			name: "ValidationError",
			data: [expect.objectContaining({ field: "metrics" })],
		});
		await expect(node.callAs(admin, "node-registry.list", { status: "asleep" })).rejects.toMatchObject({ data: [expect.objectContaining({ field: "status" })] });
	});

	describe("the seed's /api/v1 paths through the gateway", () => {
		it("lets any user list, only services and admins register, only admins broadcast", async () => {
			expect((await node.http("GET", "/api/v1/nodes")).status).toBe(401);
			expect((await node.http("GET", "/api/v1/nodes", { user: user("u1") })).status).toBe(200);
			expect((await node.http("POST", "/api/v1/nodes/register", { user: user("u1"), body: { role: "edge" } })).status).toBe(403);
			const registered = await node.http("POST", "/api/v1/nodes/register", { user: service, body: { role: "edge", hostname: "far-away" } });
			expect(registered).toMatchObject({ status: 200, body: { kind: "external", role: "edge" } });
			expect((await node.http("POST", "/api/v1/broadcast", { user: service, body: { message: "hello" } })).status).toBe(403);
			const sent = await node.http("POST", "/api/v1/broadcast", { user: admin, body: { message: "maintenance at noon", severity: "warning" } });
			expect(sent).toMatchObject({ status: 200, body: { delivered: true } });
			expect(await events.seen("system.broadcast", (e: { id: string }) => e.id === sent.body.id)).toMatchObject({ message: "maintenance at noon", severity: "warning", by: "root" });
		});
	});
});
