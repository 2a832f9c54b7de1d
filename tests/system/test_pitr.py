# -*- coding: utf-8 -*-
"""Physical base backups and point-in-time recovery against real PostgreSQL and real WAL.

Rows are written with their commit times; a PITR must bring back exactly the
rows committed up to the target and none after it.
"""

import json
import os
import pwd
import subprocess
import time

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import archive as walarchive, names as walnames, spool as walspool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, 'tools', 'pgbackup_wal.py')


def make_repo(path):
    """The repository belongs to the server's OS user, which runs the archive command."""
    os.makedirs(path, 0o700)
    if os.geteuid() == 0:
        pw = pwd.getpwnam('postgres')
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def archiving_cluster(new_cluster, repo, extra=''):
    return new_cluster(settings={
        'archive_mode': 'on', 'wal_level': 'replica',
        'archive_command': "'/usr/bin/python3 %s push --repo %s %s %%p %%f'" % (SCRIPT, repo, extra),
    })


def s3_archiving_cluster(new_cluster, repo, s3_bucket, prefix=None):
    """A cluster archiving into ``repo`` and the loopback S3 bucket (under ``prefix`` when given)."""
    s3 = '--s3-bucket %s --s3-endpoint-url %s --aws-region us-east-1' % (s3_bucket['name'], s3_bucket['url'])
    return new_cluster(settings={
        'archive_mode': 'on', 'wal_level': 'replica',
        'archive_command': "'AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing /usr/bin/python3 %s push "
                           "--repo %s %s%s %%p %%f'" % (SCRIPT, repo, s3, ' --s3-prefix %s' % prefix if prefix else '')})


def s3_shop_with_base(ansible, new_cluster, repo, s3_bucket, **backup_args):
    """An S3-archiving cluster with 50 rows in shop.events and a base backup in the repository and S3: the
    cluster, pg_backup's ``backup`` result and the S3 options to pass to the modules."""
    cluster = s3_archiving_cluster(new_cluster, repo, s3_bucket)
    cluster.psql('CREATE DATABASE shop')
    cluster.psql('CREATE TABLE events (id int PRIMARY KEY, note text)', db='shop')
    insert_batch(cluster, 'shop', 1, 50)
    s3_args = {'s3_bucket': s3_bucket['name'], 's3_endpoint_url': s3_bucket['url'], 'aws_region': 'us-east-1'}
    args = args_for(cluster, repo, **dict(backup_args, type='physical', **s3_args))
    res = ansible.task('modulo.pgbackup.pg_backup', args)
    assert not res.get('failed'), res.get('msg')
    return cluster, res['backup'], s3_args


def wait_archived(cluster, repo, timeout=60):
    """Close the current segment and wait until the archive has it.

    The file in the host repository is not enough: with an S3 mirror the command writes the host copy first
    and returns only once the upload is done too, so the wait also needs the server to count the segment as
    archived (the command returned 0, every copy in place).
    """
    segment = cluster.psql('SELECT pg_walfile_name(pg_switch_wal())')
    deadline = time.time() + timeout
    while time.time() < deadline:
        if walarchive.find_segment(repo, segment) and cluster.psql(
                "SELECT coalesce(last_archived_wal >= '%s', false) FROM pg_stat_archiver" % segment) == 't':
            return segment
        time.sleep(0.2)
    raise AssertionError('segment %s not archived' % segment)


def args_for(cluster, backup_root, **extra):
    args = {'login_host': '127.0.0.1', 'port': cluster.port, 'login_user': 'postgres',
            'pg_bindir': cluster.bindir, 'backup_root': backup_root}
    args.update(extra)
    return args


def insert_batch(cluster, db, first, last):
    cluster.psql("INSERT INTO events (id, note) SELECT g, 'event ' || g FROM generate_series(%d, %d) g"
                 % (first, last), db=db)


def count(cluster, db):
    return int(cluster.psql('SELECT count(*) FROM events', db=db))


