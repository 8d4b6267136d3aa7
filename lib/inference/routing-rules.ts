/**
 * The router's decision for one request, as a pure function of the registry, the request and the
 * live figures (placements with load from lib/inference/capacity-board.ts, the agent's error rate).
 * Order, each step recorded in the decision:
 *   1. rules in priority order that act before placement: error rate → backup agent, use_model, refuse;
 *   2. the privacy gate (not a rule, cannot be configured away): a confidential run only goes to a
 *      local model; else the backup agent if its model is local; else refused (403);
 *   3. placement: the least loaded node serving the model, this node first on a tie;
 *   4. rules that act on load: the chosen node over the threshold → a remote (cloud) model, never for
 *      confidential runs; otherwise the least loaded node stays, and the decision says so.
 * A model no node serves → the backup agent, else 503 (retryable: a node may come back).
 */
import { ForbiddenError, UnavailableError } from "../mesh/errors";
import type { AgentRegistry, AgentSpec, Mode, RuleSpec } from "./agent-registry";
import type { Placement } from "./capacity-board";
import type { ErrorFigures } from "./error-window";

export interface Figures {
	placements(model: string): Placement[];
	errors(agent: string): ErrorFigures;
}

export interface Fallback {
	from: string;
	to: string;
	reason: string;
}

export interface Decision {
	agent_requested: string;
	agent: string;
	model: string;
	node: string;
	provider: string;
	locality: Placement["locality"];
	load: number;
	/** rule ids that changed the outcome, in order */
	rules: string[];
	fallbacks: Fallback[];
	/** the nodes that could serve the final model, best first (retries go down this list) */
	candidates: Array<{ node: string; load: number; locality: Placement["locality"] }>;
	error_rate: number;
	explanation: string;
}

export interface RouteAsk {
	agent: AgentSpec;
	mode: Mode;
}

function applies(rule: RuleSpec, agent: AgentSpec, mode: Mode): boolean {
	if (rule.when.agent && !rule.when.agent.includes(agent.id)) return false;
	if (rule.when.mode && !rule.when.mode.includes(mode)) return false;
	return true;
}

function refuse(message: string, type: string, data: Record<string, unknown>): never {
	throw new ForbiddenError(message, type, data);
}

