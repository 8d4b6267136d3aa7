import { PointReadBatcher } from "../../lib/data/point-read-batcher";

interface Row {
	id: string;
	n: number;
}

function batcherOver(rows: Row[], maxBatch?: number) {
	const queries: string[][] = [];
	let failWith: Error | null = null;
	const batcher = new PointReadBatcher<Row>({
		load: async keys => {
			queries.push(keys);
			if (failWith) {
				const err = failWith;
				failWith = null;
				throw err;
			}
			return rows.filter(r => keys.includes(r.id));
		},
		keyOf: row => row.id,
		maxBatch,
	});
	return { batcher, queries, failNext: (err: Error) => (failWith = err) };
}

const rows = Array.from({ length: 10 }, (_, n) => ({ id: `k${n}`, n }));

describe("point read batcher", () => {
	it("answers reads made in the same turn with one query, each with its own row (duplicates share one key)", async () => {
		const { batcher, queries } = batcherOver(rows);
		const answers = await Promise.all(["k1", "k2", "k1", "k9"].map(k => batcher.get(k)));
		expect(answers.map(r => r?.n)).toEqual([1, 2, 1, 9]);
		expect(queries).toEqual([["k1", "k2", "k9"]]);
	});

	it("answers undefined for a missing key without failing the others", async () => {
		const { batcher } = batcherOver(rows);
		const [missing, found] = await Promise.all([batcher.get("nope"), batcher.get("k3")]);
		expect(missing).toBeUndefined();
		expect(found?.n).toBe(3);
	});

	it("starts a new batch for reads made after the last one was sent", async () => {
		const { batcher, queries } = batcherOver(rows);
		await batcher.get("k1");
		await batcher.get("k2");
		expect(queries).toEqual([["k1"], ["k2"]]);
	});

	it("splits a large batch into queries of at most maxBatch keys", async () => {
		const { batcher, queries } = batcherOver(rows, 4);
		const answers = await Promise.all(rows.map(r => batcher.get(r.id)));
		expect(answers.map(r => r?.n)).toEqual(rows.map(r => r.n));
		expect(queries.map(q => q.length)).toEqual([4, 4, 2]);
	});

	it("rejects every read of a failed query, and recovers for the next batch", async () => {
		const { batcher, failNext } = batcherOver(rows);
		failNext(new Error("connection lost"));
		const reads = ["k1", "k2"].map(k => batcher.get(k));
		for (const read of reads) await expect(read).rejects.toThrow("connection lost");
		expect((await batcher.get("k1"))?.n).toBe(1);
	});
});
