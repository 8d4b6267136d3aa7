/**
 * Bad input, generated from the schemas the running mesh announces: every REST action's every
 * field gets every class of bad value through HTTP — NUL, lone surrogates, null, numbers beyond the
 * exact integer range, nesting thousands of levels deep — and must answer a 4xx JSON error naming
 * that field, never a 500, and write nothing. The cases are derived, not hand-picked: an action or a
 * field added later is covered without touching this file.
 */
import { randomUUID } from "crypto";
import { signToken } from "../../lib/http/auth";
import { getJson, startNodeProcess, stopAll, uniqueNamespace, waitForMesh, type NodeProcess } from "../helpers/cluster";
import { readCatalogue, type CatalogueAction } from "../helpers/catalogue";
import { dropFreshDatabases, freshDatabase, isolatedMeshEnv, query } from "../helpers/databases";
import { describeWithNatsAndPostgres } from "../helpers/requirements";

const JWT_SECRET = "bad-input-secret-0123456789abcdefghij";
const SERVICES = ["audit", "city", "memory", "mesh", "node-registry", "outbox", "presence"];
const TABLES = ["memories", "outbox", "idempotency_keys", "city_rooms", "city_room_members", "city_messages", "presence_devices"];

type Rule = { type?: string; values?: unknown[]; min?: number; max?: number; optional?: boolean; default?: unknown } | string;
/** `numeric`: bad only where a number is expected (as text, "1e30" is a fine string). */
type BadClass = { name: string; value: unknown; inUrl?: string; numeric?: boolean };

/** Written into the JSON text directly: JSON.stringify itself overflows the stack at this depth. */
const DEEP_MARKER = "\u0001deep\u0001";
const DEEP_JSON = '{"a":'.repeat(5_000) + '"leaf"' + "}".repeat(5_000);

/** Every class of bad value; `inUrl` is its form in a path or query string (absent: not expressible there). */
const BAD: BadClass[] = [
	{ name: "a NUL byte", value: "a\u0000b", inUrl: "a%00b" },
	{ name: "a lone surrogate", value: "a\ud800b" },
	{ name: "null", value: null },
	{ name: "a number beyond bigint", value: 1e30, inUrl: "1e30", numeric: true },
	{ name: "a huge integer string", value: "99999999999999999999999", inUrl: "99999999999999999999999", numeric: true },
	{ name: "5000 levels of nesting", value: DEEP_MARKER },
];

function ruleOf(rule: Rule): Exclude<Rule, string> {
	return typeof rule === "string" ? { type: rule.split("|")[0] } : rule;
}

/** A value the rule accepts, so that only the field under test is wrong. */
function validValue(rule: Rule): unknown {
	const r = ruleOf(rule);
	switch (r.type) {
		case "enum":
			return r.values?.[0];
		case "uuid":
			return randomUUID();
		case "number":
			return Math.max(r.min ?? 1, 1);
		case "boolean":
			return true;
		case "object":
			return {};
		case "array":
			return [];
		case "email":
			return "a@example.org";
		default:
			return "x1".padEnd(Math.max(r.min ?? 1, 2), "x");
	}
}

interface Case {
	action: string;
	field: string;
	bad: string;
	method: string;
	url: string;
	body?: string;
}

/** One request per (action, field, bad class) that can be expressed for that field. */
function casesFor(action: CatalogueAction): Case[] {
	if (typeof action.rest !== "string" || !action.params) return [];
	const [method, path] = action.rest.split(" ");
	const service = action.name.slice(0, action.name.lastIndexOf("."));
	const fields = Object.entries(action.params as Record<string, Rule>).filter(([name]) => !name.startsWith("$$"));
	const pathParams = [...path.matchAll(/:(\w+)/g)].map(m => m[1]);
	const inBody = !["GET", "DELETE", "HEAD"].includes(method);
	const baseline = Object.fromEntries(fields.filter(([, rule]) => !ruleOf(rule).optional).map(([name, rule]) => [name, validValue(rule)]));
	const cases: Case[] = [];
	for (const [field, rule] of fields) {
		for (const bad of BAD) {
			const isPath = pathParams.includes(field);
			if ((isPath || !inBody) && bad.inUrl === undefined) continue;
			if (bad.numeric && ruleOf(rule).type !== "number") continue;
			const values: Record<string, unknown> = { ...baseline };
			if (!isPath && inBody) values[field] = bad.value;
			const urlPath = path.replace(/:(\w+)/g, (_, name: string) => (name === field ? bad.inUrl! : encodeURIComponent(String(values[name] ?? validValue((action.params as Record<string, Rule>)[name])))));
			const rest = Object.entries(values).filter(([name]) => !pathParams.includes(name));
			let url = `/api/${service}${urlPath}`;
			let body: string | undefined;
			if (inBody) body = JSON.stringify(Object.fromEntries(rest)).replace(JSON.stringify(DEEP_MARKER), DEEP_JSON);
			else {
				const query = rest.filter(([name]) => name !== field).map(([name, value]) => `${name}=${encodeURIComponent(String(value))}`);
				if (!isPath) query.push(`${field}=${bad.inUrl}`);
				if (query.length) url += `?${query.join("&")}`;
			}
			cases.push({ action: action.name, field, bad: bad.name, method, url, body });
		}
	}
	return cases;
}

