# -*- coding: utf-8 -*-
"""Point-in-time recovery of the whole Debian-layout cluster over ssh, through systemd (the stand-in unit):
rows checked against what was committed, the configuration in /etc untouched, the pre-check before any
change, and the rollback the module does by itself when recovery fails."""

import glob
import hashlib
import json
import os
import shutil
import subprocess

import pytest


def conf_digest(host):
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(host.confdir, '**', '*'), recursive=True)):
        if os.path.isfile(path):
            with open(path, 'rb') as handle:
                digest.update(path.encode() + b'\0' + handle.read())
    return digest.hexdigest()


@pytest.fixture
def archived(prod):
    """Archiving on into this test's repository, a base backup, and a journal written around a mark."""
    host = prod.host
    proc = prod.playbook('configure-pitr.yml')
    assert proc.returncode == 0, proc.stdout[-4000:]
    proc = prod.playbook('nightly-backup.yml')
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert glob.glob(os.path.join(prod.backup_root, 'base', '*.meta')), proc.stdout[-4000:]
    host.psql('DROP TABLE IF EXISTS journal; CREATE TABLE journal (id int PRIMARY KEY, at timestamptz '
              'DEFAULT clock_timestamp())', db='modulodb')
    host.psql('INSERT INTO journal (id) SELECT g FROM generate_series(1, 100) g', db='modulodb')
    mark = host.psql("SELECT pg_sleep(1.1), to_char(clock_timestamp() AT TIME ZONE 'UTC', "
                     "'YYYY-MM-DD\"T\"HH24:MI:SS.US'), pg_sleep(1.1)", db='modulodb').split('|')[1]
    host.psql('INSERT INTO journal (id) SELECT g FROM generate_series(101, 150) g', db='modulodb')
    host.switch_wal_and_wait()
    yield {'mark': mark}
    for leftover in glob.glob(host.pgdata + '.old-*') + glob.glob(host.pgdata + '.failed-*'):
        shutil.rmtree(leftover, ignore_errors=True)
    host.psql('DROP TABLE IF EXISTS journal', db='modulodb')
    host.psql("ALTER SYSTEM SET archive_command = '/bin/true'")
    host.psql('SELECT pg_reload_conf()')


def test_cluster_pitr_to_a_time_through_systemd_keeps_the_configuration_in_etc(prod, archived):
    host = prod.host
    before = conf_digest(host)
    check = prod.playbook('pitr.yml', check=True, extra_vars={
        'pitr_mode': 'cluster', 'target_time': archived['mark'], 'confirm': host.pgdata})
    assert check.returncode == 0, check.stdout[-4000:]
    assert int(host.psql('SELECT count(*) FROM journal', db='modulodb')) == 150    # check mode changed nothing

    proc = prod.playbook('pitr.yml', extra_vars={
        'pitr_mode': 'cluster', 'target_time': archived['mark'], 'confirm': host.pgdata})
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert 'as the live cluster %s' % host.pgdata in proc.stdout
    assert host.psql('SELECT count(*), max(id) FROM journal', db='modulodb') == '100|100'
    assert host.psql('SELECT pg_is_in_recovery()') == 'f'
    assert conf_digest(host) == before
    assert not os.path.exists(os.path.join(host.pgdata, 'postgresql.conf'))    # still Debian's layout
    line = host.lsclusters()
    assert line[3] == 'online' and line[5] == host.pgdata, line
    # The recovery settings are gone from the live configuration; the next restart is a normal start.
    assert host.psql("SELECT count(*) FROM pg_file_settings WHERE name LIKE 'recovery_target%' "
                     "OR name = 'restore_command'") == '0'
    assert len(glob.glob(host.pgdata + '.old-*')) == 1


def test_cluster_pitr_precheck_refuses_an_unknown_unit_with_the_server_untouched(prod, archived):
    host = prod.host
    inventory = prod.production_inventory()
    proc = prod.playbook('pitr.yml', inventory=inventory, extra_vars={
        'pitr_mode': 'cluster', 'target': 'latest', 'confirm': host.pgdata,
        'pgbackup_pg_service': 'postgresql@15-not-this-one'})
    assert proc.returncode != 0
    assert 'not known to systemd' in proc.stdout and 'Nothing was changed: the server was not stopped' in proc.stdout
    assert host.lsclusters()[3] == 'online'
    assert int(host.psql('SELECT count(*) FROM journal', db='modulodb')) == 150
    assert not glob.glob(host.pgdata + '.old-*')


