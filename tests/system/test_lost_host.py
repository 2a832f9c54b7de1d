# -*- coding: utf-8 -*-
"""The database host is gone: a fresh host with PostgreSQL installed, no data directory and no local
repository, rebuilt from S3 alone (moto on loopback) to a point in time, then archiving again, on a new
timeline, without touching the old timeline's WAL."""

import datetime
import glob
import json
import os
import shutil
import time
import uuid

import yaml

import pgsandbox
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import archive as walarchive

from conftest import SCHEMA_SQL
from test_emergency_recovery import step, utc
from test_pitr import args_for, count, insert_batch, make_repo, s3_archiving_cluster, wait_archived

ENV = {'AWS_ACCESS_KEY_ID': 'testing', 'AWS_SECRET_ACCESS_KEY': 'testing'}


def s3_keys(bucket, prefix):
    paginator = bucket['client'].get_paginator('list_objects_v2')
    return dict((o['Key'], o['ETag']) for page in paginator.paginate(Bucket=bucket['name'], Prefix=prefix)
                for o in page.get('Contents', []))


def test_a_lost_host_is_rebuilt_from_s3_alone_to_a_point_in_time(ansible, new_cluster, backup_root, s3_bucket):
    repo = make_repo(backup_root)
    prefix = 'database-backups/db1/'
    cluster = s3_archiving_cluster(new_cluster, repo, s3_bucket, prefix)
    cluster.psql('CREATE DATABASE shop')
    cluster.psql('CREATE TABLE events (id int PRIMARY KEY, note text)', db='shop')
    insert_batch(cluster, 'shop', 1, 50)
    s3_args = {'s3_bucket': s3_bucket['name'], 's3_endpoint_url': s3_bucket['url'], 'aws_region': 'us-east-1',
               's3_prefix': prefix}
    res = ansible.task('modulo.pgbackup.pg_backup', args_for(cluster, repo, type='physical', **s3_args))
    assert not res.get('failed'), res.get('msg')
    insert_batch(cluster, 'shop', 51, 80)
    time.sleep(1.1)
    mark = datetime.datetime.now(datetime.timezone.utc)
    time.sleep(1.1)
    insert_batch(cluster, 'shop', 81, 120)
    wait_archived(cluster, repo)
    old_timeline = s3_keys(s3_bucket, prefix + 'wal/')
    assert old_timeline

    # The host is gone: the server, its data directory and the local repository.
    cluster.stop()
    shutil.rmtree(cluster.pgdata)
    shutil.rmtree(repo)

    res = ansible.task('modulo.pgbackup.backup_restore', args_for(
        cluster, repo, db='shop', mode='cluster', pgdata=cluster.pgdata, confirm=cluster.pgdata,
        service_control='pg_ctl', target_time=mark.strftime('%Y-%m-%d %H:%M:%S.%f'), **s3_args), env=ENV)
    assert not res.get('failed'), res.get('msg')
    assert count(cluster, 'shop') == 80
    assert res['restore']['recovery']['timeline'] == 2

    # The new primary archives its own timeline into the same prefix; nothing of timeline 1 changed.
    insert_batch(cluster, 'shop', 1001, 1010)
    wait_archived(cluster, repo)
    after = s3_keys(s3_bucket, prefix + 'wal/')
    assert [k for k in after if k.endswith('/00000002.history') or '/00000002' in k]
    for key, etag in old_timeline.items():
        if key.endswith('archive.json'):
            continue
        assert after.get(key) == etag, key
    assert walarchive.find_segment(repo, '00000002.history')


