// Baseline for bench/presence: a bare socket.io server on a bare Node http server. A client's "post"
// is broadcast to every socket of the namespace; "heap" answers with this process's heap reading.
import http from "http";
import { Server } from "socket.io";
import { readHeap, type HeapReading } from "../../lib/runtime/heap";

const server = http.createServer();
const io = new Server(server, { path: "/ws/socket.io" });
const room = io.of("/bench");
room.on("connection", socket => {
	socket.on("post", (message: unknown) => room.emit("message", message));
	socket.on("heap", (ack: (reading: HeapReading) => void) => ack(readHeap()));
});
server.listen(Number(process.env.PORT), "127.0.0.1", () => process.stdout.write("READY\n"));
// A clean exit on the harness's SIGTERM, so that a profiled run (BENCH_NODE_ARGS=--cpu-prof) writes its profile.
process.on("SIGTERM", () => process.exit(0));
