-- Migration: 001_leader_leases
-- Description: Leader leases for singleton duties (outbox relay, sweeps) and their hand-over history
-- Date: 2026-11-25
-- Author: daarion-mesh
-- Rollback:
--   DROP TABLE IF EXISTS leader_lease_events;
--   DROP TABLE IF EXISTS leader_leases;
BEGIN;

CREATE TABLE IF NOT EXISTS leader_leases (
	name text PRIMARY KEY,
	holder text NOT NULL,
	-- grows by one at every change of holder; duties stamp their writes with it
	fencing_token bigint NOT NULL,
	acquired_at timestamptz NOT NULL,
	renewed_at timestamptz NOT NULL,
	expires_at timestamptz NOT NULL,
	-- a preferred node (NODE1) asks for the lease back here; the holder releases at its next renewal
	handback_to text
);

CREATE TABLE IF NOT EXISTS leader_lease_events (
	id bigserial PRIMARY KEY,
	name text NOT NULL,
	holder text NOT NULL,
	fencing_token bigint NOT NULL,
	event text NOT NULL CHECK (event IN ('acquired', 'released', 'lost')),
	detail text,
	at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS leader_lease_events_name_at ON leader_lease_events (name, at);

COMMIT;
