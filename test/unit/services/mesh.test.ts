/**
 * mesh, in process: the node's self-description, echo, and the access rules the gateway applies to them.
 * No database: a node running only mesh has none.
 */
import { Errors } from "moleculer";
import { startInProcessNode, stopInProcessNodes, user, type InProcessNode } from "../../helpers/service-broker";

describe("mesh service (in-process broker)", () => {
	let node: InProcessNode;
	beforeAll(async () => {
		node = await startInProcessNode({ services: ["api", "mesh"], env: { NODE_ROLE: "node2" } });
	});
	afterAll(() => stopInProcessNodes(node));

	it("whoami names this node, its role and version", async () => {
		const me = await node.call<{ nodeID: string; role: string; version: string; uptime: number }>("mesh.whoami");
		expect(me).toMatchObject({ nodeID: node.broker.nodeID, role: "node2", version: node.settings.version });
		expect(me.uptime).toBeGreaterThanOrEqual(0);
	});

	it("echo answers the message with the caller and the request id", async () => {
		const answer = await node.callAs(user("u1"), "mesh.echo", { message: "hi", extra: "dropped" }, { requestID: "req-1" });
		expect(answer).toEqual({ message: "hi", nodeID: node.broker.nodeID, requestID: "req-1", user: "u1" });
	});

	it("echo builds no debug line when the node logs below debug (the mesh's benchmark call)", async () => {
		expect(node.settings.logLevel).not.toBe("debug");
		const debug = jest.spyOn(node.broker.getLocalService("mesh")!.logger, "debug");
		try {
			await node.callAs(user("u1"), "mesh.echo", { message: "hi" });
			expect(debug).not.toHaveBeenCalled();
		} finally {
			debug.mockRestore();
		}
	});

	it("refuses an echo without a message as a ValidationError naming the field", async () => {
		const refused = node.call("mesh.echo", {});
		await expect(refused).rejects.toBeInstanceOf(Errors.ValidationError);
		await expect(refused).rejects.toMatchObject({ code: 422, data: [expect.objectContaining({ field: "message" })] });
		const tooLong = await node.call("mesh.echo", { message: "x".repeat(10_001) }).catch((err: Errors.ValidationError) => err);
		expect((tooLong as Errors.ValidationError).data[0]).toMatchObject({ field: "message", type: "stringMax" });
	});

	it("lists this node among the mesh's nodes", async () => {
		const nodes = await node.call<Array<{ nodeID: string }>>("mesh.nodes");
		expect(nodes.map(n => n.nodeID)).toContain(node.broker.nodeID);
	});

	describe("access rules through the gateway", () => {
		it("whoami is public", async () => {
			expect((await node.http("GET", "/api/mesh/whoami")).status).toBe(200);
		});

		it("echo needs a token: 401 without, 200 with", async () => {
			const anonymous = await node.http("POST", "/api/mesh/echo", { body: { message: "hi" } });
			expect(anonymous).toMatchObject({ status: 401, body: { type: "NO_TOKEN" } });
			const signedIn = await node.http("POST", "/api/mesh/echo", { user: user("u1"), body: { message: "hi" } });
			expect(signedIn).toMatchObject({ status: 200, body: { message: "hi", user: "u1" } });
		});

		it("echo with a bad body is a 422 naming the field, not a 500", async () => {
			const answer = await node.http("POST", "/api/mesh/echo", { user: user("u1"), body: { message: 42 } });
			expect(answer.status).toBe(422);
			expect(answer.body.data[0]).toMatchObject({ field: "message" });
		});

		it("config is internal: 403 for a plain user, 200 for a service or an admin", async () => {
			expect((await node.http("GET", "/api/mesh/config", { user: user("u1") })).status).toBe(403);
			expect((await node.http("GET", "/api/mesh/config", { user: user("ops", ["admin"]) })).status).toBe(200);
			expect((await node.http("GET", "/api/mesh/config", { user: user("svc", ["service"]) })).status).toBe(200);
		});
	});

	it("config says whether a database is configured without revealing its URL or the JWT secret", async () => {
		const config = await node.call("mesh.config");
		const text = JSON.stringify(config);
		expect(config).toMatchObject({ nodeID: node.broker.nodeID, database: "embedded" });
		expect(text).not.toContain(node.settings.jwtSecret as string);
	});
});
