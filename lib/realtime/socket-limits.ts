/**
 * Budgets for socket.io clients. A socket event is an endpoint like an HTTP route, but a socket sends
 * without a new request each time: without a budget one socket posted hundreds of room messages a
 * second, and a flood of heartbeats (a database transaction each) starved other users' requests.
 *
 * - every event takes a token from its socket's bucket and from its user's bucket (all of the user's
 *   sockets on this gateway; anonymous sockets share one per client address) — token buckets as for HTTP;
 * - refused events are counted against a flood allowance that refills at the socket's event rate: a socket
 *   that keeps sending past its budget is disconnected rather than answered for ever;
 * - handshakes (new connections, and each namespace joined over one) take a token per client address,
 *   before any token check or database query, and one address holds a bounded number of open connections.
 *
 * Budgets are per gateway, as the HTTP limiter's are.
 */
import { TokenBucketLimiter } from "../http/rate-limiter";
import type { SocketLimitSettings } from "../runtime/settings";

export interface EventVerdict {
	allowed: boolean;
	retryAfterSeconds: number;
	/** refused, and past the flood allowance: disconnect the socket */
	flooding: boolean;
}

const ALLOWED: EventVerdict = { allowed: true, retryAfterSeconds: 0, flooding: false };

export class SocketEventBudget {
	private readonly perSocket: TokenBucketLimiter;
	private readonly perUser: TokenBucketLimiter;
	private readonly floods: TokenBucketLimiter;

	constructor(limits: SocketLimitSettings, now: () => number = Date.now) {
		this.perSocket = new TokenBucketLimiter(limits.eventsPerSocket, limits.eventBurstPerSocket, now);
		this.perUser = new TokenBucketLimiter(limits.eventsPerUser, limits.eventBurstPerUser, now);
		this.floods = new TokenBucketLimiter(limits.floodAllowance > 0 ? Math.max(limits.eventsPerSocket, 1) : 0, limits.floodAllowance, now);
	}

	/** One event from `socketId` of `userKey`: both buckets must have a token (the socket's is taken first). */
	take(socketId: string, userKey: string): EventVerdict {
		const socket = this.perSocket.take(socketId);
		const verdict = socket.allowed ? this.perUser.take(userKey) : socket;
		if (verdict.allowed) return ALLOWED;
		const flooding = this.floods.enabled && !this.floods.take(socketId).allowed;
		return { allowed: false, retryAfterSeconds: verdict.retryAfterSeconds, flooding };
	}
}

export type HandshakeRefusal = { code: 429; type: "RATE_LIMITED"; message: string; retryAfter: number } | { code: 429; type: "TOO_MANY_CONNECTIONS"; message: string };

export class HandshakeGuard {
	private readonly handshakes: TokenBucketLimiter;
	private readonly open = new Map<string, number>();

	constructor(private readonly limits: SocketLimitSettings) {
		this.handshakes = new TokenBucketLimiter(limits.handshakesPerAddress, limits.handshakeBurst);
	}

	/** A namespace handshake (or the first request of a connection) from `address`: null when admitted. */
	handshake(address: string): HandshakeRefusal | null {
		const verdict = this.handshakes.take(address);
		if (verdict.allowed) return null;
		return { code: 429, type: "RATE_LIMITED", message: "Too many socket handshakes from this address, retry later", retryAfter: verdict.retryAfterSeconds };
	}

	/** A new connection from `address`: the handshake budget, then the cap on open connections. */
	connection(address: string): HandshakeRefusal | null {
		const max = this.limits.maxConnectionsPerAddress;
		if (max > 0 && (this.open.get(address) ?? 0) >= max) {
			return { code: 429, type: "TOO_MANY_CONNECTIONS", message: `At most ${max} open socket connections per address` };
		}
		return this.handshake(address);
	}

	opened(address: string): void {
		this.open.set(address, (this.open.get(address) ?? 0) + 1);
	}

	closed(address: string): void {
		const left = (this.open.get(address) ?? 1) - 1;
		if (left > 0) this.open.set(address, left);
		else this.open.delete(address);
	}

	openFrom(address: string): number {
		return this.open.get(address) ?? 0;
	}
}

/**
 * At most `limit` of one key's tasks run at a time; the rest wait in order. A user's socket events
 * each hold a database connection while they run (a heartbeat even waits on the user's advisory lock
 * holding one): a burst of them at once, all inside the event budget, stalled other users' requests
 * for a second and more (measured in docs/REALTIME.md). Queues stay short because the event budget
 * bounds what is admitted.
 */
export class KeyedConcurrency {
	private readonly lanes = new Map<string, { running: number; waiting: Array<() => void> }>();

	constructor(private readonly limit: number) {}

	run<T>(key: string, task: () => Promise<T>): Promise<T> {
		if (this.limit <= 0) return task();
		let lane = this.lanes.get(key);
		if (!lane) this.lanes.set(key, (lane = { running: 0, waiting: [] }));
		const current = lane;
		const start = (): Promise<T> => {
			current.running++;
			return task().finally(() => {
				current.running--;
				const next = current.waiting.shift();
				if (next) next();
				else if (current.running === 0) this.lanes.delete(key);
			});
		};
		if (current.running < this.limit) return start();
		return new Promise<T>((resolve, reject) => current.waiting.push(() => void start().then(resolve, reject)));
	}
}
