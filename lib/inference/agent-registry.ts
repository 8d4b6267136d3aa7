/**
 * The agent registry and routing rules: one versioned YAML file (ROUTER_AGENTS_FILE, default
 * config/agents.yml). Parsed and checked as a whole; any problem is reported with its line
 * ("config/agents.yml line 12: agents[1].model is required") and the file is refused, so the
 * router keeps the version it had. The smallest valid file is `version:` plus
 * `agents: [{id, model}]`; without `rules:` the seed's two auto-routing rules apply.
 */
import fs from "fs";
import { isMap, isSeq, LineCounter, parseDocument, type Document } from "yaml";
import { TOOL_CATALOGUE } from "./tools";

export const MODES = ["public", "team", "confidential"] as const;
export type Mode = (typeof MODES)[number];

export interface AgentSpec {
	id: string;
	model: string;
	backup: string | null;
	tools: string[];
	system_prompt: string;
	description: string;
}

export type RuleAction = "fallback_to_backup_agent" | "route_to_cloud_llm" | "refuse" | { use_model: string };

export interface RuleSpec {
	id: string;
	priority: number;
	when: {
		agent?: string[];
		mode?: Mode[];
		/** the agent's error rate in the sliding window is above this */
		error_rate_above?: number;
		/** fewest runs in the window before the error rate counts */
		min_requests?: number;
		/** the least loaded node serving the model is above this (0..1; GPU or queue) */
		load_above?: number;
		/** no node serves the agent's model */
		model_unavailable?: boolean;
	};
	then: RuleAction;
	/** route_to_cloud_llm: the remote model to use */
	cloud_model?: string;
	description?: string;
}

export interface AgentRegistry {
	version: string;
	agents: Map<string, AgentSpec>;
	rules: RuleSpec[];
	/** true when the file had no `rules:` and the seed's defaults apply */
	defaultRules: boolean;
	file: string;
	loadedAt: string;
}

/** The seed's auto-routing rules (SEEDS_DIGEST §6), used when the file has none. */
export const DEFAULT_RULES: RuleSpec[] = [
	{ id: "backup-on-errors", priority: 10, when: { error_rate_above: 0.1, min_requests: 5 }, then: "fallback_to_backup_agent", description: "agent_error_rate > 0.1 → fallback_to_backup_agent" },
	{ id: "offload-when-busy", priority: 20, when: { load_above: 0.8 }, then: "route_to_cloud_llm", description: "node_gpu_utilization > 0.8 → another node, else route_to_cloud_llm" },
];

export class RegistryError extends Error {
	constructor(
		readonly file: string,
		readonly line: number | null,
		readonly problem: string,
	) {
		super(`${file}${line ? ` line ${line}` : ""}: ${problem}`);
		this.name = "RegistryError";
	}
}

const AGENT_ID = /^[a-z0-9][a-z0-9_-]{0,63}$/i;
const WHEN_KEYS = new Set(["agent", "mode", "error_rate_above", "min_requests", "load_above", "model_unavailable"]);

class Checker {
	constructor(
		private readonly doc: Document,
		private readonly lines: LineCounter,
		private readonly file: string,
	) {}

	/** Fails naming the line of the node at `path` (or of its nearest parent that exists). */
	fail(path: Array<string | number>, problem: string): never {
		for (let n = path.length; n >= 0; n--) {
			const node = this.doc.getIn(path.slice(0, n), true) as { range?: [number, number, number] } | undefined;
			if (node?.range) throw new RegistryError(this.file, this.lines.linePos(node.range[0]).line, problem);
		}
		throw new RegistryError(this.file, null, problem);
	}
}

const label = (path: Array<string | number>) => path.map((p, i) => (typeof p === "number" ? `[${p}]` : i ? `.${p}` : p)).join("");

function text(check: Checker, value: unknown, path: Array<string | number>, required: boolean): string | undefined {
	if (value === undefined || value === null) {
		if (required) check.fail(path, `${label(path)} is required`);
		return undefined;
	}
	if (typeof value !== "string" && typeof value !== "number") check.fail(path, `${label(path)} must be a string`);
	const s = String(value).trim();
	if (required && !s) check.fail(path, `${label(path)} must not be empty`);
	return s;
}