export function decide(registry: AgentRegistry, ask: RouteAsk, figures: Figures): Decision & { agentSpec: AgentSpec } {
	const requested = ask.agent;
	let agent = requested;
	let model = agent.model;
	const rules: string[] = [];
	const fallbacks: Fallback[] = [];
	const notes: string[] = [];
	const confidential = ask.mode === "confidential";
	const toBackup = (reason: string): boolean => {
		const backup = agent.backup ? registry.agents.get(agent.backup) : undefined;
		if (!backup || agent !== requested) return false; // one hop only: a backup's backup is not tried
		fallbacks.push({ from: agent.id, to: backup.id, reason });
		agent = backup;
		model = backup.model;
		return true;
	};
	const errorRate = figures.errors(requested.id);

	// 1. Rules that act before placement.
	for (const rule of registry.rules) {
		if (!applies(rule, agent, ask.mode)) continue;
		const { error_rate_above: threshold, min_requests: minRuns = 5, model_unavailable } = rule.when;
		if (rule.when.load_above !== undefined) continue; // step 4
		if (model_unavailable && figures.placements(model).length) continue;
		if (threshold !== undefined && !(errorRate.total >= minRuns && errorRate.rate > threshold)) continue;
		if (rule.then === "refuse") refuse(`Agent ${agent.id} may not run in ${ask.mode} mode (rule ${rule.id})`, "RULE_REFUSED", { rule: rule.id, agent: agent.id, mode: ask.mode });
		if (rule.then === "fallback_to_backup_agent") {
			const why = threshold !== undefined ? `error rate ${errorRate.rate.toFixed(2)} > ${threshold} over ${errorRate.total} runs mesh-wide` : `no node serves ${model}`;
			if (toBackup(`rule ${rule.id}: ${why}`)) rules.push(rule.id);
			else notes.push(`rule ${rule.id} matched (${why}) but ${agent.id} has no backup agent`);
		} else if (typeof rule.then === "object") {
			notes.push(`rule ${rule.id}: model ${rule.then.use_model} instead of ${model}`);
			model = rule.then.use_model;
			rules.push(rule.id);
		}
	}

	// 2. Privacy gate, then 3. placement.
	let all = figures.placements(model);
	let candidates = confidential ? all.filter(p => p.locality === "local") : all;
	if (!candidates.length) {
		const reason = confidential && all.length ? `privacy gate: confidential runs never reach a remote model, and ${model} is only served remotely` : `no node serves ${model}`;
		if (toBackup(reason)) {
			all = figures.placements(model);
			candidates = confidential ? all.filter(p => p.locality === "local") : all;
		}
	}
	if (!candidates.length) {
		if (confidential && all.length) {
			refuse(`Confidential run refused: agent ${agent.id}'s model ${model} is served only by a remote provider, and no backup agent runs on a local model`, "CONFIDENTIAL_NEEDS_LOCAL_MODEL", {
				field: "mode",
				agent: agent.id,
				model,
			});
		}
		throw new UnavailableError(`No node serves model ${model} for agent ${agent.id} right now`, "MODEL_UNAVAILABLE", { agent: agent.id, model, retry_elsewhere: false });
	}
	let chosen = candidates[0];
	const local = candidates.find(p => p.local);
	if (local && local !== chosen) notes.push(`this node's ${model} is busier (load ${local.load}) than ${chosen.node} (load ${chosen.load})`);

	// 4. Rules that act on load.
	for (const rule of registry.rules) {
		const threshold = rule.when.load_above;
		if (threshold === undefined || !applies(rule, agent, ask.mode) || chosen.load <= threshold) continue;
		if (rule.then === "route_to_cloud_llm") {
			const cloudModel = rule.cloud_model;
			const cloud = confidential || !cloudModel ? undefined : figures.placements(cloudModel).find(p => p.locality === "remote" && p.load <= threshold);
			if (cloud) {
				notes.push(`rule ${rule.id}: every node serving ${model} is above load ${threshold} (best ${chosen.node} at ${chosen.load}); sent to remote ${cloudModel}`);
				rules.push(rule.id);
				model = cloud.model;
				candidates = [cloud];
				chosen = cloud;
			} else {
				const why = confidential ? "confidential runs are never offloaded to a remote model" : cloudModel ? `no remote ${cloudModel} below the threshold` : "no cloud_model in the rule";
				notes.push(`rule ${rule.id}: least loaded node ${chosen.node} is above load ${threshold} but stays (${why})`);
			}
			break;
		}
		if (rule.then === "refuse") refuse(`Agent ${agent.id} refused: every node is above load ${threshold} (rule ${rule.id})`, "RULE_REFUSED", { rule: rule.id });
	}

	const explanation = [
		`agent ${agent.id}${agent !== requested ? ` (instead of ${requested.id})` : ""} → model ${model} on ${chosen.node} (${chosen.locality}, ${chosen.provider}, load ${chosen.load}${chosen.local ? ", this node" : ""})`,
		candidates.length > 1 ? `least loaded of ${candidates.length} nodes` : "the only node serving it",
		...fallbacks.map(f => `fallback ${f.from} → ${f.to}: ${f.reason}`),
		...notes,
	].join("; ");
	return {
		agentSpec: agent,
		agent_requested: requested.id,
		agent: agent.id,
		model,
		node: chosen.node,
		provider: chosen.provider,
		locality: chosen.locality,
		load: chosen.load,
		rules,
		fallbacks,
		candidates: candidates.map(c => ({ node: c.node, load: c.load, locality: c.locality })),
		error_rate: Math.round(errorRate.rate * 1000) / 1000,
		explanation,
	};
}
