#!/usr/bin/env bash
# Makes sure what the tests need is reachable: PostgreSQL on 127.0.0.1:5432 (trust auth),
# RabbitMQ on 127.0.0.1:5672 with its management UI, and git. Starts a stopped service,
# installs a missing one (Debian packages, as root), or says exactly what is missing.
set -euo pipefail

log() { echo "ensure-services: $*"; }
have() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    log "missing $*: install it (apt-get install $*) or run as root"; exit 1
  fi
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

have git || apt_install git
# The router benchmark measures HAProxy (HTTP/2 on both sides) as its yardstick.
have haproxy || apt_install haproxy
have curl || apt_install curl

# PostgreSQL
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! pg_up; then
  have pg_ctlcluster || apt_install postgresql
  ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)
  [ -n "$ver" ] || { log "no PostgreSQL cluster found under /etc/postgresql"; exit 1; }
  conf=/etc/postgresql/$ver/main
  # Tests connect as postgres over TCP without a password.
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$conf/pg_hba.conf" 2>/dev/null; then
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$conf/pg_hba.conf"
  fi
  log "starting PostgreSQL $ver"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
  pg_up || { log "PostgreSQL did not come up on 127.0.0.1:5432"; exit 1; }
fi
psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null \
  || { log "cannot log in to PostgreSQL as postgres on 127.0.0.1 (trust auth expected)"; exit 1; }

# RabbitMQ with the management plugin (operators watch queues in its UI).
rmq_up() { rabbitmq-diagnostics -q ping >/dev/null 2>&1; }
if ! have rabbitmq-server; then apt_install rabbitmq-server; fi
if ! rmq_up; then
  log "starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 1 120); do rmq_up && break; sleep 1; done
  rmq_up || { log "RabbitMQ did not come up"; exit 1; }
fi
if ! rabbitmq-plugins list -e -m 2>/dev/null | grep -qx rabbitmq_management; then
  log "enabling rabbitmq_management"
  rabbitmq-plugins enable --quiet rabbitmq_management >/dev/null
fi
# Tests read and close connections through the management API: wait until it answers.
mgmt_up() { curl -fsS -u guest:guest http://127.0.0.1:15672/api/overview >/dev/null 2>&1; }
for _ in $(seq 1 60); do mgmt_up && break; sleep 1; done
mgmt_up || { log "RabbitMQ management API did not answer on 127.0.0.1:15672 (guest/guest)"; exit 1; }
log "PostgreSQL, RabbitMQ (UI on :15672) and git are ready"