def test_cluster_pitr_that_fails_after_the_stop_rolls_back_through_systemd(prod, archived):
    host = prod.host
    meta = sorted(glob.glob(os.path.join(prod.backup_root, 'base', '*.meta')))[-1]
    with open(meta) as handle:
        first = json.load(handle)['wal_start']
    segment = glob.glob(os.path.join(prod.backup_root, 'wal', '*', first + '.*'))
    segment = [s for s in segment if not s.endswith('.backup')][0]
    shutil.move(segment, segment + '.aside')
    try:
        res = prod.task('modulo.pgbackup.backup_restore', {
            'mode': 'cluster', 'target': 'latest', 'confirm': host.pgdata, 'pg_service': host.unit})
    finally:
        shutil.move(segment + '.aside', segment)
    assert res['failed'] is True
    assert '%s is not in the archive' % first in res['msg'], res['msg']
    assert ('Rolled back: the previous data directory is back at %s and PostgreSQL runs on it again (through '
            'systemd unit %s)' % (host.pgdata, host.unit)) in res['msg'], res['msg']
    assert res['rollback']['rolled_back'] and res['rollback']['server_running']
    assert subprocess.run(['pg_ctlcluster', '15', host.cluster, 'status'], stdout=subprocess.DEVNULL, check=False).returncode == 0
    assert int(host.psql('SELECT count(*) FROM journal', db='modulodb')) == 150
    assert os.path.isdir(res['rollback']['failed_copy'])


def test_cluster_pitr_through_pg_ctl_passes_the_configuration_in_etc(prod, archived):
    """The path that used to stop the cluster and then fail: pg_ctl on a Debian data directory, whose
    postgresql.conf is in /etc. pg_ctl gets the server's config_file, and pg_lsclusters sees it online."""
    host = prod.host
    check = prod.task('modulo.pgbackup.backup_restore', {
        'mode': 'cluster', 'target': 'latest', 'confirm': host.pgdata, 'service_control': 'pg_ctl'}, check=True)
    assert check.get('failed') is not True, check.get('msg')
    plan = check['restore']['cluster']
    assert plan['config_file'] == os.path.join(host.confdir, 'postgresql.conf') and plan['config_outside_data_directory']
    assert plan['service_control'] == 'pg_ctl'

    res = prod.task('modulo.pgbackup.backup_restore', {
        'mode': 'cluster', 'target': 'latest', 'confirm': host.pgdata, 'service_control': 'pg_ctl'})
    assert res.get('failed') is not True, res.get('msg')
    assert any('-c config_file=%s/postgresql.conf' % host.confdir in ' '.join(c) for c in res['executed_commands']), \
        res['executed_commands']
    assert int(host.psql('SELECT count(*) FROM journal', db='modulodb')) == 150
    assert host.lsclusters()[3] == 'online'
    # Handed back to the cluster's own tooling: a pg_ctlcluster restart works on what pg_ctl started.
    subprocess.run(['pg_ctlcluster', '--skip-systemctl-redirect', '15', host.cluster, 'restart', '-m', 'fast'],
                   check=True)
    assert host.psql('SELECT pg_is_in_recovery()') == 'f'


def test_cluster_pitr_without_become_is_refused_before_anything_is_touched(prod, archived):
    """As the deploy user without become, the repository (postgres's, 0700) cannot be read: that is said, not
    mistaken for an empty repository, and nothing is stopped."""
    res = prod.task('modulo.pgbackup.backup_restore', {
        'mode': 'cluster', 'target': 'latest', 'confirm': prod.host.pgdata, 'pg_service': prod.host.unit},
        check=True, become=False)
    assert res['failed'] is True
    assert 'cannot read it' in res['msg'] and 'become: true' in res['msg'], res['msg']
    assert prod.host.lsclusters()[3] == 'online'


def test_cluster_pitr_in_place_with_delta_through_systemd_keeps_the_configuration_in_etc(prod, archived):
    """pitr.yml with pitr_delta=true: refused while the cluster runs, then, stopped by the operator, the data
    directory is brought back in place (no second copy) and started through the unit; /etc is untouched."""
    host = prod.host
    before = conf_digest(host)
    extra = {'pitr_mode': 'cluster', 'pitr_delta': True, 'target_time': archived['mark'], 'confirm': host.pgdata}
    proc = prod.playbook('pitr.yml', extra_vars=extra)
    assert proc.returncode != 0 and 'refuses while PostgreSQL runs' in proc.stdout, proc.stdout[-4000:]
    assert int(host.psql('SELECT count(*) FROM journal', db='modulodb')) == 150

    subprocess.run(['pg_ctlcluster', '--skip-systemctl-redirect', '15', host.cluster, 'stop', '-m', 'fast'], check=True)
    proc = prod.playbook('pitr.yml', extra_vars=extra)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert 'Delta, in place: ' in proc.stdout and 'no old directory kept' in proc.stdout, proc.stdout[-4000:]
    assert host.psql('SELECT count(*), max(id) FROM journal', db='modulodb') == '100|100'
    assert host.psql('SELECT pg_is_in_recovery()') == 'f'
    assert conf_digest(host) == before
    assert not os.path.exists(os.path.join(host.pgdata, 'postgresql.conf'))    # still Debian's layout
    line = host.lsclusters()
    assert line[3] == 'online' and line[5] == host.pgdata, line
    assert not glob.glob(host.pgdata + '.old-*') and not glob.glob(host.pgdata + '.pitr-*')
    # everything in the data directory still belongs to the server's OS user
    owners = set(os.lstat(os.path.join(base, name)).st_uid for base, dirs, files in os.walk(host.pgdata)
                 for name in dirs + files)
    assert owners == {os.stat(host.pgdata).st_uid}, owners
