#!/usr/bin/env bash
# `make demo`: the main job on the embedded default.
#   1. a sandbox PostgreSQL 15 cluster (inventories/local) with a small Modulo database
#   2. playbooks/nightly-backup.yml
#   3. playbooks/list-backups.yml
#   4. playbooks/restore.yml: latest backup -> modulodb_test
#   5. a summary checked independently of the modules (row counts read with psql)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${VENV:-$ROOT/.venv}/bin/python
export ANSIBLE_CONFIG=$ROOT/ansible.cfg ANSIBLE_NOCOLOR=1
PATH=$(dirname "$PY"):$PATH
export PATH

# The server runs as postgres when we are root: its directory must be reachable by that user.
SANDBOX=${PGBACKUP_SANDBOX:-$ROOT/.sandbox}
if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$ROOT"; then
  SANDBOX=/var/tmp/modulo-pgbackup-sandbox
fi
export PGBACKUP_SANDBOX=$SANDBOX
start=$(date +%s)

echo "== 1/5 sandbox PostgreSQL 15 cluster in $SANDBOX"
info=$("$PY" tools/pgsandbox.py start "$SANDBOX" --port "${PGBACKUP_PORT:-54329}")
PGBACKUP_PORT=$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["port"])' "$info")
export PGBACKUP_PORT
BIN=/usr/lib/postgresql/15/bin
export PGHOST=127.0.0.1 PGPORT=$PGBACKUP_PORT PGUSER=postgres
if [ "$("$BIN/psql" -XAtqc "SELECT count(*) FROM pg_database WHERE datname='modulodb'" postgres)" = 0 ]; then
  "$BIN/createdb" modulodb
  "$BIN/psql" -Xq -v ON_ERROR_STOP=1 -f tests/data/modulo_schema.sql modulodb >/dev/null
  echo "   loaded the Modulo sample database (customers, products, orders, order_items, billing.invoices)"
fi
echo "   listening on 127.0.0.1:$PGBACKUP_PORT"

echo "== 2/5 nightly backup (playbooks/nightly-backup.yml)"
ansible-playbook playbooks/nightly-backup.yml

echo "== 3/5 list backups (playbooks/list-backups.yml)"
ansible-playbook playbooks/list-backups.yml

echo "== 4/5 restore the latest backup into modulodb_test (playbooks/restore.yml)"
# modulodb_test is the demo's own staging copy: replacing it on a re-run is intended.
ansible-playbook playbooks/restore.yml -e target_db=modulodb_test -e confirm=modulodb_test -e keep_old=false

echo "== 5/5 summary"
"$PY" scripts/demo_summary.py "$SANDBOX/backups" modulodb modulodb_test
echo "   demo took $(( $(date +%s) - start )) s; remove the sandbox with: make demo-clean"
