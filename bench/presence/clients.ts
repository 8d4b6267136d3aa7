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
 *
 * PRESENCE_CLIENT picks the client: `socket.io-client` (default), or `protocol`, a minimal client of the same
 * wire protocol (ProtocolSocket below). Both measure the same servers; the second spends less of the shared
 * cores on receiving, which is what the clients would not take from the servers on machines of their own.
 */
import { io, type Socket } from "socket.io-client";
import WebSocket from "ws";

export type ClientTarget = { url: string; auth: Record<string, unknown> };
/** A room message as the clients need it: its number is its body (the project's message and the bare baseline's alike). */
export type RoomMessage = { body: unknown };
export type ClientRequest = { op: "connect"; targets: ClientTarget[] } | { op: "listen" } | { op: "collect" } | { op: "close" };
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
export async function connectMany<S = Socket>(targets: ClientTarget[], open: (target: ClientTarget) => Promise<S> = t => connect(t.url, t.auth) as Promise<S>): Promise<S[]> {
	const sockets: S[] = [];
	for (let i = 0; i < targets.length; i += 50) sockets.push(...(await Promise.all(targets.slice(i, i + 50).map(open))));
	return sockets;
}

/** What the clients' process needs of a room socket, from either client. */
interface RoomSocket {
	on(event: "message", listener: (m: RoomMessage) => void): unknown;
	off(event: "message"): unknown;
	close(): unknown;
}

/**
 * The socket.io wire protocol (engine.io 4 over a websocket, socket.io 5 packets) and nothing else: opens the
 * namespace with `auth`, answers the server's pings, and hands the listener each "message" event's data. No
 * reconnection, buffering, acks or binary packets: the bench needs none of them.
 */
class ProtocolSocket implements RoomSocket {
	private listener: ((m: RoomMessage) => void) | null = null;

	private constructor(private readonly ws: WebSocket) {}

	static open(url: string, auth: Record<string, unknown>): Promise<ProtocolSocket> {
		const { host, pathname } = new URL(url);
		const nsp = pathname && pathname !== "/" ? `${pathname},` : "";
		const ws = new WebSocket(`ws://${host}${WS.path}/?EIO=4&transport=websocket`, { perMessageDeflate: false, skipUTF8Validation: true });
		const socket = new ProtocolSocket(ws);
		return new Promise((resolve, reject) => {
			ws.on("error", reject);
			ws.on("message", (data: Buffer) => {
				const text = data.toString();
				if (text === "2") return void ws.send("3"); // engine.io ping → pong
				if (text[0] === "0") return void ws.send(`40${nsp}${JSON.stringify(auth)}`); // engine.io open → socket.io connect
				if (!text.startsWith("4")) return;
				const type = text[1];
				if (type === "0") resolve(socket);
				else if (type === "4") reject(new Error(`connect refused: ${text}`));
				else if (type === "2" && socket.listener) {
					const [event, message] = JSON.parse(text.slice(text.indexOf("["))) as [string, RoomMessage];
					if (event === "message") socket.listener(message);
				}
			});
		});
	}

	on(_event: "message", listener: (m: RoomMessage) => void): void {
		this.listener = listener;
	}

	off(): void {
		this.listener = null;
	}

	close(): void {
		this.ws.close();
	}
}

const openRoomSocket = (target: ClientTarget): Promise<RoomSocket> =>
	process.env.PRESENCE_CLIENT === "protocol" ? ProtocolSocket.open(target.url, target.auth) : connect(target.url, target.auth);

function serve(): void {
	const sockets: RoomSocket[] = [];
	let numbers: number[] = [];
	let times: number[] = [];
	const handle = async (request: ClientRequest): Promise<ClientAnswer> => {
		switch (request.op) {
			case "connect":
				sockets.push(...(await connectMany(request.targets, openRoomSocket)));
				return { held: sockets.length };
			case "listen": {
				numbers = [];
				times = [];
				for (const s of sockets) s.on("message", (m: RoomMessage) => (times.push(now()), numbers.push(Number(m.body))));
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
