#!/usr/bin/env bash
# Dump the mesh database in pg_dump's custom format to $BACKUP_DIR/daarion-YYYYmmdd-HHMMSS.dump and
# delete dumps older than $BACKUP_RETENTION_DAYS (7). Connection: DATABASE_URL, or the DB_* variables.
# Usage: scripts/backup-db.sh            (cron: 15 3 * * * cd /srv/daarion-mesh && scripts/backup-db.sh)
set -euo pipefail

BACKUP_DIR="${BACKUP_DIR:-./backups}"
RETENTION_DAYS="${BACKUP_RETENTION_DAYS:-7}"

if [[ -z "${DATABASE_URL:-}" ]]; then
	[[ -n "${DB_HOST:-}" ]] || { echo "backup-db: set DATABASE_URL or DB_HOST/DB_PORT/DB_NAME/DB_USER/DB_PASSWORD" >&2; exit 2; }
	export PGHOST="$DB_HOST" PGPORT="${DB_PORT:-5432}" PGDATABASE="${DB_NAME:-daarion}" PGUSER="${DB_USER:-daarion}"
	[[ -n "${DB_PASSWORD:-}" ]] && export PGPASSWORD="$DB_PASSWORD"
	TARGET=()
else
	TARGET=(--dbname="$DATABASE_URL")
fi

mkdir -p "$BACKUP_DIR"
file="$BACKUP_DIR/daarion-$(date -u +%Y%m%d-%H%M%S).dump"
# Write to a temporary name first: a dump that failed half-way must never look like a backup.
pg_dump --format=custom --no-owner --no-privileges "${TARGET[@]}" --file="$file.partial"
mv "$file.partial" "$file"
echo "backup-db: wrote $file ($(du -h "$file" | cut -f1))"

find "$BACKUP_DIR" -maxdepth 1 -name 'daarion-*.dump' -mtime +"$((RETENTION_DAYS - 1))" -print -delete | sed 's/^/backup-db: removed old /'
