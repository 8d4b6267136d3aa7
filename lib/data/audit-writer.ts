/**
 * Appends audit events to audit_log as one hash chain (lib/data/audit-chain.ts), exactly once each.
 *
 * Why the chain never forks and nothing is stored twice:
 *  - One writer at a time: every batch runs in one transaction that first locks this node's row of
 *    the "audit-writer" leader lease `FOR SHARE`, and only if the row still names this node with the
 *    fencing token it believes it holds and has not expired. A node that hung and woke up finds a newer
 *    token and writes nothing; a node taking the lease over must UPDATE that row and so waits until a
 *    batch in flight has committed or rolled back. A transaction-level advisory lock then serialises
 *    writers of different meshes sharing one database (one audit_log, one chain), and each batch reads
 *    the chain's tail (last seq, last hash) in a statement after that lock, so after the previous batch
 *    committed. `seq` is UNIQUE besides: a fork could not even be stored.
 *  - Exactly once: the event id (outbox id = JetStream message id) is UNIQUE in audit_log; each batch
 *    drops ids already stored — read under the same serialisation — and duplicates within itself.
 *    Delivery is at least once (JetStream redelivers what was not acked, e.g. after a SIGKILL), so the
 *    effect is once: the idempotent-consumer pattern (lib/data/outbox/idempotent-consumer.ts) with audit_log
 *    itself as the record of handled ids.
 */
import { randomUUID } from "crypto";
import { QueryTypes, type Sequelize } from "sequelize";
import { entryHash, EMPTY_CHAIN, type AuditEntry, type ChainTail } from "./audit-chain";

/** One event as it arrives from the bus: the outbox message `{id, type, ...payload}`. */
export interface IncomingAuditEvent {
	event_id: string;
	/** audit.{service}.{action} */
	type: string;
	payload: Record<string, unknown>;
}

export class FencedOutError extends Error {
	constructor(lease: string) {
		super(`audit writer no longer holds lease ${lease}`);
		this.name = "FencedOutError";
	}
}

export interface WriterIdentity {
	/** the lease row's name and the token this node believes it holds */
	lease: string;
	holder: string;
	fencingToken: () => number | null;
}

/** pg_advisory_xact_lock key of the chain: meshes (namespaces) sharing one database share one audit_log. */
const CHAIN_LOCK_KEY = 7_311_020_309;

const LOCK_LEASE_AND_CHAIN = `
SELECT l.fencing_token, pg_advisory_xact_lock($4::bigint)::text AS locked
FROM (SELECT fencing_token FROM leader_leases WHERE name = $1 AND holder = $2 AND fencing_token = $3 AND expires_at > now() FOR SHARE) l`;

/** A statement of its own, after the lock: its snapshot includes every batch committed before. */
const TAIL_AND_STORED = `
SELECT t.seq, t.hash, (SELECT coalesce(array_agg(event_id), '{}') FROM audit_log WHERE event_id = ANY($1::text[])) AS stored
FROM (SELECT 1) one LEFT JOIN LATERAL (SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1) t ON true`;

/** audit_log's columns and their types: rows go in as one array per column (one INSERT … SELECT FROM unnest). */
const COLUMN_TYPES = {
	id: "uuid",
	seq: "bigint",
	event_id: "text",
	occurred_at: "timestamptz",
	recorded_at: "timestamptz",
	service: "text",
	action: "text",
	actor: "text",
	request_id: "text",
	target: "text",
	outcome: "text",
	node: "text",
	details: "jsonb",
	writer: "text",
	fencing_token: "bigint",
	prev_hash: "text",
	hash: "text",
} as const;
const COLUMNS = Object.keys(COLUMN_TYPES) as Array<keyof typeof COLUMN_TYPES>;

/**
 * `INSERT INTO <table> (…) SELECT * FROM unnest($1::uuid[], …)` and its 17 parameters: a fixed statement
 * whatever the batch size (a multi-row VALUES list of 500 rows has 8,500 parameters to bind and plan).
 */
export function columnarInsert(table: string, entries: AuditEntry[]): { sql: string; bind: unknown[] } {
	const sql = `INSERT INTO ${table} (${COLUMNS.join(", ")}) SELECT * FROM unnest(${COLUMNS.map((c, i) => `$${i + 1}::${COLUMN_TYPES[c]}[]`).join(", ")})`;
	const bind = COLUMNS.map(c => entries.map(e => (c === "details" ? JSON.stringify(e.details) : e[c])));
	return { sql, bind };
}

const KNOWN_KEYS = new Set(["id", "type", "aggregate", "actor", "request_id", "target", "outcome", "node", "occurred_at", "details"]);

