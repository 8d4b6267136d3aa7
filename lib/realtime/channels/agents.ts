/**
 * /agents: agent runs streamed over socket.io (the page's agent panel; HTTP clients have SSE on
 * POST /api/router/route). The client sends `ask` (router.route's own params, plus an optional
 * `request_id`); the run streams as `agent.start`, `agent.chunk` {request_id, text} …, then exactly one
 * of `agent.done` (usage, decision, node, model, latency_ms, …) or `agent.error` {request_id, code, type,
 * message, retryable}. `cancel` and a socket that goes away end the run where it runs: the run carries a
 * cancel key (lib/inference/cancellation.ts, the same mechanism as an HTTP client that disconnects), so
 * the router — on this node or another — and the serving swapper-proxy abort it, provider request included.
 * Nothing here logs or counts what was asked or answered.
 */
import { randomUUID } from "crypto";
import type { Readable } from "stream";
import type { ServiceBroker } from "moleculer";
import { ConflictError, NotFoundError, RateLimitedError } from "../../mesh/errors";
import { cancelMeta, requestCancel } from "../../inference/cancellation";
import { ROUTE_REQUEST_PARAMS, STREAM_FRAMING_META, type RouteStreamFrame } from "../../inference/route-request";
import type { ChannelDefinition, MeshSocket, RealtimeGateway } from "../channel";
import { asWsError, NO_TOKEN, type WsError } from "../socket-errors";

export const AGENTS_NAMESPACE = "/agents";
/** Runs one socket may have open at once; more are refused with 429 TOO_MANY_RUNS. */
export const MAX_RUNS_PER_SOCKET = 2;
/** Runs one user may have open at once on one gateway, over all their sockets. */
export const MAX_RUNS_PER_USER = 4;
export const AGENT_RUNS_METRIC = "ws_agent_runs_total";

const REQUEST_ID = { type: "string", pattern: /^[\w.:-]{1,100}$/, messages: { stringPattern: "request_id: 1-100 letters, digits, _ . : -" } } as const;

interface AgentRun {
	id: string;
	/** set once router.route answered; destroyed to cancel */
	stream: Readable | null;
	/** the run's cancel key, carried in the call's meta to every node the run reaches */
	cancelKey: string;
	done: boolean;
}

/** Open runs per user on each gateway (a broker each, when several share a process in tests). */
const userRuns = new WeakMap<ServiceBroker, Map<string, number>>();

function runsOf(socket: MeshSocket): Map<string, AgentRun> {
	return (socket.data.runs as Map<string, AgentRun> | undefined) ?? (socket.data.runs = new Map<string, AgentRun>());
}

function userCounts(broker: ServiceBroker): Map<string, number> {
	let counts = userRuns.get(broker);
	if (!counts) userRuns.set(broker, (counts = new Map()));
	return counts;
}

function count(gateway: RealtimeGateway, outcome: "done" | "failed" | "cancelled"): void {
	if (gateway.broker.isMetricsEnabled()) gateway.broker.metrics.increment(AGENT_RUNS_METRIC, { outcome });
}

/** Marks a run ended and frees its places; false when it had ended already. */
function endRun(gateway: RealtimeGateway, socket: MeshSocket, run: AgentRun): boolean {
	if (run.done) return false;
	run.done = true;
	runsOf(socket).delete(run.id);
	const counts = userCounts(gateway.broker);
	const userId = socket.data.user?.id as string;
	const left = (counts.get(userId) ?? 1) - 1;
	if (left > 0) counts.set(userId, left);
	else counts.delete(userId);
	return true;
}

/** Stops the generation wherever it runs: the run's cancel key is cancelled mesh-wide, and our end of the stream closed. */
function abort(gateway: RealtimeGateway, run: AgentRun): void {
	requestCancel(gateway.broker, run.cancelKey);
	run.stream?.destroy();
}

function agentError(requestId: string | null, problem: WsError) {
	return { request_id: requestId, ...problem, retryable: problem.retryable === true };
}

/** The router's frames as socket events, in order; exactly one of agent.done / agent.error ends the run. */
function relay(gateway: RealtimeGateway, socket: MeshSocket, run: AgentRun, stream: Readable): void {
	const fail = (problem: WsError) => {
		if (!endRun(gateway, socket, run)) return;
		count(gateway, "failed");
		socket.emit("agent.error", agentError(run.id, problem));
	};
	stream.on("data", (frame: RouteStreamFrame) => {
		if (run.done) return;
		if (frame.event === "piece") socket.emit("agent.chunk", { request_id: run.id, text: frame.data.text });
		else if (frame.event === "start") socket.emit("agent.start", { request_id: run.id, agent: frame.data.agent, model: frame.data.model, node: frame.data.node });
		else if (frame.event === "error") fail(asWsError(frame.data));
		else if (endRun(gateway, socket, run)) {
			count(gateway, "done");
			socket.emit("agent.done", { ...frame.data, request_id: run.id });
		}
	});
	stream.on("error", err => fail({ ...asWsError(err), retryable: true }));
	stream.on("end", () => fail({ code: 503, type: "STREAM_INCOMPLETE", message: "The run ended without a final answer", retryable: true }));
}

