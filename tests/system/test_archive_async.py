# -*- coding: utf-8 -*-
"""archive_async against a real PostgreSQL 15: the background pusher under write load, with an S3 mirror.

wal_archive installs the command with ``archive_async: true``; the server's own archiver runs it. The tests
read what PostgreSQL says (pg_stat_archiver, the .ready files), the archive and the S3 copies, kill the
pusher while the server writes, and check that every segment is in both places, whole and in order.
"""

import os
import signal

from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import archive as walarchive, names as walnames
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import spool as walspool

from test_wal_archive import MODULE, archiver, command_dir, module_args, restart  # noqa: F401  # pylint: disable=unused-import
from test_walarchive_cluster import sha, wait_for


def spool(cluster):
    return os.path.join(cluster.pgdata, 'pg_wal', walspool.SPOOL, walspool.OUT)


def ready_count(cluster):
    status = os.path.join(cluster.pgdata, 'pg_wal', 'archive_status')
    return sum(1 for n in os.listdir(status) if n.endswith('.ready'))


def pusher_pid(cluster):
    path = spool(cluster)
    if not os.path.isdir(path) or not walspool.running(path):
        return None
    with open(os.path.join(path, walspool.LOCK)) as handle:
        return int(handle.read().strip())


def write_segments(cluster, count):
    """``count`` segments of real changes (rows, index entries), each closed by a switch."""
    cluster.psql('CREATE TABLE IF NOT EXISTS load (id bigserial PRIMARY KEY, payload text)')
    for _segment in range(count):
        cluster.psql("INSERT INTO load (payload) SELECT repeat(md5(i::text), 4) FROM generate_series(1, 30000) i; "
                     "SELECT pg_switch_wal()")
    return cluster.psql('SELECT pg_walfile_name(pg_current_wal_lsn())')


def test_async_archiving_keeps_up_survives_a_killed_pusher_and_mirrors_to_s3(
        s3_bucket, new_cluster, backup_root, command_dir, ansible):
    cluster = new_cluster()
    args = module_args(cluster, backup_root, command_dir, s3_bucket=s3_bucket['name'],
                       s3_endpoint_url=s3_bucket['url'], aws_region='us-east-1', archive_async=True,
                       archive_async_workers=3, archive_async_queue_max=8, verify=False)
    res = ansible.task(MODULE, args)
    assert not res.get('failed'), res.get('msg')
    restart(cluster)
    res = ansible.task(MODULE, dict(args, verify=True))
    assert not res.get('failed'), res.get('msg')
    assert res['verified'] and not res['changed']

    # Write load, with the backlog watched the way an operator would: the .ready files in pg_wal.
    peak = 0
    current = None
    for batch in range(4):
        current = write_segments(cluster, 6)
        peak = max(peak, ready_count(cluster))
        pid = pusher_pid(cluster)
        if batch == 1 and pid:
            # A pusher killed in the middle of its work: the archiver's next calls push what it left.
            os.kill(pid, signal.SIGKILL)
    last = cluster.psql('SELECT pg_walfile_name(pg_switch_wal())')
    wait_for(lambda: archiver(cluster)['last_archived_wal'] >= last, 'the archiver to catch up', timeout=120)
    stats = archiver(cluster)
    assert stats['failed_count'] == 0, stats
    assert current <= last

    local = [e for e in walarchive.list_archive(backup_root) if e['kind'] == 'segment']
    names = [e['name'] for e in local]
    assert names == walnames.wal_range(names[0], last), 'every segment, no gap'
    assert len(names) >= 24
    keys = [o['Key'] for page in s3_bucket['client'].get_paginator('list_objects_v2').paginate(
        Bucket=s3_bucket['name'], Prefix='database-backups/wal/') for o in page.get('Contents', [])]
    in_s3 = set(walnames.name_of_stored(k.rsplit('/', 1)[1]) for k in keys if not k.endswith('archive.json'))
    assert set(names) <= in_s3
    # What the pusher archived is what PostgreSQL wrote (segments still in pg_wal, not yet recycled).
    compared = 0
    for name in names[-6:]:
        original = os.path.join(cluster.pgdata, 'pg_wal', name)
        if os.path.exists(original):
            dest = os.path.join(backup_root, 'fetched-' + name)
            walarchive.fetch(name, dest, repo=backup_root)
            assert sha(dest) == sha(original)
            os.unlink(dest)
            compared += 1
    assert compared > 0
    # Every acknowledgement was taken; the pusher leaves when idle, and nothing stays behind after a stop.
    assert [n for n in os.listdir(spool(cluster)) if n.endswith('.ok')] == []
    assert peak <= 8, 'the backlog stayed within what the pusher works ahead on (peak %d)' % peak
    cluster.stop()
    wait_for(lambda: pusher_pid(cluster) is None, 'the pusher to exit once idle', timeout=walspool.IDLE_S + 10)


def test_async_settings_are_checked(new_cluster, backup_root, command_dir, ansible):
    cluster = new_cluster()
    res = ansible.task(MODULE, module_args(cluster, backup_root, command_dir, archive_async=True,
                                           archive_async_workers=0, verify=False))
    assert res.get('failed') and 'archive_async_workers must be 1 to 32' in res['msg']
    assert not os.path.exists(os.path.join(command_dir, 'bin'))
