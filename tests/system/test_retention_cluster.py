# -*- coding: utf-8 -*-
"""backup_retention against a real archiving cluster, real base and logical backups, and a loopback S3.

The repository is made to span 30 days by rewriting the backups' ``.meta``
dates and moving archived WAL into older date directories, the two clocks
retention reads.  After the cleanup, the oldest retained base backup must
still replay its whole PITR window.
"""

import datetime
import glob
import json
import os
import pwd
import shutil
import time

from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import archive as walarchive, names as walnames

from test_pitr import archiving_cluster, args_for, count, insert_batch, make_repo, wait_archived

PREFIX = 'database-backups/'
UTC = datetime.timezone.utc


def now():
    return datetime.datetime.now(UTC).replace(microsecond=0)


def iso(ts):
    return ts.strftime('%Y-%m-%dT%H:%M:%SZ')


def chown_like_root_of(repo, path):
    if os.geteuid() == 0:
        pw = pwd.getpwnam('postgres')
        os.chown(path, pw.pw_uid, pw.pw_gid)


def set_age(repo, kind_dir, backup, days, **changes):
    path, = glob.glob(os.path.join(repo, kind_dir, backup + '*.meta'))
    with open(path) as handle:
        meta = json.load(handle)
    finished = now() - datetime.timedelta(days=days)
    meta.update(started_at=iso(finished - datetime.timedelta(minutes=1)), finished_at=iso(finished), **changes)
    with open(path, 'w') as handle:
        json.dump(meta, handle)
    return meta


def date_dir(repo, days):
    date = (now() - datetime.timedelta(days=days)).strftime('%Y%m%d')
    path = os.path.join(repo, 'wal', date)
    if not os.path.isdir(path):
        os.mkdir(path, 0o700)
        chown_like_root_of(repo, path)
    return 'wal/%s' % date


def files_of(repo):
    """Relative paths of every file, as the S3 mirror would name them (no locks, no run reports)."""
    found = set()
    for base, _dirs, names in os.walk(repo):
        for name in names:
            rel = os.path.relpath(os.path.join(base, name), repo)
            if rel.startswith('.lock-') or '/.tmp-' in rel or rel.startswith('logs/retention_report_'):
                continue
            found.add(rel)
    return found


def s3_files(bucket):
    keys = set()
    for page in bucket['client'].get_paginator('list_objects_v2').paginate(Bucket=bucket['name'], Prefix=PREFIX):
        keys.update(obj['Key'][len(PREFIX):] for obj in page.get('Contents', []))
    return keys


def mirror(repo, bucket):
    for rel in sorted(files_of(repo)):
        with open(os.path.join(repo, rel), 'rb') as handle:
            bucket['client'].put_object(Bucket=bucket['name'], Key=PREFIX + rel, Body=handle.read())


