# -*- coding: utf-8 -*-
"""playbooks/emergency-recovery.yml end to end, with the test application writing orders all along.

The application's journal (every order it committed, with the database's
commit-time clock) is the witness: no order may be written while the database is
being restored, the restored data must be the backup (or the PITR point), and
the application must write again afterwards.
"""

import datetime
import glob
import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import SCHEMA_SQL, flip_byte, table_rows
from test_pitr import archiving_cluster, args_for, make_repo, wait_archived

DB = 'modulodb'


def utc(text):
    return datetime.datetime.fromisoformat(text.replace('Z', '+00:00'))


def inventory(workdir, app):
    path = os.path.join(workdir, 'inventory.json')
    with open(path, 'w') as handle:
        json.dump({'all': {'children': {
            'postgres': {'hosts': {'localhost': {'ansible_connection': 'local',
                                                 'ansible_python_interpreter': app.host_vars()['ansible_python_interpreter']}}},
            'modulo_app': {'hosts': {'app1': app.host_vars()}}}}}, handle)
    return path


def make_shop(new_cluster, backup_root, modulo_app, archiving=False):
    """A Modulo database (archiving WAL when asked) with the application writing into it."""
    repo = make_repo(backup_root)
    cluster = archiving_cluster(new_cluster, repo) if archiving else new_cluster()
    cluster.psql('CREATE DATABASE %s' % DB)
    cluster.psql_file(SCHEMA_SQL, db=DB)
    app = modulo_app(cluster, DB)
    app.wait_for_orders(5)
    return {'cluster': cluster, 'repo': repo, 'app': app}


@pytest.fixture
def shop(new_cluster, backup_root, modulo_app):
    return make_shop(new_cluster, backup_root, modulo_app)


@pytest.fixture
def archiving_shop(new_cluster, backup_root, modulo_app):
    return make_shop(new_cluster, backup_root, modulo_app, archiving=True)


def backup(ansible, shop, **extra):
    res = ansible.task('modulo.pgbackup.pg_backup', args_for(shop['cluster'], shop['repo'], db=DB, **extra))
    assert not res.get('failed'), res.get('msg')
    return res['backup']


FULL_RUN = [('assess', 'ok'), ('stop', 'ok'), ('stop', 'ok'), ('restore', 'ok'), ('verify', 'ok'), ('start', 'ok')]


def run(ansible, shop, tags=None, **extra):
    extra_vars = dict(shop['cluster'].connection_vars(), pgbackup_backup_root=shop['repo'], pgbackup_db=DB, **extra)
    started = datetime.datetime.now(datetime.timezone.utc)
    proc = ansible.playbook('emergency-recovery.yml', extra_vars=extra_vars, tags=tags,
                            inventory=inventory(ansible.workdir, shop['app']))
    finished = datetime.datetime.now(datetime.timezone.utc)
    reports = sorted(glob.glob(os.path.join(shop['repo'], 'logs', 'incident_*.json')), key=os.path.getmtime)
    report = None
    if reports:
        with open(reports[-1]) as handle:
            report = json.load(handle)
    return proc, report, started, finished


def step(report, name, part=None):
    found = [s for s in report['steps'] if s['step'] == name and (part is None or s['details'].get('part') == part)]
    assert found, (name, part, report['steps'])
    return found[-1]


