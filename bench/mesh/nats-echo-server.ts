// Baseline: raw nats.js request/reply echo in its own process.
import { connect } from "nats";

(async () => {
	const nc = await connect({ servers: new URL(process.env.NATS_URL ?? "nats://127.0.0.1:4222").host });
	nc.subscribe(`${process.env.MESH_NAMESPACE}.echo`, { callback: (_err, msg) => msg.respond(msg.data) });
	await nc.flush();
	process.stdout.write("READY\n");
})();