export const AGENTS: ChannelDefinition = {
	name: "agents",
	namespace: AGENTS_NAMESPACE,
	describe: AGENTS_NAMESPACE,

	authorize(_gateway, _socket, verified) {
		if (!verified) throw NO_TOKEN;
		return { user: verified.user, expiresAt: verified.expiresAt };
	},

	events: {
		/** ack `{ok, request_id}` once the run streams; refusals (404 agent, 422, 413, 429) as `agent.error` and a failed ack */
		ask: {
			params: { request_id: { ...REQUEST_ID, optional: true }, ...ROUTE_REQUEST_PARAMS, $$strict: "remove" },
			// Runs for as long as the model writes: it must not hold its user's other events (heartbeats) back.
			lane: false,
			async handler(gateway, socket, params) {
				const { request_id, ...ask } = params;
				const id = (request_id as string | undefined) ?? randomUUID();
				// onError reads it from here: the server-chosen id travels with a refusal too.
				params.request_id = id;
				const runs = runsOf(socket);
				const user = socket.data.user?.id as string;
				const counts = userCounts(gateway.broker);
				if (runs.has(id)) throw new ConflictError(`Run ${id} is still open on this socket`, "RUN_EXISTS", { field: "request_id" });
				if (runs.size >= MAX_RUNS_PER_SOCKET) throw new RateLimitedError(`At most ${MAX_RUNS_PER_SOCKET} open runs per socket`, "TOO_MANY_RUNS");
				if ((counts.get(user) ?? 0) >= MAX_RUNS_PER_USER) throw new RateLimitedError(`At most ${MAX_RUNS_PER_USER} open runs per user`, "TOO_MANY_RUNS");
				const run: AgentRun = { id, stream: null, cancelKey: randomUUID(), done: false };
				runs.set(id, run);
				counts.set(user, (counts.get(user) ?? 0) + 1);
				const meta = { user: socket.data.user, [STREAM_FRAMING_META]: "objects", ...cancelMeta(run.cancelKey) };
				let stream: Readable;
				try {
					stream = (await gateway.broker.call("router.route", { ...ask, stream: true }, { meta, requestID: id })) as Readable;
				} catch (err) {
					endRun(gateway, socket, run);
					throw err;
				}
				run.stream = stream;
				// Cancelled (or the socket gone) while the run was being placed: stop it now.
				if (run.done || !socket.connected) {
					abort(gateway, run);
					endRun(gateway, socket, run);
					return { request_id: id, cancelled: true };
				}
				relay(gateway, socket, run, stream);
				return { request_id: id };
			},
			onError(socket, problem, params) {
				const id = typeof params.request_id === "string" && REQUEST_ID.pattern.test(params.request_id) ? params.request_id : null;
				socket.emit("agent.error", agentError(id, problem));
			},
		},
		/** ack `{ok, request_id, cancelled: true}`; the run ends with `agent.error` CANCELLED (499) */
		cancel: {
			params: { request_id: REQUEST_ID, $$strict: "remove" },
			lane: false,
			async handler(gateway, socket, params) {
				const id = params.request_id as string;
				const run = runsOf(socket).get(id);
				if (!run) throw new NotFoundError(`No open run ${id} on this socket`, "RUN_NOT_FOUND", { field: "request_id" });
				abort(gateway, run);
				endRun(gateway, socket, run);
				count(gateway, "cancelled");
				socket.emit("agent.error", agentError(id, { code: 499, type: "CANCELLED", message: "Cancelled by the client" }));
				return { request_id: id, cancelled: true };
			},
		},
	},

	/** A socket that goes away cancels its runs. */
	onLeave(gateway, socket) {
		for (const run of [...runsOf(socket).values()]) {
			abort(gateway, run);
			if (endRun(gateway, socket, run)) count(gateway, "cancelled");
		}
	},

	metrics: [{ name: AGENT_RUNS_METRIC, type: "counter", labelNames: ["outcome"], description: "Agent runs over /agents sockets by outcome: done, failed, cancelled (by the client or its socket going away)" }],
};
