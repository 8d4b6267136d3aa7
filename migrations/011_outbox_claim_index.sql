-- Migration: 011_outbox_claim_index
-- Description: Index pending outbox rows by created_at, the order the relay claims them in, instead of by next_attempt_at: the claim reads them in order and stops at its LIMIT instead of reading and sorting every pending row
-- Date: 2026-12-02
-- Author: daarion-mesh
-- Rollback:
--   CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (next_attempt_at) WHERE status = 'pending';
--   DROP INDEX IF EXISTS outbox_pending_by_age;
BEGIN;

-- The relay's claim (lib/data/outbox/relay.ts, CLAIM_BATCH) is ORDER BY created_at LIMIT n over the pending rows,
-- read with an index scan (the relay rules bitmap scans out for it: only an index scan marks the entries of rows
-- published since the last VACUUM as dead, so later claims skip them). On the next_attempt_at index that scan
-- had to read every pending row and sort them before the LIMIT; on this one it stops after n. next_attempt_at
-- stays a filter: rows waiting out a backoff are few. The old index has no other reader (the backlog counts use
-- this one) and costs every INSERT an update. docs/BENCHMARKS.md, "Memory → JetStream lag", has the figures.
CREATE INDEX IF NOT EXISTS outbox_pending_by_age ON outbox (created_at) WHERE status = 'pending';
DROP INDEX IF EXISTS outbox_pending;

COMMIT;