function list(check: Checker, value: unknown, path: Array<string | number>): string[] | undefined {
	if (value === undefined || value === null) return undefined;
	const items = Array.isArray(value) ? value : [value];
	return items.map((v, i) => text(check, v, Array.isArray(value) ? [...path, i] : path, true) as string);
}

function fraction(check: Checker, value: unknown, path: Array<string | number>): number | undefined {
	if (value === undefined) return undefined;
	if (typeof value !== "number" || value < 0 || value > 1) check.fail(path, `${label(path)} must be a number from 0 to 1`);
	return value;
}

function parseAgent(check: Checker, raw: unknown, i: number): AgentSpec {
	const path = ["agents", i];
	if (!raw || typeof raw !== "object" || Array.isArray(raw)) check.fail(path, `agents[${i}] must be a mapping with id and model`);
	const a = raw as Record<string, unknown>;
	const id = text(check, a.id, [...path, "id"], true) as string;
	if (!AGENT_ID.test(id)) check.fail([...path, "id"], `agents[${i}].id "${id}": letters, digits, _ and - only (it is part of event subjects)`);
	const tools = list(check, a.tools, [...path, "tools"]) ?? [];
	tools.forEach((tool, t) => {
		if (!TOOL_CATALOGUE[tool]) check.fail([...path, "tools", t], `agents[${i}].tools: unknown tool "${tool}" (known: ${Object.keys(TOOL_CATALOGUE).join(", ")})`);
	});
	return {
		id,
		model: text(check, a.model, [...path, "model"], true) as string,
		backup: text(check, a.backup, [...path, "backup"], false) || null,
		tools,
		system_prompt: text(check, a.system_prompt, [...path, "system_prompt"], false) ?? "",
		description: text(check, a.description, [...path, "description"], false) ?? "",
	};
}

function parseAction(check: Checker, value: unknown, path: Array<string | number>): RuleAction {
	if (value === "fallback_to_backup_agent" || value === "route_to_cloud_llm" || value === "refuse") return value;
	if (value && typeof value === "object" && typeof (value as { use_model?: unknown }).use_model === "string") return { use_model: (value as { use_model: string }).use_model };
	return check.fail(path, `${label(path)} must be fallback_to_backup_agent, route_to_cloud_llm, refuse or {use_model: <model>}`);
}

function parseRule(check: Checker, raw: unknown, i: number): RuleSpec {
	const path = ["rules", i];
	if (!raw || typeof raw !== "object" || Array.isArray(raw)) check.fail(path, `rules[${i}] must be a mapping with id, when and then`);
	const r = raw as Record<string, unknown>;
	const when = (r.when ?? {}) as Record<string, unknown>;
	if (typeof when !== "object" || Array.isArray(when)) check.fail([...path, "when"], `rules[${i}].when must be a mapping`);
	for (const key of Object.keys(when)) if (!WHEN_KEYS.has(key)) check.fail([...path, "when", key], `rules[${i}].when: unknown condition "${key}" (known: ${[...WHEN_KEYS].join(", ")})`);
	const modes = list(check, when.mode, [...path, "when", "mode"]);
	modes?.forEach(m => {
		if (!(MODES as readonly string[]).includes(m)) check.fail([...path, "when", "mode"], `rules[${i}].when.mode: "${m}" is not one of ${MODES.join(", ")}`);
	});
	if (r.priority !== undefined && (typeof r.priority !== "number" || !Number.isFinite(r.priority))) check.fail([...path, "priority"], `rules[${i}].priority must be a number`);
	const rule: RuleSpec = {
		id: text(check, r.id, [...path, "id"], true) as string,
		priority: (r.priority as number | undefined) ?? 100,
		when: {
			agent: list(check, when.agent, [...path, "when", "agent"]),
			mode: modes as Mode[] | undefined,
			error_rate_above: fraction(check, when.error_rate_above, [...path, "when", "error_rate_above"]),
			min_requests: when.min_requests === undefined ? undefined : Number(when.min_requests),
			load_above: fraction(check, when.load_above, [...path, "when", "load_above"]),
			model_unavailable: when.model_unavailable === undefined ? undefined : when.model_unavailable === true,
		},
		then: parseAction(check, r.then, [...path, "then"]),
		cloud_model: text(check, r.cloud_model, [...path, "cloud_model"], false),
		description: text(check, r.description, [...path, "description"], false),
	};
	if (rule.when.min_requests !== undefined && !(Number.isInteger(rule.when.min_requests) && rule.when.min_requests >= 1)) {
		check.fail([...path, "when", "min_requests"], `rules[${i}].when.min_requests must be a whole number >= 1`);
	}
	if (rule.then === "fallback_to_backup_agent" && rule.when.error_rate_above === undefined && !rule.when.model_unavailable) {
		check.fail([...path, "then"], `rules[${i}]: fallback_to_backup_agent needs when.error_rate_above or when.model_unavailable`);
	}
	if (rule.then === "route_to_cloud_llm" && rule.when.load_above === undefined) check.fail([...path, "then"], `rules[${i}]: route_to_cloud_llm needs when.load_above`);
	return rule;
}

