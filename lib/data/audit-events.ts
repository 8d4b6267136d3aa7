/**
 * How every actor reports to the audit trail: `auditEvent(broker, ctx, {...})` puts one
 * `audit.{service}.{action}` event into the outbox — inside the caller's transaction when it has one,
 * so the record exists if and only if the change committed. The relay publishes it to JetStream and
 * the audit writer (services/audit.service.ts) appends it to the hash-chained audit_log exactly once.
 *
 * Events carry who, what, on which target, with what outcome, on which node and under which request
 * id — never content (no message bodies, memory content, tokens or passwords).
 *
 * Sources without a transaction of their own and nodes without a database (a gateway-only node
 * reporting an authentication failure) hand the event to `audit.report` on the mesh instead.
 */
import type { Context, ServiceBroker } from "moleculer";
import type { Transaction } from "sequelize";
import { nodeContextOf } from "../runtime/node-resources";
import { enqueueEvents, type OutboxEvent } from "./outbox/enqueue";
import { TokenBucketLimiter } from "../http/rate-limiter";

export type AuditOutcome = "success" | "denied" | "failure";

export interface AuditEventInput {
	/** the reporting service: first part of `audit.{service}.{action}` */
	service: string;
	action: string;
	/** user id, `service:<name>`, `node:<id>`, or `anonymous` */
	actor: string;
	target?: string | null;
	outcome?: AuditOutcome;
	/** ids, counts, flags, reasons: never content */
	details?: Record<string, unknown>;
}

/** What an audit event carries on the bus (the outbox row's payload). */
export interface AuditPayload {
	actor: string;
	request_id: string | null;
	target: string | null;
	outcome: AuditOutcome;
	node: string;
	occurred_at: string;
	details: Record<string, unknown>;
}

const NAME = /^[a-z][a-z0-9_-]{0,39}$/;
const ACTION = /^[a-z][a-z0-9_.-]{0,79}$/;

/** audit.{service}.{action}; services and actions are code constants, so a bad one is a bug. */
export function auditEventType(service: string, action: string): string {
	if (!NAME.test(service) || !ACTION.test(action)) throw new Error(`Invalid audit event name audit.${service}.${action}`);
	return `audit.${service}.${action}`;
}

export function auditOutboxEvent(requestID: string | null | undefined, node: string, input: AuditEventInput): OutboxEvent {
	const type = auditEventType(input.service, input.action);
	const payload: AuditPayload = {
		actor: input.actor,
		request_id: requestID ?? null,
		target: input.target ?? null,
		outcome: input.outcome ?? "success",
		node,
		occurred_at: new Date().toISOString(),
		details: input.details ?? {},
	};
	return { aggregateType: "audit", aggregateId: input.target ?? input.actor, eventType: type, subject: type, payload: payload as unknown as Record<string, unknown> };
}

type RequestLike = Pick<Context, "requestID"> | { requestID?: string | null } | null | undefined;

/**
 * Reports one audited action. With `t`: in that transaction (throws with it). Without: in a short
 * transaction of its own, or through `audit.report` on a node without a database; failures are
 * logged, never thrown, so auditing cannot break the action it describes.
 */
export async function auditEvent(broker: ServiceBroker, ctx: RequestLike, input: AuditEventInput, t?: Transaction): Promise<void> {
	const { settings, sequelize } = nodeContextOf(broker);
	const event = auditOutboxEvent(ctx?.requestID, broker.nodeID, input);
	if (t && sequelize) return enqueueEvents(sequelize, t, settings.events, [event]);
	try {
		if (sequelize) await sequelize.transaction(own => enqueueEvents(sequelize, own, settings.events, [event]));
		else await broker.call("audit.report", { type: event.eventType, ...(event.payload as object) }, { requestID: ctx?.requestID ?? undefined });
	} catch (err) {
		broker.logger.warn(`Audit event ${event.eventType} not recorded: ${(err as Error).message}`, { event: "audit.report_failed" });
	}
}

/**
 * Security decisions (authentication and authorization failures) come in floods when someone probes
 * or misconfigures a client: per client key at most 1 event/s (burst 5) and per node 50 events/s.
 * What is dropped is counted and reported in the next event that passes (`details.suppressed`).
 */
export class AuditFloodGuard {
	private readonly perKey = new TokenBucketLimiter(1, 5);
	private readonly global = new TokenBucketLimiter(50, 50);
	private suppressed = 0;

	/** The details to record, or null when this event is suppressed. */
	admit(key: string, details: Record<string, unknown>): Record<string, unknown> | null {
		if (!this.perKey.take(key).allowed || !this.global.take("*").allowed) {
			this.suppressed++;
			return null;
		}
		const out = this.suppressed ? { ...details, suppressed: this.suppressed } : details;
		this.suppressed = 0;
		return out;
	}
}

const guards = new WeakMap<ServiceBroker, AuditFloodGuard>();

export interface SecurityDecision {
	/** the edge that decided: "api" (gateway) or "socket" (socket.io handshake) */
	service: "api" | "socket";
	action: "authn_failed" | "authz_failed";
	/** the client's address: the flood guard's key, and recorded */
	client: string;
	/** the error type (INVALID_TOKEN, TOKEN_EXPIRED, NO_TOKEN, FORBIDDEN…), never the token */
	reason: string;
	actor?: string;
	target?: string | null;
}

/** An authentication or authorization failure, through this node's flood guard; never awaited by callers. */
export function auditSecurityDecision(broker: ServiceBroker, ctx: RequestLike, decision: SecurityDecision): void {
	let guard = guards.get(broker);
	if (!guard) guards.set(broker, (guard = new AuditFloodGuard()));
	const details = guard.admit(`${decision.service}.${decision.action}:${decision.client}`, { client: decision.client, reason: decision.reason });
	if (!details) return;
	void auditEvent(broker, ctx, { service: decision.service, action: decision.action, actor: decision.actor ?? "anonymous", target: decision.target ?? null, outcome: "denied", details });
}
