/** socket.io clients for the realtime tests: connect to a node's gateway, wait for events. */
import { io, type Socket } from "socket.io-client";

export const WS_OPTIONS = { path: "/ws/socket.io", transports: ["websocket"], reconnection: false, forceNew: true };

export interface Recorder {
	socket: Socket;
	events: Array<{ event: string; data: any; at: number }>;
	/** resolves with the first recorded event (past or future) matching */
	next(event: string, match?: (data: any) => boolean, timeoutMs?: number): Promise<any>;
	close(): void;
}

export function record(socket: Socket): Recorder {
	const events: Recorder["events"] = [];
	const waiters: Array<{ event: string; match: (d: any) => boolean; resolve: (d: any) => void }> = [];
	socket.onAny((event: string, data: any) => {
		events.push({ event, data, at: Date.now() });
		for (const w of [...waiters]) {
			if (w.event === event && w.match(data)) {
				waiters.splice(waiters.indexOf(w), 1);
				w.resolve(data);
			}
		}
	});
	return {
		socket,
		events,
		next(event, match = () => true, timeoutMs = 10_000) {
			const seen = events.find(e => e.event === event && match(e.data));
			if (seen) return Promise.resolve(seen.data);
			return new Promise((resolve, reject) => {
				const timer = setTimeout(() => reject(new Error(`no "${event}" event within ${timeoutMs} ms; got: ${JSON.stringify(events.slice(-5))}`)), timeoutMs);
				waiters.push({ event, match, resolve: d => (clearTimeout(timer), resolve(d)) });
			});
		},
		close: () => socket.close(),
	};
}

/** Connects and resolves once connected; rejects with the server's connect_error (message + data). */
export function connectSocket(baseUrl: string, namespace: string, auth: Record<string, unknown>): Promise<Recorder> {
	const socket = io(`${baseUrl}${namespace}`, { ...WS_OPTIONS, auth });
	const recorder = record(socket);
	return new Promise((resolve, reject) => {
		socket.once("connect", () => resolve(recorder));
		socket.once("connect_error", (err: Error & { data?: unknown }) => {
			socket.close();
			reject(Object.assign(new Error(err.message), { data: err.data }));
		});
	});
}
