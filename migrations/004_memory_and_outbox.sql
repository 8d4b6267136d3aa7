-- Migration: 004_memory_and_outbox
-- Description: Scoped memories (confidential content encrypted), the transactional outbox, its dead-letter table, and consumer dedup
-- Date: 2026-11-25
-- Author: daarion-mesh
-- Rollback:
--   DROP TABLE IF EXISTS processed_events;
--   DROP TABLE IF EXISTS outbox_dlq;
--   DROP TABLE IF EXISTS outbox;
--   DROP TABLE IF EXISTS memories;
BEGIN;

CREATE TABLE IF NOT EXISTS memories (
	id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	scope text NOT NULL CHECK (scope IN ('personal', 'team', 'public')),
	owner_id text NOT NULL,
	kind text NOT NULL CHECK (kind IN ('fact', 'dialog_summary', 'event', 'document')),
	key text NOT NULL,
	-- plaintext content; NULL when the memory is confidential
	content text,
	-- AES-256-GCM: iv (12) | tag (16) | ciphertext, and the id of the key that sealed it
	content_sealed bytea,
	key_id text,
	metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
	indexed boolean NOT NULL DEFAULT false,
	confidential boolean NOT NULL DEFAULT false,
	version integer NOT NULL DEFAULT 1,
	created_at timestamptz NOT NULL DEFAULT now(),
	updated_at timestamptz NOT NULL DEFAULT now(),
	CHECK ((confidential AND content IS NULL AND content_sealed IS NOT NULL AND key_id IS NOT NULL)
		OR (NOT confidential AND content IS NOT NULL AND content_sealed IS NULL))
);
CREATE INDEX IF NOT EXISTS memories_owner ON memories (scope, owner_id, created_at DESC);
-- The privacy rule: only public, indexed memories are searchable as plain text.
CREATE INDEX IF NOT EXISTS memories_public_search ON memories USING gin (to_tsvector('simple', key || ' ' || content))
	WHERE scope = 'public' AND indexed AND NOT confidential;

CREATE TABLE IF NOT EXISTS outbox (
	id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	aggregate_type text NOT NULL,
	aggregate_id text NOT NULL,
	event_type text NOT NULL,
	subject text NOT NULL,
	payload jsonb NOT NULL,
	status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'published')),
	attempts integer NOT NULL DEFAULT 0,
	next_attempt_at timestamptz NOT NULL DEFAULT now(),
	last_error text,
	created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
	published_at timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (next_attempt_at) WHERE status = 'pending';

CREATE TABLE IF NOT EXISTS outbox_dlq (
	id uuid PRIMARY KEY,
	aggregate_type text NOT NULL,
	aggregate_id text NOT NULL,
	event_type text NOT NULL,
	subject text NOT NULL,
	payload jsonb NOT NULL,
	attempts integer NOT NULL,
	last_error text,
	created_at timestamptz NOT NULL,
	failed_at timestamptz NOT NULL DEFAULT now()
);

-- Idempotent consumers remember what they have handled (event id = outbox id = JetStream msg id).
CREATE TABLE IF NOT EXISTS processed_events (
	consumer text NOT NULL,
	event_id text NOT NULL,
	processed_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (consumer, event_id)
);

COMMIT;
