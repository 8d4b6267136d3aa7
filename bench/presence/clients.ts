/**
 * bench/presence's room clients, in child processes of their own: real clients are not one process taking
 * every delivery off its sockets one after the other. Each process (`node --import tsx clients.ts`, with
 * an IPC channel) holds a share of the sockets and answers the bench's requests one at a time:
 *   connect — opens sockets to the given targets, 50 at a time; answers how many it holds
 *   listen  — from now on, notes when each "message" arrives: the message's number and the time
 *   collect — stops noting, and answers the numbers and times noted since listen
 *   close   — closes every socket
 * Times are `performance.timeOrigin + performance.now()` (ms since the epoch, sub-ms), comparable with the
 * bench's own post times across processes on one machine.
 */
import { io, type Socket } from "socket.io-client";

export type ClientTarget = { url: string; auth: Record<string, unknown> };
/** where a message's number is: the project's room message carries it as its body, the bare baseline as `n` */
export type NumberField = "body" | "n";
export type ClientRequest = { op: "connect"; targets: ClientTarget[] } | { op: "listen"; field: NumberField } | { op: "collect" } | { op: "close" };
export type ClientAnswer = { held: number } | { numbers: number[]; times: number[] };

const WS = { path: "/ws/socket.io", transports: ["websocket"], reconnection: false, forceNew: true };
export const now = (): number => performance.timeOrigin + performance.now();

export function connect(url: string, auth: Record<string, unknown>): Promise<Socket> {
	return new Promise((resolve, reject) => {
		const socket = io(url, { ...WS, auth });
		socket.once("connect", () => resolve(socket));
		socket.once("connect_error", err => reject(err));
	});
}

/** Connects every target, 50 at a time (a thundering herd would measure the kernel, not us). */
export async function connectMany(targets: ClientTarget[]): Promise<Socket[]> {
	const sockets: Socket[] = [];
	for (let i = 0; i < targets.length; i += 50) sockets.push(...(await Promise.all(targets.slice(i, i + 50).map(t => connect(t.url, t.auth)))));
	return sockets;
}

function serve(): void {
	const sockets: Socket[] = [];
	let numbers: number[] = [];
	let times: number[] = [];
	const handle = async (request: ClientRequest): Promise<ClientAnswer> => {
		switch (request.op) {
			case "connect":
				sockets.push(...(await connectMany(request.targets)));
				return { held: sockets.length };
			case "listen": {
				numbers = [];
				times = [];
				const field = request.field;
				for (const s of sockets) s.on("message", (m: Record<NumberField, unknown>) => (times.push(now()), numbers.push(Number(m[field]))));
				return { held: sockets.length };
			}
			case "collect":
				for (const s of sockets) s.off("message");
				return { numbers, times };
			case "close":
				for (const s of sockets.splice(0)) s.close();
				return { held: 0 };
		}
	};
	process.on("message", (request: ClientRequest) => {
		handle(request).then(
			answer => process.send!(answer),
			err => process.send!({ error: (err as Error).message }),
		);
	});
	process.on("SIGTERM", () => process.exit(0));
	process.stdout.write("READY\n");
}

if (require.main === module) serve();