/** Parses and checks a registry; throws RegistryError naming the line of the first problem. */
export function parseRegistry(source: string, file: string): AgentRegistry {
	const lines = new LineCounter();
	const doc = parseDocument(source, { lineCounter: lines, prettyErrors: true, uniqueKeys: true });
	if (doc.errors.length) {
		const err = doc.errors[0];
		throw new RegistryError(file, err.linePos?.[0]?.line ?? null, err.message.split("\n")[0].replace(/ at line \d+, column \d+:?$/, ""));
	}
	const check = new Checker(doc, lines, file);
	if (!isMap(doc.contents)) check.fail([], "the file must be a mapping with version and agents");
	const root = doc.toJS() as Record<string, unknown>;
	const version = text(check, root.version, ["version"], true) as string;
	if (!isSeq(doc.get("agents", true)) || !(root.agents as unknown[]).length) check.fail(["agents"], "agents must be a non-empty list of {id, model}");
	const agents = new Map<string, AgentSpec>();
	(root.agents as unknown[]).forEach((raw, i) => {
		const agent = parseAgent(check, raw, i);
		if (agents.has(agent.id)) check.fail(["agents", i, "id"], `agents[${i}].id "${agent.id}" is listed twice`);
		agents.set(agent.id, agent);
	});
	[...agents.values()].forEach((agent, i) => {
		if (agent.backup && !agents.has(agent.backup)) check.fail(["agents", i, "backup"], `agents[${i}].backup "${agent.backup}" is no agent in this file`);
		if (agent.backup === agent.id) check.fail(["agents", i, "backup"], `agents[${i}].backup: an agent cannot be its own backup`);
	});
	const hasRules = root.rules !== undefined && root.rules !== null;
	if (hasRules && !isSeq(doc.get("rules", true))) check.fail(["rules"], "rules must be a list");
	const rules = hasRules ? (root.rules as unknown[]).map((raw, i) => parseRule(check, raw, i)) : DEFAULT_RULES;
	const ids = new Set<string>();
	rules.forEach((rule, i) => {
		if (ids.has(rule.id)) check.fail(["rules", i, "id"], `rules[${i}].id "${rule.id}" is listed twice`);
		ids.add(rule.id);
		rule.when.agent?.forEach(a => {
			if (!agents.has(a)) check.fail(["rules", i, "when", "agent"], `rules[${i}].when.agent "${a}" is no agent in this file`);
		});
	});
	return {
		version,
		agents,
		// Stable order: priority ascending, then file order (sort is stable).
		rules: [...rules].sort((a, b) => a.priority - b.priority),
		defaultRules: !hasRules,
		file,
		loadedAt: new Date().toISOString(),
	};
}

export function loadRegistryFile(file: string): AgentRegistry {
	let source: string;
	try {
		source = fs.readFileSync(file, "utf8");
	} catch (err) {
		throw new RegistryError(file, null, `cannot read the file (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
	}
	return parseRegistry(source, file);
}

/** What GET /api/router/agents shows: no system prompts beyond their length (they may be long or private). */
export function agentsView(registry: AgentRegistry) {
	return {
		version: registry.version,
		agents: [...registry.agents.values()].map(a => ({ id: a.id, model: a.model, backup: a.backup, tools: a.tools, description: a.description, has_system_prompt: !!a.system_prompt })),
	};
}
