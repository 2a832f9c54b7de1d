# -*- coding: utf-8 -*-
"""The repository's disk fills up while the archiver pushes WAL (the backup side is
tests/system/test_pg_backup_faults.py::test_disk_full_during_dump).

A full archive disk must never cost WAL: the push fails, PostgreSQL keeps the segment in
pg_wal with its .ready file and retries; once space is freed the archive catches up with no gap.
"""

import errno
import os
import pwd

from test_pitr import archiving_cluster
from test_walarchive_cluster import archiver, segments, switch_wal, wait_for
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import archive as walarchive, names as walnames


def fill(directory):
    """Take every free byte of the filesystem holding ``directory``; returns the filler's path."""
    path = os.path.join(directory, 'filler')
    block = os.urandom(1 << 16)
    with open(path, 'wb') as handle:
        try:
            while True:
                handle.write(block)
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    # What is left is less than a block: not enough for a compressed segment.
    st = os.statvfs(directory)
    assert st.f_bavail * st.f_frsize < len(block)
    return path


def test_disk_full_during_wal_push_loses_nothing_and_archiving_catches_up(new_cluster, backup_root, tmpfs_at):
    tmpfs_at(backup_root, size='6m')
    pw = pwd.getpwnam('postgres')
    os.chown(backup_root, pw.pw_uid, pw.pw_gid)
    cluster = archiving_cluster(new_cluster, backup_root)
    first = switch_wal(cluster)
    wait_for(lambda: archiver(cluster)['last_archived_wal'] == first, 'the first segment to be archived')
    date_dir = os.path.dirname(walarchive.find_segment(backup_root, first))

    filler = fill(date_dir)
    failed_before = archiver(cluster)['failed_count']
    stuck = switch_wal(cluster)
    wait_for(lambda: archiver(cluster)['failed_count'] > failed_before and
             archiver(cluster)['last_failed_wal'] == stuck, 'the archiver to report the failed push')
    # Nothing lost: the segment waits in pg_wal; nothing half-written in the archive.
    assert os.path.exists(os.path.join(cluster.pgdata, 'pg_wal', stuck))
    assert os.path.exists(os.path.join(cluster.pgdata, 'pg_wal', 'archive_status', stuck + '.ready'))
    assert walarchive.find_segment(backup_root, stuck) is None
    assert [n for n in os.listdir(date_dir) if n.startswith('.')] == []
    # The error is clear where the DBA looks first: the server log, from the archive command.
    with open(cluster.log) as handle:
        log = handle.read()
    assert 'No space left on device' in log and stuck in log, log[-3000:]

    os.unlink(filler)
    last = switch_wal(cluster)
    wait_for(lambda: archiver(cluster)['last_archived_wal'] == last, 'archiving to catch up', timeout=60)
    names = [e['name'] for e in segments(backup_root)]
    assert {first, stuck, last} <= set(names)
    assert names == walnames.wal_range(names[0], names[-1])     # no gap
    assert not os.path.exists(os.path.join(cluster.pgdata, 'pg_wal', 'archive_status', stuck + '.ready'))
