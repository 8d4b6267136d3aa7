/**
 * Pins the private parts of Sequelize's PostgreSQL dialect (and the pg client flags) that
 * lib/data/sequelize-internals.ts reaches into, on real instances against the machine's PostgreSQL
 * (read-only: SELECTs on the shared test database): an upgrade that renames or reshapes them fails
 * here, not in the database guard, the primary follower or the hot point reads.
 */
import { Sequelize } from "sequelize";
import {
	isQueryableClient,
	isReusableClient,
	markClientInvalid,
	poolCounters,
	replacePgClientClass,
	withPooledClient,
	wrapPoolAcquire,
	type PooledPgClient,
} from "../../lib/data/sequelize-internals";
import { describeWithPostgres, LOCAL_DATABASE_URL } from "../helpers/requirements";

const open = () => new Sequelize(LOCAL_DATABASE_URL, { dialect: "postgres", logging: false, pool: { max: 2, min: 0 } });

describeWithPostgres("Sequelize internals the data layer relies on", () => {
	const instances: Sequelize[] = [];
	const fresh = () => {
		const sequelize = open();
		instances.push(sequelize);
		return sequelize;
	};
	afterAll(() => Promise.all(instances.map(s => s.close())));

	it("hands out a pooled pg client with pg's query(sql, values), takes it back, and counts the pool", async () => {
		const sequelize = fresh();
		const rows = await withPooledClient(sequelize, async client => (await client.query<{ n: number }>("SELECT $1::int AS n", [7])).rows);
		expect(rows).toEqual([{ n: 7 }]);
		expect(poolCounters(sequelize)).toEqual({ size: 1, idle: 1, waiting: 0 });
	});

	it("routes Sequelize's own queries through a wrapped acquire, and returns the unwrapped one", async () => {
		const sequelize = fresh();
		let acquired = 0;
		const original = wrapPoolAcquire(sequelize, acquire => options => {
			acquired++;
			return acquire(options);
		});
		await sequelize.query("SELECT 1");
		expect(acquired).toBe(1);
		await withPooledClient(sequelize, client => client.query("SELECT 1"), original);
		expect(acquired).toBe(1);
	});

	it("constructs new clients from a replaced pg Client class", async () => {
		const sequelize = fresh();
		const made: unknown[] = [];
		const replaced = replacePgClientClass(sequelize, Base =>
			class Counted extends Base {
				constructor(...args: unknown[]) {
					super(...args);
					made.push(this);
				}
			},
		);
		expect(replaced).toBe(true);
		let client: PooledPgClient | null = null;
		await withPooledClient(sequelize, async c => (client = c));
		// Sequelize's first connection (it reads the server version) is made from it too.
		expect(made).toContain(client);
	});

	it("keeps pg's _queryable and _ending and the dialect's _invalid, and drops an invalid client from the pool", async () => {
		const sequelize = fresh();
		let first: PooledPgClient | null = null;
		await withPooledClient(sequelize, async client => {
			first = client;
			expect(isReusableClient(client)).toBe(true);
			expect(isQueryableClient(client)).toBe(true);
			markClientInvalid(client);
			expect(isReusableClient(client)).toBe(false);
		});
		// The dialect's pool validation reads the same flag: the next acquire gets another client.
		await withPooledClient(sequelize, async client => expect(client).not.toBe(first));

		await withPooledClient(sequelize, async client => {
			const pid = (await client.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0].pid;
			const dead = new Promise(resolve => (client as unknown as NodeJS.EventEmitter).once("error", resolve));
			await sequelize.query("SELECT pg_terminate_backend($1)", { bind: [pid] });
			await dead;
			expect(isQueryableClient(client)).toBe(false);
		});
	});
});