def check_outage(shop, proc, report, started, finished, steps=None):
    """The report's timings are real, the application was down during the restore and writes again."""
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert report['status'] == 'recovered', report
    assert [(s['step'], s['status']) for s in report['steps']] == (steps or FULL_RUN)
    for entry in report['steps']:
        assert started <= utc(entry['started_at']) <= utc(entry['finished_at']) <= finished, entry
        assert entry['duration_s'] == pytest.approx(
            (utc(entry['finished_at']) - utc(entry['started_at'])).total_seconds(), abs=0.002)
    stopped = utc(step(report, 'stop', 'application')['finished_at'])
    restarted = utc(step(report, 'start')['started_at'])
    restore = step(report, 'restore')
    assert stopped <= utc(restore['started_at']) and utc(restore['finished_at']) <= restarted
    outage = (utc(step(report, 'start')['finished_at']) - utc(step(report, 'stop', 'application')['started_at']))
    assert report['rto']['measured_s'] == pytest.approx(outage.total_seconds(), abs=0.002)
    assert 0 < report['rto']['measured_s'] < (finished - started).total_seconds()
    assert report['rto']['passed'] is True and report['rto']['target_s'] == 1800
    assert report['timings']['restore_s'] == pytest.approx(
        sum(e['duration_s'] for e in report['steps'] if e['step'] == 'restore'), abs=0.002)
    assert restore['duration_s'] > 0
    assert report['operators'] and report['operators'][0]
    # The application wrote nothing between being stopped and being started again ...
    app = shop['app']
    during = [o for o in app.journal() if stopped < utc(o['created_at']) < restarted]
    assert during == [], during[:5]
    # ... and writes again now (the restart step waited for its health check already).
    assert app.wait_for_orders(3, after=step(report, 'start')['started_at'])
    app.stop()
    return stopped, restarted


def restored_matches_backup(shop, meta, restarted):
    """Every table equals the backup's counts once the orders written after the restart are set aside."""
    cluster = shop['cluster']
    after = [o for o in shop['app'].journal() if utc(o['created_at']) >= restarted]
    rows = table_rows(cluster, DB)
    rows['public.orders'] -= len(after)
    assert rows == meta['table_rows']
    # finished_at has whole seconds: a second later the dump's snapshot was surely taken.
    newer = cluster.psql("SELECT count(*) FROM orders WHERE created_at >= timestamptz '%s' + interval '1 second' "
                         "AND created_at < '%s'" % (meta['finished_at'], restarted.isoformat()), db=DB)
    assert newer == '0'


def test_corrupt_latest_backup_leaves_the_application_stopped_then_recovery_after_the_fix(ansible, shop):
    cluster, app = shop['cluster'], shop['app']
    taken = backup(ansible, shop)
    meta = taken['meta']
    app.wait_for_orders(10, after=meta['finished_at'])   # written after the backup: lost by design
    flip_byte(taken['path'])
    # A client outside modulo_app keeps a session open: the stop step must close it.
    straggler = subprocess.Popen([os.path.join(cluster.bindir, 'psql'), '-X', '-q'], env=cluster.env(DB),
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = '%s' AND application_name = 'psql'"
                           % DB) == '0' and time.time() < deadline:
            time.sleep(0.1)
        proc, report, started, _finished = run(ansible, shop, confirm=DB)
    finally:
        straggler.kill()
        straggler.wait()

    # The restore fails on the checksum: the play stops, the application stays stopped, the database is intact.
    assert proc.returncode != 0
    assert 'Restore failed' in proc.stdout and 'is corrupt' in proc.stdout
    assert 'The application stays stopped' in proc.stdout and 'is as it was before the restore' in proc.stdout
    assert report['status'] == 'failed' and report['error'].startswith('restore: ')
    assert [(s['step'], s['status']) for s in report['steps']] == FULL_RUN[:3] + [('restore', 'failed')]
    assert report['rollback'] == ('The database %s is as it was before the restore (the restore goes through a '
                                  'staging database): nothing to roll back.' % DB)
    # Both ways forward are named; the cause (a corrupt backup) tells which one applies.
    assert 'choose another backup or target' in proc.stdout and 'if it is the host' in proc.stdout
    sessions = step(report, 'stop', 'database sessions')['details']
    assert sessions['terminated'] >= 1 and 'psql' in [s['application'] for s in sessions['sessions_found']]
    assessed = step(report, 'assess')['details']
    assert assessed['server_up'] and assessed['latest_backup'] == meta['name']
    assert assessed['recovery_window']['logical']['backup'] == meta['name']
    assert not app.running()
    stopped = utc(step(report, 'stop', 'application')['finished_at'])
    assert [o for o in app.journal() if utc(o['created_at']) > stopped] == []
    last = app.journal()[-1]
    assert cluster.psql('SELECT max(id) FROM orders', db=DB) == str(last['id'])
    assert cluster.psql("SELECT count(*) FROM pg_database WHERE datname LIKE '%s\\_%%'" % DB) == '0'

    # The backup is mended; the on-call continues the same incident where it stopped.
    flip_byte(taken['path'])
    proc, report, _started, finished = run(ansible, shop, tags='restore,verify,start', confirm=DB,
                                           incident_id=report['incident_id'])
    _stopped, restarted = check_outage(shop, proc, report, started, finished,
                                       steps=FULL_RUN[:3] + [('restore', 'failed')] + FULL_RUN[3:])
    assert report['backup']['name'] == meta['name'] and report['backup']['type'] == 'logical'
    assert meta['name'] in report['recovered_to']
    restored_matches_backup(shop, meta, restarted)
    # The replaced database is kept with every order the application wrote before it was stopped.
    old = step(report, 'restore')['details']['old_db']
    assert cluster.psql('SELECT max(id) FROM orders', db=old) == str(last['id'])
    assert old in report['rollback']


