// Baseline: a bare Moleculer broker with default options and one echo action, over NATS.
import { ServiceBroker } from "moleculer";
import { bareTransporter } from "./bare-echo";
import { bareEchoService } from "./bare-echo";

const broker = new ServiceBroker({ namespace: process.env.MESH_NAMESPACE, nodeID: "bare-server", transporter: bareTransporter(), logger: false });
broker.createService(bareEchoService(broker.nodeID));
broker.start().then(() => process.stdout.write("READY\n"));