@pytest.fixture
def history(new_cluster, backup_root, ansible):
    """A cluster with archiving, a base backup, and three batches of rows with known targets between."""
    repo = make_repo(backup_root)
    cluster = archiving_cluster(new_cluster, repo)
    db = 'shop'
    cluster.psql('CREATE DATABASE %s' % db)
    cluster.psql('CREATE TABLE events (id int PRIMARY KEY, note text, '
                 'committed_at timestamptz NOT NULL DEFAULT clock_timestamp())', db=db)
    insert_batch(cluster, db, 1, 100)
    res = ansible.task('modulo.pgbackup.pg_backup', args_for(cluster, repo, type='physical', wait_archive=60))
    assert not res.get('failed'), res.get('msg')
    base = res['backup']
    insert_batch(cluster, db, 101, 200)
    xid = cluster.psql('SELECT xmin FROM events WHERE id = 200', db=db)
    time.sleep(1.2)
    marks = {
        'time': cluster.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"),
        'lsn': cluster.psql('SELECT pg_current_wal_lsn()'),
        'xid': xid,
    }
    cluster.psql("SELECT pg_create_restore_point('before_batch_3')")
    time.sleep(1.2)
    insert_batch(cluster, db, 201, 300)
    wait_archived(cluster, repo)
    return {'cluster': cluster, 'repo': repo, 'db': db, 'base': base, 'marks': marks}


def pitr(ansible, h, target_db, check=False, **target):
    args = args_for(h['cluster'], h['repo'], db=h['db'], target_db=target_db, **target)
    return ansible.task('modulo.pgbackup.backup_restore', args, check=check)


def test_base_backup_meta_and_wal(history):
    base = history['base']
    meta = base['meta']
    assert meta['type'] == 'physical' and meta['status'] == 'complete'
    assert os.path.basename(base['path']) == meta['name'] and meta['name'].startswith('modulo_base_')
    for field in ('start_lsn', 'stop_lsn', 'timeline', 'wal_start', 'wal_stop', 'system_identifier', 'sha256'):
        assert meta[field], field
    assert meta['system_identifier'] == history['cluster'].psql('SELECT system_identifier FROM pg_control_system()')
    assert 'base.tar.zst' in os.listdir(base['path']) and 'backup_manifest' in os.listdir(base['path'])
    for segment in walnames.wal_range(meta['wal_start'], meta['wal_stop']):
        assert walarchive.find_segment(history['repo'], segment), segment
    with open(os.path.join(history['repo'], 'base', meta['name'] + '.meta')) as handle:
        assert json.load(handle)['wal_stop'] == meta['wal_stop']


@pytest.mark.parametrize('kind', ['time', 'name', 'lsn', 'xid', 'latest'])
def test_pitr_into_a_new_database(ansible, history, kind):
    marks = history['marks']
    target = {'time': {'target_time': marks['time']}, 'name': {'target_name': 'before_batch_3'},
              'lsn': {'target_lsn': marks['lsn']}, 'xid': {'target_xid': marks['xid']},
              'latest': {'target': 'latest'}}[kind]
    target_db = 'shop_recovered_%s' % kind
    res = pitr(ansible, history, target_db, **target)
    assert not res.get('failed'), res.get('msg')
    cluster = history['cluster']
    expected = 300 if kind == 'latest' else 200
    assert count(cluster, target_db) == expected
    assert cluster.psql('SELECT max(id) FROM events', db=target_db) == str(expected)
    recovery = res['restore']['recovery']
    assert recovery['base_backup'] == history['base']['meta']['name']
    if kind != 'latest':
        assert recovery['reached_target'] is True and 'recovery stopping' in recovery['stop']
    # the live database is untouched, the scratch cluster is gone
    assert count(cluster, history['db']) == 300
    assert not [n for n in os.listdir(os.path.join(history['repo'], 'restore-tests')) if n.startswith('.pitr')]


def test_bad_targets_are_refused(ansible, history):
    for target, words in ((
            {'target_time': 'yesterday-ish'}, 'is not a time'),
            ({'target_time': '2999-01-01 00:00:00'}, 'in the future'),
            ({'target_time': '2001-01-01 00:00:00+00'}, 'before the end of the oldest'),
            ({'target_lsn': 'zz/12'}, 'not an LSN'),
            ({'target_xid': 'abc'}, 'transaction id')):
        res = pitr(ansible, history, 'never_made', **target)
        assert res.get('failed'), target
        assert words in res['msg'], (target, res['msg'])
    assert history['cluster'].psql("SELECT count(*) FROM pg_database WHERE datname = 'never_made'") == '0'


