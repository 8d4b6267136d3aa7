// Investigation aid: what grew between two V8 heap snapshots, by node type and constructor name, per
// `per` units (e.g. per socket). `tsx bench/presence/census-diff.ts before.heapsnapshot after.heapsnapshot 500`
import fs from "node:fs";

interface Census {
	[key: string]: { count: number; bytes: number };
}

function census(file: string): Census {
	const snap = JSON.parse(fs.readFileSync(file, "utf8")) as {
		snapshot: { meta: { node_fields: string[]; node_types: [string[]] } };
		nodes: number[];
		strings: string[];
	};
	const fields = snap.snapshot.meta.node_fields;
	const width = fields.length;
	const [typeAt, nameAt, sizeAt] = ["type", "name", "self_size"].map(f => fields.indexOf(f));
	const typeNames = snap.snapshot.meta.node_types[0];
	const result: Census = {};
	for (let i = 0; i < snap.nodes.length; i += width) {
		const type = typeNames[snap.nodes[i + typeAt]];
		// Strings and code are grouped by type only; objects by constructor name.
		const key = ["string", "concatenated string", "sliced string", "code", "number"].includes(type) ? `(${type})` : `${type}:${snap.strings[snap.nodes[i + nameAt]]}`;
		const entry = (result[key] ??= { count: 0, bytes: 0 });
		entry.count++;
		entry.bytes += snap.nodes[i + sizeAt];
	}
	return result;
}

export function censusDiff(beforeFile: string, afterFile: string, per: number, top = 40): string {
	const before = census(beforeFile);
	const after = census(afterFile);
	const rows = Object.keys(after)
		.map(key => ({ key, count: (after[key].count - (before[key]?.count ?? 0)) / per, bytes: (after[key].bytes - (before[key]?.bytes ?? 0)) / per }))
		.sort((a, b) => b.bytes - a.bytes);
	const total = rows.reduce((sum, r) => sum + r.bytes, 0);
	const lines = rows.slice(0, top).map(r => `${r.bytes.toFixed(0).padStart(7)} B  ${r.count.toFixed(2).padStart(6)}×  ${r.key}`);
	return [`self size per unit: ${(total / 1024).toFixed(2)} KB (${total.toFixed(0)} B)`, ...lines].join("\n");
}

if (require.main === module) {
	const [before, after, per] = process.argv.slice(2);
	process.stdout.write(`${censusDiff(before, after, Number(per ?? 1))}\n`);
}
