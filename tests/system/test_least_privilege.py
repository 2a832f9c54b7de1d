# -*- coding: utf-8 -*-
"""Least privilege: the nightly backups, the health checks and verify mode run as the db_roles role,
which has only LOGIN, REPLICATION, pg_read_all_data and pg_monitor, and can do nothing more.

The role logs in with a password (scram-sha-256 in pg_hba.conf), so the test also proves the role's
password was set and never shown.
"""

import os
import re
import subprocess
import uuid

import pgsandbox
from conftest import SCHEMA_SQL, table_rows
from test_pitr import archiving_cluster, args_for, make_repo, wait_archived

ROLE = 'modulo_backup'


def as_backup_role(cluster, repo, password, **extra):
    return args_for(cluster, repo, login_user=ROLE, login_password=password, **extra)


def backup_psql(cluster, password, sql, db='modulodb'):
    env = dict(cluster.env(db), PGUSER=ROLE, PGPASSWORD=password)
    return subprocess.run([os.path.join(cluster.bindir, 'psql'), '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1',
                           '-c', sql], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, check=False)


def said(proc):
    """The playbook's output with line wrapping undone."""
    return ' '.join(proc.stdout.split())


def require_password(cluster):
    """The backup role must authenticate with its password, for SQL and for replication connections."""
    hba = os.path.join(cluster.pgdata, 'pg_hba.conf')
    with open(hba) as handle:
        current = handle.read()
    lines = ('host all %s 127.0.0.1/32 scram-sha-256\nhost replication %s 127.0.0.1/32 scram-sha-256\n'
             % (ROLE, ROLE))
    proc = subprocess.run(pgsandbox.as_server_user(['tee', hba]), input=(lines + current).encode(),
                          stdout=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0
    cluster.psql('SELECT pg_reload_conf()')


def test_backups_health_checks_and_verify_run_as_the_backup_role_and_it_can_do_nothing_more(
        ansible, new_cluster, backup_root):
    repo = make_repo(backup_root)
    cluster = archiving_cluster(new_cluster, repo)
    cluster.psql('CREATE DATABASE modulodb')
    cluster.psql_file(SCHEMA_SQL, db='modulodb')
    require_password(cluster)
    password = 'Bk-%s' % uuid.uuid4().hex
    play_vars = dict(cluster.connection_vars(), db_roles_backup_role=ROLE, db_roles_backup_password=password)

    # Check mode tells what would change and changes nothing.
    proc = ansible.playbook('db-roles.yml', extra_vars=play_vars, check=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert 'created role %s' % ROLE in proc.stdout
    assert cluster.psql("SELECT count(*) FROM pg_roles WHERE rolname = '%s'" % ROLE) == '0'

    proc = ansible.playbook('db-roles.yml', extra_vars=play_vars)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert 'created role %s, password set, granted pg_read_all_data, granted pg_monitor' % ROLE in said(proc)
    assert password not in proc.stdout
    proc = ansible.playbook('db-roles.yml', extra_vars=play_vars)
    assert proc.returncode == 0 and 'changed=0' in proc.stdout and 'nothing to change' in proc.stdout

    attrs = cluster.psql("SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, rolreplication, rolcanlogin "
                         "FROM pg_roles WHERE rolname = '%s'" % ROLE)
    assert attrs == 'f|f|f|f|t|t'
    member_of = cluster.psql("SELECT string_agg(g.rolname, ',' ORDER BY g.rolname) FROM pg_auth_members m "
                             "JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles r ON r.oid = m.member "
                             "WHERE r.rolname = '%s'" % ROLE)
    assert member_of == 'pg_monitor,pg_read_all_data'
    assert backup_psql(cluster, 'wrong-password', 'SELECT 1').returncode != 0

    # Everything the nightly backup and the health checks do, as the backup role.
    rows = table_rows(cluster, 'modulodb')
    res = ansible.task('modulo.pgbackup.pg_backup', as_backup_role(cluster, repo, password, db='modulodb'))
    assert not res.get('failed'), res.get('msg')
    assert res['backup']['meta']['table_rows'] == rows
    res = ansible.task('modulo.pgbackup.pg_backup', as_backup_role(cluster, repo, password, type='physical',
                                                                   wait_archive=60))
    assert not res.get('failed'), res.get('msg')
    assert res['backup']['meta']['status'] == 'complete'
    wait_archived(cluster, repo)
    res = ansible.task('modulo.pgbackup.backup_info', as_backup_role(cluster, repo, password, server_checks=True,
                                                                     pgdata=cluster.pgdata))
    assert not res.get('failed'), res.get('msg')
    checks = dict((c['check'], c) for c in res['health']['checks'])
    assert checks['archiver']['status'] == 'ok', checks['archiver']
    # pg_monitor is what lets the role list pg_wal/archive_status.
    assert checks['archive_backlog']['status'] == 'ok', checks['archive_backlog']
    assert checks['wal_chain']['status'] == 'ok', checks['wal_chain']
    res = ansible.task('modulo.pgbackup.pg_restore_drill', as_backup_role(cluster, repo, password, mode='verify',
                                                                          db='modulodb', expect_exact_rows=True))
    assert not res.get('failed'), res.get('msg')
    assert res['report']['status'] == 'passed', res['report']

    # ... and nothing more: no writes, no DDL, no new databases, no server configuration.
    for sql in ("INSERT INTO customers (name, email) VALUES ('x', 'x@example.com')",
                'DELETE FROM order_items', 'TRUNCATE orders CASCADE', 'CREATE TABLE public.intruder (id int)',
                'CREATE DATABASE intruder', "ALTER SYSTEM SET archive_mode = 'off'", 'SELECT pg_switch_wal()',
                'CREATE ROLE intruder', 'GRANT pg_write_all_data TO %s' % ROLE):
        proc = backup_psql(cluster, password, sql)
        assert proc.returncode != 0 and re.search(r'permission denied|must (be|have)', proc.stderr), (sql, proc)
    assert table_rows(cluster, 'modulodb') == rows
    command_dir = os.path.join(os.path.dirname(repo), 'bin-%s' % uuid.uuid4().hex[:8])
    res = ansible.task('modulo.pgbackup.wal_archive', as_backup_role(
        cluster, repo, password, state='absent', command_path=os.path.join(command_dir, 'pgbackup-wal')))
    assert res.get('failed') is True, res
    assert 'needs a superuser' in res['msg'] and 'not as %s' % ROLE in res['msg'], res['msg']
    assert not os.path.exists(command_dir)
    assert cluster.psql('SHOW archive_mode') == 'on'
    res = ansible.task('modulo.pgbackup.backup_restore', as_backup_role(cluster, repo, password, backup='latest',
                                                                        target_db='modulodb_restored'))
    assert res.get('failed') is True and 'permission denied' in res['msg'], res.get('msg')
    assert cluster.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'modulodb_%'") == '0'

    # Privileges granted by hand later are taken back by the next run, and said so.
    cluster.psql('ALTER ROLE %s CREATEDB; GRANT pg_write_all_data TO %s' % (ROLE, ROLE))
    proc = ansible.playbook('db-roles.yml', extra_vars=play_vars)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert 'removed CREATEDB, revoked membership in pg_write_all_data' in said(proc)
    assert backup_psql(cluster, password, 'DELETE FROM order_items').returncode != 0
