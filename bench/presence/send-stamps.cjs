/**
 * bench/presence's send clock (PRESENCE_WIRE=1), preloaded into the servers it measures (both nodes and the bare
 * socket.io server, `--require` in NODE_OPTIONS): stamps the moment each room message's websocket frame has been
 * handed to the kernel, so a fan-out can be timed to the last delivery leaving the servers, with no client
 * process in the measurement.
 *
 * Why: on this machine the clients share the servers' cores, and the p99 the clients observe includes their own
 * receiving CPU and their wait for a core (docs/BENCHMARKS.md, "Presence at 10,000 sockets: the clients' share of
 * the cores"). Clients on devices of their own receive a frame when the network brings it.
 *
 * Where: ws's `Sender.prototype.sendFrame`, which engine.io calls once per socket with socket.io-adapter's
 * pre-encoded frame (and ws's own `send` calls for every other frame). It corks, writes and uncorks the socket
 * synchronously, so when it returns the frame has gone through `writev`: on loopback it is in the receiving
 * socket's queue. Cost: a clock read and two array stores per frame (the frame's text is read once per
 * pre-encoded buffer, cached by identity).
 *
 * Out: every STAMP_FLUSH_MS the stamps since the last flush are appended to PRESENCE_STAMPS_FILE as float64
 * pairs (message number, ms since the epoch as performance.timeOrigin + performance.now(), the bench's clock). The
 * number is the "message" event's body (the project's room message and the bare baseline's alike); other frames are not stamped.
 * And the process's garbage-collection pauses and their kind (below).
 */
"use strict";
const fs = require("fs");
const path = require("path");
const { PerformanceObserver } = require("perf_hooks");

const FILE = process.env.PRESENCE_STAMPS_FILE;
const STAMP_FLUSH_MS = 200;
const CAPACITY = 1 << 16;

if (!FILE) throw new Error("send-stamps: PRESENCE_STAMPS_FILE is not set");
const enginePath = path.dirname(require.resolve("engine.io"));
const { Sender } = require(require.resolve("ws", { paths: [enginePath] }));

const numberPattern = /"body":"(\d+)"/;
/** message number per frame buffer: socket.io-adapter hands every socket the same pre-encoded one */
const numbers = new WeakMap();
const stamps = new Float64Array(CAPACITY * 2);
let count = 0;

/** A frame's last piece is a Buffer (pre-encoded frames) or the text itself (ws frames small text inline). */
function messageNumber(piece) {
	if (typeof piece === "string") return numberIn(piece);
	const known = numbers.get(piece);
	if (known !== undefined) return known;
	const number = numberIn(piece.toString("latin1"));
	numbers.set(piece, number);
	return number;
}

function numberIn(text) {
	const match = text.includes('["message"') ? numberPattern.exec(text) : null;
	return match ? Number(match[1]) : -1;
}

function flush() {
	if (count === 0) return;
	fs.appendFileSync(FILE, Buffer.from(stamps.buffer, 0, count * 16));
	count = 0;
}

const sendFrame = Sender.prototype.sendFrame;
Sender.prototype.sendFrame = function stampedSendFrame(list, cb) {
	sendFrame.call(this, list, cb);
	const number = messageNumber(list[list.length - 1]);
	if (number < 0) return;
	if (count === CAPACITY) flush();
	stamps[count * 2] = number;
	stamps[count * 2 + 1] = performance.timeOrigin + performance.now();
	count++;
};

/**
 * Garbage-collection pauses go to PRESENCE_STAMPS_FILE + ".gc" as float64 triples (start, duration in ms, kind as
 * perf_hooks.constants.NODE_PERFORMANCE_GC_*; same clock), so that a slow post can be told apart: a pause of this
 * process (and which collection), or something outside it.
 */
const pauses = [];
new PerformanceObserver(list => {
	for (const entry of list.getEntries()) pauses.push(performance.timeOrigin + entry.startTime, entry.duration, entry.detail?.kind ?? 0);
}).observe({ entryTypes: ["gc"] });

function flushPauses() {
	if (pauses.length === 0) return;
	fs.appendFileSync(`${FILE}.gc`, Buffer.from(new Float64Array(pauses.splice(0)).buffer));
}

setInterval(() => (flush(), flushPauses()), STAMP_FLUSH_MS).unref();
