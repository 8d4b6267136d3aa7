-- Migration: 002_mesh_node_events
-- Description: Durable history of nodes joining and leaving the mesh, written by the node-registry leader
-- Date: 2026-11-25
-- Author: daarion-mesh
-- Rollback:
--   DROP TABLE IF EXISTS mesh_node_events;
BEGIN;

CREATE TABLE IF NOT EXISTS mesh_node_events (
	id bigserial PRIMARY KEY,
	-- MESH_NAMESPACE: several meshes (staging, tests) may share one database
	namespace text NOT NULL,
	node_id text NOT NULL,
	role text,
	event text NOT NULL CHECK (event IN ('joined', 'rejoined', 'left')),
	reason text,
	-- who wrote it, under which lease generation: proves a single writer at a time
	recorded_by text NOT NULL,
	fencing_token bigint NOT NULL,
	at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS mesh_node_events_namespace_at ON mesh_node_events (namespace, at);

COMMIT;
