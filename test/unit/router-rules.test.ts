/**
 * The router's pure parts: the registry file (minimal file, defaults, every refusal naming its line),
 * the decision under driven load and error figures (placement, local-first tie, offload to a cloud
 * model, never for confidential runs, error rate → backup agent), the privacy gate's context, and
 * the error window sliding.
 */
import fs from "fs";
import path from "path";
import { DEFAULT_RULES, parseRegistry, RegistryError, type AgentRegistry } from "../../lib/inference/agent-registry";
import { CapacityBoard, type NodeAdvert } from "../../lib/inference/capacity-board";
import { ErrorWindow } from "../../lib/inference/error-window";
import { gateContext } from "../../lib/inference/privacy-gate";
import { decide } from "../../lib/inference/routing-rules";

function refusal(source: string): RegistryError {
	try {
		parseRegistry(source, "agents.yml");
	} catch (err) {
		expect(err).toBeInstanceOf(RegistryError);
		return err as RegistryError;
	}
	throw new Error("expected the file to be refused");
}

describe("agent registry file", () => {
	it("accepts the smallest file (version + agents with id and model) and applies the seed's rules", () => {
		const r = parseRegistry("version: 1\nagents:\n  - {id: a, model: m}\n", "agents.yml");
		expect(r.version).toBe("1");
		expect(r.agents.get("a")).toMatchObject({ id: "a", model: "m", backup: null, tools: [], system_prompt: "" });
		expect(r.defaultRules).toBe(true);
		expect(r.rules.map(x => x.id)).toEqual(DEFAULT_RULES.map(x => x.id));
	});

	it("parses the shipped config/agents.yml", () => {
		const file = path.resolve(__dirname, "..", "..", "config", "agents.yml");
		const r = parseRegistry(fs.readFileSync(file, "utf8"), file);
		expect(r.agents.get("assistant")).toMatchObject({ backup: "assistant-backup", tools: ["memory.search"] });
		expect(r.rules.map(x => x.priority)).toEqual([...r.rules.map(x => x.priority)].sort((a, b) => a - b));
	});

	it.each([
		["a YAML syntax error", 4, "version: 1\nagents:\n  - id: a\n   model: m\n", /./],
		["no version", 1, "agents:\n  - {id: a, model: m}\n", /version is required/],
		["no agents", 2, "version: 1\nagents: []\n", /agents must be a non-empty list/],
		["an agent without a model", 3, "version: 1\nagents:\n  - id: a\n  - id: b\n    model: m\n", /agents\[0\]\.model is required/],
		["a bad agent id", 3, "version: 1\nagents:\n  - id: 'a b'\n    model: m\n", /letters, digits/],
		["a duplicate agent", 4, "version: 1\nagents:\n  - {id: a, model: m}\n  - {id: a, model: n}\n", /listed twice/],
		["an unknown backup", 5, "version: 1\nagents:\n  - id: a\n    model: m\n    backup: ghost\n", /backup "ghost" is no agent/],
		["an unknown tool", 5, "version: 1\nagents:\n  - id: a\n    model: m\n    tools: [shell.exec]\n", /unknown tool "shell.exec"/],
		["an unknown condition", 6, "version: 1\nagents:\n  - {id: a, model: m}\nrules:\n  - id: r\n    when: {gpu_hot: true}\n    then: refuse\n", /unknown condition "gpu_hot"/],
		["a bad action", 7, "version: 1\nagents:\n  - {id: a, model: m}\nrules:\n  - id: r\n    when: {mode: public}\n    then: explode\n", /then must be/],
		["a threshold out of range", 7, "version: 1\nagents:\n  - {id: a, model: m}\nrules:\n  - id: r\n    when:\n      load_above: 80\n    then: route_to_cloud_llm\n", /from 0 to 1/],
		["a bad mode", 6, "version: 1\nagents:\n  - {id: a, model: m}\nrules:\n  - id: r\n    when: {mode: secret}\n    then: refuse\n", /not one of public, team, confidential/],
		["a rule naming an unknown agent", 6, "version: 1\nagents:\n  - {id: a, model: m}\nrules:\n  - id: r\n    when: {agent: zed}\n    then: refuse\n", /"zed" is no agent/],
	])("refuses %s, naming line %s", (_what, line, source, message) => {
		const err = refusal(source as string);
		expect(err.line).toBe(line);
		expect(err.message).toMatch(message as RegExp);
		if (line) expect(err.message).toContain(`agents.yml line ${line}:`);
	});
});

