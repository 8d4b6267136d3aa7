/*
 * The agent panel: pick an agent, ask, watch the answer stream in over the /agents socket.io namespace
 * (docs/REALTIME.md; HTTP clients use POST /api/router/route with stream: true, as SSE), stop it, then
 * see which node and model answered and why (the router's decision).
 */
"use strict";
(function () {
	const $ = id => document.getElementById(id);
	const token = () => sessionStorage.getItem("token");
	let loaded = false;
	let socket = null;
	/** the request id of the run the panel shows, while it streams */
	let current = null;

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

	function showDecision(final) {
		const d = final.decision;
		$("agent-where").textContent = `${final.agent} · ${final.model} on ${final.node} (${final.provider}${final.development_model ? ", development model" : ""}) · ${final.usage.tokens_in}→${final.usage.tokens_out} tokens · ${final.latency_ms} ms`;
		$("agent-where").dataset.node = final.node;
		$("agent-why").textContent = `${d.explanation} · context ${d.privacy.context} · rules ${final.rules_version}`;
	}

	/** The /agents socket, (re)connected with the page's current token (app.js renews it when it expires). */
	function agentSocket() {
		if (socket && socket.auth.token === token()) {
			if (!socket.connected) socket.connect();
			return socket;
		}
		if (socket) socket.close();
		socket = io("/agents", { path: "/ws/socket.io", transports: ["websocket"], auth: { token: token() } });
		const mine = data => !!current && data && data.request_id === current;
		socket.on("agent.start", data => mine(data) && ($("agent-where").textContent = `answering: ${data.agent} · ${data.model} on ${data.node}`));
		socket.on("agent.chunk", data => mine(data) && ($("agent-answer").textContent += data.text));
		socket.on("agent.done", data => {
			if (!mine(data)) return;
			showDecision(data);
			finished();
		});
		socket.on("agent.error", data => {
			if (!mine(data)) return;
			$("agent-answer").textContent += `${$("agent-answer").textContent ? "\n" : ""}⚠ ${data.type === "CANCELLED" ? "stopped" : data.message}`;
			finished();
		});
		// A run does not survive its socket (the server cancels it): say so rather than wait for ever.
		socket.on("disconnect", () => current && fail("the connection was lost"));
		socket.on("connect_error", err => current && fail((err.data && err.data.message) || err.message));
		return socket;
	}

	function finished() {
		current = null;
		$("agent-ask").disabled = false;
		$("agent-stop").hidden = true;
	}

	function fail(message) {
		$("agent-answer").textContent += `${$("agent-answer").textContent ? "\n" : ""}⚠ ${message}`;
		finished();
	}

	/** Streams the answer over the /agents socket: agent.start, agent.chunk …, then agent.done or agent.error. */
	function ask(event) {
		event.preventDefault();
		$("agent-answer").textContent = "";
		$("agent-where").textContent = "";
		delete $("agent-where").dataset.node;
		$("agent-why").textContent = "";
		current = `web-${Math.random().toString(36).slice(2, 12)}`;
		$("agent-ask").disabled = true;
		$("agent-stop").hidden = false;
		const request = { request_id: current, agent: $("agent-pick").value, message: $("agent-message").value, mode: $("agent-mode").value, consent: $("agent-consent").checked };
		// Refusals (unknown agent, too long, too many runs) arrive as agent.error too; the ack is not needed.
		agentSocket().emit("ask", request);
	}

	function stop() {
		if (current && socket) socket.emit("cancel", { request_id: current });
	}

	$("agent-form").addEventListener("submit", ask);
	$("agent-stop").addEventListener("click", stop);
	$("agent-pick").addEventListener("focus", loadAgents);
	// The panel shows once the page has signed in (app.js un-hides #app).
	new MutationObserver(() => !$("app").hidden && loadAgents()).observe($("app"), { attributes: true, attributeFilter: ["hidden"] });
	if (!$("app").hidden) loadAgents();
})();
