# -*- coding: utf-8 -*-
"""A backup interrupted half way: pg_basebackup killed, or the server restarted under pg_dump or
pg_basebackup (pg_dump killed is tests/system/test_pg_backup_faults.py::test_pg_dump_killed_half_way).

Each time the task fails naming the program and the cause, nothing that looks like a backup is
left, the earlier backups are intact, and the next backup works.
"""

import os
import signal
import subprocess
import threading
import time
import uuid

from conftest import SCHEMA_SQL, table_rows
from test_pg_backup_faults import snapshot
from test_pitr import archiving_cluster, args_for, make_repo
from ansible_collections.modulo.pgbackup.plugins.module_utils import repository

RATE = '--max-rate=64k'


def throttled_bindir(base, bindir):
    """The real client programs, with pg_basebackup slowed down like a saturated network link."""
    path = os.path.join(base, 'bin-throttled-%s' % uuid.uuid4().hex[:8])
    os.makedirs(path)
    os.chmod(path, 0o755)
    for name in os.listdir(bindir):
        if name != 'pg_basebackup':
            os.symlink(os.path.join(bindir, name), os.path.join(path, name))
    wrapper = os.path.join(path, 'pg_basebackup')
    with open(wrapper, 'w') as handle:
        handle.write('#!/bin/sh\nexec %s %s "$@"\n' % (os.path.join(bindir, 'pg_basebackup'), RATE))
    os.chmod(wrapper, 0o755)
    return path


def in_background(ansible, module, args):
    result = []
    thread = threading.Thread(target=lambda: result.append(ansible.task(module, args)), daemon=True)
    thread.start()
    return thread, result


def wait_until(predicate, what, thread, result, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        assert thread.is_alive(), 'the backup ended before %s: %s' % (what, result and result[0].get('msg'))
        time.sleep(0.1)
    raise AssertionError('timed out waiting for %s' % what)


def pids_of(program, *words):
    pids = []
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as handle:
                argv = handle.read().decode('utf-8', 'replace').split('\0')
        except OSError:
            continue
        if os.path.basename(argv[0]) == program and all(any(w in a for a in argv) for w in words):
            pids.append(int(pid))
    return pids


def restart(cluster):
    cluster.stop('fast')
    cluster.start()


def assert_nothing_kept(repo, sub, before):
    after = snapshot(repo, sub)
    assert after == before, 'a failed run changed %s/: %s' % (sub, sorted(set(after) ^ set(before)))
    if os.path.isdir(os.path.join(repo, sub)):
        assert [n for n in os.listdir(os.path.join(repo, sub)) if n.startswith('.')] == []


def test_base_backup_interrupted_half_way_by_a_kill_then_by_a_server_restart(
        ansible, new_cluster, backup_root, sandbox_base):
    repo = make_repo(backup_root)
    cluster = archiving_cluster(new_cluster, repo)
    res = ansible.task('modulo.pgbackup.pg_backup', args_for(cluster, repo, type='physical', wait_archive=60))
    assert not res.get('failed'), res.get('msg')
    before = snapshot(repo, 'base')
    slow = throttled_bindir(sandbox_base, cluster.bindir)

    for fault in ('pg_basebackup killed', 'server restarted'):
        thread, result = in_background(ansible, 'modulo.pgbackup.pg_backup',
                                       args_for(cluster, repo, type='physical', wait_archive=60, pg_bindir=slow))
        # Half way: the server is streaming the data files to pg_basebackup.
        wait_until(lambda: cluster.psql("SELECT count(*) FROM pg_stat_progress_basebackup WHERE backup_streamed > 0 "
                                        "AND phase = 'streaming database files'", check=False) == '1',
                   'pg_basebackup to stream files', thread, result)
        if fault == 'pg_basebackup killed':
            pids = pids_of('pg_basebackup', RATE, repo)
            assert len(pids) == 1, pids
            os.kill(pids[0], signal.SIGKILL)
        else:
            restart(cluster)
        thread.join(120)
        assert not thread.is_alive(), 'the backup did not end after: %s' % fault

        res = result[0]
        assert res.get('failed') is True, res
        assert 'pg_basebackup failed, nothing was kept' in res['msg'], (fault, res['msg'])
        if fault == 'pg_basebackup killed':
            assert 'SIGKILL' in res['msg'], res['msg']
        else:
            assert 'terminat' in res['msg'] or 'shut' in res['msg'] or 'connection' in res['msg'], res['msg']
        assert_nothing_kept(repo, 'base', before)
        assert cluster.psql('SELECT count(*) FROM pg_stat_progress_basebackup') == '0'

    # Nothing is left in progress on the server: the next base backup works.
    res = ansible.task('modulo.pgbackup.pg_backup', args_for(cluster, repo, type='physical', wait_archive=60))
    assert not res.get('failed'), res.get('msg')
    entries, _problems = repository.Repository(repo).scan('base')
    assert len(entries) == 2


def test_server_restarted_during_a_logical_backup(ansible, new_cluster, backup_root):
    cluster = new_cluster()
    cluster.psql('CREATE DATABASE modulodb')
    cluster.psql_file(SCHEMA_SQL, db='modulodb')
    args = args_for(cluster, backup_root, db='modulodb')
    res = ansible.task('modulo.pgbackup.pg_backup', args)
    assert not res.get('failed'), res.get('msg')
    before = snapshot(backup_root, 'full')
    rows = table_rows(cluster, 'modulodb')
    # Another session holds a lock, so pg_dump stops half way (connected, locking tables) until the restart.
    locker = subprocess.Popen([os.path.join(cluster.bindir, 'psql'), '-X', '-q'], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cluster.env('modulodb'),
                              universal_newlines=True)
    try:
        locker.stdin.write('BEGIN;\nLOCK TABLE public.orders IN ACCESS EXCLUSIVE MODE;\n')
        locker.stdin.flush()
        thread, result = in_background(ansible, 'modulo.pgbackup.pg_backup', args)
        wait_until(lambda: cluster.psql("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                                        "WHERE NOT l.granted AND c.relname = 'orders'", db='modulodb') != '0',
                   'pg_dump to wait for its lock', thread, result)
        restart(cluster)
        thread.join(120)
        assert not thread.is_alive(), 'the backup did not end after the restart'
    finally:
        locker.kill()
        locker.wait()

    res = result[0]
    assert res.get('failed') is True, res
    # The dump's own session (exact row counts in pg_dump's snapshot) was the one waiting.
    assert 'terminating connection due to administrator command' in res['msg'], res['msg']
    assert_nothing_kept(backup_root, 'full', before)
    assert table_rows(cluster, 'modulodb') == rows
    res = ansible.task('modulo.pgbackup.pg_backup', args)
    assert not res.get('failed'), res.get('msg')
    assert res['backup']['meta']['table_rows'] == rows
