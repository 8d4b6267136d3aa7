#!/usr/bin/env bash
# Restore a dump made by backup-db.sh into a FRESH database (created here; refuses an existing one,
# so a restore can never overwrite live data by accident).
# Usage: scripts/restore-db.sh <file.dump> <target database URL>
set -euo pipefail

dump="${1:?usage: restore-db.sh <file.dump> <postgres://user@host:port/new_database>}"
target="${2:?usage: restore-db.sh <file.dump> <postgres://user@host:port/new_database>}"
[[ -f "$dump" ]] || { echo "restore-db: no such file: $dump" >&2; exit 2; }

name="${target##*/}"; name="${name%%\?*}"
[[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || { echo "restore-db: unusual database name '$name'" >&2; exit 2; }
maintenance="${target%/*}/postgres"

exists=$(psql "$maintenance" -tAc "SELECT 1 FROM pg_database WHERE datname = '$name'")
[[ -z "$exists" ]] || { echo "restore-db: database '$name' already exists; restore into a new one, then switch DATABASE_URL" >&2; exit 3; }

psql "$maintenance" -qc "CREATE DATABASE \"$name\""
pg_restore --no-owner --no-privileges --exit-on-error --dbname="$target" "$dump"
echo "restore-db: restored $dump into $name"
