/**
 * PieceStream: a piece that finds its reader waiting goes out at once and alone; pieces that come while
 * the reader is busy are joined into the next piece; `done` and the end follow the last text. Read the
 * way Moleculer's transit reads a streamed answer, and through two brokers over Moleculer's in-memory
 * transporter (one mesh message per chunk).
 */
import { ServiceBroker } from "moleculer";
import type { Readable } from "stream";
import { PieceStream } from "../../lib/inference/piece-stream";
import type { GenerateChunk } from "../../lib/inference/provider";

const DONE = { type: "done", model: "m", provider: "p", locality: "local", node: "n", usage: { tokens_in: 1, tokens_out: 3 }, tool_calls: [], development: true, latency_ms: 0 } as const satisfies GenerateChunk;

const tick = () => new Promise(resolve => setImmediate(resolve));

/** Reads like transit.sendResponse: pause on each chunk, "send" it, resume once sent (after `busyFor`). */
function meshLikeReader(stream: Readable, busyFor: () => Promise<void>): { chunks: GenerateChunk[]; ended: Promise<void> } {
	const chunks: GenerateChunk[] = [];
	stream.pause();
	stream.on("data", (chunk: GenerateChunk) => {
		stream.pause();
		chunks.push(chunk);
		void busyFor().then(() => stream.resume());
	});
	const ended = new Promise<void>((resolve, reject) => {
		stream.on("end", resolve);
		stream.on("error", reject);
	});
	stream.resume();
	return { chunks, ended };
}

describe("PieceStream", () => {
	it("joins the pieces of a burst that came before the first read into one piece, then done, then the end", async () => {
		const stream = new PieceStream(() => undefined);
		for (const text of ["one", " two", " three"]) stream.piece(text);
		stream.finish(DONE);
		const { chunks, ended } = meshLikeReader(stream, () => Promise.resolve());
		await ended;
		expect(chunks).toEqual([{ type: "piece", text: "one two three" }, DONE]);
	});

	it("hands a piece to a waiting reader at once, alone; pieces that come while it is busy go out joined", async () => {
		const stream = new PieceStream(() => undefined);
		let release: () => void = () => undefined;
		const { chunks, ended } = meshLikeReader(stream, () => new Promise<void>(resolve => (release = resolve)));
		await tick();
		stream.piece("first");
		// Synchronously: nothing waits for more text before a waiting reader gets it.
		expect(chunks).toEqual([{ type: "piece", text: "first" }]);
		stream.piece(" second");
		stream.piece(" third");
		expect(chunks).toHaveLength(1); // the reader is still sending "first"
		release();
		await tick();
		expect(chunks).toEqual([
			{ type: "piece", text: "first" },
			{ type: "piece", text: " second third" },
		]);
		release();
		await tick();
		stream.piece(" fourth");
		release();
		await tick();
		stream.finish(DONE);
		release();
		await tick();
		release();
		await ended;
		expect(chunks).toEqual([{ type: "piece", text: "first" }, { type: "piece", text: " second third" }, { type: "piece", text: " fourth" }, DONE]);
	});

	it("tells the generation to stop when the reader destroys it, and ends with the error it is destroyed with", async () => {
		const stopped = jest.fn();
		const stream = new PieceStream(stopped);
		stream.piece("text");
		stream.destroy();
		expect(stopped).toHaveBeenCalledTimes(1);
		const failing = new PieceStream(() => undefined);
		const { ended } = meshLikeReader(failing, () => Promise.resolve());
		failing.destroy(new Error("provider failed"));
		await expect(ended).rejects.toThrow("provider failed");
	});

	describe("across the mesh (two brokers, Moleculer's in-memory transporter)", () => {
		const namespace = `piece-stream-${process.pid}`;
		const caller = new ServiceBroker({ namespace, nodeID: "caller", transporter: "Fake", logger: false });
		const server = new ServiceBroker({ namespace, nodeID: "server", transporter: "Fake", logger: false });
		server.createService({
			name: "gen",
			actions: {
				burst() {
					const stream = new PieceStream(() => undefined);
					for (const text of "a burst of many pieces at once".match(/\s*\S+/g) ?? []) stream.piece(text);
					stream.finish(DONE);
					return stream;
				},
				paced() {
					const stream = new PieceStream(() => undefined);
					void (async () => {
						for (const text of ["slow", " pieces", " stay", " apart"]) {
							await new Promise(resolve => setTimeout(resolve, 10));
							stream.piece(text);
						}
						stream.finish(DONE);
					})();
					return stream;
				},
			},
		});
		beforeAll(async () => {
			await Promise.all([caller.start(), server.start()]);
			await caller.waitForServices(["gen"]);
		});
		afterAll(() => Promise.all([caller.stop(), server.stop()]));

		async function drain(action: string): Promise<GenerateChunk[]> {
			const chunks: GenerateChunk[] = [];
			for await (const chunk of (await caller.call(action, {}, { nodeID: "server" })) as Readable) chunks.push(chunk as GenerateChunk);
			return chunks;
		}

		it("sends a burst as one piece message, and paced pieces one message each", async () => {
			expect(await drain("gen.burst")).toEqual([{ type: "piece", text: "a burst of many pieces at once" }, DONE]);
			expect(await drain("gen.paced")).toEqual([
				{ type: "piece", text: "slow" },
				{ type: "piece", text: " pieces" },
				{ type: "piece", text: " stay" },
				{ type: "piece", text: " apart" },
				DONE,
			]);
		});
	});
});
