/**
 * The audit hash chain: how one audit_log row is encoded and hashed, and how a run of rows is checked.
 * Kept free of any database or Moleculer code so that a third party can verify an export with this
 * file alone (docs/AUDIT.md gives the same procedure in a few lines of any language).
 *
 *   canonical(row) = JSON with object keys sorted (recursively), no whitespace, of every column but `hash`,
 *                    timestamps as ISO-8601 UTC strings with milliseconds
 *   hash(row)      = hex(sha256(prev_hash + canonical(row)))
 *   first row:       prev_hash = 64 zeros, seq = 1; every next row: seq = previous seq + 1,
 *                    prev_hash = previous hash
 */
import { createHash } from "crypto";

export const GENESIS_HASH = "0".repeat(64);

export interface AuditEntry {
	id: string;
	seq: number;
	event_id: string;
	occurred_at: string;
	recorded_at: string;
	service: string;
	action: string;
	actor: string;
	request_id: string | null;
	target: string | null;
	outcome: string;
	node: string;
	details: Record<string, unknown>;
	writer: string;
	fencing_token: number;
	prev_hash: string;
	hash: string;
}

/** JSON with sorted keys at every depth; arrays keep their order. */
export function canonicalJson(value: unknown): string {
	if (value === null || typeof value !== "object") return JSON.stringify(value ?? null);
	if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
	const obj = value as Record<string, unknown>;
	const keys = Object.keys(obj)
		.filter(k => obj[k] !== undefined)
		.sort();
	return `{${keys.map(k => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`).join(",")}}`;
}

export function entryHash(entry: Omit<AuditEntry, "hash">): string {
	const body: Record<string, unknown> = { ...entry };
	delete body.hash;
	return createHash("sha256").update(entry.prev_hash).update(canonicalJson(body)).digest("hex");
}

/** A row as PostgreSQL hands it back (bigint as string, timestamps as Date) → the hashed form. */
export function normaliseEntry(row: Record<string, unknown>): AuditEntry {
	const iso = (v: unknown) => (v instanceof Date ? v.toISOString() : new Date(String(v)).toISOString());
	return {
		id: String(row.id),
		seq: Number(row.seq),
		event_id: String(row.event_id),
		occurred_at: iso(row.occurred_at),
		recorded_at: iso(row.recorded_at),
		service: String(row.service),
		action: String(row.action),
		actor: String(row.actor),
		request_id: (row.request_id as string | null) ?? null,
		target: (row.target as string | null) ?? null,
		outcome: String(row.outcome),
		node: String(row.node),
		details: (row.details as Record<string, unknown>) ?? {},
		writer: String(row.writer),
		fencing_token: Number(row.fencing_token),
		prev_hash: String(row.prev_hash),
		hash: String(row.hash),
	};
}

export interface ChainTail {
	seq: number;
	hash: string;
}

export const EMPTY_CHAIN: ChainTail = { seq: 0, hash: GENESIS_HASH };

/**
 * Checks `entries` (in seq order) as the continuation of `tail`; returns the first entry that does not
 * link (wrong seq, wrong prev_hash, or a hash that does not match its content), or the new tail.
 */
export function checkLinks(tail: ChainTail, entries: AuditEntry[]): { broken: AuditEntry | null; tail: ChainTail } {
	let current = tail;
	for (const entry of entries) {
		if (entry.seq !== current.seq + 1 || entry.prev_hash !== current.hash || entryHash(entry) !== entry.hash) return { broken: entry, tail: current };
		current = { seq: entry.seq, hash: entry.hash };
	}
	return { broken: null, tail: current };
}
