/**
 * The embedded default for root under a private directory (/root is 0700, and so is a clone made in
 * `mktemp -d`): PostgreSQL runs as the 'postgres' user, which cannot enter the checkout, so the package
 * runs from a copy outside it. A real server from a checkout under a 0700 directory: it starts, answers
 * SQL, keeps its data over a restart, and the private directory is left as it was.
 */
import fs from "fs";
import os from "os";
import path from "path";
import { Client } from "pg";
import { freePort, ROOT, startPgServer } from "../helpers/cluster";

const asRoot = os.userInfo().uid === 0;
if (!asRoot) process.stdout.write('SKIP "embedded PostgreSQL for root under a private directory": only root runs PostgreSQL as another user\n');
// Skipped on purpose when not root: the situation it tests cannot arise (PostgreSQL then runs as the caller).
const describeAsRoot = asRoot ? describe : describe.skip;

async function query(url: string, sql: string): Promise<unknown[]> {
	const client = new Client({ connectionString: url });
	await client.connect();
	try {
		return (await client.query(sql)).rows;
	} finally {
		await client.end();
	}
}

describeAsRoot("embedded PostgreSQL for root under a private directory", () => {
	const base = fs.mkdtempSync(path.join(os.tmpdir(), "private-"));
	const outside = fs.mkdtempSync(path.join(os.tmpdir(), "outside-"));
	const checkout = path.join(base, "checkout");
	afterAll(() => {
		fs.rmSync(base, { recursive: true, force: true });
		fs.rmSync(outside, { recursive: true, force: true });
	});

	it("runs from a copy outside the checkout, keeps its data there over a restart, and leaves the private directory closed", async () => {
		fs.chmodSync(outside, 0o755);
		fs.mkdirSync(checkout);
		fs.symlinkSync(path.join(ROOT, "node_modules"), path.join(checkout, "node_modules"));
		const port = await freePort();
		const placement = { checkout, outside };

		const first = await startPgServer(path.join(checkout, "data", "pg"), port, placement);
		try {
			expect(first.notes).toEqual([expect.stringContaining(`under ${base}, which the 'postgres' user cannot enter (it is not changed)`)]);
			await query(first.url, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)");
			const [{ data_directory }] = (await query(first.url, "SHOW data_directory")) as Array<{ data_directory: string }>;
			expect(data_directory.startsWith(path.join(outside, "data") + path.sep)).toBe(true);
		} finally {
			expect(await first.stop()).toBe(0);
		}

		const second = await startPgServer(path.join(checkout, "data", "pg"), port, placement);
		try {
			expect(await query(second.url, "SELECT n FROM kept")).toEqual([{ n: 42 }]);
		} finally {
			expect(await second.stop()).toBe(0);
		}
		expect(fs.statSync(base).mode & 0o777).toBe(0o700);
	});
});
