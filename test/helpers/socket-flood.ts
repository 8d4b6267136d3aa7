/**
 * A socket flood from its own process (so the test process that measures other users' latency is not the
 * one busy sending): `node --import tsx test/helpers/socket-flood.ts <base url> <room id> <token> <rounds>`.
 * Opens a room socket and two presence sockets with one user's token, prints "ready", and on a line on
 * stdin sends `rounds` × (message,
 * heartbeat, and every other round a watch) without waiting, and prints one JSON line: answers by kind,
 * how the sockets ended, and when (ms after the first event) the last one was cut.
 */
import { io, type Socket } from "socket.io-client";

const [baseUrl, room, token, roundsText] = process.argv.slice(2);
const rounds = Number(roundsText);
const WS = { path: "/ws/socket.io", transports: ["websocket"], reconnection: false, forceNew: true };

function open(namespace: string, auth: object): Promise<Socket> {
	const socket = io(`${baseUrl}${namespace}`, { ...WS, auth });
	return new Promise((resolve, reject) => {
		socket.once("connect", () => resolve(socket));
		socket.once("connect_error", reject);
	});
}

async function main(): Promise<void> {
	const sockets = [await open(`/city/rooms/${room}`, { token }), await open("/city/presence", { token, device: "f1" }), await open("/city/presence", { token, device: "f2" })];
	process.stdout.write("ready\n");
	await new Promise(resolve => process.stdin.once("data", resolve));
	let cutAt = 0;
	const started = Date.now();
	const ended = sockets.map(s => new Promise<string>(resolve => s.once("disconnect", reason => ((cutAt = Date.now() - started), resolve(reason)))));
	const answers: Array<Promise<{ ok?: boolean; error?: { code: number; type: string } } | "none">> = [];
	const send = (socket: Socket, event: string, payload: unknown) => answers.push(socket.timeout(5_000).emitWithAck(event, payload).catch(() => "none" as const));
	for (let i = 0; i < rounds; i++) {
		send(sockets[0], "message", { body: `spam ${i}` });
		send(sockets[1 + (i % 2)], "heartbeat", { active: true });
		if (i % 2) send(sockets[1], "watch", { room_id: room });
	}
	const results = await Promise.all(answers);
	const reasons = await Promise.race([Promise.all(ended), new Promise<string[]>(resolve => setTimeout(() => resolve(["still connected"]), 1_000))]);
	sockets.forEach(s => s.close());
	const rateLimited = results.filter(r => r !== "none" && r.error?.code === 429 && r.error.type === "RATE_LIMITED").length;
	process.stdout.write(`${JSON.stringify({ sent: results.length, ok: results.filter(r => r !== "none" && r.ok).length, rateLimited, unanswered: results.filter(r => r === "none").length, reasons, cutAt })}\n`);
}

main().then(
	() => process.exit(0),
	err => {
		process.stderr.write(`${(err as Error).message}\n`);
		process.exit(1);
	},
);