def test_existing_target_needs_confirm(ansible, history):
    res = pitr(ansible, history, history['db'], target='latest')
    assert res.get('failed') and 'confirm: shop' in res['msg']
    assert count(history['cluster'], history['db']) == 300


def test_cluster_mode_and_a_second_pitr_across_the_timeline_switch(ansible, history):
    cluster, repo = history['cluster'], history['repo']
    res = ansible.task('modulo.pgbackup.backup_restore', args_for(
        cluster, repo, mode='cluster', pgdata=cluster.pgdata, target_time=history['marks']['time']))
    assert res.get('failed') and 'confirm: %s' % cluster.pgdata in res['msg']

    res = ansible.task('modulo.pgbackup.backup_restore', args_for(
        cluster, repo, mode='cluster', pgdata=cluster.pgdata, confirm=cluster.pgdata,
        target_time=history['marks']['time']))
    assert not res.get('failed'), res.get('msg')
    old = res['restore']['old_pgdata']
    assert os.path.isdir(old) and old.startswith(cluster.pgdata + '.old-')
    assert count(cluster, history['db']) == 200
    assert res['restore']['recovery']['timeline'] == 2
    # recovery settings do not linger in the live configuration (they would apply again at the next recovery)
    with open(os.path.join(cluster.pgdata, 'postgresql.auto.conf')) as handle:
        auto_conf = handle.read()
    assert 'recovery_target' not in auto_conf and 'restore_command' not in auto_conf
    assert not os.path.exists(os.path.join(cluster.pgdata, 'recovery.signal'))
    # restore_command prefetched (its spool is in pg_wal), and nothing it fetched ahead outlives the recovery
    prefetched = os.path.join(cluster.pgdata, 'pg_wal', walspool.SPOOL, walspool.IN)
    assert os.listdir(prefetched) == [] and not walspool.running(prefetched)
    # the promoted server archives its new timeline into the same archive
    insert_batch(cluster, history['db'], 1001, 1010)
    wait_archived(cluster, repo)
    assert walarchive.find_segment(repo, '00000002.history')

    # A second PITR, from the timeline-1 base backup, follows the history file to timeline 2.
    res = pitr(ansible, history, 'shop_after_switch', target='latest')
    assert not res.get('failed'), res.get('msg')
    assert count(cluster, 'shop_after_switch') == 210
    ids = cluster.psql('SELECT min(id), max(id) FROM events WHERE id > 200', db='shop_after_switch')
    assert ids == '1001|1010'
    subprocess.run(['rm', '-rf', old], check=True)


def test_pitr_from_s3_base_and_s3_wal(ansible, new_cluster, backup_root, s3_bucket):
    repo = make_repo(backup_root)
    cluster, backup, s3_args = s3_shop_with_base(ansible, new_cluster, repo, s3_bucket)
    assert backup['s3_uri'].endswith('/base/' + backup['meta']['name'])
    insert_batch(cluster, 'shop', 51, 80)
    wait_archived(cluster, repo)
    # The host lost the repository: base backup and WAL come from S3 only.
    subprocess.run(['rm', '-rf', os.path.join(repo, 'base'), os.path.join(repo, 'wal')], check=True)
    env = {'AWS_ACCESS_KEY_ID': 'testing', 'AWS_SECRET_ACCESS_KEY': 'testing'}
    res = ansible.task('modulo.pgbackup.backup_restore', args_for(
        cluster, repo, db='shop', target_db='shop_from_s3', target='latest', **s3_args), env=env)
    assert not res.get('failed'), res.get('msg')
    assert count(cluster, 'shop_from_s3') == 80


