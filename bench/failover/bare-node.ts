// Baseline for bench/failover: plain Moleculer with its default options (no timeout, no retries,
// no circuit breaker, heartbeats every 10 s, 30 s timeout). BARE_ROLE=gateway runs a bare moleculer-web.
import { ServiceBroker } from "moleculer";
import ApiGateway from "moleculer-web";

const nodeID = process.env.NODE_ID ?? `bare-${process.pid}`;
const broker = new ServiceBroker({ namespace: process.env.MESH_NAMESPACE, nodeID, transporter: { type: "NATS", options: { url: process.env.NATS_URL } }, logger: false });

if (process.env.BARE_ROLE === "gateway") {
	broker.createService({
		name: "api",
		mixins: [ApiGateway],
		settings: { port: Number(process.env.PORT), routes: [{ path: "/api", aliases: { "GET /mesh/whoami": "mesh.whoami" } }] },
	});
} else {
	broker.createService({ name: "mesh", actions: { whoami: () => ({ nodeID }) } });
}
broker.start().then(() => process.stdout.write("READY\n"));
