/**
 * The memory service through a gateway on another node (real NATS, real PostgreSQL in a database of
 * its own): CRUD, access by scope, every bad-input case, idempotent create under concurrent retries,
 * the privacy rule for search, confidential content sealed at rest and absent from logs and events,
 * and every write's events on JetStream.
 */
import { connect, type NatsConnection } from "nats";
import { signToken } from "../../lib/http/auth";
import { getJson, startNodeProcess, stopAll, uniqueNamespace, waitForMesh, type NodeProcess } from "../helpers/cluster";
import { dropFreshDatabases, freshDatabase, isolatedMeshEnv, query, streamFor, subjectPrefixFor } from "../helpers/databases";
import { describeWithNatsAndPostgres, LOCAL_NATS_URL } from "../helpers/requirements";

const JWT_SECRET = "integration-secret-0123456789abcdef";
const token = (id: string, roles: string[] = [], teams: string[] = []) => signToken(JWT_SECRET, { id, roles, teams });
const SECRET_TEXT = "the-launch-code-is-0000-and-must-never-leak";

describeWithNatsAndPostgres("memory service across the mesh", () => {
	const namespace = uniqueNamespace("memory");
	const prefix = subjectPrefixFor(namespace);
	const stream = streamFor(namespace);
	let databaseUrl: string;
	let gateway: NodeProcess;
	let actors: NodeProcess;
	let nc: NatsConnection;

	beforeAll(async () => {
		databaseUrl = await freshDatabase("memtest");
		const env = {
			...isolatedMeshEnv(namespace, databaseUrl, JWT_SECRET),
			MEMORY_ENCRYPTION_KEY: Buffer.alloc(32, 3).toString("base64"),
			MEMORY_ENCRYPTION_KEY_ID: "test-k1",
			LOG_LEVEL: "debug",
		};
		[gateway, actors] = await Promise.all([startNodeProcess({ ...env, SERVICES: "api" }), startNodeProcess({ ...env, SERVICES: "memory,outbox" })]);
		await waitForMesh(gateway, ["memory"], 2, 40_000, "/api/memory/memories");
		nc = await connect({ servers: new URL(LOCAL_NATS_URL).host });
	});
	afterAll(async () => {
		await stopAll([gateway, actors]);
		if (nc) {
			await (await nc.jetstreamManager()).streams.delete(stream).catch(() => undefined);
			await nc.close();
		}
		await dropFreshDatabases();
	});

	const call = (method: string, path: string, who: string, body?: unknown, headers: Record<string, string> = {}) =>
		getJson(`${gateway.url}/api/memory${path}`, {
			method,
			headers: { authorization: `Bearer ${who}`, "content-type": "application/json", ...headers },
			body: body === undefined ? undefined : JSON.stringify(body),
		});
	const u1 = token("u1", [], ["t1"]);
	const u2 = token("u2");
	const admin = token("op", ["admin"]);
	const memory = (extra: Record<string, unknown> = {}) => ({ scope: "personal", owner_id: "u1", kind: "fact", key: "favourite colour", content: "green", ...extra });

	it("creates, reads, updates with optimistic concurrency, and deletes", async () => {
		const created = await call("POST", "/memories", u1, memory({ metadata: { source: "chat" } }));
		expect(created.status).toBe(200);
		expect(created.body).toMatchObject({ scope: "personal", owner_id: "u1", content: "green", version: 1, metadata: { source: "chat" } });
		const id = created.body.id;

		expect((await call("GET", `/memories/${id}`, u1)).body).toMatchObject({ id, content: "green" });
		const updated = await call("PATCH", `/memories/${id}`, u1, { version: 1, content: "blue" });
		expect(updated.status).toBe(200);
		expect(updated.body).toMatchObject({ content: "blue", version: 2 });

		const stale = await call("PATCH", `/memories/${id}`, u1, { version: 1, content: "red" });
		expect(stale.status).toBe(409);
		expect(stale.body).toMatchObject({ type: "VERSION_CONFLICT", data: { field: "version", current: 2 } });

		expect((await call("DELETE", `/memories/${id}`, u1)).status).toBe(200);
		const gone = await call("GET", `/memories/${id}`, u1);
		expect(gone.status).toBe(404);
		expect(gone.body.type).toBe("NOT_FOUND");
	});

	it("enforces scopes: personal for the owner, team for members, public for everyone to read", async () => {
		const personal = (await call("POST", "/memories", u1, memory())).body;
		const team = (await call("POST", "/memories", u1, memory({ scope: "team", owner_id: "t1" }))).body;
		const open = (await call("POST", "/memories", u1, memory({ scope: "public" }))).body;

		expect((await call("GET", `/memories/${personal.id}`, u2)).status).toBe(403);
		expect((await call("GET", `/memories/${personal.id}`, admin)).status).toBe(200);
		expect((await call("GET", `/memories/${team.id}`, u2)).status).toBe(403);
		expect((await call("GET", `/memories/${team.id}`, token("u3", [], ["t1"]))).status).toBe(200);
		expect((await call("GET", `/memories/${open.id}`, u2)).status).toBe(200);
		expect((await call("PATCH", `/memories/${open.id}`, u2, { version: 1, content: "vandal" })).status).toBe(403);
		expect((await call("DELETE", `/memories/${team.id}`, u2)).status).toBe(403);
		expect((await call("POST", "/memories", u2, memory())).status).toBe(403); // personal memory for u1, by u2
		expect((await call("POST", "/memories", u2, memory({ scope: "team", owner_id: "t1" }))).status).toBe(403);

		const listed = await call("GET", "/memories?limit=100", u2);
		const ids = listed.body.rows.map((r: { id: string }) => r.id);
		expect(ids).toContain(open.id);
		expect(ids).not.toContain(personal.id);
		expect(ids).not.toContain(team.id);
	});

	it("answers bad input with a JSON error naming the field: 422, 413, 404, 401", async () => {
		const missing = await call("POST", "/memories", u1, { owner_id: "u1", kind: "fact", key: "k", content: "c" });
		expect(missing.status).toBe(422);
		expect(missing.body.data.map((d: { field: string }) => d.field)).toContain("scope");
		expect((await call("POST", "/memories", u1, memory({ kind: "rumour" }))).body.data[0].field).toBe("kind");
		expect((await call("GET", "/memories/not-a-uuid", u1)).body.data[0].field).toBe("id");
		expect((await call("PATCH", `/memories/00000000-0000-4000-8000-000000000000`, u1, { content: "x" })).body.data[0].field).toBe("version");
		const big = await call("POST", "/memories", u1, memory({ content: "x".repeat(64 * 1024 + 1) }));
		expect(big.status).toBe(413);
		expect(big.body).toMatchObject({ type: "CONTENT_TOO_LARGE", data: { field: "content" } });
		expect((await call("GET", "/memories/00000000-0000-4000-8000-000000000000", u1)).status).toBe(404);
		const search = await call("GET", "/memories?scope=personal&q=green", u1);
		expect(search.status).toBe(422);
		expect(search.body.data[0].field).toBe("q");
		expect((await call("GET", "/memories?limit=1000", u1)).body.data[0].field).toBe("limit");
		expect((await getJson(`${gateway.url}/api/memory/memories`)).status).toBe(401);
	});

	it("searches only public, indexed, non-confidential memories, with pagination and a total", async () => {
		const word = `zebra${Date.now()}`;
		const indexed = (await call("POST", "/memories", u1, memory({ scope: "public", indexed: true, content: `a ${word} story` }))).body;
		await call("POST", "/memories", u1, memory({ scope: "public", indexed: false, content: `an unindexed ${word}` }));
		await call("POST", "/memories", u1, memory({ scope: "personal", indexed: true, content: `a private ${word}` }));
		const found = await call("GET", `/memories?q=${word}`, u1);
		expect(found.body.total).toBe(1);
		expect(found.body.rows.map((r: { id: string }) => r.id)).toEqual([indexed.id]);

		for (let i = 0; i < 3; i++) await call("POST", "/memories", u2, memory({ owner_id: "u2", key: `page-${i}` }));
		const page = await call("GET", "/memories?owner_id=u2&limit=2&offset=1", u2);
		expect(page.body).toMatchObject({ total: 3, limit: 2, offset: 1 });
		expect(page.body.rows).toHaveLength(2);
	});

	it("an Idempotency-Key makes concurrent retries of one create produce one memory", async () => {
		const key = `idem-${namespace}`;
		const answers = await Promise.all(Array.from({ length: 6 }, () => call("POST", "/memories", u1, memory({ key }), { "Idempotency-Key": key })));
		expect(answers.map(a => a.status)).toEqual(Array(6).fill(200));
		expect(new Set(answers.map(a => a.body.id)).size).toBe(1);
		expect(await query(databaseUrl, "SELECT id FROM memories WHERE key = $1", [key])).toHaveLength(1);
		// The claim, the memory and its events are one statement: the retries wrote no events either.
		expect(await query(databaseUrl, "SELECT id FROM outbox WHERE aggregate_id = $1", [answers[0].body.id])).toHaveLength(2);
		expect(answers.filter(a => a.headers.get("idempotent-replayed") === "true")).toHaveLength(5);

		const reused = await call("POST", "/memories", u1, memory({ key, content: "another body" }), { "Idempotency-Key": key });
		expect(reused.status).toBe(422);
		expect(reused.body).toMatchObject({ type: "IDEMPOTENCY_KEY_REUSED", data: [{ field: "Idempotency-Key" }] });
		expect(await query(databaseUrl, "SELECT id FROM memories WHERE key = $1", [key])).toHaveLength(1);
	});

	it("seals confidential content: readable by its owner, never in the table, the logs or the events", async () => {
		const created = await call("POST", "/memories", u1, memory({ key: "launch", content: SECRET_TEXT, confidential: true }));
		expect(created.status).toBe(200);
		expect((await call("GET", `/memories/${created.body.id}`, u1)).body.content).toBe(SECRET_TEXT);

		const [row] = await query<{ content: string | null; sealed: string; key_id: string }>(
			databaseUrl,
			"SELECT content, encode(content_sealed, 'escape') AS sealed, key_id FROM memories WHERE id = $1",
			[created.body.id],
		);
		expect(row.content).toBeNull();
		expect(row.key_id).toBe("test-k1");
		expect(row.sealed).not.toContain("launch-code");

		// Its events reach JetStream, with the outbox id as message id, and carry no content.
		const jsm = await nc.jetstreamManager();
		let messages: string[] = [];
		for (let i = 0; i < 50 && !messages.some(m => m.includes(created.body.id)); i++) {
			await new Promise(r => setTimeout(r, 100));
			const info = await jsm.streams.info(stream).catch(() => null);
			messages = [];
			for (let seq = 1; info && seq <= info.state.last_seq; seq++) {
				const msg = await jsm.streams.getMessage(stream, { seq }).catch(() => null);
				if (msg) messages.push(`${msg.subject} ${msg.header?.get("Nats-Msg-Id") ?? ""} ${new TextDecoder().decode(msg.data)}`);
			}
		}
		const ours = messages.filter(m => m.includes(created.body.id));
		expect(ours.map(m => m.split(" ")[0]).sort()).toEqual([`${prefix}.audit.memory.created`, `${prefix}.memory.created.personal`]);
		const outboxIds = (await query<{ id: string }>(databaseUrl, "SELECT id FROM outbox WHERE aggregate_id = $1", [created.body.id])).map(r => r.id);
		for (const m of ours) expect(outboxIds).toContain(m.split(" ")[1]);
		expect(messages.join("\n")).not.toContain("launch-code");
		expect([...gateway.logs, ...actors.logs].join("\n")).not.toContain("launch-code");
	});
});
