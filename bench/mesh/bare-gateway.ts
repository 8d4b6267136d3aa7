// Baseline: a bare moleculer-web gateway (default options) calling the remote echo action over NATS.
// It parses the JSON body (moleculer-web's bodyParsers), so it makes the same call as the project's gateway.
import { ServiceBroker } from "moleculer";
import { bareTransporter } from "./bare-echo";
import ApiGateway from "moleculer-web";

const broker = new ServiceBroker({ namespace: process.env.MESH_NAMESPACE, nodeID: "bare-gateway", transporter: bareTransporter(), logger: false });
broker.createService({
	name: "api",
	mixins: [ApiGateway],
	settings: { port: Number(process.env.PORT), routes: [{ path: "/api", bodyParsers: { json: true }, aliases: { "POST /echo": "echo.echo" } }] },
});
broker
	.start()
	.then(() => broker.waitForServices("echo"))
	.then(() => process.stdout.write("READY\n"));
