#!/usr/bin/env bash
# Prepares the virtualenv with the non-git Git clients (dulwich, and libgit2 through
# pygit2) that integration-tests/tests/git_clients.rs drives through the gateway.
# Idempotent: reinstalls only when requirements.txt changed. Output: target/pyclients-venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/pyclients-venv
req=integration-tests/python/requirements.txt
stamp=$venv/.requirements
if [ -x "$venv/bin/python" ] && cmp -s "$req" "$stamp"; then exit 0; fi
py=$(command -v python3 || true)
if [ -z "$py" ] || ! "$py" -m venv --help >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
    py=$(command -v python3)
  else
    echo "ensure-pyclients: python3 with venv is required"; exit 1
  fi
fi
echo "ensure-pyclients: creating $venv"
rm -rf "$venv"
"$py" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
cp "$req" "$stamp"
