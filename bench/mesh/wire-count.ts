// Investigation aid (not part of npm run bench): what one remote call puts on the wire and asks of the kernel,
// bare Moleculer vs the project, at 100 concurrent. A private nats-server counts messages and bytes per call
// (/varz); /proc counts read/write syscalls and context switches per call of the caller (this process), the
// serving process and nats-server. WIRE_SPY=1 adds a subscriber on `>` that tallies messages by subject kind
// and prints one sample packet of each (its copies then count in nats-server's figures), and the idle traffic.
// `node --import tsx bench/mesh/wire-count.ts` (WIRE_CALLS calls per variant; needs nats-server on the PATH).
import { spawn } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { ServiceBroker } from "moleculer";
import { connect, type Msg } from "nats";
import { createBrokerOptions } from "../../moleculer.config";
import { loadSettings } from "../../lib/runtime/settings";
import { resolveTransport } from "../../lib/runtime/transport";
import { closedLoop, startProcess, stopProcesses, runBench } from "../lib/harness";

const PORT = Number(process.env.WIRE_NATS_PORT ?? 4333);
const MONITOR = PORT + 4000;
const NATS_URL = `nats://127.0.0.1:${PORT}`;
const CALLS = Number(process.env.WIRE_CALLS ?? 5_000);
const namespace = `wire-${process.pid}`;

interface Tally {
	messages: number;
	bytes: number;
	headerBytes: number;
	sample?: string;
}

/** Subject with the namespace and node IDs folded, so one kind of packet counts as one row. */
function kindOf(subject: string): string {
	return subject.replace(/^_INBOX\..*/, "_INBOX").replace(/^MOL-[^.]+/, "MOL").replace(/\.(RES|REQ|INFO|DISCOVER|PING|PONG|ALIVE)\.[^.]+$/, ".$1.<node>");
}

class Spy {
	tallies = new Map<string, Tally>();
	see(msg: Msg): void {
		const kind = kindOf(msg.subject);
		const t = this.tallies.get(kind) ?? { messages: 0, bytes: 0, headerBytes: 0 };
		t.messages++;
		t.bytes += msg.data.length;
		t.headerBytes += msg.headers ? msg.headers.toString().length : 0;
		t.sample ??= new TextDecoder().decode(msg.data).slice(0, 600);
		this.tallies.set(kind, t);
	}
	take(): Map<string, Tally> {
		const taken = this.tallies;
		this.tallies = new Map();
		return taken;
	}
}

/** nats-server's message and byte counters (its /varz, and each connection's in /connz). */
interface Traffic {
	in_msgs: number;
	out_msgs: number;
	in_bytes: number;
	out_bytes: number;
}

async function connz(): Promise<Array<Traffic & { cid: number; name?: string }>> {
	const res = await fetch(`http://127.0.0.1:${MONITOR}/connz?limit=100`);
	return ((await res.json()) as { connections: Array<Traffic & { cid: number; name?: string }> }).connections;
}

async function serverTotals(): Promise<Traffic> {
	const res = await fetch(`http://127.0.0.1:${MONITOR}/varz`);
	return (await res.json()) as Traffic;
}

function print(title: string, tallies: Map<string, Tally>, per: number, unit: string): void {
	process.stdout.write(`\n== ${title}\n`);
	for (const [kind, t] of [...tallies].sort((a, b) => b[1].messages - a[1].messages)) {
		process.stdout.write(
			`  ${kind}: ${(t.messages / per).toFixed(3)} msgs/${unit}, ${(t.bytes / per).toFixed(1)} payload B/${unit}, ${(t.headerBytes / per).toFixed(1)} header B/${unit}\n`,
		);
	}
	for (const [kind, t] of tallies) if (t.sample) process.stdout.write(`  sample ${kind}: ${t.sample}\n`);
}

interface KernelCounts {
	reads: number;
	writes: number;
	voluntarySwitches: number;
	involuntarySwitches: number;
}

/** read/write-class syscalls (/proc/<pid>/io) and context switches summed over the process's threads. */
function kernelCounts(pid: number): KernelCounts {
	const io = readFileSync(`/proc/${pid}/io`, "utf8");
	const field = (text: string, name: string) => Number(new RegExp(`${name}:\\s+(\\d+)`).exec(text)?.[1] ?? 0);
	let voluntarySwitches = 0;
	let involuntarySwitches = 0;
	for (const task of readdirSync(`/proc/${pid}/task`)) {
		const status = readFileSync(`/proc/${pid}/task/${task}/status`, "utf8");
		voluntarySwitches += field(status, "voluntary_ctxt_switches");
		involuntarySwitches += field(status, "nonvoluntary_ctxt_switches");
	}
	return { reads: field(io, "syscr"), writes: field(io, "syscw"), voluntarySwitches, involuntarySwitches };
}

