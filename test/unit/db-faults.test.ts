/**
 * Which errors are database faults (retryable 503) and which stay bugs; the error crossing the mesh
 * typed; which queries count as idempotent reads; host lists. The real errors, from a real
 * PostgreSQL, are checked in test/integration/db-faults.test.ts.
 */
import { Errors } from "moleculer";
import { asDatabaseFault, classifyDbFault, databaseLimitError, DatabaseUnavailableError, DB_FAULT_CLASSES, isDatabaseFault, MeshErrorRegenerator, type DbFaultClass } from "../../lib/data/db-faults";
import { backoffWithJitter, DatabaseMonitor, isIdempotentRead } from "../../lib/data/db-guard";
import { parseDatabaseTargets } from "../../lib/data/db-hosts";
import { formatLogLine } from "../../lib/runtime/logger";
import { asWsError } from "../../lib/realtime/socket-errors";
import { resolveDatabaseSettings, SettingsError } from "../../lib/runtime/settings";

/** pg's error shape (code = SQLSTATE) wrapped the way Sequelize wraps it (parent/original). */
function sequelizeWrapped(name: string, code: string | undefined, message: string): Error {
	const pgError = Object.assign(new Error(message), { code });
	return Object.assign(new Error(message), { name, parent: pgError, original: pgError });
}

