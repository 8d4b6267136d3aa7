// Baseline: a bare Moleculer broker with default options and one echo action, over NATS.
import { ServiceBroker } from "moleculer";

const broker = new ServiceBroker({ namespace: process.env.MESH_NAMESPACE, nodeID: "bare-server", transporter: { type: "NATS", options: { url: process.env.NATS_URL } }, logger: false });
broker.createService({ name: "echo", actions: { echo: ctx => ({ message: (ctx.params as { message: string }).message, nodeID: broker.nodeID }) } });
broker.start().then(() => process.stdout.write("READY\n"));
