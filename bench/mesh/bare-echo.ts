// The baseline's served action: one echo answering with the same shape as the project's mesh.echo, so
// both sides move the same bytes (bench/mesh/bare-server.ts, bench/mesh/call-cost-server.ts).
import type { BrokerOptions, Context, ServiceSchema } from "moleculer";
import { CoalescingNatsTransporter } from "../../lib/mesh/coalescing-nats";

/**
 * Moleculer's own NATS transporter (defaults), or with BARE_COALESCE=1 the project's coalescing one
 * (lib/mesh/coalescing-nats.ts): an A/B knob for bench/mesh/http-cpu.ts, to see what the project's
 * gateway adds over bare moleculer-web on the same transport. npm run bench keeps the defaults.
 */
export function bareTransporter(): BrokerOptions["transporter"] {
	const options = { url: process.env.NATS_URL };
	return process.env.BARE_COALESCE === "1" ? new CoalescingNatsTransporter(options) : { type: "NATS" as const, options };
}

export function bareEchoService(nodeID: string): ServiceSchema {
	return {
		name: "echo",
		actions: {
			echo: (ctx: Context<{ message: string }, { user?: { id: string } }>) => ({
				message: ctx.params.message,
				nodeID,
				requestID: ctx.requestID,
				user: ctx.meta.user?.id ?? null,
			}),
		},
	};
}
