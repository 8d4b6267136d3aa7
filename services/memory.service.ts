/**
 * memory: scoped memories on PostgreSQL (moleculer-db with the Sequelize adapter over the node's own
 * connection pool). Access: personal → owner (or admin); team → members (JWT `teams`); public → any
 * user reads, owners write. Privacy: plain-text search covers only public, indexed memories;
 * confidential content is sealed with AES-256-GCM and appears in no log and no event. Every write
 * puts its events into the outbox in the same transaction (lib/data/outbox/enqueue.ts).
 */
import { randomUUID } from "crypto";
import type { Context, Service, ServiceSchema, ServiceSettingSchema } from "moleculer";
import { Errors } from "moleculer";
import { ConflictError, ForbiddenError, NotFoundError, PayloadTooLargeError } from "../lib/mesh/errors";
import DbService from "moleculer-db";
import SqlAdapter from "moleculer-db-adapter-sequelize";
import { DataTypes, QueryTypes, type Model, type ModelStatic, type Sequelize, type Transaction } from "sequelize";
import { isAdmin, requireUser, type MeshUser } from "../lib/http/auth";
import { fastQuery } from "../lib/data/database";
import { PointReadBatcher } from "../lib/data/point-read-batcher";
import { databaseOf, nodeContextOf } from "../lib/runtime/node-resources";
import { auditOutboxEvent } from "../lib/data/audit-events";
import { enqueueEvents, outboxInsert, type OutboxEvent } from "../lib/data/outbox/enqueue";
import { ringOutbox } from "../lib/data/outbox/doorbell";
import { actionPolicy } from "../lib/mesh/failover-policy";
import { open, seal } from "../lib/crypto/content-cipher";
import { IdempotentWritesMixin, type IdempotencyMeta, type IdempotentWriteMethods, type IdempotentWriteOptions, type KeyClaim } from "../mixins/idempotent-writes.mixin";
import { PUBLISHES } from "../lib/data/outbox/relay";

export const SCOPES = ["personal", "team", "public"] as const;
export const KINDS = ["fact", "dialog_summary", "event", "document"] as const;
/** Users and teams are separate namespaces: user "t1" is not team "t1". */
export const OWNER_TYPES = ["user", "team"] as const;
type Scope = (typeof SCOPES)[number];
type OwnerType = (typeof OWNER_TYPES)[number];

export interface MemoryRow {
	id: string;
	scope: Scope;
	owner_id: string;
	owner_type: OwnerType;
	kind: string;
	key: string;
	content: string | null;
	content_sealed: Buffer | null;
	key_id: string | null;
	metadata: Record<string, unknown>;
	indexed: boolean;
	confidential: boolean;
	version: number;
	created_at: Date;
	updated_at: Date;
}

/** What a create writes: every column but the ones PostgreSQL fills in. */
type NewMemory = Omit<MemoryRow, "metadata" | "created_at" | "updated_at"> & { metadata?: Record<string, unknown> };

/**
 * A new memory and its events in one statement: one round trip, atomic without BEGIN/COMMIT (every
 * data-modifying CTE runs exactly once, and either all of them commit or none). With an Idempotency-Key
 * the key's claim is a CTE of the same statement and the memory is written only FROM claimed; the events
 * only when the memory was written. Parameters: the claim's, then the memory's columns, then the events'.
 */
const INSERT_MEMORY_COLUMNS = ["id", "scope", "owner_id", "owner_type", "kind", "key", "content", "content_sealed", "key_id", "metadata", "indexed", "confidential"] as const;
/** Values in a SELECT list are typed by their casts, not by the columns they go into. */
const COLUMN_CASTS: Partial<Record<(typeof INSERT_MEMORY_COLUMNS)[number], string>> = { id: "::uuid", content_sealed: "::bytea", metadata: "::jsonb", indexed: "::boolean", confidential: "::boolean" };

