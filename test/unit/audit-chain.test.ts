/**
 * The audit chain's encoding and check (lib/data/audit-chain.ts), which third parties re-implement from
 * docs/AUDIT.md: canonical JSON is independent of key order, the hash covers every column but itself,
 * and checkLinks names the first row whose seq, prev_hash or content does not fit.
 */
import { createHash } from "crypto";
import { canonicalJson, checkLinks, EMPTY_CHAIN, entryHash, GENESIS_HASH, type AuditEntry } from "../../lib/data/audit-chain";

function chain(n: number): AuditEntry[] {
	const out: AuditEntry[] = [];
	let prev = GENESIS_HASH;
	for (let seq = 1; seq <= n; seq++) {
		const body = {
			id: `00000000-0000-4000-8000-${String(seq).padStart(12, "0")}`,
			seq,
			event_id: `e${seq}`,
			occurred_at: "2026-12-01T00:00:00.000Z",
			recorded_at: "2026-12-01T00:00:01.000Z",
			service: "city",
			action: "room_created",
			actor: "alice",
			request_id: null,
			target: `room-${seq}`,
			outcome: "success",
			node: "node1",
			details: { b: [1, { z: true, a: "ü" }], a: seq },
			writer: "node1",
			fencing_token: 3,
			prev_hash: prev,
		};
		const entry = { ...body, hash: entryHash(body) };
		out.push(entry);
		prev = entry.hash;
	}
	return out;
}

describe("audit chain", () => {
	it("canonical JSON sorts keys at every depth and keeps array order", () => {
		expect(canonicalJson({ b: 1, a: { d: [3, { y: 1, x: 2 }], c: null } })).toBe('{"a":{"c":null,"d":[3,{"x":2,"y":1}]},"b":1}');
		expect(canonicalJson({ a: 1, b: 2 })).toBe(canonicalJson({ b: 2, a: 1 }));
	});

	it("the hash is sha256(prev_hash + canonical row without hash), as docs/AUDIT.md says", () => {
		const [first] = chain(1);
		const { hash, ...body } = first;
		expect(hash).toBe(createHash("sha256").update(GENESIS_HASH + canonicalJson(body)).digest("hex"));
		expect(entryHash({ ...first })).toBe(hash);
	});

	it("an intact chain checks out; a changed row, a removed row or a re-pointed link is named", () => {
		const rows = chain(6);
		expect(checkLinks(EMPTY_CHAIN, rows)).toEqual({ broken: null, tail: { seq: 6, hash: rows[5].hash } });

		const edited = rows.map((r, i) => (i === 2 ? { ...r, actor: "mallory" } : r));
		expect(checkLinks(EMPTY_CHAIN, edited).broken?.seq).toBe(3);

		const rehashed = rows.map((r, i) => (i === 2 ? { ...r, actor: "mallory", hash: entryHash({ ...r, actor: "mallory" }) } : r));
		expect(checkLinks(EMPTY_CHAIN, rehashed).broken?.seq).toBe(4);

		const gap = rows.filter((_, i) => i !== 3);
		expect(checkLinks(EMPTY_CHAIN, gap).broken?.seq).toBe(5);

		expect(checkLinks({ seq: 2, hash: rows[1].hash }, rows.slice(2)).broken).toBeNull();
		expect(checkLinks({ seq: 2, hash: GENESIS_HASH }, rows.slice(2)).broken?.seq).toBe(3);
	});
});
