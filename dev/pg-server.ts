/**
 * The embedded PostgreSQL in a process of its own:
 *   node --import tsx dev/pg-server.ts DIR PORT [CHECKOUT OUTSIDE]   (see startEmbeddedPostgres's options)
 * `npm start` runs it in a session of its own (startPgServerProcess), so a Ctrl-C in the terminal reaches the nodes
 * and the launcher but not PostgreSQL: the nodes finish with their database still up (they release their leases and
 * mark their devices offline on the way out), and only then does the launcher stop it. Tests use it to stop and
 * restart a database under a running node.
 * Prints each note as "NOTE <text>", then "READY <url> owned" when it accepts connections. A server already answering
 * on PORT is not this process's: it prints "READY <url> shared" and exits. SIGTERM, SIGINT, or the end of its
 * standard input (its owner is gone, even by SIGKILL) stops PostgreSQL and exits 0.
 */
import { startEmbeddedPostgres } from "./embedded-postgres";

async function main(): Promise<void> {
	const [dir, port, checkout, outside] = process.argv.slice(2);
	const server = await startEmbeddedPostgres(dir, Number(port), { checkout, outside });
	for (const note of server.notes) process.stdout.write(`NOTE ${note}\n`);
	process.stdout.write(`READY ${server.url} ${server.owned ? "owned" : "shared"}\n`);
	if (!server.owned) return;
	let stopping = false;
	const stop = () => {
		if (stopping) return;
		stopping = true;
		void server.stop().finally(() => process.exit(0));
	};
	process.on("SIGTERM", stop);
	process.on("SIGINT", stop);
	process.stdin.on("end", stop);
	process.stdin.resume();
}

main().catch(err => {
	process.stderr.write(`pg-server failed: ${(err as Error).message}\n`);
	process.exit(1);
});
