/**
 * The guarded Sequelize of lib/data/database.ts against a real PostgreSQL (a fresh database of its own):
 * real faults become retryable 503s and real bugs do not; a read whose backend is terminated mid-query
 * is retried and answers; a write is not retried; serialization failures and deadlocks between two
 * concurrent transactions are retried until both are applied.
 */
import { Client } from "pg";
import { QueryTypes, Transaction, type Sequelize } from "sequelize";
import { DatabaseUnavailableError } from "../../lib/data/db-faults";
import { databaseGuardOf } from "../../lib/data/db-guard";
import { createSequelize, fastQuery } from "../../lib/data/database";
import { freePort } from "../helpers/cluster";
import { dropFreshDatabases, freshDatabase } from "../helpers/databases";
import { describeWithPostgres } from "../helpers/requirements";

jest.setTimeout(60_000);

const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms));

/** Two promises that both wait until both have arrived. */
function barrier(parties = 2): () => Promise<void> {
	let arrived = 0;
	let release!: () => void;
	const all = new Promise<void>(resolve => (release = resolve));
	return () => {
		if (++arrived === parties) release();
		return all;
	};
}

describeWithPostgres("database faults on a real PostgreSQL", () => {
	let url: string;
	let sequelize: Sequelize;
	let admin: Client;

	beforeAll(async () => {
		url = await freshDatabase("dbfaults");
		sequelize = createSequelize({ url, ssl: false });
		admin = new Client({ connectionString: url });
		await admin.connect();
		await admin.query("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL)");
		await admin.query("CREATE TABLE ledger (n int NOT NULL, who text NOT NULL)");
	});
	afterAll(async () => {
		await sequelize?.close();
		await admin?.end();
		await dropFreshDatabases();
	});

	/** Terminates the backend running `marker` as soon as it shows up in pg_stat_activity. */
	async function terminateWhenRunning(marker: string): Promise<number> {
		for (let i = 0; i < 200; i++) {
			const { rows } = await admin.query<{ pid: number }>("SELECT pid FROM pg_stat_activity WHERE query LIKE $1 AND pid <> pg_backend_pid()", [`%${marker}%`]);
			if (rows.length) {
				await admin.query("SELECT pg_terminate_backend($1)", [rows[0].pid]);
				return rows[0].pid;
			}
			await sleep(10);
		}
		throw new Error(`${marker} never ran`);
	}

	it("a database nobody listens on is a retryable 503 (connection), not a 500", async () => {
		const nowhere = createSequelize({ url: `postgres://root@127.0.0.1:${await freePort()}/test`, ssl: false });
		try {
			const err = await nowhere.query("INSERT INTO t VALUES (1)").catch(e => e);
			expect(err).toBeInstanceOf(DatabaseUnavailableError);
			expect(err).toMatchObject({ code: 503, type: "SERVICE_UNAVAILABLE", retryable: true, data: { fault: "connection" } });
			const txErr = await nowhere.transaction(async () => "never").catch(e => e);
			expect(txErr).toBeInstanceOf(DatabaseUnavailableError);
		} finally {
			await nowhere.close();
		}
	});

	it("a write whose backend is terminated (57P01) fails with a 503 and is not retried", async () => {
		const marker = `write_${Date.now()}`;
		const write = sequelize.query(`INSERT INTO ledger SELECT 1, '${marker}' FROM pg_sleep(1)`).catch(e => e);
		await terminateWhenRunning(marker);
		const err = await write;
		expect(err).toBeInstanceOf(DatabaseUnavailableError);
		expect(["shutdown", "connection"]).toContain(err.data.fault);
		expect((await admin.query("SELECT count(*)::int AS n FROM ledger WHERE who = $1", [marker])).rows[0].n).toBe(0);
	});

	it("a read whose backend is terminated mid-query is retried and answers (Sequelize query and fastQuery)", async () => {
		const marker = `read_${Date.now()}`;
		const read = sequelize.query<{ x: number }>(`SELECT 42 AS x, '${marker}' AS m FROM pg_sleep(0.1)`, { type: QueryTypes.SELECT });
		const killed = await terminateWhenRunning(marker);
		expect(await read).toEqual([{ x: 42, m: marker }]);
		expect(killed).toBeGreaterThan(0);

		const fastMarker = `fast_${Date.now()}`;
		const fast = fastQuery<{ y: number }>(sequelize, `SELECT 7 AS y, $1::text AS m FROM pg_sleep(0.1) /* ${fastMarker} */`, [fastMarker]);
		await terminateWhenRunning(fastMarker);
		expect(await fast).toEqual([{ y: 7, m: fastMarker }]);
	});

	it("a bug stays a bug: a syntax error or a missing column is not a database fault", async () => {
		for (const sql of ["SELEC 1", "SELECT nope FROM accounts"]) {
			const err = await sequelize.query(sql, { type: QueryTypes.SELECT }).catch(e => e);
			expect(err).not.toBeInstanceOf(DatabaseUnavailableError);
			expect(err.name).toBe("SequelizeDatabaseError");
		}
	});

	it("two SERIALIZABLE transactions that conflict (40001): the loser is retried, both are applied", async () => {
		await admin.query("TRUNCATE ledger");
		const bothRead = barrier();
		const attempts = { a: 0, b: 0 };
		const run = (who: "a" | "b") =>
			sequelize.transaction({ isolationLevel: Transaction.ISOLATION_LEVELS.SERIALIZABLE }, async t => {
				attempts[who]++;
				const [{ n }] = await sequelize.query<{ n: number }>("SELECT count(*)::int AS n FROM ledger", { type: QueryTypes.SELECT, transaction: t });
				// First attempts read the same snapshot before either writes: one must fail to serialize.
				if (attempts[who] === 1) await bothRead();
				await sequelize.query("INSERT INTO ledger (n, who) VALUES ($1, $2)", { bind: [n + 1, who], transaction: t });
				return n + 1;
			});
		const results = await Promise.all([run("a"), run("b")]);
		expect(results.sort()).toEqual([1, 2]);
		expect(attempts.a + attempts.b).toBeGreaterThanOrEqual(3);
		const { rows } = await admin.query<{ n: number; who: string }>("SELECT n, who FROM ledger ORDER BY n");
		expect(rows.map(r => r.n)).toEqual([1, 2]);
		expect(rows.map(r => r.who).sort()).toEqual(["a", "b"]);
	});

	it("two transactions that deadlock (40P01): the victim is retried, both are applied", async () => {
		await admin.query("DELETE FROM accounts; INSERT INTO accounts VALUES (1, 100), (2, 100)");
		const bothLocked = barrier();
		const attempts = { a: 0, b: 0 };
		const transfer = (who: "a" | "b", from: number, to: number) =>
			sequelize.transaction(async t => {
				attempts[who]++;
				await sequelize.query("UPDATE accounts SET balance = balance - 10 WHERE id = $1", { bind: [from], transaction: t });
				if (attempts[who] === 1) await bothLocked();
				await sequelize.query("UPDATE accounts SET balance = balance + 10 WHERE id = $1", { bind: [to], transaction: t });
			});
		await Promise.all([transfer("a", 1, 2), transfer("b", 2, 1)]);
		expect(attempts.a + attempts.b).toBe(3);
		const { rows } = await admin.query<{ id: number; balance: number }>("SELECT id, balance FROM accounts ORDER BY id");
		// Both transfers applied once each: the balances are back where they started, and no money vanished.
		expect(rows).toEqual([
			{ id: 1, balance: 100 },
			{ id: 2, balance: 100 },
		]);
	});

	it("the pool is refilled and the monitor is up again after every backend is terminated", async () => {
		const guard = databaseGuardOf(sequelize)!;
		await Promise.all(Array.from({ length: 5 }, () => sequelize.query("SELECT pg_sleep(0.05)")));
		expect(guard.poolStats().size).toBeGreaterThan(0);
		await admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()");
		// The next read meets the dead connections (or their eviction), and answers anyway.
		const rows = await sequelize.query<{ ok: number }>("SELECT 1 AS ok", { type: QueryTypes.SELECT });
		expect(rows).toEqual([{ ok: 1 }]);
		expect(guard.monitor.state).toBe("up");
	});
});
