#!/usr/bin/env bash
# `make down`: stops what `make up` started (Docker Compose or local processes).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${GITCLUSTER_NO_DOCKER:-}" ] && docker info >/dev/null 2>&1; then
  exec docker compose -f deploy/docker-compose.yml down
fi
shopt -s nullglob
for pidfile in .run/*.pid; do
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$pidfile"
  echo "stopped $(basename "$pidfile" .pid)"
done
