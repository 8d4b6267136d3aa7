/**
 * Bare baseline for bench:router's time to the first streamed piece: plain Moleculer brokers over NATS
 * (JSON, no middlewares, no services of ours), each in its own process like bench:router's:
 *   - a model node whose `bare.stream` answers an object-mode Readable with the pieces of a sentence as
 *     long as local-echo's answer in bench:router, all pushed before it returns (as local-echo does), and
 *     whose `bare.unary` answers a small object;
 *   - a gateway node: bare moleculer-web (JSON body parser, no auth, no rate limit) whose POST /api/route
 *     calls `bare.stream` on the model node and answers SSE (`event: start`, a `data:` per piece, `event:
 *     done`) through a PassThrough, as the router does;
 *   - this process, the caller: sequential samples taking turns, the same measurement as bench:router.
 * What Moleculer, moleculer-web, NATS and undici cost by themselves, against which bench:router's
 * figures are read. `node --import tsx bench/router/bare-stream.ts` (BENCH_TTFT_SAMPLES, default 300).
 */
import { PassThrough, Readable } from "stream";
import { ServiceBroker, type Context } from "moleculer";
import ApiGateway from "moleculer-web";
import { firstPieceMs, firstSsePieceMs } from "../lib/first-piece";
import { percentile, startProcess, stopProcesses } from "../lib/harness";

const NATS_URL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const SAMPLES = Number(process.env.BENCH_TTFT_SAMPLES ?? 300);
const namespace = process.env.BARE_NAMESPACE ?? `barestream-${process.pid}`;
/** About local-echo's answer to bench:router's prompt: 15 pieces. */
const ANSWER = "[development model local-echo] bench-echo heard 6 tokens: how fast is the first token";

function broker(nodeID: string): ServiceBroker {
	return new ServiceBroker({ namespace, nodeID, transporter: { type: "NATS", options: { url: NATS_URL } }, logger: false });
}

async function serveModels(): Promise<void> {
	const b = broker("bare-models");
	b.createService({
		name: "bare",
		actions: {
			unary: () => ({ type: "done", text: ANSWER }),
			stream() {
				const s = new Readable({ objectMode: true, read() {} });
				for (const text of ANSWER.match(/\s*\S+/g) ?? []) s.push({ type: "piece", text });
				s.push({ type: "done" });
				s.push(null);
				return s;
			},
		},
	});
	await b.start();
	process.stdout.write("READY\n");
}

async function serveGateway(): Promise<void> {
	const b = broker("bare-gateway");
	b.createService({
		name: "gw",
		actions: {
			async route(ctx: Context<unknown, { $responseType?: string }>) {
				const upstream = (await ctx.call("bare.stream", {}, { nodeID: "bare-models" })) as Readable;
				ctx.meta.$responseType = "text/event-stream; charset=utf-8";
				const out = new PassThrough();
				out.write("event: start\ndata: {}\n\n");
				upstream.on("data", (chunk: { type: string; text?: string }) => {
					if (chunk.type === "piece") out.write(`data: ${JSON.stringify({ text: chunk.text })}\n\n`);
					else out.end("event: done\ndata: {}\n\n");
				});
				return out;
			},
		},
	});
	b.createService({
		name: "api",
		mixins: [ApiGateway],
		settings: { port: Number(process.env.PORT), routes: [{ path: "/api", bodyParsers: { json: true }, aliases: { "POST /route": "gw.route" } }] },
	});
	await b.start();
	await b.waitForServices(["bare"]);
	process.stdout.write("READY\n");
}

async function main(): Promise<void> {
	const port = 19_300 + (process.pid % 100);
	await startProcess("bench/router/bare-stream.ts", { BARE_ROLE: "models", BARE_NAMESPACE: namespace });
	await startProcess("bench/router/bare-stream.ts", { BARE_ROLE: "gateway", BARE_NAMESPACE: namespace, PORT: String(port) });
	const url = `http://127.0.0.1:${port}/api/route`;
	const b = broker("bare-caller");
	await b.start();
	await b.waitForServices(["bare"]);
	const firstDirect = () => firstPieceMs(() => b.call("bare.stream", {}, { nodeID: "bare-models" }) as Promise<Readable>);
	const firstGateway = () => firstSsePieceMs(url, {}, { message: "how fast is the first token", stream: true });
	const unary: number[] = [];
	const stream: number[] = [];
	const sse: number[] = [];
	const pairs: number[] = [];
	for (let i = 0; i < 30; i++) {
		await b.call("bare.unary", {}, { nodeID: "bare-models" });
		await firstDirect();
		await firstGateway();
	}
	for (let i = 0; i < SAMPLES; i++) {
		const t = performance.now();
		await b.call("bare.unary", {}, { nodeID: "bare-models" });
		unary.push(performance.now() - t);
		const direct = await firstDirect();
		const gateway = await firstGateway();
		stream.push(direct);
		sse.push(gateway);
		pairs.push(gateway - direct);
	}
	for (const xs of [unary, stream, sse, pairs]) xs.sort((x, y) => x - y);
	const f = (xs: number[]) => `p50 ${percentile(xs, 50).toFixed(2)} ms, p90 ${percentile(xs, 90).toFixed(2)} ms`;
	process.stdout.write(`bare Moleculer 0.15 + moleculer-web over NATS, ${SAMPLES} sequential samples each, taking turns:\n`);
	process.stdout.write(`  unary call, caller → model node:                     ${f(unary)}\n`);
	process.stdout.write(`  stream, first piece, caller → model node:            ${f(stream)}\n`);
	process.stdout.write(`  SSE first piece, client → bare gateway → model node: ${f(sse)}\n`);
	process.stdout.write(`  SSE minus stream, median of the paired samples:      ${f(pairs)}\n`);
	await b.stop();
	await stopProcesses();
}

const role = process.env.BARE_ROLE;
const run = role === "models" ? serveModels : role === "gateway" ? serveGateway : main;
run().catch(async err => {
	process.stderr.write(`${(err as Error).stack}\n`);
	await stopProcesses();
	process.exit(1);
});