function insertMemoryWithEvents(claim: KeyClaim | null, firstParam: number, outboxSql: string): string {
	const values = INSERT_MEMORY_COLUMNS.map((column, i) => {
		const param = `$${firstParam + i}${COLUMN_CASTS[column] ?? ""}`;
		return column === "metadata" ? `COALESCE(${param}, '{}'::jsonb)` : param;
	});
	return `WITH ${claim ? `${claim.cte},\n` : ""}created AS (INSERT INTO memories (${INSERT_MEMORY_COLUMNS.join(", ")}, version)
	SELECT ${values.join(", ")}, 1${claim ? " FROM claimed" : ""} RETURNING *),
events AS (${outboxSql})
SELECT * FROM created`;
}

export type MemoryView = Omit<MemoryRow, "content" | "content_sealed" | "key_id"> & { content: string };

/** moleculer-db reads the primary key column from `settings.idField`. */
interface MemorySettings extends ServiceSettingSchema {
	idField: string;
}

type MemoryContext<P> = Context<P, IdempotencyMeta & { user?: MeshUser }>;
interface MemoryMethods {
	checkContentSize(content: string): void;
	contentColumns(content: string, confidential: boolean): Pick<MemoryRow, "content" | "content_sealed" | "key_id">;
	view(row: MemoryRow): MemoryView;
	findRow(id: string, t?: Transaction): Promise<MemoryRow>;
	emitChange(t: Transaction, row: MemoryRow, action: "created" | "updated" | "deleted", actor: string, requestID?: string | null): Promise<void>;
	changeEvents(row: MemoryRow, action: "created" | "updated" | "deleted", actor: string, requestID?: string | null): OutboxEvent[];
	insertWithEvents(claim: KeyClaim | null, values: NewMemory, actor: string, requestID?: string | null): Promise<MemoryRow | undefined>;
	replayAsRead(user: MeshUser): IdempotentWriteOptions<MemoryView>;
}
type MemoryThis = Service<MemorySettings> &
	IdempotentWriteMethods &
	MemoryMethods & { adapter: { model: ModelStatic<Model>; init(broker: unknown, service: unknown): void }; rowsById: PointReadBatcher<MemoryRow> };

/** The node's shared pool: moleculer-db must not close it when this service stops. */
class SharedSequelizeAdapter extends SqlAdapter {
	disconnect(): Promise<void> {
		return Promise.resolve();
	}
}

const MODEL = {
	name: "memory",
	define: {
		id: { type: DataTypes.UUID, primaryKey: true, defaultValue: DataTypes.UUIDV4 },
		scope: DataTypes.TEXT,
		owner_id: DataTypes.TEXT,
		owner_type: DataTypes.TEXT,
		kind: DataTypes.TEXT,
		key: DataTypes.TEXT,
		content: DataTypes.TEXT,
		content_sealed: DataTypes.BLOB,
		key_id: DataTypes.TEXT,
		metadata: DataTypes.JSONB,
		indexed: DataTypes.BOOLEAN,
		confidential: DataTypes.BOOLEAN,
		version: DataTypes.INTEGER,
		created_at: DataTypes.DATE,
		updated_at: DataTypes.DATE,
	},
	// Schema comes from migrations/004; Sequelize must not invent columns or timestamps.
	options: { tableName: "memories", timestamps: false },
};

export function canRead(user: MeshUser, row: Pick<MemoryRow, "scope" | "owner_id" | "owner_type">): boolean {
	return isAdmin(user) || row.scope === "public" || isOwner(user, row);
}

/** Writers: the owner (the user, or a member of the owning team), or an admin. */
export function canWrite(user: MeshUser, row: Pick<MemoryRow, "scope" | "owner_id" | "owner_type">): boolean {
	return isAdmin(user) || isOwner(user, row);
}

/** The owner type decides which id space owner_id lives in: a user's id, or one of the token's teams. */
function isOwner(user: MeshUser, row: Pick<MemoryRow, "owner_id" | "owner_type">): boolean {
	return row.owner_type === "team" ? user.teams.includes(row.owner_id) : row.owner_id === user.id;
}