describe("classifyDbFault", () => {
	const faults: Array<[string, unknown, DbFaultClass]> = [
		["connection refused (Sequelize)", sequelizeWrapped("SequelizeConnectionRefusedError", "ECONNREFUSED", "connect ECONNREFUSED 127.0.0.1:5432"), "connection"],
		["connection reset", Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET" }), "connection"],
		["broken pipe", Object.assign(new Error("write EPIPE"), { code: "EPIPE" }), "connection"],
		["connection terminated (no code)", sequelizeWrapped("SequelizeDatabaseError", undefined, "Connection terminated unexpectedly"), "connection"],
		["client not queryable", new Error("Client has encountered a connection error and is not queryable"), "connection"],
		["admin shutdown 57P01", sequelizeWrapped("SequelizeDatabaseError", "57P01", "terminating connection due to administrator command"), "shutdown"],
		["crash shutdown 57P02", sequelizeWrapped("SequelizeDatabaseError", "57P02", "terminating connection because of crash of another server process"), "shutdown"],
		["starting up 57P03", sequelizeWrapped("SequelizeConnectionError", "57P03", "the database system is starting up"), "starting"],
		["shutting down 57P03", sequelizeWrapped("SequelizeConnectionError", "57P03", "the database system is shutting down"), "starting"],
		["08006 connection failure", sequelizeWrapped("SequelizeDatabaseError", "08006", "connection failure"), "connection"],
		["08P01 protocol violation", sequelizeWrapped("SequelizeDatabaseError", "08P01", "protocol violation"), "connection"],
		["too many connections 53300", sequelizeWrapped("SequelizeConnectionError", "53300", "sorry, too many clients already"), "connection"],
		["read-only transaction 25006", sequelizeWrapped("SequelizeDatabaseError", "25006", "cannot execute INSERT in a read-only transaction"), "not-primary"],
		["serialization 40001", sequelizeWrapped("SequelizeDatabaseError", "40001", "could not serialize access due to concurrent update"), "serialization"],
		["deadlock 40P01", sequelizeWrapped("SequelizeDatabaseError", "40P01", "deadlock detected"), "deadlock"],
		["pool acquire timeout", Object.assign(new Error("Operation timeout"), { name: "SequelizeConnectionAcquireTimeoutError" }), "pool-timeout"],
		["connect timed out", Object.assign(new Error("Connection timed out"), { name: "SequelizeConnectionTimedOutError" }), "connection"],
	];
	it.each(faults.map(([name, err, fault]) => ({ name, err, fault })))("$name → $fault", ({ err, fault }) => {
		expect(classifyDbFault(err)).toBe(fault);
		const converted = asDatabaseFault(err) as DatabaseUnavailableError;
		expect(converted).toBeInstanceOf(DatabaseUnavailableError);
		expect(converted).toBeInstanceOf(Errors.MoleculerRetryableError);
		expect(converted).toMatchObject({ code: 503, type: "SERVICE_UNAVAILABLE", retryable: true, data: { dependency: "database", fault } });
		// Nothing of the original (SQL, hosts, values) reaches the client.
		expect(JSON.stringify({ message: converted.message, data: converted.data })).not.toMatch(/127\.0\.0\.1|INSERT|ECONN/);
	});

	const bugs: Array<[string, unknown]> = [
		["syntax error 42601", sequelizeWrapped("SequelizeDatabaseError", "42601", 'syntax error at or near "SELEC"')],
		["undefined column 42703", sequelizeWrapped("SequelizeDatabaseError", "42703", 'column "nope" does not exist')],
		["unique violation 23505", sequelizeWrapped("SequelizeUniqueConstraintError", "23505", "duplicate key value violates unique constraint")],
		["bad password 28P01", sequelizeWrapped("SequelizeAccessDeniedError", "28P01", "password authentication failed")],
		["a TypeError", new TypeError("Cannot read properties of undefined")],
		["a client error", new Errors.MoleculerClientError("not found", 404, "NOT_FOUND")],
		["not an error", "a string"],
	];
	it.each(bugs.map(([name, err]) => ({ name, err })))("$name stays what it was (a bug is a 500, a client error a 4xx)", ({ err }) => {
		expect(classifyDbFault(err)).toBeNull();
		expect(asDatabaseFault(err)).toBe(err);
	});
});

describe("database limits: one classifier, a 503 naming the setting, not an unavailable database", () => {
	const limits: Array<[string, unknown, string, string]> = [
		["statement timeout 57014", sequelizeWrapped("SequelizeDatabaseError", "57014", "canceling statement due to statement timeout"), "QUERY_TIMEOUT", "DB_STATEMENT_TIMEOUT_MS"],
		["idle-in-transaction timeout 25P03", sequelizeWrapped("SequelizeDatabaseError", "25P03", "terminating connection due to idle-in-transaction timeout"), "DATABASE_SESSION_ENDED", "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS"],
		// The query after the session ended: pg says only "not queryable"; the guard's client adds the SQLSTATE that ended it.
		[
			"not queryable after a 25P03",
			sequelizeWrapped("SequelizeDatabaseError", "25P03", "Client has encountered a connection error and is not queryable"),
			"DATABASE_SESSION_ENDED",
			"DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
		],
	];
	it.each(limits.map(([name, err, type, limit]) => ({ name, err, type, limit })))("$name → $type naming $limit", ({ err, type, limit }) => {
		expect(classifyDbFault(err)).toBeNull();
		const converted = asDatabaseFault(err);
		expect(converted).not.toBeInstanceOf(DatabaseUnavailableError);
		expect(converted).toBeInstanceOf(Errors.MoleculerServerError);
		expect(converted).toMatchObject({ code: 503, type, retryable: true, data: { limit } });
		expect(databaseLimitError(converted)).toBeNull();
		expect(asDatabaseFault(converted)).toBe(converted);
	});
	it("leaves a connection lost without a limit a retryable connection fault", () => {
		expect(databaseLimitError(new Error("Client has encountered a connection error and is not queryable"))).toBeNull();
	});
});

describe("DatabaseUnavailableError on the mesh", () => {
	it.each([...DB_FAULT_CLASSES])("%s arrives typed and retryable after a round trip through Moleculer's error packet", fault => {
		const regenerator = new MeshErrorRegenerator();
		regenerator.init({ nodeID: "callee" } as never);
		const plain = JSON.parse(JSON.stringify(regenerator.extractPlainError(new DatabaseUnavailableError(fault) as never, {})));
		const restored = regenerator.restore(plain, { sender: "callee" });
		expect(restored).toBeInstanceOf(DatabaseUnavailableError);
		expect(isDatabaseFault(restored)).toBe(true);
		expect(restored).toMatchObject({ code: 503, type: "SERVICE_UNAVAILABLE", retryable: true, data: { fault } });
	});
	it("leaves other errors to Moleculer's own regenerator", () => {
		const regenerator = new MeshErrorRegenerator();
		regenerator.init({ nodeID: "callee" } as never);
		const restored = regenerator.restore({ name: "MoleculerClientError", message: "x", code: 404, type: "NOT_FOUND" } as never, {});
		expect(restored).toBeInstanceOf(Errors.MoleculerClientError);
		expect(isDatabaseFault(restored)).toBe(false);
	});
});

describe("isIdempotentRead", () => {
	const cases: Array<[string, string, object | undefined, boolean]> = [
		["a SELECT typed SELECT", "SELECT * FROM memories WHERE id = $1", { type: "SELECT" }, true],
		["a CTE-less select with leading space", "  select count(*) from outbox", { type: "SELECT" }, true],
		["a SELECT inside a transaction", "SELECT * FROM memories", { type: "SELECT", transaction: {} }, false],
		["SELECT … FOR UPDATE", "SELECT * FROM memories WHERE id = $1 FOR UPDATE", { type: "SELECT" }, false],
		["an advisory lock", "SELECT pg_advisory_xact_lock(1)", { type: "SELECT" }, false],
		["nextval", "SELECT nextval('s')", { type: "SELECT" }, false],
		["an INSERT … RETURNING typed SELECT", "INSERT INTO leases VALUES ($1) RETURNING *", { type: "SELECT" }, false],
		["an untyped SELECT (RAW: health ping)", "SELECT 1", {}, false],
		["no options", "SELECT 1", undefined, false],
	];
	it.each(cases.map(([name, sql, options, expected]) => ({ name, sql, options, expected })))("$name → $expected", ({ sql, options, expected }) => {
		expect(isIdempotentRead(sql, options as never)).toBe(expected);
	});
});

describe("backoff and the monitor", () => {
	it("backs off with full jitter under a cap", () => {
		for (let attempt = 0; attempt < 10; attempt++) {
			for (let i = 0; i < 50; i++) {
				const ms = backoffWithJitter(attempt);
				expect(ms).toBeGreaterThanOrEqual(0);
				expect(ms).toBeLessThanOrEqual(Math.min(200, 20 * 2 ** attempt));
			}
		}
	});

	it("logs one line per state change, however many calls fail, and releases waiters when a probe succeeds", async () => {
		let healthy = false;
		const lines: string[] = [];
		const monitor = new DatabaseMonitor(async () => {
			if (!healthy) throw new Error("still down");
		});
		monitor.attachLogger({ warn: (m: string) => lines.push(`warn ${m}`), info: (m: string) => lines.push(`info ${m}`) } as never);
		for (let i = 0; i < 100; i++) monitor.reportFault("connection", new Error("ECONNREFUSED"));
		expect(monitor.state).toBe("down");
		const waiting = monitor.waitUntilUp(5_000);
		expect(await monitor.waitUntilUp(50)).toBe(false);
		healthy = true;
		expect(await waiting).toBe(true);
		expect(monitor.state).toBe("up");
		expect(lines).toHaveLength(2);
		expect(lines[0]).toMatch(/^warn Database unavailable \(connection\)/);
		expect(lines[1]).toMatch(/^info Database available again after \d+ ms \(100 calls failed meanwhile\)/);
		monitor.close();
	});
});

describe("database hosts", () => {
	it("splits a multi-host URL and rebuilds one URL per host", () => {
		const targets = parseDatabaseTargets("postgres://u:p%40ss@h1:5432,h2:6543,[::1]:7000/db?sslmode=require");
		expect(targets.hosts).toEqual([
			{ host: "h1", port: 5432 },
			{ host: "h2", port: 6543 },
			{ host: "::1", port: 7000 },
		]);
		expect(targets.urlFor(targets.hosts[1])).toBe("postgres://u:p%40ss@h2:6543/db?sslmode=require");
		expect(targets.urlFor(targets.hosts[2])).toBe("postgres://u:p%40ss@[::1]:7000/db?sslmode=require");
		expect(parseDatabaseTargets("postgres://root@127.0.0.1:5432/test").hosts).toEqual([{ host: "127.0.0.1", port: 5432 }]);
	});

	it("builds the URL from DB_HOSTS and the DB_* credentials, and names DB_HOSTS when it is malformed", () => {
		expect(resolveDatabaseSettings({ DB_HOSTS: "db1:5432, db2:5433", DB_USER: "app", DB_PASSWORD: "s3cret", DB_NAME: "daarion" }).url).toBe(
			"postgres://app:s3cret@db1:5432,db2:5433/daarion",
		);
		for (const bad of ["db1:notaport", "db1:0", ":5432", ","]) {
			expect(() => resolveDatabaseSettings({ DB_HOSTS: bad })).toThrow(SettingsError);
			expect(() => resolveDatabaseSettings({ DB_HOSTS: bad })).toThrow(/DB_HOSTS/);
		}
	});
});

describe("error log lines", () => {
	it("keep the stack in err.stack, not in message (one line, valid JSON)", () => {
		const err = new Error("boom\nsecond line of detail");
		const line = JSON.parse(formatLogLine("error", ["HTTP 500 on GET /api/x", err], { nodeID: "n1", svc: "api" }));
		expect(line.message).toBe("HTTP 500 on GET /api/x boom");
		expect(line.message).not.toMatch(/\n/);
		expect(line.err).toMatchObject({ name: "Error", message: "boom\nsecond line of detail" });
		expect(line.err.stack).toMatch(/\n\s+at /);
	});
});

describe("socket acks", () => {
	it("carry a database fault as the same retryable 503, and hide a bug behind a plain 500", () => {
		expect(asWsError(new DatabaseUnavailableError("shutdown"))).toEqual({
			code: 503,
			type: "SERVICE_UNAVAILABLE",
			message: "The database is restarting; retry",
			retryable: true,
		});
		const bug = asWsError(new TypeError("Cannot read properties of undefined (reading 'x')"));
		expect(bug).toEqual({ code: 500, type: "INTERNAL", message: "Internal error" });
	});

	it("pass a refusal already in the socket shape through with its own fields only, and keep a full queue retryable", () => {
		const streamed = { name: "MoleculerRetryableError", message: "No node answered", code: 503, type: "NO_NODE_ANSWERED", retryable: true, request_id: "r1", data: { attempts: [] } };
		expect(asWsError(streamed)).toEqual({ code: 503, type: "NO_NODE_ANSWERED", message: "No node answered", retryable: true });
		expect(asWsError({ code: 429, type: "RATE_LIMITED", message: "slow down", retryAfter: 2 })).toEqual({ code: 429, type: "RATE_LIMITED", message: "slow down", retryAfter: 2 });
		const full = Object.assign(new Error("queue full"), { code: 429, type: "QUEUE_FULL", retryable: true });
		expect(asWsError(full)).toEqual({ code: 429, type: "QUEUE_FULL", message: "queue full", retryable: true });
	});
});