const NUL = String.fromCharCode(0);

/** PostgreSQL refuses NUL in text and jsonb: one such event would block the chain, so it is dropped here. */
const text = (v: unknown, max: number): string | null => (typeof v === "string" && v.length ? v.replaceAll(NUL, "").slice(0, max) : null);

function jsonSafe(value: Record<string, unknown>): Record<string, unknown> {
	return JSON.parse(JSON.stringify(value, (_key, v: unknown) => (typeof v === "string" ? v.replaceAll(NUL, "") : v))) as Record<string, unknown>;
}

/** audit.{service}.{action} → parts; null for anything else. */
export function parseAuditType(type: string): { service: string; action: string } | null {
	const match = /^audit\.([a-z][a-z0-9_-]*)\.([a-z][a-z0-9_.-]*)$/.exec(type);
	return match ? { service: match[1], action: match[2] } : null;
}

/** The row fields an event carries; tolerant of older payloads (unknown keys go to details). */
function eventFields(event: IncomingAuditEvent): Omit<AuditEntry, "id" | "seq" | "recorded_at" | "writer" | "fencing_token" | "prev_hash" | "hash"> | null {
	const kind = parseAuditType(event.type);
	if (!kind) return null;
	const p = event.payload;
	const occurred = typeof p.occurred_at === "string" && !Number.isNaN(Date.parse(p.occurred_at)) ? new Date(p.occurred_at) : new Date();
	const extra = Object.fromEntries(Object.entries(p).filter(([k]) => !KNOWN_KEYS.has(k)));
	const details = p.details && typeof p.details === "object" && !Array.isArray(p.details) ? { ...extra, ...(p.details as Record<string, unknown>) } : extra;
	return {
		event_id: event.event_id,
		occurred_at: occurred.toISOString(),
		service: kind.service,
		action: kind.action,
		actor: text(p.actor, 200) ?? "unknown",
		request_id: text(p.request_id, 200),
		target: text(p.target, 300),
		outcome: text(p.outcome, 40) ?? "success",
		node: text(p.node, 200) ?? "unknown",
		details: jsonSafe(details),
	};
}

export interface AppendResult {
	appended: AuditEntry[];
	duplicates: number;
	/** events that are not audit.{service}.{action}: never stored, acked so they do not come back */
	rejected: string[];
	tail: ChainTail;
}

export class AuditWriter {
	constructor(
		private readonly sequelize: Sequelize,
		private readonly identity: WriterIdentity,
	) {}

	async append(events: IncomingAuditEvent[]): Promise<AppendResult> {
		const token = this.identity.fencingToken();
		if (token === null) throw new FencedOutError(this.identity.lease);
		return this.sequelize.transaction(async t => {
			const [locked] = await this.sequelize.query<{ fencing_token: string }>(LOCK_LEASE_AND_CHAIN, {
				bind: [this.identity.lease, this.identity.holder, token, CHAIN_LOCK_KEY],
				type: QueryTypes.SELECT,
				transaction: t,
			});
			if (!locked) throw new FencedOutError(this.identity.lease);
			const ids = [...new Set(events.map(e => e.event_id))];
			const [chain] = await this.sequelize.query<{ seq: string | null; hash: string | null; stored: string[] }>(TAIL_AND_STORED, {
				bind: [ids],
				type: QueryTypes.SELECT,
				transaction: t,
			});
			let tail: ChainTail = chain.seq === null ? EMPTY_CHAIN : { seq: Number(chain.seq), hash: chain.hash as string };
			const seen = new Set(chain.stored);
			const recordedAt = new Date().toISOString();
			const appended: AuditEntry[] = [];
			const rejected: string[] = [];
			let duplicates = 0;
			for (const event of events) {
				if (seen.has(event.event_id)) {
					duplicates++;
					continue;
				}
				seen.add(event.event_id);
				const fields = eventFields(event);
				if (!fields) {
					rejected.push(event.event_id);
					continue;
				}
				const body = { id: randomUUID(), seq: tail.seq + 1, ...fields, recorded_at: recordedAt, writer: this.identity.holder, fencing_token: token, prev_hash: tail.hash };
				const entry: AuditEntry = { ...body, hash: entryHash(body) };
				appended.push(entry);
				tail = { seq: entry.seq, hash: entry.hash };
			}
			if (appended.length) await this.insert(appended, t);
			return { appended, duplicates, rejected, tail };
		});
	}

	private async insert(entries: AuditEntry[], t: import("sequelize").Transaction): Promise<void> {
		const { sql, bind } = columnarInsert("audit_log", entries);
		await this.sequelize.query(sql, { bind, transaction: t });
	}
}
