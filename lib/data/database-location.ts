/**
 * Where a process finds PostgreSQL: the configured DATABASE_URL / DB_* variables, or — in development,
 * when none is configured — the embedded server of dev/embedded-postgres.ts. One helper for the node
 * runtime and the scripts (migrate, audit:export). dev/ is loaded lazily, on that development-only path:
 * the production image ships neither dev/ nor the embedded-postgres package, and production settings
 * refuse to start without a configured database.
 */
import type { EmbeddedPostgresHandle } from "../../dev/embedded-postgres";
import type { MeshSettings } from "../runtime/settings";

export type DatabaseLocationSettings = Pick<MeshSettings, "database" | "embeddedPgDir" | "embeddedPgPort">;

export interface DatabaseLocation {
	url: string;
	/** set when the embedded server serves this process (its notes are for the operator's log) */
	embedded: EmbeddedPostgresHandle | null;
	/** stops the embedded server if this process started it; nothing otherwise */
	release(): Promise<void>;
}

export async function locateDatabase(settings: DatabaseLocationSettings): Promise<DatabaseLocation> {
	if (settings.database.url) return { url: settings.database.url, embedded: null, release: async () => undefined };
	const { startEmbeddedPostgres } = await import("../../dev/embedded-postgres");
	const embedded = await startEmbeddedPostgres(settings.embeddedPgDir, settings.embeddedPgPort);
	return { url: embedded.url, embedded, release: async () => (embedded.owned ? embedded.stop() : undefined) };
}

/** Runs `work` against the database, then stops an embedded server this call started. */
export async function withDatabase<T>(settings: DatabaseLocationSettings, work: (url: string) => Promise<T>): Promise<T> {
	const location = await locateDatabase(settings);
	try {
		return await work(location.url);
	} finally {
		await location.release();
	}
}
