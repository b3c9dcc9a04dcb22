#!/usr/bin/env bash
# `make up`: a local gitcluster on 127.0.0.1 — with Docker Compose when a Docker engine
# answers, otherwise as local processes from target/debug against the local PostgreSQL
# and RabbitMQ (deploy/local/ensure-services.sh starts them). State lives in .run/.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ -z "${GITCLUSTER_NO_DOCKER:-}" ] && docker info >/dev/null 2>&1; then
  exec docker compose -f deploy/docker-compose.yml up -d --build
fi

deploy/local/ensure-services.sh
run=.run
bin=${GITCLUSTER_BIN_DIR:-target/debug}
db_name=${GITCLUSTER_DB_NAME:-gitcluster}
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/$db_name}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
mkdir -p "$run/logs"
secret() { [ -s "$run/$1" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$run/$1"; cat "$run/$1"; }
internal=$(secret internal-token)
external=$(secret external-token)

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in 8075 8076 8077 9236 9237 9238 2305 9652 9654 8080 9657; do
  if port_busy "$p"; then
    echo "make up: port $p is already in use (is the cluster already up? try \`make down\`)" >&2
    exit 1
  fi
done

# Schema and topology live in Postgres: create the database, migrate, apply the topology.
psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db_name'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE $db_name"
"$bin/gitcluster" sql-migrate
"$bin/gitcluster" topology apply deploy/topology.local.toml

start() { # name, then the command
  local name=$1; shift
  nohup "$@" >>"$run/logs/$name.log" 2>&1 &
  echo $! > "$run/$name.pid"
}
for i in 1 2 3; do
  mkdir -p "$run/storages/gitaly-$i"
  GITCLUSTER_STORAGE_TOKEN=$internal start "storage-$i" "$bin/gitcluster-storage" \
    --listen "127.0.0.1:$((8074 + i))" --metrics-listen "127.0.0.1:$((9235 + i))" \
    --storage "gitaly-$i=$PWD/$run/storages/gitaly-$i"
done
GITCLUSTER_INTERNAL_TOKEN=$internal GITCLUSTER_ROUTER_TOKEN=$external start router "$bin/gitcluster-router" \
  --listen 127.0.0.1:2305 --metrics-listen 127.0.0.1:9652 --name router-1
GITCLUSTER_INTERNAL_TOKEN=$internal start replicator "$bin/gitcluster-replicator" \
  --metrics-listen 127.0.0.1:9654
GITCLUSTER_GATEWAY_UPSTREAM_TOKEN=$external start gateway "$bin/gitcluster-gateway" \
  --listen 127.0.0.1:8080 --metrics-listen 127.0.0.1:9657 --upstream http://127.0.0.1:2305

ready() { curl -fsS "http://$1/healthz" >/dev/null 2>&1; }
for addr in 127.0.0.1:9236 127.0.0.1:9237 127.0.0.1:9238 127.0.0.1:9652 127.0.0.1:9654 127.0.0.1:9657; do
  for _ in $(seq 1 200); do ready "$addr" && break; sleep 0.1; done
  ready "$addr" || { echo "make up: service with admin port $addr did not become ready; see $run/logs/" >&2; exit 1; }
done

cat <<MSG
gitcluster is up (local processes; logs in $run/logs, repositories in $run/storages).

  push:    git push http://127.0.0.1:8080/default/<name>.git main    (first push creates it)
  clone:   git clone http://127.0.0.1:8080/default/<name>.git
  router:  gRPC 127.0.0.1:2305, client token in $run/external-token
  nodes:   gitaly-1..3 on 127.0.0.1:8075-8077 (internal token in $run/internal-token)
  queues:  http://127.0.0.1:15672 (guest/guest): gitcluster.replication.default.gitaly-N
  metrics: /metrics on 9236-9238 (nodes), 9652 (router), 9654 (replicator), 9657 (gateway)
  CLI:     DATABASE_URL=$DATABASE_URL $bin/gitcluster topology show

Stop everything with \`make down\`.
MSG
