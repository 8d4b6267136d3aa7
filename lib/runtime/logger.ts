/**
 * One JSON object per log line: {timestamp, level, service, nodeID, message, request_id, ...}.
 * Secrets never reach the output: keys that name a secret are replaced, and bearer tokens, JWTs
 * and credentials inside URLs are cut out of free text.
 *
 * The request id travels explicitly: code serving a request logs through requestLogger(logger, ctx),
 * and Moleculer's own request-scoped lines (timeouts, retries) already carry a `requestID` field,
 * which becomes request_id. An AsyncLocalStorage would find the id implicitly, but on Node 20 it
 * installs promise hooks that tax every promise in the process, a measured share of every served call
 * (docs/BENCHMARKS.md, "Mesh foundation — where the cost goes").
 */
import type { LoggerConfig, Logger } from "moleculer";

const SECRET_KEY = /pass(word)?|secret|token|authorization|cookie|jwt|api[-_]?key|private[-_]?key/i;
const REDACTED = "[redacted]";

export function redactText(text: string): string {
	return text
		.replace(/Bearer\s+[A-Za-z0-9._~+/=-]+/gi, `Bearer ${REDACTED}`)
		.replace(/eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*/g, REDACTED)
		.replace(/(\b[a-z][a-z0-9+.-]*:\/\/)([^\s:@/]+):([^\s@/]+)@/gi, `$1$2:${REDACTED}@`);
}

export function redactValue(value: unknown, depth = 0): unknown {
	if (typeof value === "string") return redactText(value);
	if (value instanceof Error) return { name: value.name, message: redactText(value.message) };
	if (value == null || typeof value !== "object" || depth > 6) return value;
	if (Array.isArray(value)) return value.map(v => redactValue(v, depth + 1));
	const out: Record<string, unknown> = {};
	for (const [key, v] of Object.entries(value)) {
		out[key] = SECRET_KEY.test(key) ? REDACTED : redactValue(v, depth + 1);
	}
	return out;
}

interface Bindings {
	nodeID?: string;
	mod?: string;
	svc?: string;
}

function messageOf(args: unknown[]): { message: string; fields: Record<string, unknown> } {
	const parts: string[] = [];
	let fields: Record<string, unknown> = {};
	for (const arg of args) {
		if (arg instanceof Error) {
			// The message's first line only; the stack goes to err.stack, one JSON string, never into message.
			parts.push(arg.message.split("\n")[0]);
			fields.err = { name: arg.name, message: arg.message, code: (arg as { code?: unknown }).code, type: (arg as { type?: unknown }).type, stack: arg.stack };
		} else if (arg != null && typeof arg === "object") {
			fields = { ...fields, ...(arg as Record<string, unknown>) };
		} else {
			parts.push(String(arg));
		}
	}
	return { message: parts.join(" "), fields };
}

export function formatLogLine(level: string, args: unknown[], bindings: Bindings): string {
	const { message, fields } = messageOf(args);
	const { request_id, requestID, ...rest } = fields;
	const line: Record<string, unknown> = {
		timestamp: new Date().toISOString(),
		level,
		service: bindings.svc ?? bindings.mod ?? "broker",
		nodeID: bindings.nodeID,
		message,
		request_id: request_id ?? requestID ?? null,
		...(redactValue(rest) as Record<string, unknown>),
	};
	line.message = redactText(message);
	return JSON.stringify(line);
}

export function jsonLogger(level: string): LoggerConfig {
	return {
		type: "Console",
		options: {
			level,
			colors: false,
			moduleColors: false,
			formatter: (type: string, args: unknown[], bindings: Bindings) => [formatLogLine(type, args, bindings)],
		},
	} as LoggerConfig;
}

/** Most to least severe, as LOG_LEVEL orders them. */
const LEVELS = ["fatal", "error", "warn", "info", "debug", "trace"];

/** Whether a logger configured at `configured` writes lines at `level`. */
export function logsAt(level: string, configured: string): boolean {
	return LEVELS.indexOf(level) <= LEVELS.indexOf(configured);
}

/** A request, as far as logging cares: Moleculer contexts and anything else with a request id. */
export interface RequestScoped {
	requestID?: string | null;
}

/** Adds request_id to each line; a class, so that making one per request allocates one small object. */
class RequestLogger {
	private readonly tag: { request_id: string | null };

	constructor(
		private readonly logger: Logger,
		requestID: string | null,
	) {
		this.tag = { request_id: requestID };
	}

	fatal(...args: unknown[]): void {
		this.logger.fatal(...args, this.tag);
	}
	error(...args: unknown[]): void {
		this.logger.error(...args, this.tag);
	}
	warn(...args: unknown[]): void {
		this.logger.warn(...args, this.tag);
	}
	info(...args: unknown[]): void {
		this.logger.info(...args, this.tag);
	}
	debug(...args: unknown[]): void {
		this.logger.debug(...args, this.tag);
	}
	trace(...args: unknown[]): void {
		this.logger.trace(...args, this.tag);
	}
}

/** The logger for lines written while serving one request: each carries the request's id as request_id. */
export function requestLogger(logger: Logger, request: RequestScoped | undefined): Logger {
	return new RequestLogger(logger, request?.requestID ?? null);
}
