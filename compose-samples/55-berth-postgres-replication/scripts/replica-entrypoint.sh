#!/bin/bash
set -e
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  PGPASSWORD=replicator pg_basebackup -h "$PRIMARY_HOST" -U replicator -D "$PGDATA" -R -X stream
fi
exec postgres
