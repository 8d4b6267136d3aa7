/**
 * swapper-proxy, in process with the built-in development model (local-echo): generation, streaming,
 * cancellation, the per-model queue, and the internal-only access of its model controls.
 * No database: swapper-proxy keeps no state there.
 */
import type { Readable } from "stream";
import { Errors } from "moleculer";
import { echoAnswer } from "../../../lib/inference/providers/local-echo";
import { waitFor } from "../../helpers/cluster";
import { startInProcessNode, stopInProcessNodes, user, type InProcessNode } from "../../helpers/service-broker";

/** Slow enough pieces that a second request finds the model busy. */
const TOKEN_MS = 40;

interface Answer {
	model: string;
	node: string;
	text: string;
	development: boolean;
	usage: { tokens_in: number; tokens_out: number };
}

async function drain(stream: Readable): Promise<Array<{ type: string; text?: string }>> {
	const chunks: Array<{ type: string; text?: string }> = [];
	for await (const chunk of stream) chunks.push(chunk);
	return chunks;
}

describe("swapper-proxy service (in-process broker)", () => {
	let node: InProcessNode;
	beforeAll(async () => {
		node = await startInProcessNode({
			services: ["api", "swapper-proxy"],
			env: { SWAPPER_LOCAL_ECHO: "true", SWAPPER_LOCAL_ECHO_TOKEN_MS: String(TOKEN_MS), SWAPPER_MAX_CONCURRENCY: "1", SWAPPER_QUEUE: "1" },
		});
	});
	afterAll(() => stopInProcessNodes(node));

	it("generates with the development model and says so", async () => {
		const answer = await node.call<Answer>("swapper-proxy.generate", { model: "local-echo", prompt: "two words" });
		expect(answer).toMatchObject({ model: "local-echo", node: node.broker.nodeID, development: true });
		expect(answer.text).toContain("two words");
		expect(answer.usage.tokens_out).toBeGreaterThan(0);
		const models = await node.call<{ models: Array<{ model: string; node: string }> }>("swapper-proxy.models");
		expect(models.models).toContainEqual(expect.objectContaining({ model: "local-echo", node: node.broker.nodeID }));
	});

	it("streams pieces that join into the answer, then one done", async () => {
		const stream = await node.call<Readable>("swapper-proxy.generate", { model: "local-echo", prompt: "stream me", stream: true });
		const chunks = await drain(stream);
		expect(chunks[chunks.length - 1]).toMatchObject({ type: "done", model: "local-echo" });
		expect(chunks.slice(0, -1).every(c => c.type === "piece")).toBe(true);
		// A piece every TOKEN_MS, read as it comes: none waits to be joined with the next.
		const words = echoAnswer({ model: "local-echo", messages: [{ role: "user", content: "stream me" }] }).match(/\s*\S+/g) ?? [];
		expect(chunks.map(c => c.text)).toEqual([...words, undefined]);
		expect(chunks.map(c => c.text ?? "").join("")).toContain("stream me");
	});

	it("refuses the request beyond concurrency + queue with a retryable 429 QUEUE_FULL", async () => {
		const running = node.call("swapper-proxy.generate", { model: "local-echo", prompt: "one two three four five" });
		const queued = node.call("swapper-proxy.generate", { model: "local-echo", prompt: "six seven eight" });
		await waitFor("one running and one queued", async () => {
			const { models } = await node.call<{ models: Array<{ model: string; in_flight: number; queued: number }> }>("swapper-proxy.status");
			const echo = models.find(m => m.model === "local-echo");
			return echo?.in_flight === 1 && echo.queued === 1;
		}, 5_000, 5);
		const refused = await node.call("swapper-proxy.generate", { model: "local-echo", prompt: "nine" }).catch(err => err);
		expect(refused).toBeInstanceOf(Errors.MoleculerRetryableError);
		expect(refused).toMatchObject({ code: 429, type: "QUEUE_FULL", retryable: true, data: { retry_elsewhere: true } });
		await expect(Promise.all([running, queued])).resolves.toHaveLength(2);
	});

	it("cancels a running generation by its cancel key", async () => {
		const generation = node.call("swapper-proxy.generate", { model: "local-echo", prompt: "a long answer to be cut short", cancel_key: "job-1" });
		// Asked until the generation has started under its key (unknown keys cancel nothing).
		await waitFor("the generation to be cancelled", async () => (await node.call<{ cancelled: boolean }>("swapper-proxy.cancel", { id: "job-1" })).cancelled, 5_000, 5);
		await expect(generation).rejects.toMatchObject({ code: 499, type: "PROVIDER_CANCELLED" });
		await expect(node.call("swapper-proxy.cancel", { id: "job-1" })).resolves.toEqual({ cancelled: false });
	});

	it("refuses bad input as a ValidationError naming the field, and an unknown model as 404", async () => {
		const noModel = node.call("swapper-proxy.generate", { prompt: "hi" });
		await expect(noModel).rejects.toBeInstanceOf(Errors.ValidationError);
		await expect(noModel).rejects.toMatchObject({ data: [expect.objectContaining({ field: "model" })] });
		await expect(node.call("swapper-proxy.generate", { model: "local-echo" })).rejects.toMatchObject({ name: "ValidationError", data: [expect.objectContaining({ field: "prompt" })] });
		await expect(node.call("swapper-proxy.generate", { model: "local-echo", prompt: "hi", temperature: 7 })).rejects.toMatchObject({ data: [expect.objectContaining({ field: "temperature" })] });
		await expect(node.call("swapper-proxy.generate", { model: "gpt-none", prompt: "hi" })).rejects.toMatchObject({ code: 404, type: "MODEL_NOT_FOUND", data: { field: "model" } });
	});

	describe("access rules through the gateway", () => {
		it("lists models to any user, but generate, load and unload are internal (service or admin)", async () => {
			expect((await node.http("GET", "/api/swapper-proxy/models")).status).toBe(401);
			expect((await node.http("GET", "/api/swapper-proxy/models", { user: user("u1") })).status).toBe(200);
			const body = { model: "local-echo", prompt: "hi" };
			expect((await node.http("POST", "/api/swapper-proxy/generate", { user: user("u1"), body })).status).toBe(403);
			expect((await node.http("POST", "/api/swapper-proxy/generate", { user: user("svc", ["service"]), body })).status).toBe(200);
			expect((await node.http("POST", "/api/swapper-proxy/models/local-echo/unload", { user: user("u1"), body: {} })).status).toBe(403);
			expect((await node.http("POST", "/api/swapper-proxy/models/local-echo/load", { user: user("root", ["admin"]), body: {} })).status).toBe(200);
		});
	});
});