def test_refused_without_confirm_then_recovery_from_a_given_file(ansible, shop):
    cluster, app = shop['cluster'], shop['app']
    first = backup(ansible, shop)
    app.wait_for_orders(10, after=first['meta']['finished_at'])
    second = backup(ansible, shop)
    assert second['meta']['table_rows']['public.orders'] > first['meta']['table_rows']['public.orders']

    proc, report, _started, finished = run(ansible, shop, restore_source='file', backup_file=first['path'])
    assert proc.returncode != 0
    assert 'to go ahead, add -e confirm=%s' % DB in proc.stdout and 'the application was not stopped' in proc.stdout
    assert [s['step'] for s in report['steps']] == ['assess']
    assert 'To continue' in proc.stdout and '-e confirm=%s' % DB in proc.stdout
    assert app.running() and app.wait_for_orders(3, after=finished.isoformat())
    assert cluster.psql("SELECT count(*) FROM pg_database WHERE datname LIKE '%s_old_%%'" % DB) == '0'

    proc, report, started, finished = run(ansible, shop, restore_source='file', backup_file=first['path'], confirm=DB)
    _stopped, restarted = check_outage(shop, proc, report, started, finished)
    assert report['backup']['name'] == first['meta']['name'] and report['backup']['path'] == first['path']
    restored_matches_backup(shop, first['meta'], restarted)


def test_emergency_pitr_to_a_time_between_two_writes(ansible, archiving_shop):
    shop = archiving_shop
    cluster, app, repo = shop['cluster'], shop['app'], shop['repo']
    base = backup(ansible, shop, type='physical', wait_archive=60)['meta']
    orders = app.wait_for_orders(20, after=base['finished_at'])
    # Two consecutive orders; the target lies between their commits.
    before, after = orders[10], orders[11]
    target = utc(before['created_at']) + (utc(after['created_at']) - utc(before['created_at'])) / 2
    app.wait_for_orders(5, after=after['created_at'])
    wait_archived(cluster, repo)

    proc, report, started, finished = run(ansible, shop, restore_source='pitr', confirm=DB,
                                          target_time=target.strftime('%Y-%m-%d %H:%M:%S.%f'))
    _stopped, restarted = check_outage(shop, proc, report, started, finished)
    assert report['backup']['name'] == base['name'] and report['backup']['type'] == 'physical'
    recovery = step(report, 'restore')['details']['recovery']
    assert recovery['reached_target'] is True and 'recovery stopping' in recovery['stop']
    # Exactly the orders committed up to the target, none after it.
    pre_restart = "created_at < '%s'" % restarted.isoformat()
    assert cluster.psql('SELECT max(id) FROM orders WHERE %s' % pre_restart, db=DB) == str(before['id'])
    assert cluster.psql("SELECT to_char(max(created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') "
                        "FROM orders WHERE %s" % pre_restart, db=DB) == before['created_at']
    assert cluster.psql("SELECT count(*) FROM orders WHERE id = %d AND %s" % (after['id'], pre_restart), db=DB) == '0'


