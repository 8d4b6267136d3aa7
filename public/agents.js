/*
 * The agent panel: pick an agent, ask, watch the answer stream in (POST /api/router/route with
 * stream: true, read as server-sent events through fetch — EventSource cannot send a bearer token or a
 * body), then see which node and model answered and why (the router's decision).
 */
"use strict";
(function () {
	const $ = id => document.getElementById(id);
	const token = () => sessionStorage.getItem("token");
	let loaded = false;

	async function loadAgents() {
		if (loaded || !token()) return;
		const res = await fetch("/api/router/agents", { headers: { authorization: `Bearer ${token()}` } });
		if (!res.ok) return;
		const { agents, version } = await res.json();
		const pick = $("agent-pick");
		pick.innerHTML = "";
		for (const agent of agents) {
			const option = document.createElement("option");
			option.value = agent.id;
			option.textContent = agent.description ? `${agent.id} — ${agent.description}` : agent.id;
			pick.appendChild(option);
		}
		pick.title = `registry ${version}`;
		loaded = true;
	}

	/** Splits an SSE byte stream into {event, data} records as they arrive. */
	async function* events(body) {
		const reader = body.getReader();
		const decoder = new TextDecoder();
		let buffered = "";
		for (;;) {
			const { value, done } = await reader.read();
			if (done) return;
			buffered += decoder.decode(value, { stream: true });
			let end;
			while ((end = buffered.indexOf("\n\n")) >= 0) {
				const block = buffered.slice(0, end);
				buffered = buffered.slice(end + 2);
				const event = (/^event: (.*)$/m.exec(block) || [])[1] || "message";
				const data = (/^data: (.*)$/m.exec(block) || [])[1];
				if (data) yield { event, data: JSON.parse(data) };
			}
		}
	}

	function showDecision(final) {
		const d = final.decision;
		$("agent-where").textContent = `${final.agent} · ${final.model} on ${final.node} (${final.provider}${final.development_model ? ", development model" : ""}) · ${final.usage.tokens_in}→${final.usage.tokens_out} tokens · ${final.latency_ms} ms`;
		$("agent-where").dataset.node = final.node;
		$("agent-why").textContent = `${d.explanation} · context ${d.privacy.context} · rules ${final.rules_version}`;
	}

	async function ask(event) {
		event.preventDefault();
		const answer = $("agent-answer");
		answer.textContent = "";
		$("agent-where").textContent = "";
		$("agent-why").textContent = "";
		const button = $("agent-ask");
		button.disabled = true;
		try {
			const res = await fetch("/api/router/route", {
				method: "POST",
				headers: { authorization: `Bearer ${token()}`, "content-type": "application/json" },
				body: JSON.stringify({ agent: $("agent-pick").value, message: $("agent-message").value, mode: $("agent-mode").value, consent: $("agent-consent").checked, stream: true }),
			});
			if (!res.ok) {
				const problem = await res.json().catch(() => ({}));
				answer.textContent = `⚠ ${problem.message || `HTTP ${res.status}`}`;
				return;
			}
			for await (const { event: kind, data } of events(res.body)) {
				if (kind === "start") $("agent-where").textContent = `answering: ${data.agent} · ${data.model} on ${data.node}`;
				else if (kind === "message") answer.textContent += data.text;
				else if (kind === "done") showDecision(data);
				else if (kind === "error") answer.textContent += `\n⚠ ${data.message}`;
			}
		} catch (err) {
			answer.textContent = `⚠ ${err.message}`;
		} finally {
			button.disabled = false;
		}
	}

	$("agent-form").addEventListener("submit", ask);
	$("agent-pick").addEventListener("focus", loadAgents);
	// The panel shows once the page has signed in (app.js un-hides #app).
	new MutationObserver(() => !$("app").hidden && loadAgents()).observe($("app"), { attributes: true, attributeFilter: ["hidden"] });
	if (!$("app").hidden) loadAgents();
})();
