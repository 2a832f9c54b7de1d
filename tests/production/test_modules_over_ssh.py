# -*- coding: utf-8 -*-
"""Every module over ssh, as the deploy user becoming root with sudo, on the Debian-layout host:
its happy path and one refusal. Rows are compared with the database, files with their owners and modes."""

import json
import os
import pwd
import stat
import subprocess

import prodhost

from ansible_collections.modulo.pgbackup.plugins.module_utils import logical_restore
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import archive as walarchive

SCHEMA_TABLES = ['billing.invoices', 'public.customers', 'public.order_items', 'public.orders', 'public.products']


def postgres_uid():
    return pwd.getpwnam('postgres').pw_uid


def assert_owned_by_postgres(root):
    """The whole repository belongs to the server's OS user, dirs 0700 and files 0600."""
    uid = postgres_uid()
    for base, dirs, files in os.walk(root):
        st = os.stat(base)
        assert st.st_uid == uid and stat.S_IMODE(st.st_mode) == 0o700, (base, st.st_uid, oct(st.st_mode))
        for name in files:
            st = os.lstat(os.path.join(base, name))
            assert st.st_uid == uid and stat.S_IMODE(st.st_mode) == 0o600, (base, name, st.st_uid, oct(st.st_mode))


def rows(host, db):
    return dict((t, int(host.psql('SELECT count(*) FROM %s' % t, db=db))) for t in SCHEMA_TABLES)


def backup(prod, **args):
    res = prod.task('modulo.pgbackup.pg_backup', dict({'db': 'modulodb'}, **args))
    assert res.get('failed') is not True, res.get('msg')
    return res


def test_pg_backup_creates_a_repository_every_later_step_can_use(prod):
    """Run as root on a fresh host, the backup creates /var/backups/... for postgres; a drill run next (as
    postgres, its scratch cluster under restore-tests/) can use it, and the .meta counts the real rows."""
    assert not os.path.exists(prod.backup_root)
    res = backup(prod)
    assert res['changed'] is True
    assert res['executed_commands'][0][:4] == ['runuser', '-u', 'postgres', '--'], res['executed_commands']
    assert res['backup']['meta']['table_rows'] == rows(prod.host, 'modulodb')
    assert_owned_by_postgres(prod.backup_root)
    assert stat.S_IMODE(os.stat(os.path.dirname(prod.backup_root)).st_mode) & 0o005   # the parent stays traversable

    drill = prod.task('modulo.pgbackup.pg_restore_drill', {'kind': 'logical', 'db': 'modulodb'})
    assert drill.get('failed') is not True, drill.get('msg')
    assert drill['report']['status'] == 'passed'
    assert_owned_by_postgres(prod.backup_root)


def test_pg_backup_refuses_a_database_that_does_not_exist(prod):
    res = prod.task('modulo.pgbackup.pg_backup', {'db': 'no_such_db'})
    assert res['failed'] is True
    assert 'database does not exist' in res['msg'] and 'no_such_db' in res['msg'], res['msg']
    assert not os.listdir(os.path.join(prod.backup_root, 'full'))


def test_without_become_peer_authentication_is_refused_with_advice(prod):
    """The deploy user itself maps to no database role: the message says to become root."""
    res = prod.task('modulo.pgbackup.pg_sql', {'query': ['SELECT 1'], 'read_only': True}, become=False)
    assert res['failed'] is True
    assert 'peer authentication failed' in res['msg'] and 'become: true' in res['msg'], res['msg']


def test_backup_info_lists_the_backup_and_refuses_an_unknown_name(prod):
    made = backup(prod)['backup']['meta']['name']
    res = prod.task('modulo.pgbackup.backup_info', {'select': 'all', 'verify': True})
    assert res.get('failed') is not True, res.get('msg')
    assert [b['name'] for b in res['backups']] == [made]
    assert res['verification'][0]['ok'] is True
    res = prod.task('modulo.pgbackup.backup_info', {'select': 'modulo_full_20000101_000000'})
    assert res['failed'] is True and 'no backup named modulo_full_20000101_000000' in res['msg']


