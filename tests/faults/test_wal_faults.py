# -*- coding: utf-8 -*-
"""Faults in the WAL archive seen by recovery: a byte flipped in an archived segment, a segment missing
(a PITR target behind a gap), and a restored copy that must never write into the production archive.

One archiving cluster with a base backup and three batches of rows, each batch in its own archived
segment; every test puts back what it damaged.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

import pgsandbox
from test_pitr import SCRIPT, archiving_cluster, args_for, count, insert_batch, make_repo, wait_archived
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import (
    archive as walarchive, codec as walcodec, errors as walerrors)

_SPEC = importlib.util.spec_from_file_location(
    'fault_harness', os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'conftest.py'))
harness = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(harness)


def utc_now(cluster):
    return cluster.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")


@pytest.fixture(scope='module')
def world(sandbox_base):
    workdir = tempfile.mkdtemp(prefix='faults-ansible-', dir=sandbox_base)
    ansible = harness.AnsibleRunner(workdir)
    repo = make_repo(os.path.join(sandbox_base, 'faults-repo-%s' % uuid.uuid4().hex[:8]))
    made = []

    def new_cluster(settings=None):
        cluster = pgsandbox.Cluster(sandbox_base, name='pg-faults-%s' % uuid.uuid4().hex[:8])
        made.append(cluster)
        return cluster.init(settings).start()

    try:
        cluster = archiving_cluster(new_cluster, repo)
        cluster.psql('CREATE DATABASE shop')
        cluster.psql('CREATE TABLE events (id int PRIMARY KEY, note text)', db='shop')
        insert_batch(cluster, 'shop', 1, 100)
        res = ansible.task('modulo.pgbackup.pg_backup', args_for(cluster, repo, type='physical', wait_archive=60))
        assert not res.get('failed'), res.get('msg')
        segments, marks = [], []
        for batch in range(3):
            insert_batch(cluster, 'shop', 101 + 100 * batch, 200 + 100 * batch)
            segments.append(wait_archived(cluster, repo))
            time.sleep(0.2)
            marks.append(utc_now(cluster))
        # One more segment, well after the last mark (archive times have 1 s resolution): every mark is then
        # inside the archived WAL. txid_current() writes a commit record, so the switch is not a no-op.
        time.sleep(1)
        cluster.psql('SELECT txid_current()')
        wait_archived(cluster, repo)
        yield {'cluster': cluster, 'repo': repo, 'db': 'shop', 'ansible': ansible, 'segments': segments,
               'marks': marks, 'base': res['backup']['meta'], 'workdir': workdir}
    finally:
        for cluster in made:
            cluster.destroy()
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


def pitr(world, target_db, **target):
    args = args_for(world['cluster'], world['repo'], db=world['db'], target_db=target_db, **target)
    return world['ansible'].task('modulo.pgbackup.backup_restore', args)


def assert_nothing_promoted(world, target_db):
    cluster = world['cluster']
    assert cluster.psql("SELECT count(*) FROM pg_database WHERE datname LIKE '%s%%'" % target_db) == '0'
    assert count(cluster, world['db']) == 400       # the live database is untouched
    leftovers = [n for n in os.listdir(os.path.join(world['repo'], 'restore-tests')) if n.startswith('.')]
    assert leftovers == []


class MovedAside(object):
    """Take an archived file away (or damage it) for the duration of a test, then put it back as it was."""

    def __init__(self, world, segment):
        self.path = walarchive.find_segment(world['repo'], segment)
        assert self.path, segment
        self.keep = os.path.join(world['workdir'], os.path.basename(self.path))

    def __enter__(self):
        shutil.copy2(self.path, self.keep)
        st = os.stat(self.path)
        self.owner = (st.st_uid, st.st_gid)
        return self

    def flip_byte(self):
        with open(self.path, 'r+b') as handle:
            handle.seek(os.path.getsize(self.path) // 2)
            byte = handle.read(1)
            handle.seek(-1, os.SEEK_CUR)
            handle.write(bytes([byte[0] ^ 0xFF]))

    def remove(self):
        os.unlink(self.path)

    def __exit__(self, *exc):
        if os.path.exists(self.path):
            os.unlink(self.path)
        shutil.copy2(self.keep, self.path)
        os.chown(self.path, self.owner[0], self.owner[1])    # the archive belongs to the server's OS user
        os.unlink(self.keep)


def test_pitr_target_in_a_wal_gap_fails_clearly_and_promotes_nothing(world):
    gap = world['segments'][1]
    with MovedAside(world, gap) as aside:
        aside.remove()
        res = pitr(world, 'shop_gap', target_time=world['marks'][2])
    assert res.get('failed') is True, res
    msg = res['msg']
    assert msg.startswith('recovery ended before reaching the target: the WAL archive has a gap after base '
                          'backup %s, 1 segment(s) missing, first %s' % (world['base']['name'], gap)), msg
    assert 'nothing was promoted' in msg and 'choose a target before' in msg
    assert_nothing_promoted(world, 'shop_gap')


def cluster_mode_pitr_without(world, segment):
    """A cluster-mode PITR to the last mark with ``segment`` out of the archive; it must fail and roll back."""
    cluster = world['cluster']
    with MovedAside(world, segment) as aside:
        aside.remove()
        res = world['ansible'].task('modulo.pgbackup.backup_restore', args_for(
            cluster, world['repo'], mode='cluster', pgdata=cluster.pgdata, confirm=cluster.pgdata,
            target_time=world['marks'][2]))
    assert res.get('failed') is True, res
    return res


def assert_rolled_back(world, res):
    """The module put the old directory back and started the server on it: the live data is as it was, and
    the message and RV rollback say so (no manual steps promised)."""
    cluster = world['cluster']
    rollback = res['rollback']
    assert rollback['touched'] and rollback['rolled_back'] and rollback['server_running'], rollback
    assert rollback['old_pgdata'] is None and rollback['data_directory'] == cluster.pgdata
    assert ('Rolled back: the previous data directory is back at %s and PostgreSQL runs on it again'
            % cluster.pgdata) in res['msg'], res['msg']
    assert 'to roll back by hand' not in res['msg']
    assert count(cluster, world['db']) == 400
    assert cluster.psql('SELECT pg_is_in_recovery()') == 'f'
    failed = rollback['failed_copy']
    assert failed.startswith(cluster.pgdata + '.failed-') and os.path.isdir(failed), rollback
    assert 'The failed copy is kept at %s' % failed in res['msg']
    shutil.rmtree(failed)


def test_cluster_mode_into_a_wal_gap_names_the_gap_and_rolls_back_by_itself(world):
    """Cluster mode sets the live data directory aside before recovering in its place: the failure says why
    (the gap, from the server's log, which pg_ctl only points to), and the module brings the live cluster
    back as it was before it returns."""
    gap = world['segments'][1]
    res = cluster_mode_pitr_without(world, gap)
    msg = res['msg']
    assert msg.startswith('recovery ended before reaching the target: the WAL archive has a gap after base '
                          'backup %s, 1 segment(s) missing, first %s' % (world['base']['name'], gap)), msg
    assert 'recovery ended before configured recovery target was reached' in msg    # the server's own words
    assert_rolled_back(world, res)


def test_cluster_mode_whose_server_cannot_start_gives_the_server_log_and_rolls_back(world):
    """Without the base backup's first segment the restored server never reaches a consistent state and
    pg_ctl start fails, saying only "Examine the log output": the message carries the log's tail and path
    (the server's own log, where it wrote before the recovery), and the old directory is back in service."""
    res = cluster_mode_pitr_without(world, world['base']['wal_start'])
    msg, logfile = res['msg'], world['cluster'].log
    assert msg.startswith('the restored server did not come up: '), msg
    assert 'server log (%s): ' % logfile in msg
    assert '%s is not in the archive' % world['base']['wal_start'] in msg     # the cause, in the server's log
    assert_rolled_back(world, res)


def test_flipped_byte_in_an_archived_segment_is_refused_by_fetch_pitr_and_drill(world, tmp_path):
    damaged = world['segments'][1]
    with MovedAside(world, damaged) as aside:
        aside.flip_byte()
        dest = str(tmp_path / 'RECOVERYXLOG')
        proc = subprocess.run([sys.executable, SCRIPT, 'fetch', '--repo', world['repo'], damaged, dest],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
        # 126, not 1: "missing" would let PostgreSQL end recovery early and promote a copy without this WAL.
        assert proc.returncode == walerrors.EXIT_FATAL, (proc.returncode, proc.stderr)
        assert 'cannot fetch %s' % damaged in proc.stderr and 'decompress' in proc.stderr, proc.stderr
        assert not os.path.exists(dest)

        res = pitr(world, 'shop_flip', target='latest')
        assert res.get('failed') is True, res
        assert damaged in res['msg'], res['msg']
        assert_nothing_promoted(world, 'shop_flip')

        res = world['ansible'].task('modulo.pgbackup.pg_restore_drill',
                                    args_for(world['cluster'], world['repo'], kind='pitr', db='shop'))
        assert res.get('failed') is True and res['report']['status'] == 'failed', res.get('msg')
        assert damaged in res['msg'], res['msg']
    # Once put back, the same archive recovers (test_a_restored_copy_never_archives_... runs a passing PITR drill).
    assert walcodec.raw_sha256(walarchive.find_segment(world['repo'], damaged))


def test_a_restored_copy_never_archives_into_the_production_archive(world):
    before = dict((e['path'], e['size']) for e in walarchive.list_archive(world['repo']))
    info = walarchive.read_archive_info(world['repo'])
    # A PITR drill promotes a copy of production (same system identifier) onto a new timeline.
    res = world['ansible'].task('modulo.pgbackup.pg_restore_drill',
                                args_for(world['cluster'], world['repo'], kind='pitr', db='shop'))
    assert not res.get('failed'), res.get('msg')
    assert res['report']['status'] == 'passed'
    world['cluster'].psql('SELECT pg_switch_wal()')   # production goes on archiving meanwhile
    time.sleep(1)
    after = walarchive.list_archive(world['repo'])
    new = [e['name'] for e in after if e['path'] not in before]
    # Only production's own timeline-1 segments may have arrived; no history file, no timeline 2.
    assert not [n for n in new if not n.startswith('00000001') or n.endswith('.history')], new
    for entry in after:
        if entry['path'] in before:
            assert entry['size'] == before[entry['path']], entry['path']
    assert walarchive.read_archive_info(world['repo']) == info
