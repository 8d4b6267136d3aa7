-- Migration: 003_audit_and_idempotency
-- Description: Audit records, and the idempotency keys that make retried writes apply at most once
-- Date: 2026-11-25
-- Author: daarion-mesh
-- Rollback:
--   DROP TABLE IF EXISTS audit_records;
--   DROP TABLE IF EXISTS idempotency_keys;
BEGIN;

-- One row per (scope, key): written in the same transaction as the write it guards, so a write
-- that died half-way leaves no key behind and its retry runs; a write that committed answers
-- every retry with the first response.
CREATE TABLE IF NOT EXISTS idempotency_keys (
	scope text NOT NULL,
	key text NOT NULL,
	request_hash text NOT NULL,
	response jsonb NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (scope, key)
);

CREATE TABLE IF NOT EXISTS audit_records (
	id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	actor_id text NOT NULL,
	action text NOT NULL,
	subject text NOT NULL,
	details jsonb NOT NULL DEFAULT '{}'::jsonb,
	node_id text NOT NULL,
	request_id text,
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS audit_records_created_at ON audit_records (created_at DESC);
CREATE INDEX IF NOT EXISTS audit_records_subject ON audit_records (subject, created_at DESC);

COMMIT;
