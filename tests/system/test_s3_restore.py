# -*- coding: utf-8 -*-
"""Listing and restoring backups that live only in S3 (real moto_server on loopback)."""

import datetime
import json
import os
import shutil
import time

from conftest import table_rows
from test_pitr import archiving_cluster, args_for, make_repo, wait_archived


def s3_args(s3_bucket):
    return {'s3_bucket': s3_bucket['name'], 's3_endpoint_url': s3_bucket['url'], 'aws_region': 'us-east-1'}


def test_restore_from_s3_when_local_copy_is_gone(ansible, pg, modulo_db, backup_root, conn_args, s3_bucket):
    res = ansible.task('modulo.pgbackup.pg_backup', dict(conn_args, backup_root=backup_root, db=modulo_db,
                                                         format='custom', compression='zstd', **s3_args(s3_bucket)))
    assert not res.get('failed'), res.get('msg')
    name = res['backup']['meta']['name']
    assert res['backup']['s3_uri'].startswith('s3://%s/database-backups/full/%s' % (s3_bucket['name'], name))

    info = ansible.task('modulo.pgbackup.backup_info', dict(conn_args, backup_root=backup_root, **s3_args(s3_bucket)))
    assert [b['location'] for b in info['backups']] == ['both']

    # The host lost its disk: an empty repository, the backups only in S3.
    shutil.rmtree(backup_root)
    info = ansible.task('modulo.pgbackup.backup_info', dict(conn_args, backup_root=backup_root, **s3_args(s3_bucket)))
    assert not info.get('failed'), info.get('msg')
    assert [(b['name'], b['location']) for b in info['backups']] == [(name, 's3')]

    target = modulo_db + '_from_s3'
    try:
        res = ansible.task('modulo.pgbackup.backup_restore', dict(conn_args, backup_root=backup_root,
                                                                  target_db=target, **s3_args(s3_bucket)))
        assert not res.get('failed'), res.get('msg')
        assert res['restore']['backup'] == name
        assert table_rows(pg, target) == table_rows(pg, modulo_db)
        # fetched into the local repository, checksum-verified, with its .meta
        assert os.path.exists(os.path.join(backup_root, 'full', name + '.dump.zst'))
        assert os.path.exists(os.path.join(backup_root, 'full', name + '.dump.zst.meta'))
    finally:
        pg.psql('DROP DATABASE IF EXISTS %s WITH (FORCE)' % target)


def test_s3_meta_under_the_older_name_or_both_names_lists_once_and_restores(
        ansible, pg, modulo_db, backup_root, conn_args, s3_bucket):
    """A mirror written by earlier releases names the .meta after the backup (modulo_full_X.meta)."""
    res = ansible.task('modulo.pgbackup.pg_backup', dict(conn_args, backup_root=backup_root, db=modulo_db,
                                                         **s3_args(s3_bucket)))
    assert not res.get('failed'), res.get('msg')
    meta = res['backup']['meta']
    client, bucket = s3_bucket['client'], s3_bucket['name']
    new_key = 'database-backups/full/%s.meta' % meta['file']
    old_key = 'database-backups/full/%s.meta' % meta['name']
    assert meta['file'].endswith('.sql.gz')
    client.copy_object(Bucket=bucket, Key=old_key, CopySource={'Bucket': bucket, 'Key': new_key})
    shutil.rmtree(backup_root)
    info = ansible.task('modulo.pgbackup.backup_info', dict(conn_args, backup_root=backup_root, **s3_args(s3_bucket)))
    assert [(b['name'], b['location']) for b in info['backups']] == [(meta['name'], 's3')]

    client.delete_object(Bucket=bucket, Key=new_key)
    target = modulo_db + '_old_meta'
    try:
        res = ansible.task('modulo.pgbackup.backup_restore', dict(conn_args, backup_root=backup_root,
                                                                  target_db=target, **s3_args(s3_bucket)))
        assert not res.get('failed'), res.get('msg')
        assert table_rows(pg, target) == table_rows(pg, modulo_db)
        # the local copy is written under the runbook's name
        assert sorted(n for n in os.listdir(os.path.join(backup_root, 'full')) if n.endswith('.meta')) == [
            meta['file'] + '.meta']
    finally:
        pg.psql('DROP DATABASE IF EXISTS %s WITH (FORCE)' % target)

    # retention removes both names from the mirror (here 30 days old), the .meta objects before the data
    aged = json.loads(client.get_object(Bucket=bucket, Key=old_key)['Body'].read())
    month_ago = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)).strftime('%Y-%m-%dT%H:%M:%SZ')
    aged.update(started_at=month_ago, finished_at=month_ago)
    for key in (old_key, new_key):
        client.put_object(Bucket=bucket, Key=key, Body=json.dumps(aged).encode())
    res = ansible.task('modulo.pgbackup.backup_retention', dict(backup_root=backup_root, min_full=0,
                                                                **s3_args(s3_bucket)))
    assert not res.get('failed'), res.get('msg')
    gone = [d['relpath'] for d in res['deleted'] if d['location'] == 's3' and d.get('backup') == meta['name']]
    assert gone[:2] == ['full/%s.meta' % meta['file'], 'full/%s.meta' % meta['name']], gone
    left = client.list_objects_v2(Bucket=bucket, Prefix='database-backups/full/').get('Contents', [])
    assert not [o['Key'] for o in left if meta['name'] in o['Key']]


