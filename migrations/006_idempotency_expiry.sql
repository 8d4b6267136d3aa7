-- Migration: 006_idempotency_expiry
-- Description: Idempotency keys expire (IDEMPOTENCY_TTL, swept by a lease holder); stored memory replies keep only the id; memory owners are typed (user or team)
-- Date: 2026-12-01
-- Author: daarion-mesh
-- Rollback:
--   DROP INDEX IF EXISTS idempotency_keys_created_at;
--   ALTER TABLE memories DROP COLUMN IF EXISTS owner_type;
BEGIN;

-- The sweep deletes by age.
CREATE INDEX IF NOT EXISTS idempotency_keys_created_at ON idempotency_keys (created_at);

-- Replies stored before this release held the whole memory, content in plaintext even when the memory
-- was confidential. A replay now re-reads the memory by id under the caller's rights; keep only the id.
-- (Not undone by the rollback: the content is what must not be kept.)
UPDATE idempotency_keys SET response = jsonb_build_object('id', response -> 'id')
WHERE (scope LIKE 'memory.create:%' OR scope LIKE 'memory.update:%') AND response ? 'content';

-- User ids and team ids are separate namespaces: user "t1" must not own team "t1"'s memories.
-- personal → user, team → team; public memories written before this release are taken as owned by the
-- user of that id (team members who wrote them before may ask an admin to re-create them as owner_type team).
ALTER TABLE memories ADD COLUMN IF NOT EXISTS owner_type text NOT NULL DEFAULT 'user';
UPDATE memories SET owner_type = 'team' WHERE scope = 'team' AND owner_type <> 'team';
DO $$ BEGIN
	ALTER TABLE memories ADD CONSTRAINT memories_owner_type CHECK (owner_type IN ('user', 'team') AND (scope <> 'personal' OR owner_type = 'user') AND (scope <> 'team' OR owner_type = 'team'));
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

COMMIT;