const REGISTRY = `version: v1
agents:
  - id: helper
    model: llama
    backup: helper-backup
  - id: helper-backup
    model: small
  - id: cloudy
    model: gpt
rules:
  - id: backup-on-errors
    priority: 10
    when: {error_rate_above: 0.1, min_requests: 5}
    then: fallback_to_backup_agent
  - id: offload
    priority: 20
    when: {load_above: 0.8}
    then: route_to_cloud_llm
    cloud_model: gpt
  - id: no-confidential-cloudy
    priority: 5
    when: {agent: cloudy, mode: confidential}
    then: refuse
`;

function advert(node: string, models: Array<[string, "local" | "remote", number]>, gpu: number | null = null, maxConcurrency = 4): NodeAdvert {
	return {
		node,
		at: Date.now(),
		limits: { max_concurrency: maxConcurrency, queue: 8, max_loaded: 2 },
		gpu: gpu === null ? null : { utilization: gpu, vram_used_bytes: 0 },
		models: models.map(([model, locality, inFlight]) => ({ model, provider: locality === "remote" ? "openai" : "ollama", locality, state: "loaded", last_used: null, in_flight: inFlight, queued: 0 })),
	};
}

describe("routing decision under live figures", () => {
	let registry: AgentRegistry;
	let board: CapacityBoard;
	let errors: ErrorWindow;
	const figures = () => ({ placements: (m: string) => board.placements(m), errors: (a: string) => errors.figures(a) });
	const ask = (agent: string, mode: "public" | "team" | "confidential" = "public") => decide(registry, { agent: registry.agents.get(agent)!, mode }, figures());

	beforeEach(() => {
		registry = parseRegistry(REGISTRY, "agents.yml");
		board = new CapacityBoard("n1");
		errors = new ErrorWindow(60_000);
	});

	it("picks the node serving the model; local first when equal, else the least loaded", () => {
		board.update(advert("n1", [["llama", "local", 1]]));
		board.update(advert("n2", [["llama", "local", 1]]));
		expect(ask("helper")).toMatchObject({ node: "n1", model: "llama", rules: [], fallbacks: [] });
		board.update(advert("n1", [["llama", "local", 3]]));
		const d = ask("helper");
		expect(d).toMatchObject({ node: "n2", load: 0.25 });
		expect(d.explanation).toContain("busier");
		expect(d.candidates.map(c => c.node)).toEqual(["n2", "n1"]);
	});

	it("counts requests this node sent and has not seen answered, so a burst spreads before the next advert", () => {
		board.update(advert("n1", [["llama", "local", 0]]));
		board.update(advert("n2", [["llama", "local", 0]]));
		const done = board.begin("n1", "llama");
		expect(ask("helper").node).toBe("n2");
		done();
		expect(ask("helper").node).toBe("n1");
	});

	it("GPU over 0.8 on every node serving the model → the cloud model, explained; never for confidential runs", () => {
		board.update(advert("n1", [["llama", "local", 0]], 0.95));
		board.update(advert("n3", [["gpt", "remote", 0]]));
		const d = ask("helper");
		expect(d).toMatchObject({ model: "gpt", node: "n3", locality: "remote", rules: ["offload"] });
		expect(d.explanation).toContain("above load 0.8");
		const confidential = ask("helper", "confidential");
		expect(confidential).toMatchObject({ model: "llama", node: "n1", locality: "local", rules: [] });
		expect(confidential.explanation).toContain("never offloaded");
		// Another node below the threshold is preferred to the cloud.
		board.update(advert("n2", [["llama", "local", 0]], 0.2));
		expect(ask("helper")).toMatchObject({ model: "llama", node: "n2", rules: [] });
	});

	it("error rate over 0.1 in the window → the backup agent, once enough runs were seen", () => {
		board.update(advert("n1", [["llama", "local", 0], ["small", "local", 0]]));
		for (let i = 0; i < 3; i++) errors.record("helper", "PROVIDER_FAILED");
		expect(ask("helper").agent).toBe("helper"); // 3 runs < min_requests 5
		for (let i = 0; i < 7; i++) errors.record("helper", null);
		const d = ask("helper");
		expect(d).toMatchObject({ agent: "helper-backup", agent_requested: "helper", model: "small", rules: ["backup-on-errors"], error_rate: 0.3 });
		expect(d.fallbacks[0].reason).toContain("error rate 0.30 > 0.1 over 10 runs");
	});

	it("privacy gate: confidential never to a remote model → backup agent on a local model, else 403; rules may refuse outright", () => {
		board.update(advert("n1", [["small", "local", 0]]));
		board.update(advert("n3", [["llama", "remote", 0], ["gpt", "remote", 0]]));
		expect(ask("helper", "confidential")).toMatchObject({ agent: "helper-backup", model: "small", locality: "local" });
		expect(ask("helper", "public")).toMatchObject({ agent: "helper", model: "llama", locality: "remote" });
		registry.agents.get("helper")!.backup = null;
		expect(() => ask("helper", "confidential")).toThrow(expect.objectContaining({ code: 403, type: "CONFIDENTIAL_NEEDS_LOCAL_MODEL" }));
		expect(() => ask("cloudy", "confidential")).toThrow(expect.objectContaining({ code: 403, type: "RULE_REFUSED" }));
	});

	it("a model no node serves → the backup agent, else a retryable 503; a dropped node is forgotten", () => {
		board.update(advert("n2", [["small", "local", 0]]));
		expect(ask("helper")).toMatchObject({ agent: "helper-backup", fallbacks: [{ from: "helper", to: "helper-backup", reason: "no node serves llama" }] });
		board.drop("n2");
		expect(() => ask("helper")).toThrow(expect.objectContaining({ code: 503, type: "MODEL_UNAVAILABLE", retryable: true }));
	});
});

