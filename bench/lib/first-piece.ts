/**
 * Time to the first streamed piece, measured the same way by bench:router and by its bare baseline
 * (bench/router/bare-stream.ts). Both read the stream to its end, so that one sample never overlaps the next.
 */
import type { Readable } from "stream";

/** ms to the first piece of a stream of GenerateChunk objects. */
export async function firstPieceMs(open: () => Promise<Readable>): Promise<number> {
	const t = performance.now();
	const stream = await open();
	return new Promise((resolve, reject) => {
		let first = -1;
		stream.on("data", (chunk: { type: string }) => {
			if (first < 0 && chunk.type === "piece") first = performance.now() - t;
		});
		stream.on("end", () => resolve(first));
		stream.on("error", reject);
	});
}

/** ms to the first `data:` piece (`data: {"text"…`) of the SSE answer to a JSON POST. */
export async function firstSsePieceMs(url: string, headers: Record<string, string>, body: unknown): Promise<number> {
	const t = performance.now();
	const res = await fetch(url, { method: "POST", headers: { ...headers, "content-type": "application/json" }, body: JSON.stringify(body) });
	const reader = (res.body as ReadableStream<Uint8Array>).getReader();
	const decoder = new TextDecoder();
	let text = "";
	let first = -1;
	for (;;) {
		const { value, done } = await reader.read();
		if (done) break;
		text += decoder.decode(value, { stream: true });
		if (first < 0 && text.includes('\ndata: {"text"')) first = performance.now() - t;
	}
	return first;
}
