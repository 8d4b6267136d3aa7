/**
 * The one place that opens PostgreSQL connections: Sequelize (for moleculer-db) over pg.
 */
import { Sequelize } from "sequelize";
import type { DatabaseSettings } from "./settings";

export function createSequelize(database: DatabaseSettings & { url: string }, poolMax = 10): Sequelize {
	return new Sequelize(database.url, {
		dialect: "postgres",
		logging: false,
		dialectOptions: database.ssl ? { ssl: { require: true, rejectUnauthorized: false } } : {},
		pool: { max: poolMax, min: 0, idle: 10_000, acquire: 5_000 },
	});
}

export interface DependencyStatus {
	status: "up" | "down";
	latency_ms?: number;
	error?: string;
}

/** SELECT 1 with a deadline, so that a hung database makes /health say "down" instead of hanging too. */
export async function pingDatabase(sequelize: Sequelize, timeoutMs = 1_500): Promise<DependencyStatus> {
	const started = Date.now();
	let timer: NodeJS.Timeout | undefined;
	try {
		await Promise.race([
			sequelize.query("SELECT 1"),
			new Promise((_, reject) => {
				timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
			}),
		]);
		return { status: "up", latency_ms: Date.now() - started };
	} catch (err) {
		return { status: "down", error: (err as Error).message };
	} finally {
		clearTimeout(timer);
	}
}
