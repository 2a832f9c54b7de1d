# -*- coding: utf-8 -*-
"""The S3 endpoint goes away during a backup's upload and during WAL pushes, then comes back.

Each test runs its own moto server (the session one is shared), stops it half way and starts
a new one on the same port. moto keeps its objects in memory, so the restarted endpoint is
empty, like a replacement endpoint: what must be there afterwards is what was sent after it came back.
"""

import os
import subprocess
import threading
import time
import uuid

import pytest

import pgsandbox
from conftest import SCHEMA_SQL
from test_pitr import SCRIPT, args_for, make_repo
from test_walarchive_cluster import archiver, segments, switch_wal, wait_for
from ansible_collections.modulo.pgbackup.plugins.module_utils import repository
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import names as walnames

PREFIX = 'database-backups/'


class Endpoint(object):
    """One private moto server that a test may stop and start again on the same port."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.server = pgsandbox.S3Server(workdir).start()
        self.bucket = 'modulo-fault-%s' % uuid.uuid4().hex[:10]
        self.client = self.server.create_bucket(self.bucket)

    @property
    def url(self):
        return self.server.url

    def stop(self):
        self.server.stop()

    def restart(self):
        self.server = pgsandbox.S3Server(self.workdir, port=self.server.port).start()
        self.client = self.server.create_bucket(self.bucket)

    def keys(self, sub):
        pages = self.client.get_paginator('list_objects_v2').paginate(Bucket=self.bucket, Prefix=PREFIX + sub)
        return sorted(o['Key'][len(PREFIX):] for page in pages for o in page.get('Contents', []))


@pytest.fixture
def endpoint(sandbox_base, monkeypatch):
    ep = Endpoint(os.path.join(sandbox_base, 's3-fault-%s' % uuid.uuid4().hex[:8]))
    for key, value in ep.server.env().items():
        if key != 'AWS_ENDPOINT_URL':
            monkeypatch.setenv(key, value)
    try:
        yield ep
    finally:
        ep.stop()


def test_wal_push_while_s3_is_down_waits_and_catches_up_with_no_gap(new_cluster, backup_root, endpoint):
    repo = make_repo(backup_root)
    s3 = '--s3-bucket %s --s3-endpoint-url %s --aws-region us-east-1' % (endpoint.bucket, endpoint.url)
    cluster = new_cluster(settings={
        'archive_mode': 'on', 'wal_level': 'replica',
        'archive_command': "'AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing /usr/bin/python3 %s push "
                           "--repo %s %s %%p %%f'" % (SCRIPT, repo, s3)})
    first = switch_wal(cluster)
    wait_for(lambda: archiver(cluster)['last_archived_wal'] == first, 'the first segment in both places')

    endpoint.stop()
    failed_before = archiver(cluster)['failed_count']
    stuck = switch_wal(cluster)
    wait_for(lambda: archiver(cluster)['failed_count'] > failed_before and
             archiver(cluster)['last_failed_wal'] == stuck, 'the archiver to report the failed push', timeout=90)
    assert os.path.exists(os.path.join(cluster.pgdata, 'pg_wal', 'archive_status', stuck + '.ready'))
    with open(cluster.log) as handle:
        log = handle.read()
    assert 'S3' in log and stuck in log, log[-3000:]
    # PostgreSQL keeps the segment; the archive does not count it as archived anywhere.
    assert archiver(cluster)['last_archived_wal'] == first

    endpoint.restart()
    last = switch_wal(cluster)
    wait_for(lambda: archiver(cluster)['last_archived_wal'] == last, 'archiving to catch up', timeout=120)
    names = [e['name'] for e in segments(repo)]
    assert names == walnames.wal_range(names[0], names[-1]) and {first, stuck, last} <= set(names)
    in_s3 = sorted(os.path.basename(k).split('.')[0] for k in endpoint.keys('wal/') if k.endswith('.zst'))
    # Everything from the outage on reached the (new) endpoint, in order, with no gap.
    assert in_s3 == walnames.wal_range(stuck, last), in_s3
    assert not os.path.exists(os.path.join(cluster.pgdata, 'pg_wal', 'archive_status', stuck + '.ready'))


def test_s3_down_during_a_backup_keeps_the_local_backup_and_the_next_one_uploads(ansible, new_cluster, backup_root,
                                                                                 endpoint):
    cluster = new_cluster()
    cluster.psql('CREATE DATABASE modulodb')
    cluster.psql_file(SCHEMA_SQL, db='modulodb')
    args = args_for(cluster, backup_root, db='modulodb', upload=True, s3_bucket=endpoint.bucket,
                    s3_endpoint_url=endpoint.url, aws_region='us-east-1')
    # The dump waits on a lock while the endpoint goes away; the upload then meets it down.
    locker = subprocess.Popen([os.path.join(cluster.bindir, 'psql'), '-X', '-q'], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cluster.env('modulodb'),
                              universal_newlines=True)
    result = []
    try:
        locker.stdin.write('BEGIN;\nLOCK TABLE public.orders IN ACCESS EXCLUSIVE MODE;\n')
        locker.stdin.flush()
        thread = threading.Thread(target=lambda: result.append(ansible.task('modulo.pgbackup.pg_backup', args)),
                                  daemon=True)
        thread.start()
        wait_for(lambda: cluster.psql("SELECT count(*) FROM pg_locks WHERE NOT granted", db='modulodb') != '0',
                 'the backup to wait for its lock')
        endpoint.stop()
        locker.stdin.write('ROLLBACK;\n')
        locker.stdin.flush()
        thread.join(180)
        assert not thread.is_alive()
    finally:
        locker.kill()
        locker.wait()

    res = result[0]
    assert res.get('failed') is True, res
    name = res['backup']['meta']['name']
    assert res['msg'].startswith('the local backup %s is complete, but the S3 upload failed' % name), res['msg']
    entries, _problems = repository.Repository(backup_root).scan('full')
    assert [e['name'] for e in entries] == [name] and entries[0]['status'] == 'complete'

    endpoint.restart()
    time.sleep(1)   # the next backup's name has a one-second resolution
    res = ansible.task('modulo.pgbackup.pg_backup', args)
    assert not res.get('failed'), res.get('msg')
    uploaded = res['backup']['meta']['name']
    assert 'full/%s.meta' % res['backup']['meta']['file'] in endpoint.keys('full/')
    assert [e['name'] for e in repository.Repository(backup_root).scan('full')[0]] == [name, uploaded]
