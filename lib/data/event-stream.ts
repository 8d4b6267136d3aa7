/**
 * The JetStream event stream as a dependency of the outbox relay: is it there, and if not, why — in
 * words an operator can act on.
 *
 * Why this exists: nats.js reports "no JetStream on this server", "the stream lost its only replica"
 * and "no stream captures this subject" all as a bare `503` (no responders). Only the last one is a
 * fault of the event itself (it belongs in the DLQ); the others are outages, during which the relay
 * must pause and keep every event pending instead of burning their attempts. `probeEventStream` asks
 * the JetStream API step by step (account → stream → leader) to tell them apart.
 */
import type { NatsConnection, StreamInfo } from "nats";
import type { DependencyStatus } from "./database";

export type OutageCode = "jetstream_disabled" | "nats_unreachable" | "stream_unavailable" | "stream_no_leader";

export interface Outage {
	code: OutageCode;
	/** what is wrong and how to fix it, one sentence each */
	reason: string;
}

const PROBE_TIMEOUT_MS = 2_000;

const FIX: Record<OutageCode, string> = {
	jetstream_disabled: "JetStream is not enabled on the NATS server. Fix: start nats-server with -js (or a `jetstream {}` block in its config) on every server of the cluster.",
	nats_unreachable: "The NATS server does not answer (disconnected or timed out). Fix: check that the servers in NATS_URL are running and reachable; the client reconnects by itself.",
	stream_unavailable: "The JetStream event stream is unavailable. Fix: check the stream's servers (`nats stream info`); with NATS_STREAM_REPLICAS=3 on a three-server cluster it survives one server down.",
	stream_no_leader: "The JetStream event stream has no leader (its replicas lost quorum). Fix: bring its NATS servers back; with NATS_STREAM_REPLICAS=3 it needs two of three.",
};

interface NatsErrorLike {
	code?: string;
	message?: string;
	api_error?: { err_code?: number; description?: string };
}

/** Maps an error of the JetStream API (asked by a probe) to an outage. */
export function outageOf(err: unknown, step: "account" | "stream"): Outage {
	const e = err as NatsErrorLike;
	const detail = e.api_error?.description ?? e.message ?? String(err);
	if (e.code === "503" && step === "account") return { code: "jetstream_disabled", reason: FIX.jetstream_disabled };
	if (e.code === "TIMEOUT" || e.code === "CONNECTION_CLOSED" || e.code === "CONNECTION_DRAINING" || /timeout|closed|disconnect/i.test(detail)) {
		return { code: "nats_unreachable", reason: `${FIX.nats_unreachable} (${detail})` };
	}
	return { code: "stream_unavailable", reason: `${FIX.stream_unavailable} (${detail})` };
}

export interface StreamProbe {
	/** null: the relay can publish */
	outage: Outage | null;
	/** the subjects the stream captures now (empty when it could not be read) */
	subjects: string[];
	/** replicas asked for, and those up to date now (leader included); absent when the stream could not be read */
	replicas?: { configured: number; online: number };
}

/**
 * Asks JetStream whether the relay can publish to `stream`. A stream that does not exist is not an
 * outage (ensureStream creates it); one whose replicas have no leader is.
 */
export async function probeEventStream(nc: NatsConnection, stream: string): Promise<StreamProbe> {
	if (nc.isClosed()) return { outage: { code: "nats_unreachable", reason: FIX.nats_unreachable }, subjects: [] };
	let jsm;
	try {
		jsm = await nc.jetstreamManager({ timeout: PROBE_TIMEOUT_MS });
	} catch (err) {
		return { outage: outageOf(err, "account"), subjects: [] };
	}
	let info: StreamInfo;
	try {
		info = await jsm.streams.info(stream);
	} catch (err) {
		if ((err as NatsErrorLike).api_error?.err_code === 10059) return { outage: null, subjects: [] }; // not found: ensureStream's job
		return { outage: outageOf(err, "stream"), subjects: [] };
	}
	const configured = info.config.num_replicas || 1;
	// A stream on a server without clustering has no cluster block: its one replica is the server itself.
	const online = info.cluster ? (info.cluster.leader ? 1 : 0) + (info.cluster.replicas ?? []).filter(r => r.current && !r.offline).length : 1;
	const replicas = { configured, online };
	if (info.cluster && !info.cluster.leader) return { outage: { code: "stream_no_leader", reason: FIX.stream_no_leader }, subjects: [], replicas };
	return { outage: null, subjects: info.config.subjects ?? [], replicas };
}

/** Does a NATS subject pattern (with `*` and `>`) match a subject? */
export function subjectMatches(pattern: string, subject: string): boolean {
	const p = pattern.split(".");
	const s = subject.split(".");
	for (let i = 0; i < p.length; i++) {
		if (p[i] === ">") return s.length > i;
		if (i >= s.length || (p[i] !== "*" && p[i] !== s[i])) return false;
	}
	return p.length === s.length;
}

/**
 * The relay's view of the stream, for /health and the logs. A state change is logged once (pause:
 * WARN with the reason and the fix; resume: INFO with how long it lasted), never once per retry.
 */
export class EventStreamState {
	private outage: Outage | null = null;
	private since = Date.now();

	constructor(private readonly log: { warn(msg: string, meta?: object): void; info(msg: string, meta?: object): void }) {}

	get paused(): boolean {
		return this.outage !== null;
	}

	/** Returns true when the state changed. */
	set(outage: Outage | null): boolean {
		const before = this.outage;
		if ((before?.code ?? null) === (outage?.code ?? null)) return false;
		const lastedMs = Date.now() - this.since;
		this.outage = outage;
		this.since = Date.now();
		if (outage) this.log.warn(`Event stream unavailable, so the outbox relay pauses and events stay pending: ${outage.reason}`, { event: "outbox.paused", reason: outage.code });
		else this.log.info(`Event stream available again, the outbox relay resumes after ${Math.round(lastedMs / 1000)} s paused (${before!.code})`, { event: "outbox.resumed", paused_ms: lastedMs });
		return true;
	}

	dependency(): DependencyStatus {
		return this.outage ? { status: "down", error: this.outage.reason } : { status: "up" };
	}
}
