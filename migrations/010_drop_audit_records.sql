-- Migration: 010_drop_audit_records
-- Description: Drop audit_records (003): operator notes are audit_log rows since 009 (POST /api/audit/records → audit.operator.{action}); the old table was writable by anyone with write access and had no other writer
-- Date: 2026-12-02
-- Author: daarion-mesh
-- Rollback:
--   CREATE TABLE IF NOT EXISTS audit_records (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), actor_id text NOT NULL, action text NOT NULL, subject text NOT NULL, details jsonb NOT NULL DEFAULT '{}'::jsonb, node_id text NOT NULL, request_id text, created_at timestamptz NOT NULL DEFAULT now());
--   CREATE INDEX IF NOT EXISTS audit_records_created_at ON audit_records (created_at DESC);
--   CREATE INDEX IF NOT EXISTS audit_records_subject ON audit_records (subject, created_at DESC);
BEGIN;

-- Rows written before 009 were never chained nor protected, so they cannot join audit_log's chain as
-- evidence; docs/OPERATIONS.md ("Migration 010") says how to keep a copy before upgrading.
DROP TABLE IF EXISTS audit_records;

COMMIT;