describeWithNatsAndPostgres("bad input to every action, generated from the mesh's schemas", () => {
	const namespace = uniqueNamespace("badinput");
	let databaseUrl: string;
	let gateway: NodeProcess;
	let actors: NodeProcess;
	let catalogue: CatalogueAction[];
	const admin = signToken(JWT_SECRET, { id: "op", roles: ["admin", "service"], teams: ["t1"] });

	beforeAll(async () => {
		databaseUrl = await freshDatabase("badinput");
		const env = { ...isolatedMeshEnv(namespace, databaseUrl, JWT_SECRET), WS_PUBLIC_READ: "false" };
		[gateway, actors] = await Promise.all([startNodeProcess({ ...env, SERVICES: "api" }), startNodeProcess({ ...env, SERVICES: SERVICES.join(",") })]);
		await waitForMesh(gateway, SERVICES, 2, 60_000, "/api/memory/memories");
		catalogue = await readCatalogue(namespace, SERVICES);
	});
	afterAll(async () => {
		await stopAll([gateway, actors]);
		await dropFreshDatabases();
	});

	// The outbox also takes the mesh's own audit trail — a node's start-up (config_loaded), the registry
	// seeing nodes join and heartbeat — whenever it happens, unrelated to requests: only rows a request
	// could have caused count (a domain event, or any other audit record).
	const MESH_LIFECYCLE = "event_type NOT LIKE 'audit.mesh.%' AND event_type NOT LIKE 'audit.node-registry.%'";
	const countOf = (table: string) => `SELECT count(*) AS n FROM ${table}${table === "outbox" ? ` WHERE ${MESH_LIFECYCLE}` : ""}`;
	const counts = async () => Object.fromEntries(await Promise.all(TABLES.map(async t => [t, Number((await query<{ n: string }>(databaseUrl, countOf(t)))[0].n)])));

	it("answers every bad value in every field with a 4xx JSON error naming the field, and writes nothing", async () => {
		const cases = catalogue.flatMap(casesFor);
		// Every service with REST actions is covered, and each bad class reaches some field.
		expect([...new Set(cases.map(c => c.action.split(".")[0]))]).toEqual(expect.arrayContaining(["audit", "city", "memory", "mesh", "presence"]));
		expect(new Set(cases.map(c => c.bad))).toEqual(new Set(BAD.map(b => b.name)));
		expect(cases.length).toBeGreaterThan(100);

		const before = await counts();
		const wrong: string[] = [];
		for (const c of cases) {
			const res = await getJson(`${gateway.url}${c.url}`, {
				method: c.method,
				headers: { authorization: `Bearer ${admin}`, ...(c.body !== undefined ? { "content-type": "application/json" } : {}) },
				body: c.body,
			});
			const named = JSON.stringify(res.body ?? "").includes(c.field);
			if (res.status < 400 || res.status >= 500 || typeof res.body !== "object" || !named) {
				wrong.push(`${c.action} ${c.field} ← ${c.bad}: ${res.status} ${JSON.stringify(res.body).slice(0, 200)}`);
			}
		}
		process.stdout.write(`bad-input: ${cases.length} generated cases over ${new Set(cases.map(c => c.action)).size} actions\n`);
		expect(wrong).toEqual([]);
		expect(await counts()).toEqual(before);
		expect((await getJson(`${gateway.url}/health`)).status).toBe(200);
	});
});