def test_thirty_days_of_backups_and_wal_local_and_s3(ansible, new_cluster, backup_root, s3_bucket):
    repo = make_repo(backup_root)
    cluster = archiving_cluster(new_cluster, repo)
    cluster.psql('CREATE DATABASE shop')
    cluster.psql('CREATE TABLE events (id int PRIMARY KEY, note text)', db='shop')
    bases = []
    for first in (1, 101, 201):
        insert_batch(cluster, 'shop', first, first + 99)
        started = time.time()
        res = ansible.task('modulo.pgbackup.pg_backup', args_for(cluster, repo, type='physical', wait_archive=60))
        assert not res.get('failed'), res.get('msg')
        print('base backup took %.1f s' % (time.time() - started))
        bases.append(res['backup']['meta'])
    res = ansible.task('modulo.pgbackup.pg_backup', args_for(cluster, repo, db='shop'))
    assert not res.get('failed'), res.get('msg')
    logical = res['backup']['meta']
    insert_batch(cluster, 'shop', 301, 400)
    wait_archived(cluster, repo)

    # --- make it span 30 days -------------------------------------------------------------------
    base_a, base_b, base_c = bases
    set_age(repo, 'base', base_a['name'], 25)     # goes: older than 7 days, not the newest
    set_age(repo, 'base', base_b['name'], 5)      # stays: young; the oldest retained base backup
    set_age(repo, 'base', base_c['name'], 1)
    # An older logical backup (real dump bytes, copied) and the real one marked 20 days old;
    # a newer run that failed must not count toward min_full.
    old_name = 'modulo_full_%s' % (now() - datetime.timedelta(days=30)).strftime('%Y%m%d_%H%M%S')
    for suffix in ('.sql.gz', '.globals.sql', '.sql.gz.meta'):
        shutil.copy2(os.path.join(repo, 'full', logical['name'] + suffix), os.path.join(repo, 'full', old_name + suffix))
    set_age(repo, 'full', old_name, 30, name=old_name, file=old_name + '.sql.gz',
            globals=dict(logical['globals'], file=old_name + '.globals.sql'))
    set_age(repo, 'full', logical['name'], 20)
    failed_name = 'modulo_full_%s' % (now() - datetime.timedelta(days=1)).strftime('%Y%m%d_%H%M%S')
    with open(os.path.join(repo, 'full', failed_name + '.sql.gz.meta'), 'w') as handle:
        json.dump(dict(logical, name=failed_name, file=failed_name + '.sql.gz', status='failed',
                       finished_at=iso(now() - datetime.timedelta(days=1))), handle)
    # WAL before B's start was archived 26 days ago; B's own window 20 days ago (older than wal_days,
    # kept only because B needs it); from C's start on, today.
    b_start = walnames.parse_segment_name(base_b['wal_start'])[1]
    c_start = walnames.parse_segment_name(base_c['wal_start'])[1]
    old_dir, b_dir = date_dir(repo, 26), date_dir(repo, 20)
    expected_wal = set()
    for entry in walarchive.list_archive(repo):
        segno = walnames.parse_segment_name(entry['name'][:24])[1]
        target = old_dir if segno < b_start else b_dir if segno < c_start else None
        if target:
            os.rename(entry['path'], os.path.join(repo, target, entry['file']))
            if target == old_dir:
                expected_wal.add('%s/%s' % (old_dir, entry['file']))
    assert expected_wal and os.listdir(os.path.join(repo, b_dir))
    old_report = 'logs/backup_report_%s.json' % (now() - datetime.timedelta(days=100)).strftime('%Y%m%d_%H%M%S')
    for rel in (old_report, 'full/notes.txt'):
        with open(os.path.join(repo, rel), 'w') as handle:
            handle.write('{}\n')
    stale_tmp = 'full/.tmp-modulo_full_20261101_020000.sql.gz.4242'
    with open(os.path.join(repo, stale_tmp), 'w') as handle:
        handle.write('partial')
    os.utime(os.path.join(repo, stale_tmp), (time.time() - 2 * 86400, time.time() - 2 * 86400))
    mirror(repo, s3_bucket)
    assert s3_files(s3_bucket) == files_of(repo)

    expected = {'base/%s.meta' % base_a['name'], 'base/%s' % base_a['name'], 'full/%s.sql.gz.meta' % old_name,
                'full/%s.sql.gz' % old_name, 'full/%s.globals.sql' % old_name, old_report} | expected_wal
    s3_args = {'s3_bucket': s3_bucket['name'], 's3_endpoint_url': s3_bucket['url'], 'aws_region': 'us-east-1'}
    args = dict(backup_root=repo, **s3_args)

    # --- check mode: the exact list, nothing deleted ---------------------------------------------
    before_local, before_s3 = files_of(repo), s3_files(s3_bucket)
    dry = ansible.task('modulo.pgbackup.backup_retention', args, check=True)
    assert not dry.get('failed'), dry.get('msg')
    local = [i for i in dry['deleted'] if i['location'] == 'local']
    remote = [i for i in dry['deleted'] if i['location'] == 's3']
    assert set(i['relpath'] for i in local) == expected | {stale_tmp}
    assert set(i['relpath'] for i in remote) == expected
    assert dry['freed_bytes'] == sum(i['size_bytes'] for i in dry['deleted']) > 0
    assert [i['relpath'] for i in dry['unclassified']] == ['full/notes.txt', 'full/notes.txt']
    assert files_of(repo) == before_local and s3_files(s3_bucket) == before_s3
    assert os.path.exists(os.path.join(repo, stale_tmp)) and not dry.get('report_path')
    kept = dict((i['relpath'], i['reason']) for i in dry['kept'] if i['location'] == 'local')
    assert 'min_full' in kept['full/%s.sql.gz.meta' % logical['name']]
    assert 'does not count toward min_full' in kept['full/%s.sql.gz.meta' % failed_name]
    assert base_b['name'] in kept[b_dir + '/']

    # --- the real run ----------------------------------------------------------------------------
    res = ansible.task('modulo.pgbackup.backup_retention', args)
    assert not res.get('failed'), res.get('msg')
    assert res['changed'] and res['errors'] == []
    assert sorted((i['location'], i['relpath']) for i in res['deleted']) == \
        sorted((i['location'], i['relpath']) for i in dry['deleted'])
    assert res['freed_bytes'] == dry['freed_bytes']
    after = files_of(repo)
    assert not [f for f in after if base_a['name'] in f or old_name in f]
    assert not (after & expected_wal) and not os.path.exists(os.path.join(repo, old_dir))
    assert not os.path.exists(os.path.join(repo, stale_tmp))
    assert os.path.exists(os.path.join(repo, 'full', 'notes.txt'))
    # S3 and local stay in step
    assert s3_files(s3_bucket) == after
    with open(res['report_path']) as handle:
        report = json.load(handle)
    assert report['report'] == 'retention' and report['freed_bytes'] == res['freed_bytes']
    assert len(report['deleted']) == len(res['deleted'])
    assert os.path.basename(res['report_path']).startswith('retention_report_')
    again = ansible.task('modulo.pgbackup.backup_retention', args)
    assert not again.get('failed') and not again['changed'] and again['deleted'] == []

    # --- the PITR window of the oldest retained base backup still replays -----------------------
    res = ansible.task('modulo.pgbackup.backup_restore', args_for(
        cluster, repo, db='shop', target_db='shop_after_cleanup', backup=base_b['name'], target='latest'))
    assert not res.get('failed'), res.get('msg')
    assert res['restore']['recovery']['base_backup'] == base_b['name']
    assert count(cluster, 'shop_after_cleanup') == 400 == count(cluster, 'shop')