def test_pitr_playbook_like_the_runbook(ansible, history):
    """restore-script.sh pitr "<time>" modulodb_recovery, as the playbook."""
    cluster = history['cluster']
    extra = dict(cluster.connection_vars(), pgbackup_backup_root=history['repo'], pgbackup_db=history['db'],
                 target_time=history['marks']['time'], target_db='shop_recovery')
    proc = ansible.playbook('pitr.yml', extra_vars=extra)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert 'recovery stopping' in proc.stdout and 'shop_recovery' in proc.stdout
    assert count(cluster, 'shop_recovery') == 200
    proc = ansible.playbook('pitr.yml', extra_vars=dict(extra, target_time='', target_db='x'))
    assert proc.returncode != 0 and 'Say where to recover to' in proc.stdout


def test_a_date_without_time_is_refused_not_read_as_midnight(ansible, history):
    """What an unquoted -e target_time="2026-11-24 14:30:00" turns into."""
    res = pitr(ansible, history, 'never_made', target_time=history['marks']['time'][:10])
    assert res.get('failed') and 'no time of day' in res['msg'] and 'quote' in res['msg']


def test_a_base_backup_can_spare_a_busy_server_with_a_spread_checkpoint_and_a_rate_limit(ansible, new_cluster, backup_root):
    repo = make_repo(backup_root)
    cluster = new_cluster(settings={
        'archive_mode': 'on', 'wal_level': 'replica', 'log_checkpoints': 'on',
        'archive_command': "'/usr/bin/python3 %s push --repo %s %%p %%f'" % (SCRIPT, repo),
        # a spread checkpoint lasts checkpoint_completion_target x checkpoint_timeout: 3 s here
        'checkpoint_timeout': "'30s'", 'checkpoint_completion_target': '0.1'})
    with open(cluster.log, 'rb') as handle:
        offset = handle.seek(0, 2)
    started = time.time()
    # Uncompressed, so that what the server sends is the whole cluster (the limit applies after the
    # server's compression).
    res = ansible.task('modulo.pgbackup.pg_backup', args_for(cluster, repo, type='physical', wait_archive=60,
                                                             checkpoint='spread', max_rate='2M', compression='none'))
    elapsed = time.time() - started
    assert not res.get('failed'), res.get('msg')
    basebackup = [argv for argv in res['executed_commands'] if os.path.basename(argv[0]) == 'pg_basebackup']
    assert len(basebackup) == 1 and '--checkpoint=spread' in basebackup[0] and '--max-rate=2048k' in basebackup[0]
    meta = res['backup']['meta']
    assert meta['checkpoint'] == 'spread' and meta['max_rate_kb'] == 2048
    with open(cluster.log, 'rb') as handle:
        handle.seek(offset)
        log = handle.read().decode('utf-8', 'replace')
    # The server's own account: the backup's checkpoint was requested without "immediate".
    starts = [line for line in log.splitlines() if 'checkpoint starting:' in line and 'wait' in line]
    assert starts and not [line for line in starts if 'immediate' in line], starts
    # The server cannot send the backup faster than the limit (a lower bound, whatever the machine).
    assert meta['size_bytes'] > 16 * 1024 * 1024
    assert elapsed >= meta['size_bytes'] / (2 * 1024 * 1024.0) * 0.8, (elapsed, meta['size_bytes'])


@pytest.mark.parametrize('args,message', [
    (dict(type='physical', max_rate='10G'), "max_rate '10G' is not accepted"),
    (dict(type='physical', max_rate='16k'), "max_rate '16k' is not accepted"),
    (dict(type='logical', max_rate='50M'), 'checkpoint and max_rate are settings of a base backup'),
    (dict(type='logical', checkpoint='spread'), 'checkpoint and max_rate are settings of a base backup'),
])
def test_rate_and_checkpoint_mistakes_are_refused_before_anything_runs(ansible, pg, backup_root, args, message):
    res = ansible.task('modulo.pgbackup.pg_backup', dict(args_for(pg, backup_root), **args))
    assert res.get('failed') and message in res['msg'], res.get('msg')
    assert not [argv for argv in res.get('executed_commands', [])
                if os.path.basename(argv[0]) in ('pg_basebackup', 'pg_dump')]
