-- Migration: 009_audit_log_and_node_registry
-- Description: Append-only, hash-chained audit_log (trigger rejects UPDATE/DELETE/TRUNCATE; role daarion_app may only INSERT/SELECT it); node registry tables nodes, node_profiles, heartbeat_log
-- Date: 2026-12-01
-- Author: daarion-mesh
-- Rollback:
--   DROP TABLE IF EXISTS heartbeat_log;
--   DROP TABLE IF EXISTS node_profiles;
--   DROP TABLE IF EXISTS nodes;
--   DROP TABLE IF EXISTS audit_log;
--   DROP FUNCTION IF EXISTS audit_log_reject_change();
BEGIN;

-- One row per audit event, chained: hash = sha256(prev_hash || canonical JSON of the row without
-- `hash`), computed by the single writer (services/audit.service.ts, lib/data/audit-chain.ts).
-- `seq` is assigned by that writer under a lock as tail + 1, so a gap is as visible as a changed row.
CREATE TABLE IF NOT EXISTS audit_log (
	id uuid PRIMARY KEY,
	seq bigint NOT NULL UNIQUE CHECK (seq > 0),
	-- the outbox id of the event (= JetStream message id): redelivery never stores it twice
	event_id text NOT NULL UNIQUE,
	occurred_at timestamptz NOT NULL,
	recorded_at timestamptz NOT NULL,
	service text NOT NULL,
	action text NOT NULL,
	actor text NOT NULL,
	request_id text,
	target text,
	outcome text NOT NULL,
	node text NOT NULL,
	details jsonb NOT NULL DEFAULT '{}'::jsonb,
	-- who appended it, under which lease generation (one writer at a time; the chain never forks)
	writer text NOT NULL,
	fencing_token bigint NOT NULL,
	prev_hash text NOT NULL CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
	hash text NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$')
);
CREATE INDEX IF NOT EXISTS audit_log_occurred ON audit_log (occurred_at);
CREATE INDEX IF NOT EXISTS audit_log_service_action ON audit_log (service, action, seq);
CREATE INDEX IF NOT EXISTS audit_log_actor ON audit_log (actor, seq);
CREATE INDEX IF NOT EXISTS audit_log_request ON audit_log (request_id) WHERE request_id IS NOT NULL;

-- Append-only for every role while the trigger is on. Disabling a trigger needs ownership of the
-- table, which the application role does not have; a superuser who does it anyway breaks the hash
-- chain, and GET /api/audit/verify names the first broken link.
CREATE OR REPLACE FUNCTION audit_log_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'audit_log is append-only: % rejected', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_log_reject_change();
DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log;
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log FOR EACH STATEMENT EXECUTE FUNCTION audit_log_reject_change();

-- The application's role (NOLOGIN: production logs in as a LOGIN role that is a member of it;
-- README "Database role"). Roles are cluster-wide: several databases of one server share it.
DO $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'daarion_app') THEN
		CREATE ROLE daarion_app NOLOGIN;
	END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
	NULL; -- another database's migration created it at the same moment
END $$;
GRANT USAGE ON SCHEMA public TO daarion_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO daarion_app;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO daarion_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO daarion_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO daarion_app;
REVOKE ALL ON audit_log FROM daarion_app;
GRANT SELECT, INSERT ON audit_log TO daarion_app;

-- The seed's node registry (002): nodes, their capabilities, and heartbeat history.
CREATE TABLE IF NOT EXISTS nodes (
	namespace text NOT NULL,
	node_id text NOT NULL CHECK (node_id ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$'),
	name text NOT NULL,
	role text NOT NULL,
	-- mesh: a Moleculer node of this mesh (status also follows $node.connected/disconnected); external: HTTP only
	kind text NOT NULL CHECK (kind IN ('mesh', 'external')),
	hostname text,
	ip text,
	version text,
	-- what the node last reported itself (online | degraded); the served status also weighs heartbeat age
	reported_status text NOT NULL DEFAULT 'online' CHECK (reported_status IN ('online', 'degraded')),
	registered_at timestamptz NOT NULL DEFAULT now(),
	last_heartbeat timestamptz NOT NULL DEFAULT now(),
	-- set when the mesh saw the node disconnect; cleared by its next registration
	disconnected_at timestamptz,
	PRIMARY KEY (namespace, node_id)
);

CREATE TABLE IF NOT EXISTS node_profiles (
	namespace text NOT NULL,
	node_id text NOT NULL,
	services text[] NOT NULL DEFAULT '{}',
	models text[] NOT NULL DEFAULT '{}',
	cpu_count integer,
	memory_mb integer,
	gpu jsonb,
	labels jsonb NOT NULL DEFAULT '{}'::jsonb,
	updated_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (namespace, node_id),
	FOREIGN KEY (namespace, node_id) REFERENCES nodes (namespace, node_id) ON DELETE CASCADE
);

CREATE TABLE IF NOT EXISTS heartbeat_log (
	id bigserial PRIMARY KEY,
	namespace text NOT NULL,
	node_id text NOT NULL,
	status text NOT NULL,
	metrics jsonb NOT NULL DEFAULT '{}'::jsonb,
	at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS heartbeat_log_node_at ON heartbeat_log (namespace, node_id, at DESC);
CREATE INDEX IF NOT EXISTS heartbeat_log_at ON heartbeat_log (at);
GRANT SELECT, INSERT, UPDATE, DELETE ON nodes, node_profiles, heartbeat_log TO daarion_app;
GRANT USAGE, SELECT, UPDATE ON SEQUENCE heartbeat_log_id_seq TO daarion_app;

COMMIT;