def test_bad_input_and_the_playbook(ansible, backup_root):
    os.makedirs(os.path.join(backup_root, 'full'))
    for days, value in (('full_days', 0), ('wal_days', -1), ('s3_full_days', 0)):
        res = ansible.task('modulo.pgbackup.backup_retention', {'backup_root': backup_root, days: value})
        assert res.get('failed') and '%s must be 1 or more' % days in res['msg'], res.get('msg')
    res = ansible.task('modulo.pgbackup.backup_retention', {'backup_root': backup_root + '-typo'})
    assert res.get('failed') and 'does not exist' in res['msg']

    old = 'modulo_full_%s' % (now() - datetime.timedelta(days=9)).strftime('%Y%m%d_%H%M%S')
    meta = {'format_version': 1, 'name': old, 'file': old + '.sql.gz', 'type': 'logical', 'database': 'modulodb',
            'started_at': iso(now() - datetime.timedelta(days=9)), 'finished_at': iso(now() - datetime.timedelta(days=9)),
            'status': 'complete'}
    with open(os.path.join(backup_root, 'full', old + '.sql.gz'), 'wb') as handle:
        handle.write(b'x' * 10)
    with open(os.path.join(backup_root, 'full', old + '.meta'), 'w') as handle:
        json.dump(meta, handle)
    # min_full 0 is allowed, with a warning; here it would let the only backup go
    res = ansible.task('modulo.pgbackup.backup_retention', {'backup_root': backup_root, 'min_full': 0}, check=True)
    assert not res.get('failed'), res.get('msg')
    assert any('min_full is 0' in w for w in res['retention_warnings'])
    assert 'min_full is 0' in res['_output']
    assert len(res['deleted']) == 2 and os.path.exists(os.path.join(backup_root, 'full', old + '.meta'))

    extra = {'pgbackup_backup_root': backup_root, 'pgbackup_s3_bucket': ''}
    proc = ansible.playbook('cleanup.yml', extra_vars=extra, check=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert 'would delete: 0 item(s)' in proc.stdout and 'min_full' in proc.stdout
    proc = ansible.playbook('cleanup.yml', extra_vars=dict(extra, pgbackup_retention_min_full=0))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert 'deleted: 2 item(s)' in proc.stdout and old + '.meta' in proc.stdout
    assert os.listdir(os.path.join(backup_root, 'full')) == []
    assert [n for n in os.listdir(os.path.join(backup_root, 'logs')) if n.startswith('retention_report_')]
