// The baseline's served action: one echo answering with the same shape as the project's mesh.echo, so
// both sides move the same bytes (bench/mesh/bare-server.ts, bench/mesh/call-cost-server.ts).
import type { Context, ServiceSchema } from "moleculer";

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
