-- Migration: 005_city_and_presence
-- Description: City rooms, members and messages (ordered per room); presence per user device
-- Date: 2026-11-25
-- Author: daarion-mesh
-- Rollback:
--   DROP TABLE IF EXISTS presence_devices;
--   DROP TABLE IF EXISTS city_messages;
--   DROP TABLE IF EXISTS city_room_members;
--   DROP TABLE IF EXISTS city_rooms;
BEGIN;

CREATE TABLE IF NOT EXISTS city_rooms (
	id text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
	name text NOT NULL,
	is_public boolean NOT NULL DEFAULT true,
	created_by text NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now(),
	-- the last message sequence number: a row lock on the room orders its messages
	last_seq bigint NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS city_room_members (
	room_id text NOT NULL REFERENCES city_rooms (id) ON DELETE CASCADE,
	user_id text NOT NULL,
	joined_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (room_id, user_id)
);

CREATE TABLE IF NOT EXISTS city_messages (
	id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	room_id text NOT NULL REFERENCES city_rooms (id) ON DELETE CASCADE,
	seq bigint NOT NULL,
	author_id text NOT NULL,
	body text NOT NULL,
	created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
	edited_at timestamptz,
	deleted_at timestamptz,
	UNIQUE (room_id, seq)
);

CREATE TABLE IF NOT EXISTS presence_devices (
	user_id text NOT NULL,
	device_id text NOT NULL,
	status text NOT NULL CHECK (status IN ('online', 'away', 'offline')),
	-- the gateway node holding this device's socket (or "http" heartbeats)
	node_id text,
	transport text NOT NULL DEFAULT 'socket',
	last_active_at timestamptz NOT NULL DEFAULT now(),
	last_heartbeat_at timestamptz NOT NULL DEFAULT now(),
	-- set when the socket closed; the device goes offline after the reconnect grace period
	disconnected_at timestamptz,
	last_seen_at timestamptz NOT NULL DEFAULT now(),
	updated_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (user_id, device_id)
);
CREATE INDEX IF NOT EXISTS presence_devices_node ON presence_devices (node_id) WHERE status <> 'offline';

COMMIT;
