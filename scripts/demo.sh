#!/usr/bin/env bash
# `make demo`: the main job on the embedded default.
#   1. a sandbox PostgreSQL 15 cluster (inventories/local) with a small Modulo database
#   2. playbooks/nightly-backup.yml
#   3. playbooks/list-backups.yml
#   4. playbooks/restore.yml: latest backup -> modulodb_test
#   5. a summary checked independently of the modules (row counts read with psql)
#   6. the monthly restore drill on the latest backup
#   7-9. WAL archiving, a base backup, rows deleted by mistake and recovered by PITR
#  10. the disaster recovery simulation: the test application writes orders, the orders table is
#      dropped, playbooks/emergency-recovery.yml brings it back, lessons-learned with RTO and data lost
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

echo "== 1/11 sandbox PostgreSQL 15 cluster in $SANDBOX"
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
# As in production, the repository belongs to the server's OS user: the archive command and the
# scratch clusters of drills and PITR run as postgres and must reach it.
if [ "$(id -u)" = 0 ] && [ ! -d "$SANDBOX/backups" ]; then
  install -d -m 0700 -o postgres -g postgres "$SANDBOX/backups"
fi

echo "== 2/11 nightly backup (playbooks/nightly-backup.yml)"
ansible-playbook playbooks/nightly-backup.yml

echo "== 3/11 list backups (playbooks/list-backups.yml)"
ansible-playbook playbooks/list-backups.yml

echo "== 4/11 restore the latest backup into modulodb_test (playbooks/restore.yml)"
# modulodb_test is the demo's own staging copy: replacing it on a re-run is intended.
ansible-playbook playbooks/restore.yml -e target_db=modulodb_test -e confirm=modulodb_test -e keep_old=false

echo "== 5/11 summary of backup and restore"
"$PY" scripts/demo_summary.py "$SANDBOX/backups" modulodb modulodb_test

echo "== 6/11 monthly restore drill on the latest backup (playbooks/restore-drill.yml)"
ansible-playbook playbooks/restore-drill.yml

echo "== 7/11 point-in-time recovery: WAL archiving (playbooks/configure-pitr.yml) and a base backup"
ansible-playbook playbooks/configure-pitr.yml
ansible-playbook playbooks/nightly-backup.yml

echo "== 8/11 today's orders arrive after the backup, then are deleted by mistake"
psql_q() { "$BIN/psql" -XAtq -v ON_ERROR_STOP=1 -d modulodb -c "$1"; }
psql_q "SET client_min_messages = warning; CREATE TABLE IF NOT EXISTS todays_orders (id serial PRIMARY KEY, customer_id bigint, note text,
        created_at timestamptz DEFAULT clock_timestamp())"
psql_q "INSERT INTO todays_orders (customer_id, note) SELECT g % 1000 + 1, 'order ' || g FROM generate_series(1, 500) g"
sleep 1.2
just_before=$(psql_q "SELECT replace(to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), ' ', 'T')")
sleep 1.2
psql_q "DELETE FROM todays_orders" >/dev/null
echo "   500 orders written at $(psql_q "SELECT 'now'::timestamptz(0) AT TIME ZONE 'UTC'") UTC; none is in any backup file;"
echo "   then: DELETE FROM todays_orders (rows left: $(psql_q 'SELECT count(*) FROM todays_orders'))"
# archive_timeout would archive the DELETE within 60 s; the demo does not wait that long.
segment=$(psql_q "SELECT pg_walfile_name(pg_switch_wal())")
for _ in $(seq 1 100); do
  [ "$(psql_q "SELECT last_archived_wal >= '$segment' FROM pg_stat_archiver")" = t ] && break
  sleep 0.2
done

echo "== 9/11 recover modulodb as it was at $just_before UTC into modulodb_recovered (playbooks/pitr.yml)"
ansible-playbook playbooks/pitr.yml -e target_time="$just_before" -e target_db=modulodb_recovered \
  -e confirm=modulodb_recovered -e keep_old=false
recovered=$("$BIN/psql" -XAtq -d modulodb_recovered -c "SELECT count(*) FROM todays_orders")
echo "   todays_orders: modulodb has $(psql_q 'SELECT count(*) FROM todays_orders') rows, modulodb_recovered has $recovered"
[ "$recovered" = 500 ] || { echo "   PITR did not bring back the 500 deleted orders" >&2; exit 1; }
echo "   the deleted orders are back, recovered from the WAL archive"
echo "== 10/11 disaster recovery simulation with the application writing (playbooks/dr-simulation.yml)"
APP="$PY tests/modulo_app.py"
$APP stop --pidfile "$SANDBOX/app/modulo-app.pid" >/dev/null
PGBACKUP_APP_PORT=$("$PY" -c 'import sys; sys.path.insert(0, "tools"); import pgsandbox; print(pgsandbox.free_port())')
export PGBACKUP_APP_PORT
$APP start --pidfile "$SANDBOX/app/modulo-app.pid" --port "$PGBACKUP_APP_PORT" --log "$SANDBOX/app/modulo-app.log" \
  --journal "$SANDBOX/app/orders.jsonl" --host 127.0.0.1 --dbport "$PGBACKUP_PORT" --user postgres --db modulodb >/dev/null
echo "   the test application writes orders into modulodb, health on http://127.0.0.1:$PGBACKUP_APP_PORT/health"
sleep 1
if ! ansible-playbook playbooks/dr-simulation.yml > "$SANDBOX/dr-simulation.log" 2>&1; then
  tail -40 "$SANDBOX/dr-simulation.log" >&2
  $APP stop --pidfile "$SANDBOX/app/modulo-app.pid" >/dev/null
  echo "   the DR simulation failed: full output in $SANDBOX/dr-simulation.log" >&2
  exit 1
fi
lessons=$(find "$SANDBOX/backups/logs" -name 'dr_simulation_*.md' | sort | tail -1)
grep -E '^\| (Failure|Recovery|Recovered|RTO|Outage|Data lost|Application) ' "$lessons" | sed 's/^| /   /; s/ |$//; s/ | /: /'
echo "   emergency recovery output: $SANDBOX/dr-simulation.log; lessons-learned template: $lessons"
$APP stop --pidfile "$SANDBOX/app/modulo-app.pid" >/dev/null

echo "== 11/11 backup health checks (playbooks/health-check.yml; Prometheus textfile in $SANDBOX/modulo_pgbackup.prom)"
if ! ansible-playbook playbooks/health-check.yml -e pgbackup_health_textfile="$SANDBOX/modulo_pgbackup.prom" \
    > "$SANDBOX/health-check.log" 2>&1; then
  tail -40 "$SANDBOX/health-check.log" >&2
  echo "   a health check failed: full output in $SANDBOX/health-check.log" >&2
  exit 1
fi
sed -n '/backup health of/,/wal_chain/p' "$SANDBOX/health-check.log" | sed 's/^ */   /'
echo "   demo took $(( $(date +%s) - start )) s; remove the sandbox with: make demo-clean"