/** personal memories belong to a user, team memories to a team; public ones to either (default: user). */
function ownerTypeFor(scope: Scope, requested: OwnerType | undefined): OwnerType {
	const required: OwnerType | undefined = scope === "personal" ? "user" : scope === "team" ? "team" : undefined;
	if (required && requested && requested !== required) {
		throw new Errors.ValidationError(`A ${scope} memory is owned by a ${required}`, "VALIDATION_ERROR", [{ field: "owner_type", message: `must be "${required}" for scope ${scope}` }]);
	}
	return required ?? requested ?? "user";
}

function forbidden(what: string): Errors.MoleculerClientError {
	return new ForbiddenError(`Not allowed to ${what} this memory`, "FORBIDDEN");
}

function notFound(id: string): Errors.MoleculerClientError {
	return new NotFoundError(`Memory ${id} not found`, "NOT_FOUND", { id });
}

/** What events say about a memory: never its content. */
function eventPayload(row: MemoryRow, action: string, actor: string): Record<string, unknown> {
	return {
		action,
		actor,
		memory: { id: row.id, scope: row.scope, owner_id: row.owner_id, owner_type: row.owner_type, kind: row.kind, key: row.key, version: row.version, confidential: row.confidential, indexed: row.indexed },
		at: new Date().toISOString(),
	};
}

const ID = { type: "uuid" } as const;
const CONTENT = { type: "string", min: 1 } as const;
const METADATA = { type: "object", optional: true } as const;

