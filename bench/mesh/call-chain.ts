/**
 * Investigation aid (not part of npm run bench): CPU nanoseconds per call of the middleware chains alone, for
 * each variant of bench/mesh/call-cost-variants.ts: the chain a caller wraps around a remote call (its inner
 * handler answers at once instead of going to NATS) and the chain a serving node runs for a call from another
 * node, down to mesh.echo's handler. No transport, so what each component costs is not buried in the
 * serialisation and socket work of the whole call. Each variant runs in a process of its own (a shared process
 * would let one variant's shapes slow another's calls), BENCH_ROUNDS times (default 5), taking turns; the
 * least disturbed (fastest) run of each is reported: on a shared machine the spread between runs is larger
 * than most components' cost, and other work only ever adds to a run's CPU time.
 * `node --import tsx bench/mesh/call-chain.ts`
 */
import { spawnSync } from "child_process";
import path from "path";
import { Context, ServiceBroker, type ActionEndpoint } from "moleculer";
import { loadAverage, machine, runBench, table } from "../lib/harness";
import { costVariants, echoService, variantOptions } from "./call-cost-variants";

const CALLS = Number(process.env.CHAIN_CALLS ?? 200_000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);

type Handler = (ctx: Context) => Promise<unknown>;

/** CPU ns per call of `call`, 100 at a time, after a warm-up. */
async function nsPerCall(call: () => Promise<unknown>): Promise<number> {
	const loop = async (count: number) => {
		let left = count;
		await Promise.all(Array.from({ length: 100 }, async () => {
			while (left-- > 0) await call();
		}));
	};
	await loop(CALLS / 4);
	const before = process.cpuUsage();
	await loop(CALLS);
	const used = process.cpuUsage(before);
	return ((used.user + used.system) * 1000) / CALLS;
}

async function measureVariant(index: number): Promise<{ caller: number; server: number }> {
	const variant = costVariants()[index];
	const options = await variantOptions(variant, index, "caller", { ...(process.env as Record<string, string>), MESH_NAMESPACE: `chain-${process.pid}` });
	const broker = new ServiceBroker({ ...options, transporter: undefined });
	broker.createService(echoService(variant, broker.nodeID));
	await broker.start();
	const actionName = variant.edit ? "mesh.echo" : "echo.echo";
	const localEp = broker.registry.getActionEndpoints(actionName)!.localEndpoints[0];
	const served = localEp.action.handler as unknown as Handler;
	const params = { message: "hello mesh" };
	const meta = { user: { id: "bench", roles: ["admin"], teams: [] } };
	const answer = { message: "hello mesh", nodeID: "server", requestID: "r", user: "bench" };

	// The caller's chain around a remote endpoint of the same action (its definition as gossiped: no handler).
	const definition = { ...localEp.action, handler: undefined };
	const remoteEp = { id: "server-node", name: `server-node:${actionName}`, local: false, action: definition, node: { id: "server-node" } } as unknown as ActionEndpoint;
	const reply: Handler = () => Promise.resolve(answer);
	const remote = broker.middlewares.wrapHandler("remoteAction", reply, definition) as unknown as Handler;
	const caller = await nsPerCall(() => {
		const ctx = Context.create(broker, remoteEp, params, { meta });
		return remote(ctx);
	});

	// The serving node's chain for a call that came from another node (as Transit#_requestHandler builds it).
	const server = await nsPerCall(() => {
		const ctx = new Context(broker, localEp);
		ctx.setParams({ ...params });
		ctx.meta = { ...meta };
		ctx.nodeID = "caller-node";
		ctx.options = { timeout: 5_000 };
		return served(ctx);
	});
	await broker.stop();
	return { caller, server };
}

async function main(): Promise<void> {
	if (process.env.CHAIN_VARIANT) {
		process.stdout.write(JSON.stringify(await measureVariant(Number(process.env.CHAIN_VARIANT))) + "\n");
		return;
	}
	const loadAtStart = loadAverage();
	const variants = costVariants();
	const results = variants.map((): Array<{ caller: number; server: number }> => []);
	for (let r = 0; r < ROUNDS; r++) {
		for (let k = 0; k < variants.length; k++) {
			const i = (k + r) % variants.length;
			const child = spawnSync(process.execPath, ["--import", "tsx", path.join(__dirname, "call-chain.ts")], {
				env: { ...process.env, CHAIN_VARIANT: String(i), LOG_LEVEL: "warn", JWT_SECRET: "chain-secret-0123456789abcdef0123456789", DATABASE_URL: process.env.DATABASE_URL ?? "postgres://root@127.0.0.1:5432/test" },
				encoding: "utf8",
			});
			const line = child.stdout.trim().split("\n").pop() ?? "";
			if (child.status !== 0 || !line.startsWith("{")) throw new Error(`variant ${variants[i].name} failed: ${child.stderr.slice(-2000)}`);
			results[i].push(JSON.parse(line));
		}
		process.stdout.write(`round ${r + 1}/${ROUNDS} done (load ${loadAverage()})\n`);
	}
	const figures = results.map(rs => ({ caller: Math.min(...rs.map(x => x.caller)), server: Math.min(...rs.map(x => x.server)) }));
	const project = figures[1];
	const rows = variants.map((v, i) => [
		v.name,
		Math.round(figures[i].caller),
		Math.round(figures[i].server),
		i < 2 ? "" : `${Math.round(project.caller - figures[i].caller)} / ${Math.round(project.server - figures[i].server)}`,
	]);
	process.stdout.write(
		`\nRun ${new Date().toISOString()} on ${machine()}; load average ${loadAtStart} at the start and ${loadAverage()} at the end; ` +
			`${CALLS} calls per measurement, 100 at a time, fastest of ${ROUNDS} processes per variant.\n\n` +
			table(["variant", "caller chain ns/call", "serving chain ns/call (incl. mesh.echo)", "saved vs project ns: caller / server"], rows) +
			"\n",
	);
}

runBench(main);
