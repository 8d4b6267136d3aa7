// Investigation aid (not part of npm run bench:presence): which objects an idle room socket keeps on a
// node (or, with CENSUS_TARGET=bare, on the bare socket.io server). Opens CENSUS_WARM_UP sockets, takes
// a heap snapshot (node --heapsnapshot-signal), opens CENSUS_SOCKETS more, takes another, and prints
// both paths; compare them by constructor with any heap snapshot tool (docs/BENCHMARKS.md has the result).
import fs from "node:fs";
import path from "node:path";
import { io, type Socket } from "socket.io-client";
import { signToken } from "../../lib/http/auth";
import { startProcess, stopProcesses, adminQuery, ADMIN_DATABASE_URL, runBench } from "../lib/harness";
import { censusDiff } from "./census-diff";

const JWT_SECRET = "bench-secret-0123456789abcdef0123456789";
const COUNT = Number(process.env.CENSUS_SOCKETS ?? 500);
const WARM_UP = Number(process.env.CENSUS_WARM_UP ?? 100);
const dir = fs.mkdtempSync("/tmp/heap-census-");
const dbName = `heap_census_${process.pid}`;
const sleep = (ms: number) => new Promise(r => setTimeout(r, ms));


async function snapshot(pid: number): Promise<string> {
	const before = new Set(fs.readdirSync(dir));
	process.kill(pid, "SIGUSR1");
	for (let i = 0; i < 200; i++) {
		await sleep(250);
		const fresh = fs.readdirSync(dir).filter(f => !before.has(f) && f.endsWith(".heapsnapshot"));
		if (fresh.length) {
			const file = path.join(dir, fresh[0]);
			// Written in pieces: done when it ends with the closing bracket of the JSON document.
			while (!fs.readFileSync(file, "latin1").trimEnd().endsWith("]}")) await sleep(500);
			return file;
		}
	}
	throw new Error("no heap snapshot");
}

async function main(): Promise<void> {
	await adminQuery(`CREATE DATABASE ${dbName}`);
	const url = ADMIN_DATABASE_URL.replace(/\/[^/]*$/, `/${dbName}`);
	const sockets: Socket[] = [];
	try {
		const bare = process.env.CENSUS_TARGET === "bare";
		const node = await startProcess(bare ? "bench/presence/bare-socketio.ts" : "scripts/run-node.ts", { MESH_NAMESPACE: `census-${process.pid}`, DATABASE_URL: url, JWT_SECRET, NODE_ID: "census", PORT: "9489", LOG_LEVEL: "info", RATE_LIMIT_PER_KEY: "0", WS_HANDSHAKE_RATE: "0", WS_MAX_CONNECTIONS_PER_ADDRESS: "0", NODE_OPTIONS: `--expose-gc --heapsnapshot-signal=SIGUSR1 --diagnostic-dir=${dir}` }, bare ? "READY" : "API Gateway listening");
		const host = "http://127.0.0.1:9489";
		const token = (user: string) => signToken(JWT_SECRET, { id: user, roles: [], teams: [] });
		for (let i = 0; i < 100 && !bare; i++) {
			const res = await fetch(`${host}/api/city/rooms`, { method: "POST", headers: { authorization: `Bearer ${token("host")}`, "content-type": "application/json" }, body: JSON.stringify({ id: "census", name: "Census" }) }).catch(() => null);
			if (res && (res.status === 200 || res.status === 409)) break;
			await sleep(200);
		}
		const pid = node.pid!;
		const open = async (i: number) => {
			const socket = io(bare ? `${host}/bench` : `${host}/city/rooms/census`, { path: "/ws/socket.io", transports: ["websocket"], reconnection: false, forceNew: true, auth: { token: token(`reader-${i}`) } });
			await new Promise<void>((resolve, reject) => {
				socket.once("connect", () => resolve());
				socket.once("connect_error", reject);
			});
			sockets.push(socket);
		};
		// Warm-up sockets first: the code compiled for the first connections is not a per-socket cost.
		for (let i = 0; i < WARM_UP; i++) await open(-1 - i);
		await sleep(1_000);
		const first = await snapshot(pid);
		for (let i = 0; i < COUNT; i++) await open(i);
		await sleep(2_000);
		const second = await snapshot(pid);
		process.stdout.write(`${first}\n${second}\n${censusDiff(first, second, COUNT)}\n`);
	} finally {
		for (const s of sockets) s.close();
		await stopProcesses();
		await adminQuery(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => undefined);
	}
}

runBench(main);