def test_emergency_recovery_rebuilds_a_lost_host_from_s3(ansible, new_cluster, sandbox_base, s3_bucket, modulo_app):
    """The runbook's emergency recovery, the way the on-call engineer runs it, onto the rebuilt host:
    restore_source=pitr pitr_mode=cluster, with nothing on the host but PostgreSQL itself."""
    db = 'modulodb'
    cluster = new_cluster()
    cluster.psql('CREATE DATABASE %s' % db)
    cluster.psql_file(SCHEMA_SQL, db=db)
    app = modulo_app(cluster, db)
    app.wait_for_orders(5)
    work = pgsandbox.make_base(os.path.join(sandbox_base, 'lost-host-%s' % uuid.uuid4().hex[:6]))
    repo = os.path.join(work, 'repo')
    inventory = os.path.join(ansible.workdir, 'hosts.yml')
    with open(inventory, 'w') as handle:
        yaml.safe_dump({'all': {'vars': dict(
            cluster.connection_vars(), pgbackup_backup_root=repo, pgbackup_db=db, pgbackup_login_password='',
            pgbackup_login_unix_socket='', pgbackup_pg_service='', pgbackup_s3_bucket=s3_bucket['name'],
            pgbackup_s3_prefix='database-backups/', pgbackup_s3_endpoint_url=s3_bucket['url'],
            pgbackup_aws_region='us-east-1', wal_archive_command_path=os.path.join(work, 'bin', 'pgbackup-wal')),
            'children': {'postgres': {'hosts': {'db1': {'ansible_connection': 'local',
                                                        'ansible_python_interpreter': app.host_vars()['ansible_python_interpreter']}}},
                         'modulo_app': {'hosts': {'app1': app.host_vars()}}}}}, handle)
    for playbook in ('configure-pitr.yml', 'nightly-backup.yml'):
        proc = ansible.playbook(playbook, inventory=inventory)
        assert proc.returncode == 0, proc.stdout[-5000:]
    prefix = 'database-backups/db1/'
    base = [k for k in s3_keys(s3_bucket, prefix + 'base/') if k.endswith('.meta')]
    assert base, 'no base backup in S3'
    with open(sorted(glob.glob(os.path.join(repo, 'base', '*.meta')))[-1]) as handle:
        finished = json.load(handle)['finished_at']
    orders = app.wait_for_orders(20, after=finished)
    before, after = orders[10], orders[11]
    target = utc(before['created_at']) + (utc(after['created_at']) - utc(before['created_at'])) / 2
    app.wait_for_orders(5, after=after['created_at'])
    wait_archived(cluster, repo)
    old_timeline = s3_keys(s3_bucket, prefix + 'wal/')

    # The host is gone: server, data directory, repository. The rebuilt one has PostgreSQL and nothing else.
    cluster.stop()
    shutil.rmtree(cluster.pgdata)
    shutil.rmtree(repo)
    shutil.rmtree(os.path.join(work, 'bin'))

    proc = ansible.playbook('emergency-recovery.yml', inventory=inventory, extra_vars={
        'restore_source': 'pitr', 'pitr_mode': 'cluster', 'confirm': cluster.pgdata,
        'target_time': target.strftime('%Y-%m-%d %H:%M:%S.%f')})
    assert proc.returncode == 0, proc.stdout[-6000:]
    incidents = sorted(glob.glob(os.path.join(repo, 'logs', 'incident_*.json')))
    with open(incidents[-1]) as handle:
        report = json.load(handle)
    assert report['status'] == 'recovered', report
    restarted = utc(step(report, 'start')['started_at'])
    assert app.running()
    pre = "created_at < '%s'" % restarted.isoformat()
    # exactly the orders committed up to the target, none after it
    assert cluster.psql('SELECT max(id) FROM orders WHERE %s' % pre, db=db) == str(before['id'])
    assert cluster.psql('SELECT count(*) FROM orders WHERE id = %d AND %s' % (after['id'], pre), db=db) == '0'

    # archiving again, the command re-installed by the recovery itself: the new timeline next to the old
    # one, which is unchanged
    assert os.path.exists(os.path.join(work, 'bin', 'pgbackup-wal'))
    wait_archived(cluster, repo)
    now_keys = s3_keys(s3_bucket, prefix + 'wal/')
    assert [k for k in now_keys if k.endswith('/00000002.history')], sorted(now_keys)[-5:]
    for key, etag in old_timeline.items():
        if not key.endswith('archive.json'):
            assert now_keys.get(key) == etag, key