/** moleculer-db reads `model` from the schema. */
const MemoryService: ServiceSchema<MemorySettings, Record<string, never>, Record<string, never>, MemoryThis> & { model: typeof MODEL } = {
	name: "memory",
	/** Published through the outbox (the event stream captures it): memory.{created|updated|deleted}.{scope}, and its audit events. */
	metadata: { [PUBLISHES]: ["memory.>", "audit.>"] },
	mixins: [DbService as unknown as ServiceSchema, IdempotentWritesMixin],
	model: MODEL,
	settings: { idField: "id" },

	actions: {
		// moleculer-db's generic actions stay off: every access goes through the rules below.
		find: false,
		count: false,
		insert: false,

		create: {
			...actionPolicy({ idempotent: false, timeout: "standard" }),
			rest: "POST /memories",
			access: "user",
			params: {
				scope: { type: "enum", values: [...SCOPES] },
				owner_id: { type: "string", min: 1, max: 200 },
				owner_type: { type: "enum", values: [...OWNER_TYPES], optional: true },
				kind: { type: "enum", values: [...KINDS] },
				key: { type: "string", min: 1, max: 300 },
				content: CONTENT,
				metadata: METADATA,
				indexed: { type: "boolean", optional: true, default: false },
				confidential: { type: "boolean", optional: true, default: false },
				$$strict: "remove",
			},
			async handler(ctx: MemoryContext<Omit<MemoryRow, "id" | "version" | "created_at" | "updated_at" | "content_sealed" | "key_id"> & { content: string }>) {
				const user = requireUser(ctx);
				const owner = { ...ctx.params, owner_type: ownerTypeFor(ctx.params.scope, ctx.params.owner_type) };
				if (!canWrite(user, owner)) {
					throw new ForbiddenError(`Not allowed to create a ${owner.scope} memory owned by ${owner.owner_type} ${owner.owner_id}`, "FORBIDDEN", { field: "owner_id" });
				}
				this.checkContentSize(ctx.params.content);
				const { scope, owner_id, owner_type, kind, key, metadata } = owner;
				const values: NewMemory = {
					id: randomUUID(),
					...{ scope, owner_id, owner_type, kind, key, metadata },
					...this.contentColumns(ctx.params.content, !!ctx.params.confidential),
					indexed: !!ctx.params.indexed,
					confidential: !!ctx.params.confidential,
					version: 1,
				};
				const { replay } = this.replayAsRead(user);
				return this.idempotentStatement(
					ctx,
					`memory.create:${user.id}`,
					async claim => {
						const row = await this.insertWithEvents(claim, values, user.id, ctx.requestID);
						return row && this.view(row);
					},
					// What replayAsRead's `remember` keeps, known before the write: the id.
					{ keep: { id: values.id }, replay: kept => replay!(kept) },
				);
			},
		},

		get: {
			...actionPolicy({ idempotent: true, timeout: "fast" }),
			rest: "GET /memories/:id",
			access: "user",
			params: { id: ID, $$strict: "remove" },
			async handler(ctx: MemoryContext<{ id: string }>) {
				const row = await this.findRow(ctx.params.id);
				if (!canRead(requireUser(ctx), row)) throw forbidden("read");
				return this.view(row);
			},
		},

		update: {
			...actionPolicy({ idempotent: false, timeout: "standard" }),
			rest: "PATCH /memories/:id",
			access: "user",
			params: {
				id: ID,
				version: { type: "number", integer: true, min: 1, convert: true },
				kind: { type: "enum", values: [...KINDS], optional: true },
				key: { type: "string", min: 1, max: 300, optional: true },
				content: { ...CONTENT, optional: true },
				metadata: METADATA,
				indexed: { type: "boolean", optional: true },
				$$strict: "remove",
			},
			async handler(ctx: MemoryContext<Partial<MemoryRow> & { id: string; version: number }>) {
				const user = requireUser(ctx);
				if (ctx.params.content !== undefined && ctx.params.content !== null) this.checkContentSize(ctx.params.content);
				return this.idempotentWrite(ctx, `memory.update:${user.id}`, async t => {
					const row = await this.findRow(ctx.params.id, t);
					if (!canWrite(user, row)) throw forbidden("change");
					if (row.version !== ctx.params.version) {
						throw new ConflictError(`Version conflict: memory is at version ${row.version}, you sent ${ctx.params.version}`, "VERSION_CONFLICT", {
							field: "version",
							current: row.version,
						});
					}
					const { id, version, content, ...changes } = ctx.params;
					const values = { ...changes, ...(content != null ? this.contentColumns(content, row.confidential) : {}), version: version + 1, updated_at: new Date() };
					await this.adapter.model.update(values, { where: { id, version }, transaction: t });
					const updated = await this.findRow(id, t);
					await this.emitChange(t, updated, "updated", user.id, ctx.requestID);
					return this.view(updated);
				}, this.replayAsRead(user));
			},
		},

		remove: {
			...actionPolicy({ idempotent: false, timeout: "standard" }),
			rest: "DELETE /memories/:id",
			access: "user",
			params: { id: ID, $$strict: "remove" },
			async handler(ctx: MemoryContext<{ id: string }>) {
				const user = requireUser(ctx);
				return this.idempotentWrite(ctx, `memory.remove:${user.id}`, async t => {
					const row = await this.findRow(ctx.params.id, t);
					if (!canWrite(user, row)) throw forbidden("delete");
					await this.adapter.model.destroy({ where: { id: row.id }, transaction: t });
					await this.emitChange(t, row, "deleted", user.id, ctx.requestID);
					return { id: row.id, deleted: true };
				});
			},
		},

		list: {
			...actionPolicy({ idempotent: true, timeout: "fast" }),
			rest: "GET /memories",
			access: "user",
			params: {
				scope: { type: "enum", values: [...SCOPES], optional: true },
				owner_id: { type: "string", min: 1, max: 200, optional: true },
				kind: { type: "enum", values: [...KINDS], optional: true },
				q: { type: "string", min: 1, max: 200, optional: true },
				limit: { type: "number", integer: true, min: 1, max: 100, optional: true, convert: true },
				offset: { type: "number", integer: true, min: 0, optional: true, convert: true },
				$$strict: "remove",
			},
			async handler(ctx: MemoryContext<{ scope?: Scope; owner_id?: string; kind?: string; q?: string; limit?: number; offset?: number }>) {
				const user = requireUser(ctx);
				const { scope, owner_id, kind, q } = ctx.params;
				if (q && scope && scope !== "public") {
					throw new Errors.ValidationError("Text search covers public, indexed memories only", "SEARCH_PUBLIC_ONLY", [
						{ field: "q", message: "search is only available with scope=public (or no scope)" },
					]);
				}
				const limit = ctx.params.limit ?? 20;
				const offset = ctx.params.offset ?? 0;
				// The access rule, in SQL: what this user may read at all.
				const where = [
					"($1::boolean OR scope = 'public' OR (scope = 'personal' AND owner_id = $2) OR (scope = 'team' AND owner_id = ANY($3::text[])))",
					"($4::text IS NULL OR scope = $4)",
					"($5::text IS NULL OR owner_id = $5)",
					"($6::text IS NULL OR kind = $6)",
					// Privacy rule: text search only over public, indexed, non-confidential rows.
					"($7::text IS NULL OR (scope = 'public' AND indexed AND NOT confidential AND to_tsvector('simple', key || ' ' || content) @@ plainto_tsquery('simple', $7)))",
				].join(" AND ");
				const bind = [isAdmin(user), user.id, user.teams, scope ?? null, owner_id ?? null, kind ?? null, q ?? null];
				const sequelize = databaseOf(this.broker);
				const [rows, [{ total }]] = await Promise.all([
					sequelize.query<MemoryRow>(`SELECT * FROM memories WHERE ${where} ORDER BY created_at DESC, id LIMIT ${limit} OFFSET ${offset}`, { bind, type: QueryTypes.SELECT }),
					sequelize.query<{ total: string }>(`SELECT count(*) AS total FROM memories WHERE ${where}`, { bind, type: QueryTypes.SELECT }),
				]);
				return { rows: rows.map(r => this.view(r)), total: Number(total), limit, offset };
			},
		},
	},

	methods: {
		checkContentSize(content: string) {
			const max = nodeContextOf(this.broker).settings.memory.maxContentBytes;
			const bytes = Buffer.byteLength(content, "utf8");
			if (bytes > max) {
				throw new PayloadTooLargeError(`content is ${bytes} bytes; the limit is ${max}`, "CONTENT_TOO_LARGE", { field: "content", bytes, limit: max });
			}
		},

		/** Plain text, or sealed with the node's current key when the memory is confidential. */
		contentColumns(content: string, confidential: boolean) {
			if (!confidential) return { content, content_sealed: null, key_id: null };
			const { encryptionKey, encryptionKeyId } = nodeContextOf(this.broker).settings.memory;
			const { sealed, keyId } = seal(content, encryptionKey, encryptionKeyId);
			return { content: null, content_sealed: sealed, key_id: keyId };
		},

		view(row: MemoryRow): MemoryView {
			const { content, content_sealed, key_id, ...rest } = row;
			if (!row.confidential) return { ...rest, content: content as string };
			const { encryptionKey, encryptionKeyId } = nodeContextOf(this.broker).settings.memory;
			return { ...rest, content: open(content_sealed as Buffer, key_id as string, new Map([[encryptionKeyId, encryptionKey]])) };
		},

		/**
		 * Inside a write: one SELECT … FOR UPDATE in its transaction. Otherwise a point read, batched with
		 * the reads other calls make in the same event-loop turn (lib/data/point-read-batcher.ts). Plain rows,
		 * no model instances on the hot path.
		 */
		async findRow(id: string, t?: Transaction): Promise<MemoryRow> {
			const row = t
				? (await databaseOf(this.broker).query<MemoryRow>("SELECT * FROM memories WHERE id = $1 FOR UPDATE", { bind: [id], type: QueryTypes.SELECT, transaction: t }))[0]
				: await this.rowsById.get(id.toLowerCase());
			if (!row) throw notFound(id);
			return row;
		},

		/**
		 * A keyed create/update keeps only the memory's id, never its content (confidential or not); a
		 * retry answers what reading the memory now would: its current state, 404 once it is deleted,
		 * 403 for a caller who may no longer read it.
		 */
		replayAsRead(user: MeshUser): IdempotentWriteOptions<MemoryView> {
			return {
				remember: view => ({ id: view.id }),
				replay: async (kept, t) => {
					const { id } = kept as { id: string };
					const [row] = await databaseOf(this.broker).query<MemoryRow>("SELECT * FROM memories WHERE id = $1", { bind: [id], type: QueryTypes.SELECT, transaction: t });
					if (!row) throw notFound(id);
					if (!canRead(user, row)) throw forbidden("read");
					return this.view(row);
				},
			};
		},

		async emitChange(t: Transaction, row: MemoryRow, action: "created" | "updated" | "deleted", actor: string, requestID?: string | null) {
			const { settings } = nodeContextOf(this.broker);
			await enqueueEvents(databaseOf(this.broker) as Sequelize, t, settings.events, this.changeEvents(row, action, actor, requestID));
		},

		changeEvents(row: MemoryRow, action: "created" | "updated" | "deleted", actor: string, requestID?: string | null): OutboxEvent[] {
			const payload = eventPayload(row, action, actor);
			// The audit record names the memory, never its content (nor its key when confidential).
			const audited = { scope: row.scope, owner_id: row.owner_id, kind: row.kind, version: row.version, confidential: row.confidential, ...(row.confidential ? {} : { key: row.key }) };
			return [
				{ aggregateType: "memory", aggregateId: row.id, eventType: `memory.${action}`, subject: `memory.${action}.${row.scope}`, payload },
				auditOutboxEvent(requestID, this.broker.nodeID, { service: "memory", action, actor, target: row.id, details: audited }),
			];
		},

		/**
		 * The id is made here, so the events (which name the memory, never its content) are known before
		 * the row exists and go into the same statement (insertMemoryWithEvents). Undefined: the claim
		 * found the key held, and nothing was written.
		 */
		async insertWithEvents(claim: KeyClaim | null, values: NewMemory, actor: string, requestID?: string | null): Promise<MemoryRow | undefined> {
			const { settings } = nodeContextOf(this.broker);
			const firstParam = (claim?.bind.length ?? 0) + 1;
			const events = outboxInsert(settings.events, this.changeEvents(values as MemoryRow, "created", actor, requestID), firstParam + INSERT_MEMORY_COLUMNS.length, "created");
			const columns = INSERT_MEMORY_COLUMNS.map(column => (column === "metadata" ? (values.metadata ? JSON.stringify(values.metadata) : null) : values[column]));
			const sequelize = databaseOf(this.broker);
			const [row] = await sequelize.query<MemoryRow>(insertMemoryWithEvents(claim, firstParam, events.sql), {
				bind: [...(claim?.bind ?? []), ...columns, ...events.bind],
				type: QueryTypes.SELECT,
			});
			if (row) ringOutbox(sequelize);
			return row;
		},
	},

	created() {
		// moleculer-db made a placeholder adapter in its own created(); use the node's pool instead.
		// Fourth argument: moleculer-db-adapter-sequelize's options; noSync because migrations own the schema.
		const Adapter = SharedSequelizeAdapter as unknown as new (...args: unknown[]) => MemoryThis["adapter"];
		this.adapter = new Adapter(databaseOf(this.broker), undefined, undefined, { noSync: true });
		this.adapter.init(this.broker, this);
		const sequelize = databaseOf(this.broker);
		this.rowsById = new PointReadBatcher<MemoryRow>({
			// Unnamed on purpose: a prepared `SELECT *` would fail ("cached plan must not change result
			// type") after another node's migration adds a column, until this node reconnects.
			load: ids => fastQuery<MemoryRow>(sequelize, "SELECT * FROM memories WHERE id = ANY($1::uuid[])", [ids]),
			keyOf: row => row.id,
		});
		const { memory } = nodeContextOf(this.broker).settings;
		if (memory.developmentKey) this.logger.warn("Memory: confidential content is sealed with the DEVELOPMENT key; set MEMORY_ENCRYPTION_KEY for real data");
	},
};

export default MemoryService;
