// Baseline: a bare Moleculer broker with default options and one echo action, over NATS. It answers
// with the same shape as the project's mesh.echo, so both sides move the same bytes.
import { ServiceBroker, type Context } from "moleculer";

const broker = new ServiceBroker({ namespace: process.env.MESH_NAMESPACE, nodeID: "bare-server", transporter: { type: "NATS", options: { url: process.env.NATS_URL } }, logger: false });
broker.createService({
	name: "echo",
	actions: {
		echo: (ctx: Context<{ message: string }, { user?: { id: string } }>) => ({
			message: ctx.params.message,
			nodeID: broker.nodeID,
			requestID: ctx.requestID,
			user: ctx.meta.user?.id ?? null,
		}),
	},
});
broker.start().then(() => process.stdout.write("READY\n"));
