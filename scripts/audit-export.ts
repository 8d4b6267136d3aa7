/**
 * `npm run audit:export -- --from 2026-12-01T00:00:00Z --to 2026-12-02T00:00:00Z [--out file.jsonl]`
 *
 * Writes the audit chain for a time window as JSON lines: first a header line
 * `{"type":"audit-export", from, to, first_seq, last_seq, count, anchor}` where `anchor` is the
 * prev_hash of the first row (the hash of the row before the window; 64 zeros at the start of the
 * chain), then one line per audit_log row in seq order, every column included. The window is the
 * contiguous seq range from the first row recorded at or after --from to the last recorded before
 * --to, so the export is one unbroken piece of the chain. docs/AUDIT.md shows how to verify it.
 * `npm run audit:export -- --verify file.jsonl` checks a file with the same code.
 */
import fs from "fs";
import { Client } from "pg";
import { checkLinks, normaliseEntry, type AuditEntry } from "../lib/data/audit-chain";
import { withDatabase } from "../lib/data/database-location";
import { loadMigrationSettings } from "../lib/runtime/settings";

const PAGE = 5_000;

function option(args: string[], name: string): string | undefined {
	const i = args.indexOf(`--${name}`);
	return i >= 0 ? args[i + 1] : undefined;
}

function instant(value: string | undefined, name: string): Date | null {
	if (value === undefined) return null;
	const date = new Date(value);
	if (Number.isNaN(date.getTime())) throw new Error(`--${name}: not a date/time: "${value}"`);
	return date;
}

/** Checks an export file: the rows link to each other and to the header's anchor. */
export function verifyExport(lines: string[]): { ok: true; checked: number } | { ok: false; first_broken: { id: string; seq: number } } {
	const [header, ...rows] = lines.filter(Boolean).map(l => JSON.parse(l) as Record<string, unknown>);
	const entries: AuditEntry[] = rows.map(normaliseEntry);
	const anchor = { seq: Number(header.first_seq ?? 1) - 1, hash: String(header.anchor) };
	const { broken } = checkLinks(anchor, entries);
	return broken ? { ok: false, first_broken: { id: broken.id, seq: broken.seq } } : { ok: true, checked: entries.length };
}

async function exportWindow(url: string, from: Date | null, to: Date | null, out: NodeJS.WritableStream): Promise<number> {
	const db = new Client({ connectionString: url });
	await db.connect();
	try {
		const { rows: bounds } = await db.query<{ first: string | null; last: string | null }>(
			"SELECT min(seq) AS first, max(seq) AS last FROM audit_log WHERE ($1::timestamptz IS NULL OR recorded_at >= $1) AND ($2::timestamptz IS NULL OR recorded_at < $2)",
			[from, to],
		);
		const first = bounds[0].first === null ? null : Number(bounds[0].first);
		const last = bounds[0].last === null ? null : Number(bounds[0].last);
		const { rows: anchorRows } = first === null ? { rows: [] } : await db.query<{ prev_hash: string }>("SELECT prev_hash FROM audit_log WHERE seq = $1", [first]);
		const header = { type: "audit-export", from: from?.toISOString() ?? null, to: to?.toISOString() ?? null, first_seq: first, last_seq: last, count: first === null ? 0 : last! - first + 1, anchor: anchorRows[0]?.prev_hash ?? null };
		out.write(`${JSON.stringify(header)}\n`);
		let written = 0;
		for (let next = first ?? 1; first !== null && next <= last!; next += PAGE) {
			const { rows } = await db.query("SELECT * FROM audit_log WHERE seq >= $1 AND seq < $2 AND seq <= $3 ORDER BY seq", [next, next + PAGE, last]);
			for (const row of rows) out.write(`${JSON.stringify(normaliseEntry(row))}\n`);
			written += rows.length;
		}
		return written;
	} finally {
		await db.end();
	}
}

async function main(): Promise<void> {
	const args = process.argv.slice(2);
	const verifyFile = option(args, "verify");
	if (verifyFile) {
		const result = verifyExport(fs.readFileSync(verifyFile, "utf8").split("\n"));
		process.stdout.write(`${JSON.stringify(result)}\n`);
		process.exit(result.ok ? 0 : 2);
	}
	const from = instant(option(args, "from"), "from");
	const to = instant(option(args, "to"), "to");
	const outFile = option(args, "out");
	const out = outFile ? fs.createWriteStream(outFile) : process.stdout;
	const written = await withDatabase(loadMigrationSettings(), url => exportWindow(url, from, to, out));
	if (outFile) {
		await new Promise(resolve => (out as fs.WriteStream).end(resolve));
		process.stderr.write(`audit:export: ${written} rows → ${outFile}\n`);
	}
}

if (require.main === module) {
	main().catch(err => {
		process.stderr.write(`audit:export: ${(err as Error).message}\n`);
		process.exit(1);
	});
}
