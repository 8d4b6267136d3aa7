/**
 * Chooses the transporter once, before the broker starts.
 *
 * Production path: NATS from NATS_URL (with user/password or TLS). Development default: NATS at
 * 127.0.0.1:4222 when it answers, otherwise Moleculer's TCP transporter, announced with a WARN line.
 * In production there is no fallback: an unreachable or unauthenticated NATS is a fatal error.
 */
import { connect, type ConnectionOptions } from "nats";
import type { MeshSettings, NatsSettings } from "./settings";

export const LOCAL_NATS_URL = "nats://127.0.0.1:4222";

export type TransportKind = "nats" | "tcp" | "custom";

export interface TransportChoice {
	kind: TransportKind;
	/** value for BrokerOptions.transporter */
	transporter: string | { type: string; options: Record<string, unknown> };
	/** one line for the log: why this transport was chosen */
	reason: string;
	/** set when the choice is a fallback the operator must be warned about */
	warning?: string;
	/** the NATS URL in use (never with credentials), for health and REPL */
	natsUrl?: string;
}

export class TransportError extends Error {
	constructor(message: string) {
		super(message);
		this.name = "TransportError";
	}
}

function tlsOptions(nats: NatsSettings): ConnectionOptions["tls"] | undefined {
	if (!nats.tls) return undefined;
	return {
		caFile: nats.tlsCaFile,
		certFile: nats.tlsCertFile,
		keyFile: nats.tlsKeyFile,
	};
}

/** Connection options shared by the probe and by Moleculer's NATS transporter, so both see the same server. */
export function natsConnectionOptions(nats: NatsSettings, url: string): Record<string, unknown> {
	// `servers`, not `url`: Moleculer's transporter parses `url` and overwrites user/pass with the URL's
	// (undefined when the URL carries none), which would drop NATS_USER/NATS_PASSWORD.
	const first = new URL(url.split(",")[0]);
	const options: Record<string, unknown> = {
		servers: url.split(",").map(u => new URL(u).host),
		user: nats.user ?? (decodeURIComponent(first.username) || undefined),
		pass: nats.password ?? (decodeURIComponent(first.password) || undefined),
		// Moleculer's transporter never gives up reconnecting (-1); a short wait keeps failover quick.
		maxReconnectAttempts: -1,
		reconnectTimeWait: 250,
		pingInterval: 5_000,
		maxPingOut: 2,
		// nats.js otherwise builds two Error objects (stack traces) for every request up front, for
		// failures that almost never come: JetStream publishes (outbox relay, audit) and liveness probes
		// are requests, and under bench:city those Errors were 3.7 % of NODE1's CPU samples.
		noAsyncTraces: true,
		// nats.js shuffles the list unless told not to; NATS_KEEP_URL_ORDER keeps "own host's server first".
		noRandomize: nats.keepUrlOrder,
	};
	const tls = tlsOptions(nats);
	if (tls) options.tls = tls;
	return options;
}

export function redactUrl(url: string): string {
	return url.replace(/\/\/([^@/]*)@/, "//***@");
}

/** Connects once and closes again; rejects with the server's own words (auth failure, refused, timeout). */
export async function probeNats(nats: NatsSettings, url: string, timeoutMs = 1_500): Promise<void> {
	const options = natsConnectionOptions(nats, url) as ConnectionOptions;
	const client = await connect({ ...options, timeout: timeoutMs, reconnect: false, maxReconnectAttempts: 0 });
	await client.close();
}

function natsChoice(settings: MeshSettings, url: string, reason: string): TransportChoice {
	return {
		kind: "nats",
		transporter: { type: "NATS", options: natsConnectionOptions(settings.nats, url) },
		reason,
		natsUrl: redactUrl(url),
	};
}

function tcpChoice(reason: string, warning?: string): TransportChoice {
	return {
		kind: "tcp",
		// UDP discovery finds the other local nodes on loopback; gossip keeps the node list in sync.
		transporter: { type: "TCP", options: { udpDiscovery: true, udpReuseAddr: true } },
		reason,
		warning,
	};
}

export async function resolveTransport(settings: MeshSettings): Promise<TransportChoice> {
	const explicit = settings.transporter;
	if (explicit && /^tcp$/i.test(explicit)) return tcpChoice("TRANSPORTER=TCP was set explicitly");
	if (explicit && !/^nats$/i.test(explicit)) {
		return { kind: "custom", transporter: explicit, reason: "TRANSPORTER was set explicitly" };
	}

	const configuredUrl = settings.nats.url;
	const url = configuredUrl ?? LOCAL_NATS_URL;
	try {
		await probeNats(settings.nats, url);
		return natsChoice(settings, url, configuredUrl ? "NATS_URL answered" : `NATS answered at ${LOCAL_NATS_URL}`);
	} catch (err) {
		const why = (err as Error).message;
		if (configuredUrl || settings.production || explicit) {
			throw new TransportError(`NATS at ${redactUrl(url)} is not usable: ${why}`);
		}
		return tcpChoice(
			"no NATS_URL set and nothing answered at 127.0.0.1:4222",
			"NO NATS: falling back to Moleculer's TCP transporter (development only). " +
				"Set NATS_URL for the production path; NODE_ENV=production refuses this fallback.",
		);
	}
}