describe("privacy gate context", () => {
	const history = [
		{ role: "user", content: "first" },
		{ role: "assistant", content: "reply" },
		{ role: "system", content: "injected" },
		{ role: "user", content: "now" },
	];
	it("without consent: system prompt and the current message only", () => {
		expect(gateContext("sys", { messages: history })).toEqual({ messages: [{ role: "system", content: "sys" }, { role: "user", content: "now" }], context: "sanitized", history_dropped: 2 });
		expect(gateContext("", { message: "hi", messages: history }).messages).toEqual([{ role: "user", content: "hi" }]);
	});
	it("with consent: the history too, never a client's system turn", () => {
		expect(gateContext("sys", { messages: history, consent: true }).messages.map(m => m.content)).toEqual(["sys", "first", "reply", "now"]);
		expect(gateContext("sys", { message: "hi", messages: history, consent: true }).messages.map(m => m.content)).toEqual(["sys", "first", "reply", "now", "hi"]);
	});
});

describe("error window", () => {
	it("slides: outcomes older than the window stop counting", () => {
		let now = 1_000_000;
		const w = new ErrorWindow(1_000, () => now);
		w.record("a", "X");
		w.record("a", null);
		expect(w.figures("a")).toMatchObject({ total: 2, errors: 1, rate: 0.5, byType: { X: 1 } });
		now += 600;
		w.record("a", null);
		expect(w.figures("a").total).toBe(3);
		now += 600;
		expect(w.figures("a")).toMatchObject({ total: 1, errors: 0, rate: 0 });
		expect(w.figures("unknown")).toMatchObject({ total: 0, rate: 0 });
	});
});