def test_damaged_s3_copy_is_refused(ansible, pg, modulo_db, backup_root, conn_args, s3_bucket):
    res = ansible.task('modulo.pgbackup.pg_backup', dict(conn_args, backup_root=backup_root, db=modulo_db,
                                                         **s3_args(s3_bucket)))
    assert not res.get('failed'), res.get('msg')
    key = res['backup']['s3_uri'].split('/', 3)[3]
    s3_bucket['client'].put_object(Bucket=s3_bucket['name'], Key=key, Body=b'not a backup')
    shutil.rmtree(backup_root)
    res = ansible.task('modulo.pgbackup.backup_restore', dict(conn_args, backup_root=backup_root,
                                                              target_db='never_from_s3', **s3_args(s3_bucket)))
    assert res.get('failed')
    assert 'checksum' in res['msg'] and 'S3' in res['msg']
    assert pg.psql("SELECT count(*) FROM pg_database WHERE datname = 'never_from_s3'") == '0'
    assert not [n for n in os.listdir(os.path.join(backup_root, 'full')) if not n.startswith('.lock')]


def test_pitr_target_is_checked_against_the_s3_copy_of_the_archive(ansible, new_cluster, backup_root, s3_bucket):
    """With S3 configured, a target after the newest archived WAL used to pass unchecked; and with the host's
    wal/ gone, the S3 copy is what recovery reads, so it is what the check reads too."""
    repo = make_repo(backup_root)
    s3 = '--s3-bucket %s --s3-endpoint-url %s --aws-region us-east-1' % (s3_bucket['name'], s3_bucket['url'])
    cluster = archiving_cluster(new_cluster, repo, extra=s3)
    res = ansible.task('modulo.pgbackup.pg_backup', args_for(cluster, repo, type='physical', wait_archive=60,
                                                             upload=False))
    assert not res.get('failed'), res.get('msg')
    # S3 keeps whole seconds of an object's time: the target before the newest WAL is a second before the
    # change that WAL holds, and two seconds after the base backup ended.
    time.sleep(2.0)
    changed = datetime.datetime.now(datetime.timezone.utc)
    cluster.psql('CREATE DATABASE shop')
    wait_archived(cluster, repo)
    archived = datetime.datetime.now(datetime.timezone.utc)
    time.sleep(2.5)
    shutil.rmtree(os.path.join(repo, 'wal'))

    def plan(when):
        return ansible.task('modulo.pgbackup.backup_restore', args_for(
            cluster, repo, db='shop', target_db='shop_pitr', target_time=when.strftime('%Y-%m-%d %H:%M:%S.%f'),
            **s3_args(s3_bucket)), check=True)

    late = plan(archived + datetime.timedelta(seconds=2))
    assert late.get('failed') is True and 'is after the newest archived WAL' in late['msg'], late.get('msg')
    early = plan(changed - datetime.timedelta(seconds=1))
    assert not early.get('failed'), early.get('msg')
