#!/usr/bin/env bash
# `make up`: a local gitcluster on 127.0.0.1 — with Docker Compose when a Docker engine
# answers, otherwise as local processes from target/debug. State lives in .run/.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ -z "${GITCLUSTER_NO_DOCKER:-}" ] && docker info >/dev/null 2>&1; then
  exec docker compose -f deploy/docker-compose.yml up -d --build
fi

run=.run
bin=${GITCLUSTER_BIN_DIR:-target/debug}
mkdir -p "$run/logs" "$run/storages/default"
[ -s "$run/token" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$run/token"
token=$(cat "$run/token")

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in 8075 9236 8080 9657; do
  if port_busy "$p"; then
    echo "make up: port $p is already in use (is the cluster already up? try \`make down\`)" >&2
    exit 1
  fi
done

start() { # name, then the command
  local name=$1; shift
  nohup "$@" >>"$run/logs/$name.log" 2>&1 &
  echo $! > "$run/$name.pid"
}

GITCLUSTER_STORAGE_TOKEN=$token start storage-1 "$bin/gitcluster-storage" \
  --listen 127.0.0.1:8075 --metrics-listen 127.0.0.1:9236 --storage "default=$PWD/$run/storages/default"
GITCLUSTER_GATEWAY_UPSTREAM_TOKEN=$token start gateway "$bin/gitcluster-gateway" \
  --listen 127.0.0.1:8080 --metrics-listen 127.0.0.1:9657 --upstream http://127.0.0.1:8075

ready() { curl -fsS "http://$1/healthz" >/dev/null 2>&1; }
for addr in 127.0.0.1:9236 127.0.0.1:9657; do
  for _ in $(seq 1 100); do ready "$addr" && break; sleep 0.1; done
  ready "$addr" || { echo "make up: service on $addr did not become ready; see $run/logs/" >&2; exit 1; }
done

cat <<MSG
gitcluster is up (local processes; logs in $run/logs, data in $run/storages).

  push:   git push http://127.0.0.1:8080/default/<name>.git main
  clone:  git clone http://127.0.0.1:8080/default/<name>.git
  gRPC:   storage node at 127.0.0.1:8075 (token in $run/token)
  admin:  http://127.0.0.1:9236/metrics (storage), http://127.0.0.1:9657/metrics (gateway)
  CLI:    GITCLUSTER_TOKEN=\$(cat $run/token) $bin/gitcluster create-repository \\
            --address http://127.0.0.1:8075 --virtual-storage default --relative-path <name>.git

The first push to a new path creates the repository. Stop everything with \`make down\`.
MSG