def test_backup_restore_into_a_new_database_and_refusal_over_an_existing_one(prod):
    backup(prod)
    server_log = prod.host.lsclusters()[6]
    offset = os.path.getsize(server_log)
    prod.host.psql('ALTER SYSTEM SET trace_sort = on')
    prod.host.psql('SELECT pg_reload_conf()')
    try:
        res = prod.task('modulo.pgbackup.backup_restore', {'target_db': 'modulodb_copy'})
    finally:
        prod.host.psql('ALTER SYSTEM RESET trace_sort')
        prod.host.psql('SELECT pg_reload_conf()')
    try:
        assert res.get('failed') is not True, res.get('msg')
        assert rows(prod.host, 'modulodb_copy') == rows(prod.host, 'modulodb')
        # Over sudo and the Debian socket (psql run through runuser): the row check came from the load's
        # statistics, and the load's session setting reached the server (its own sort trace says so).
        assert res['restore']['rows_recounted'] == []
        share = logical_restore.maintenance_work_mem(logical_restore.host_memory(), 1, 64 * 1024 * 1024)
        assert res['restore']['load_settings'] == {'maintenance_work_mem': '%dMB' % (share // 1024 // 1024)}
        with open(server_log, 'rb') as handle:
            handle.seek(offset)
            sorts = [line for line in handle.read().decode('utf-8', 'replace').splitlines()
                     if 'begin index sort' in line]
        assert [line for line in sorts if 'workMem = %d,' % (share // 1024) in line], sorts
        assert not [line for line in sorts if 'workMem = 65536,' in line], sorts
        refused = prod.task('modulo.pgbackup.backup_restore', {'target_db': 'modulodb_copy'})
        assert refused['failed'] is True and 'set confirm: modulodb_copy' in refused['msg'], refused['msg']
    finally:
        prod.host.psql('DROP DATABASE IF EXISTS modulodb_copy WITH (FORCE)')


def test_pg_restore_drill_refuses_pitr_without_a_base_backup_and_writes_its_report(prod):
    backup(prod)
    res = prod.task('modulo.pgbackup.pg_restore_drill', {'kind': 'pitr', 'db': 'modulodb'})
    assert res['failed'] is True
    assert res['report']['status'] == 'failed' and 'base backup' in res['msg'], res['msg']
    assert os.stat(res['report_path']).st_uid == postgres_uid()


def test_wal_archive_restarts_through_pg_ctlcluster_then_changes_nothing(prod):
    res = prod.task('modulo.pgbackup.wal_archive', {'restart': True, 'verify': True})
    try:
        assert res.get('failed') is not True, res.get('msg')
        assert res['verified'] is True
        if res['restart_required']:
            assert res['restarted'] is True and res['service_control'] == 'pg_ctlcluster 15 %s' % prod.host.cluster
        assert prod.host.psql('SHOW archive_mode') == 'on'
        assert prod.host.lsclusters()[3] == 'online'
        again = prod.task('modulo.pgbackup.wal_archive', {'restart': True, 'verify': False})
        assert again['changed'] is False and again['restarted'] is False, again
        assert_owned_by_postgres(os.path.join(prod.backup_root, 'wal'))
    finally:
        # Other tests' repositories come and go: leave the server archiving nowhere (no restart needed).
        prod.host.psql("ALTER SYSTEM SET archive_command = '/bin/true'")
        prod.host.psql('SELECT pg_reload_conf()')


def test_wal_archive_refuses_an_unknown_unit_before_changing_anything(prod):
    prod.host.psql('ALTER SYSTEM SET archive_mode = off')
    subprocess.run(['pg_ctlcluster', '--skip-systemctl-redirect', '15', prod.host.cluster, 'restart'], check=True)
    before = prod.host.psql("SELECT name, setting FROM pg_file_settings WHERE sourcefile LIKE '%auto.conf' ORDER BY 1")
    res = prod.task('modulo.pgbackup.wal_archive', {'restart': True, 'verify': False,
                                                    'pg_service': 'postgresql@15-no-such-cluster'})
    assert res['failed'] is True
    assert 'not known to systemd' in res['msg'] and 'Nothing was changed' in res['msg'], res['msg']
    assert res['changed'] is False and res['files_changed'] == [] and res['restarted'] is False
    assert not os.path.exists(os.path.join(prod.backup_root, 'wal'))
    assert prod.host.psql("SELECT name, setting FROM pg_file_settings WHERE sourcefile LIKE '%auto.conf' "
                          "ORDER BY 1") == before
    assert prod.host.psql('SHOW archive_mode') == 'off'


def test_backup_retention_dry_run_and_refusal_of_a_zero_day_policy(prod):
    backup(prod)
    res = prod.task('modulo.pgbackup.backup_retention', {'full_days': 7}, check=True)
    assert res.get('failed') is not True, res.get('msg')
    assert res['deleted'] == [] and res['changed'] is False
    res = prod.task('modulo.pgbackup.backup_retention', {'full_days': 0})
    assert res['failed'] is True and 'full_days must be 1 or more' in res['msg']
    assert len([n for n in os.listdir(os.path.join(prod.backup_root, 'full')) if n.endswith('.meta')]) == 1


def test_incident_report_writes_for_postgres_and_refuses_a_bad_id(prod):
    res = prod.task('modulo.pgbackup.incident_report', {
        'incident_id': 'test_1', 'step': 'assess', 'status': 'ok', 'started_at': '2026-12-04T01:00:00.000000Z'})
    assert res.get('failed') is not True, res.get('msg')
    with open(res['report_path']) as handle:
        assert json.load(handle)['steps'][0]['step'] == 'assess'
    assert_owned_by_postgres(prod.backup_root)
    res = prod.task('modulo.pgbackup.incident_report', {
        'incident_id': '../x', 'step': 'assess', 'status': 'ok', 'started_at': '2026-12-04T01:00:00.000000Z'})
    assert res['failed'] is True and 'is not accepted' in res['msg']


def test_pg_sql_reads_through_peer_authentication_and_shows_psql_errors(prod):
    res = prod.task('modulo.pgbackup.pg_sql', {'query': ['SELECT current_user, count(*) FROM orders'],
                                               'db': 'modulodb', 'read_only': True})
    assert res.get('failed') is not True, res.get('msg')
    assert res['rows'] == [['postgres', prod.host.psql('SELECT count(*) FROM orders', db='modulodb')]]
    assert res['changed'] is False
    res = prod.task('modulo.pgbackup.pg_sql', {'query': ['DELETE FROM orders'], 'db': 'modulodb', 'read_only': True})
    assert res['failed'] is True and 'read-only transaction' in res['msg'], res['msg']


def test_a_module_run_as_postgres_itself_needs_no_root(prod):
    """Connected as the deploy user and become postgres (pipelining: no temporary files to share), the
    backup works and is postgres's; the repository must exist, since /var/backups is root's."""
    backup(prod)
    res = prod.task('modulo.pgbackup.pg_backup', {'db': 'modulodb'}, ansible_become_user='postgres')
    assert res.get('failed') is not True, res.get('msg')
    assert res['executed_commands'][0][0] == '/usr/lib/postgresql/15/bin/psql', res['executed_commands']
    assert_owned_by_postgres(prod.backup_root)


def test_the_stand_in_systemctl_refuses_the_deploy_user_like_the_real_one(prod):
    """What the systemd tests rely on: without sudo, systemctl says Access denied; with it, it acts."""
    proc = prod.host.ssh('%s/systemctl stop %s' % (prod.host.standin_dir, prod.host.unit), check=False)
    assert proc.returncode == 1 and 'Access denied' in proc.stderr
    assert prod.host.lsclusters()[3] == 'online'
    proc = prod.host.ssh('sudo -n systemctl is-active %s' % prod.host.unit, check=False)
    assert proc.stdout.strip() == 'active', (proc.stdout, proc.stderr)


def test_wal_archive_absent_whose_restart_fails_says_what_the_server_runs_with(prod):
    """archive_mode=off needs a restart; when the restart fails (here a setting the server cannot start with),
    the message says what is written, that the server is down, and the command that finishes the change."""
    host = prod.host
    res = prod.task('modulo.pgbackup.wal_archive', {'restart': True, 'verify': False})
    assert res.get('failed') is not True, res.get('msg')
    auto_conf = os.path.join(host.pgdata, 'postgresql.auto.conf')
    host.psql("ALTER SYSTEM SET shared_preload_libraries = 'modulo_no_such_library'")
    try:
        res = prod.task('modulo.pgbackup.wal_archive', {'state': 'absent', 'restart': True})
        assert res['failed'] is True
        msg = res['msg']
        assert "the settings are written (archive_mode='off'" in msg, msg
        assert 'PostgreSQL is DOWN' in msg and 'Finish the change with: pg_ctlcluster 15 %s restart' % host.cluster in msg
        assert host.lsclusters()[3] == 'down'
    finally:
        with open(auto_conf) as handle:
            lines = [line for line in handle if not line.startswith('shared_preload_libraries')]
        with open(auto_conf, 'w') as handle:
            handle.writelines(lines)
        subprocess.run(['pg_ctlcluster', '--skip-systemctl-redirect', '15', host.cluster, 'start'], check=True)
    assert host.psql('SHOW archive_mode') == 'off'     # the change the message promised, finished by hand


def test_a_restart_through_pg_ctl_keeps_the_servers_own_log(prod):
    """pg_ctl on a Debian cluster: the restarted server writes to /var/log/postgresql/... as before, not to a
    server.log beside the data directory."""
    host = prod.host
    own_log = '/var/log/postgresql/postgresql-15-%s.log' % host.cluster
    host.psql('ALTER SYSTEM SET archive_mode = off')
    subprocess.run(['pg_ctlcluster', '--skip-systemctl-redirect', '15', host.cluster, 'restart'], check=True)
    try:
        res = prod.task('modulo.pgbackup.wal_archive', {'restart': True, 'verify': True, 'service_control': 'pg_ctl'})
        assert res.get('failed') is not True, res.get('msg')
        assert res['restarted'] is True and res['service_control'] == 'pg_ctl on %s' % host.pgdata
        assert any(' -l %s ' % own_log in ' '.join(c) for c in res['executed_commands']), res['executed_commands']
        with open(os.path.join(host.pgdata, 'postmaster.pid')) as handle:
            pid = handle.readline().strip()
        assert os.readlink('/proc/%s/fd/2' % pid) == own_log
        assert not os.path.exists(os.path.join(os.path.dirname(host.pgdata), 'server.log'))
    finally:
        host.psql("ALTER SYSTEM SET archive_command = '/bin/true'")
        host.psql('SELECT pg_reload_conf()')


def test_a_base_backup_from_a_debian_standby_and_a_pitr_from_it(prod):
    """The primary archives (wal_archive through pg_ctlcluster); a streaming standby is a second Debian cluster
    (pg_createcluster, then pg_basebackup -R as postgres); pg_backup over ssh backs up the standby, switches WAL
    on the primary it finds by itself, and a PITR from that backup brings back exactly the rows of the mark."""
    host = prod.host
    standby = host.cluster + 's'
    port = prodhost.free_port()
    res = prod.task('modulo.pgbackup.wal_archive', {'restart': True, 'verify': True})
    try:
        assert res.get('failed') is not True, res.get('msg')
        prodhost.run(['pg_createcluster', '15', standby, '--port', str(port)])
        datadir = '/var/lib/postgresql/15/%s' % standby
        subprocess.run(['rm', '-rf', datadir], check=True)
        subprocess.run(['runuser', '-u', 'postgres', '--', '/usr/lib/postgresql/15/bin/pg_basebackup', '-D', datadir,
                        '-R', '-h', '/var/run/postgresql', '-p', str(host.pg_port)], check=True, cwd='/')
        prodhost.run(['pg_ctlcluster', '--skip-systemctl-redirect', '15', standby, 'start'])
        host.psql('CREATE TABLE standby_check (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())',
                  db='modulodb')
        host.psql('INSERT INTO standby_check (id) SELECT generate_series(1, 100)', db='modulodb')

        res = prod.task('modulo.pgbackup.pg_backup', {'type': 'physical', 'backup_from': 'standby', 'port': port})
        assert res.get('failed') is not True, res.get('msg')
        meta = res['backup']['meta']
        assert meta['backup_from'] == 'standby' and meta['standby_port'] == port and meta['primary_port'] == host.pg_port
        host.psql('INSERT INTO standby_check (id) SELECT generate_series(101, 200)', db='modulodb')
        mark = host.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")
        host.psql('SELECT pg_sleep(1.2)')
        host.psql('INSERT INTO standby_check (id) SELECT generate_series(201, 300)', db='modulodb')
        host.switch_wal_and_wait()

        res = prod.task('modulo.pgbackup.backup_restore',
                        {'db': 'modulodb', 'target_db': 'standby_pitr', 'target_time': mark})
        assert res.get('failed') is not True, res.get('msg')
        assert res['restore']['recovery']['base_backup'] == meta['name']
        assert host.psql('SELECT count(*), max(id) FROM standby_check', db='standby_pitr') == '200|200'
    finally:
        prodhost.run(['pg_dropcluster', '--stop', '15', standby], check=False)
        host.psql('DROP DATABASE IF EXISTS standby_pitr', check=False)
        host.psql('DROP TABLE IF EXISTS standby_check', db='modulodb', check=False)
        host.psql("ALTER SYSTEM SET archive_command = '/bin/true'")
        host.psql('SELECT pg_reload_conf()')


def test_asynchronous_archiving_on_a_debian_cluster(prod):
    """archive_async through the module over ssh: the Debian cluster's archiver runs the command, its pusher
    (forked by it, as postgres) pushes ahead, and every segment reaches the repository, acknowledged."""
    host = prod.host
    res = prod.task('modulo.pgbackup.wal_archive', {'restart': True, 'verify': True, 'archive_async': True,
                                                    'archive_async_workers': 2})
    try:
        assert res.get('failed') is not True, res.get('msg')
        host.psql('CREATE TABLE async_check AS SELECT i, md5(i::text) FROM generate_series(1, 1) i', db='modulodb')
        failed_before = host.psql('SELECT failed_count FROM pg_stat_archiver')
        segments = []
        for _batch in range(6):
            host.psql('INSERT INTO async_check SELECT i, md5(i::text) FROM generate_series(1, 20000) i', db='modulodb')
            segments.append(host.switch_wal_and_wait())
        archived = set(e['name'] for e in walarchive.list_archive(prod.backup_root))
        assert set(segments) <= archived, (segments, archived)
        assert host.psql('SELECT failed_count FROM pg_stat_archiver') == failed_before
        spool = os.path.join(host.pgdata, 'pg_wal', 'pgbackup', 'out')
        assert pwd.getpwuid(os.stat(spool).st_uid).pw_name == 'postgres'
        assert [n for n in os.listdir(spool) if n.endswith('.ok')] == []
    finally:
        host.psql('DROP TABLE IF EXISTS async_check', db='modulodb', check=False)
        host.psql("ALTER SYSTEM SET archive_command = '/bin/true'")
        host.psql('SELECT pg_reload_conf()')