def test_emergency_cluster_pitr_that_fails_says_the_module_rolled_back_and_keeps_the_application_stopped(
        ansible, archiving_shop):
    """Recovery of the whole cluster fails after the stop (the base backup's first segment is out of the
    archive): the module puts the old data directory back and the play says exactly that, no more."""
    shop = archiving_shop
    cluster, app, repo = shop['cluster'], shop['app'], shop['repo']
    base = backup(ansible, shop, type='physical', wait_archive=60)['meta']
    app.wait_for_orders(5, after=base['finished_at'])
    wait_archived(cluster, repo)
    first = [p for p in glob.glob(os.path.join(repo, 'wal', '*', base['wal_start'] + '.*')) if not p.endswith('.backup')][0]
    os.rename(first, first + '.aside')
    try:
        proc, report, _started, _finished = run(ansible, shop, restore_source='pitr', pitr_mode='cluster',
                                                target='latest', confirm=cluster.pgdata)
    finally:
        os.rename(first + '.aside', first)
    assert proc.returncode != 0
    assert 'The module rolled back by itself: the previous data directory is back at %s and PostgreSQL runs on it' \
        % cluster.pgdata in proc.stdout, proc.stdout[-4000:]
    assert 'The automatic rollback did NOT complete' not in proc.stdout
    assert 'The application stays stopped' in proc.stdout and not app.running()
    restore = step(report, 'restore')
    assert restore['status'] == 'failed' and report['rollback'].startswith('The module rolled back by itself')
    assert restore['details']['rollback']['rolled_back'] is True
    assert cluster.psql('SELECT pg_is_in_recovery()') == 'f'
    assert int(cluster.psql('SELECT count(*) FROM orders', db=DB)) > 0
    for failed in glob.glob(cluster.pgdata + '.failed-*'):
        shutil.rmtree(failed)


def test_dr_simulation_drops_the_orders_table_and_measures_rto_and_orders_lost(ansible, shop):
    cluster, app, repo = shop['cluster'], shop['app'], shop['repo']
    meta = backup(ansible, shop)['meta']
    app.wait_for_orders(10, after=meta['finished_at'])
    extra_vars = dict(cluster.connection_vars(), pgbackup_backup_root=repo, pgbackup_db=DB)
    inv = inventory(ansible.workdir, app)

    # Outside the sandbox it refuses before breaking anything.
    proc = ansible.playbook('dr-simulation.yml', extra_vars=extra_vars, inventory=inv)
    assert proc.returncode != 0 and 'runs only against the sandbox' in proc.stdout
    assert app.running() and cluster.psql("SELECT to_regclass('orders') IS NOT NULL", db=DB) == 't'

    started = datetime.datetime.now(datetime.timezone.utc)
    proc = ansible.playbook('dr-simulation.yml', extra_vars=dict(extra_vars, pgbackup_sandbox_dir=ansible.workdir),
                            inventory=inv)
    wall = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    assert proc.returncode == 0, proc.stdout[-4000:]
    lessons = glob.glob(os.path.join(repo, 'logs', 'dr_simulation_dr_*.md'))
    assert len(lessons) == 1
    with open(lessons[0]) as handle:
        text = handle.read()
    fields = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if len(cells) == 2:
            fields[cells[0]] = cells[1]
    failed_at = utc(fields['Failure simulated'].split(' at ')[1])
    assert started < failed_at
    # Orders before the failure: the 3000 of the sample data and the application's, as its journal says.
    written = [o for o in app.journal() if utc(o['created_at']) <= failed_at]
    lost_count, before_count = [int(n) for n in fields['Data lost'].split(' orders')[0].split(' of ')]
    assert before_count == 3000 + len(written)
    app.stop()
    present = set(cluster.psql("SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') "
                               "FROM orders WHERE id > 3000", db=DB).split())
    assert lost_count == len([o for o in written if o['created_at'] not in present]) > 0
    rto = float(fields['RTO measured'].split(' s ')[0])
    assert 0 < rto < wall and 'target 1800 s: met' in fields['RTO measured']
    assert meta['name'] in fields['Recovery']
    # The application wrote again after the recovery.
    assert [o for o in app.journal() if utc(o['created_at']) > failed_at + datetime.timedelta(seconds=rto)]
