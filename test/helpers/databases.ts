/**
 * A PostgreSQL database of its own for a test file (on the machine's server), dropped afterwards.
 * Suites whose nodes run singleton duties over shared tables (outbox, leases) need this isolation.
 */
import { Client } from "pg";
import { LOCAL_DATABASE_URL, LOCAL_NATS_URL } from "./requirements";

const created: string[] = [];

async function admin<T>(work: (c: Client) => Promise<T>): Promise<T> {
	const client = new Client({ connectionString: LOCAL_DATABASE_URL });
	await client.connect();
	try {
		return await work(client);
	} finally {
		await client.end();
	}
}

export async function freshDatabase(prefix = "t"): Promise<string> {
	const name = `${prefix}_${process.pid}_${Math.floor(Math.random() * 1e9)}`;
	await admin(c => c.query(`CREATE DATABASE ${name}`));
	created.push(name);
	const url = new URL(LOCAL_DATABASE_URL);
	url.pathname = `/${name}`;
	return url.toString();
}

/** Call from afterAll: drops every database this file created (connections still open are cut). */
export async function dropFreshDatabases(): Promise<void> {
	await admin(async c => {
		for (const name of created.splice(0)) await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
	}).catch(() => undefined);
}

export async function query<T extends object>(url: string, sql: string, params: unknown[] = []): Promise<T[]> {
	const client = new Client({ connectionString: url });
	await client.connect();
	try {
		return (await client.query<T>(sql, params)).rows;
	} finally {
		await client.end();
	}
}

/** Subject prefix and JetStream stream of a test mesh: tests share one NATS server and must not overlap. */
export const subjectPrefixFor = (namespace: string) => namespace.replace(/-/g, "_");
export const streamFor = (namespace: string) => `T_${subjectPrefixFor(namespace).toUpperCase()}`;

/** Env for nodes of a test mesh with its own namespace, database, subjects and stream. */
export function isolatedMeshEnv(namespace: string, databaseUrl: string, jwtSecret: string): Record<string, string> {
	return {
		MESH_NAMESPACE: namespace,
		NATS_URL: LOCAL_NATS_URL,
		DATABASE_URL: databaseUrl,
		JWT_SECRET: jwtSecret,
		// One client IP sends all test traffic; per-client limits would measure the limiter.
		RATE_LIMIT_PER_KEY: "0",
		WS_HANDSHAKE_RATE: "0",
		WS_MAX_CONNECTIONS_PER_ADDRESS: "0",
		EVENTS_SUBJECT_PREFIX: subjectPrefixFor(namespace),
		NATS_STREAM_EVENTS: streamFor(namespace),
	};
}