async function measure(name: string, spy: Spy | null, serverPid: number, natsPid: number, call: () => Promise<unknown>): Promise<void> {
	await closedLoop(call, 100, 1_000);
	spy?.take();
	const pids = { caller: process.pid, server: serverPid, nats: natsPid };
	const kernelBefore = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, kernelCounts(pid)]));
	const before = await serverTotals();
	const result = await closedLoop(call, 100, 60_000, CALLS);
	const after = await serverTotals();
	process.stdout.write(`\n== ${name}: ${result.calls} calls, ${result.errors} errors, ${Math.round(result.perSecond)} calls/s\n`);
	const d = (k: keyof typeof before) => ((after[k] - before[k]) / result.calls).toFixed(2);
	process.stdout.write(`  nats-server per call${spy ? " (incl. the spy's copy)" : ""}: in ${d("in_msgs")} msgs / ${d("in_bytes")} B, out ${d("out_msgs")} msgs / ${d("out_bytes")} B\n`);
	for (const [k, pid] of Object.entries(pids)) {
		const now = kernelCounts(pid);
		const was = kernelBefore[k];
		const per = (f: keyof KernelCounts) => ((now[f] - was[f]) / result.calls).toFixed(3);
		process.stdout.write(`  ${k} per call: ${per("reads")} read syscalls, ${per("writes")} write syscalls, ${per("voluntarySwitches")} voluntary + ${per("involuntarySwitches")} involuntary context switches\n`);
	}
	if (spy) print(name, spy.take(), result.calls, "call");
}

/** What the four nodes send while no call is made (heartbeats and the like), per second. */
async function idleTraffic(spy: Spy): Promise<void> {
	await new Promise(r => setTimeout(r, 2_000));
	spy.take();
	const idleSeconds = 10;
	const idleBefore = await connz();
	await new Promise(r => setTimeout(r, idleSeconds * 1000));
	const idleAfter = await connz();
	print(`idle, ${idleSeconds} s, all four nodes`, spy.take(), idleSeconds, "s");
	for (const c of idleAfter) {
		const b = idleBefore.find(x => x.cid === c.cid);
		if (b) process.stdout.write(`  conn ${c.cid} ${c.name ?? ""}: in ${(c.in_msgs - b.in_msgs) / idleSeconds}/s, out ${(c.out_msgs - b.out_msgs) / idleSeconds}/s\n`);
	}
}

async function main(): Promise<void> {
	const store = mkdtempSync(path.join(tmpdir(), "wire-nats-"));
	const nats = spawn("nats-server", ["-a", "127.0.0.1", "-p", String(PORT), "-m", String(MONITOR), "-js", "-sd", store], { stdio: "ignore" });
	await new Promise(r => setTimeout(r, 500));
	const env = { MESH_NAMESPACE: namespace, NATS_URL, DATABASE_URL: process.env.DATABASE_URL ?? "postgres://root@127.0.0.1:5432/test", JWT_SECRET: "wire-secret-0123456789abcdef0123456789", LOG_LEVEL: "warn" };
	const spyConnection = process.env.WIRE_SPY ? await connect({ servers: `127.0.0.1:${PORT}`, name: "spy" }) : null;
	const spy = spyConnection ? new Spy() : null;
	spyConnection?.subscribe(">", { callback: (_err, msg) => spy!.see(msg) });
	try {
		const bareServer = await startProcess("bench/mesh/bare-server.ts", { ...env, MESH_NAMESPACE: `${namespace}-bare` });
		const server = await startProcess("scripts/run-node.ts", { ...env, NODE_ID: "wire-actors", SERVICES: "mesh", PORT: "0", LOG_LEVEL: "info" }, "Service 'mesh' started");
		const bare = new ServiceBroker({ namespace: `${namespace}-bare`, nodeID: "wire-bare-caller", transporter: { type: "NATS", options: { url: NATS_URL } }, logger: false });
		const settings = loadSettings({ ...process.env, ...env, NODE_ID: "wire-project-caller" });
		const project = new ServiceBroker(createBrokerOptions(settings, await resolveTransport(settings)));
		await Promise.all([bare.start(), project.start()]);
		await Promise.all([bare.waitForServices("echo"), project.waitForServices("mesh")]);
		if (spy) await idleTraffic(spy);
		const user = { id: "bench", roles: ["admin"], teams: [] };
		for (let round = 0; round < Number(process.env.ROUNDS ?? 1); round++) {
			await measure("bare Moleculer, same call", spy, bareServer.pid!, nats.pid!, () => bare.call("echo.echo", { message: "hello mesh" }, { meta: { user } }));
			await measure("project", spy, server.pid!, nats.pid!, () => project.call("mesh.echo", { message: "hello mesh" }, { meta: { user } }));
		}
		await Promise.all([bare.stop(), project.stop()]);
	} finally {
		await spyConnection?.close();
		await stopProcesses();
		nats.kill();
	}
}

runBench(main);
