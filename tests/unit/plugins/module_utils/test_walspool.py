# -*- coding: utf-8 -*-
"""archive_async (wal/spool.py): the background pusher and the prefetcher, run as PostgreSQL runs the command.

Each call is a separate process of the host's Python, in the data directory, with PostgreSQL's %p/%f, and the
loop around it does what PostgreSQL's archiver does: the oldest ``.ready`` file (history first), and only
after exit 0 its ``.ready`` becomes ``.done``. Segments are the synthetic ones of test_walarchive.py (real
long page headers, 1 MiB). The background processes are the real ones, forked by the command; the tests
kill them, break their work and read what they leave.
"""

import errno
import json
import os
import signal
import subprocess
import time

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import archive as walarchive, spool as walspool

from ansible_collections.modulo.pgbackup.tests.unit.plugins.module_utils.test_walarchive import (  # noqa: F401  # pylint: disable=unused-import
    PACKAGE_PARENT, SYSTEM_PYTHON, make_segment, repo, sha, system_python_env)

# The command as installed, with a short idle time so that a test sees the background process end.
DRIVER = ('import json, sys; sys.path.insert(0, %r); from wal import spool; spool.IDLE_S = float(sys.argv[1]); '
          'from wal.cli import main; sys.exit(main(sys.argv[3:], json.loads(sys.argv[2])))' % PACKAGE_PARENT)


def command(datadir, settings, *argv, **kwargs):
    return subprocess.run([SYSTEM_PYTHON, '-S', '-c', DRIVER, str(kwargs.get('idle', 1.0)), json.dumps(settings)]
                          + list(argv), cwd=str(datadir), env=system_python_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, check=False)


def segment_names(first, count, tli=1):
    return ['%08X%08X%08X' % (tli, 0, n) for n in range(first, first + count)]


@pytest.fixture
def datadir(tmp_path):
    path = tmp_path / 'data'
    (path / 'pg_wal' / 'archive_status').mkdir(parents=True)
    return path


def make_ready(datadir, names):
    wal = datadir / 'pg_wal'
    for name in names:
        make_segment(wal, name)
        (wal / 'archive_status' / (name + '.ready')).write_text('')


def ready(datadir):
    return walspool._ready(str(datadir / 'pg_wal' / 'archive_status'))


def archiver(datadir, settings, limit=None, idle=1.0):
    """PostgreSQL's archiver loop: returns the names archived, in order; stops at the first failure."""
    done = []
    while ready(datadir) and (limit is None or len(done) < limit):
        name = ready(datadir)[0]
        proc = command(datadir, settings, 'push', 'pg_wal/' + name, name, idle=idle)
        if proc.returncode != 0:
            return done, proc
        status = datadir / 'pg_wal' / 'archive_status'
        os.rename(str(status / (name + '.ready')), str(status / (name + '.done')))
        done.append(name)
    return done, None


def holder(spool):
    """PID of the background process holding the spool's lock, or None."""
    if not walspool.running(spool):
        return None
    with open(os.path.join(spool, walspool.LOCK)) as handle:
        return int(handle.read().strip())


def wait_until(predicate, what, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError('timed out waiting for %s' % what)


def gone(pid):
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.ESRCH
    # A zombie has no holder: the command that forked it exited, so it is init's to reap.
    with open('/proc/%d/stat' % pid) as handle:
        return handle.read().split(')')[-1].split()[0] == 'Z'


def async_settings(repo, **extra):
    settings = {'repo': repo, 'compression': 'gzip', 'level': 1, 'archive_async': True, 'async_workers': 3,
                'async_queue_max': 8}
    settings.update(extra)
    return settings


def test_async_push_archives_everything_ahead_and_in_order(datadir, repo):
    names = segment_names(1, 24) + ['00000002.history']
    make_ready(datadir, names[:-1])
    (datadir / 'pg_wal' / '00000002.history').write_text('1\t0/3000000\tbefore 2000-01-01 00:00:00+00\n')
    (datadir / 'pg_wal' / 'archive_status' / '00000002.history.ready').write_text('')
    settings = async_settings(repo)

    # One call: the pusher starts and works ahead of the archiver (history first, as PostgreSQL orders it).
    done, failure = archiver(datadir, settings, limit=1)
    assert failure is None and done == ['00000002.history']
    spool = str(datadir / 'pg_wal' / walspool.SPOOL / walspool.OUT)
    wait_until(lambda: len([n for n in os.listdir(spool) if n.endswith('.ok')]) == 8, 'the pusher to fill its queue')
    time.sleep(0.3)
    # queue_max: no more than 8 markers waiting for PostgreSQL (and so no more pushed ahead).
    assert sorted(n for n in os.listdir(spool) if n.endswith('.ok')) == [n + '.ok' for n in names[:8]]
    assert len([e for e in walarchive.list_archive(repo) if e['kind'] == 'segment']) == 8

    done, failure = archiver(datadir, settings)
    assert failure is None, failure.stderr
    assert done == names[:-1]
    archived = dict((e['name'], e['path']) for e in walarchive.list_archive(repo))
    assert sorted(archived) == sorted(names)
    for name in names[:-1]:
        out = str(datadir / ('back-' + name))
        walarchive.fetch(name, out, repo=repo)
        assert sha(out) == sha(str(datadir / 'pg_wal' / name))
    # Every marker was taken by its call, and the pusher ends once idle.
    wait_until(lambda: not walspool.running(spool), 'the pusher to exit when idle')
    assert [n for n in os.listdir(spool) if not n.startswith('.')] == []


def test_a_killed_pusher_loses_nothing(datadir, repo):
    names = segment_names(1, 30)
    make_ready(datadir, names)
    settings = async_settings(repo, async_workers=2, async_queue_max=30)
    done, failure = archiver(datadir, settings, limit=2)
    assert failure is None
    spool = str(datadir / 'pg_wal' / walspool.SPOOL / walspool.OUT)
    pid = holder(spool)
    assert pid, 'the pusher runs'
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: gone(pid), 'the pusher to die')
    # Whatever it was doing when killed (temporary files, segments without markers), the archiver's next
    # calls push them again or acknowledge what is durable.
    done_after, failure = archiver(datadir, settings)
    assert failure is None, failure.stderr
    assert done + done_after == names
    for name in names:
        out = str(datadir / ('back-' + name))
        walarchive.fetch(name, out, repo=repo)
        assert sha(out) == sha(str(datadir / 'pg_wal' / name))


def test_a_marker_for_another_file_is_not_an_acknowledgement(datadir, repo):
    name = segment_names(5, 1)[0]
    make_ready(datadir, [name])
    spool = walspool.spool_dir(str(datadir / 'pg_wal'), walspool.OUT)
    # A marker copied along with a data directory (or left by a file since recycled under this name).
    with open(os.path.join(spool, name + '.ok'), 'w') as handle:
        handle.write('1 %d 0\n' % (1024 * 1024))
    # A pusher that is never started (it holds the lock already): the call must not trust the marker.
    done, failure = archiver(datadir, async_settings(repo))
    assert failure is None and done == [name]
    assert walarchive.find_segment(repo, name), 'the call pushed the file itself'


def test_a_failure_of_the_pusher_is_met_again_by_the_call_and_reported(datadir, repo, tmp_path):
    names = segment_names(1, 6)
    make_ready(datadir, names)
    # The archive already holds a different segment 4: the pusher's push of it is a conflict.
    other = tmp_path / 'other'
    other.mkdir()
    walarchive.push(make_segment(other, names[3], seed=b'different'), names[3], repo=repo, compression='gzip')
    kept = sha(walarchive.find_segment(repo, names[3]))
    done, failure = archiver(datadir, async_settings(repo))
    assert done == names[:3]
    assert failure.returncode == 1 and 'CONFLICT %s' % names[3] in failure.stderr
    assert sha(walarchive.find_segment(repo, names[3])) == kept
    # Segments after the conflict may be archived ahead; PostgreSQL still has them as .ready and will ask.
    assert ready(datadir)[0] == names[3]


def test_without_archive_status_the_push_is_synchronous(tmp_path, repo):
    # A push by hand, from a directory that is not a server's pg_wal: no spool, no background process.
    name = segment_names(3, 1)[0]
    src = make_segment(tmp_path, name)
    proc = command(tmp_path, async_settings(repo), 'push', src, name)
    assert proc.returncode == 0, proc.stderr
    assert walarchive.find_segment(repo, name)
    assert not os.path.exists(str(tmp_path / walspool.SPOOL))


# --- fetch -------------------------------------------------------------------------------------

def test_prefetch_serves_recovery_and_cleans_up(datadir, repo, tmp_path):
    names = segment_names(1, 20)
    source = tmp_path / 'source'
    source.mkdir()
    for name in names:
        walarchive.push(make_segment(source, name), name, repo=repo, compression='gzip')
    settings = async_settings(repo, async_queue_max=5)
    inn = str(datadir / 'pg_wal' / walspool.SPOOL / walspool.IN)
    for number, name in enumerate(names):
        proc = command(datadir, settings, 'fetch', name, 'pg_wal/RECOVERYXLOG')
        assert proc.returncode == 0, proc.stderr
        assert sha(str(datadir / 'pg_wal' / 'RECOVERYXLOG')) == sha(str(source / name)), name
        if number == 0:
            # The next five are restored ahead, and nothing beyond the window.
            wait_until(lambda: sorted(n for n in os.listdir(inn) if not n.startswith('.') and '.' not in n)
                       == names[1:6], 'the prefetcher to fill its window')
    # The end of the archive is "not there" (exit 1), never a prefetched leftover.
    proc = command(datadir, settings, 'fetch', segment_names(21, 1)[0], 'pg_wal/RECOVERYXLOG')
    assert proc.returncode == 1
    wait_until(lambda: not walspool.running(inn), 'the prefetcher to exit when idle')
    assert os.listdir(inn) == [walspool.LOCK]


def test_prefetch_never_hides_an_unreadable_segment(datadir, repo, tmp_path):
    names = segment_names(1, 6)
    source = tmp_path / 'source'
    source.mkdir()
    for name in names:
        walarchive.push(make_segment(source, name), name, repo=repo, compression='gzip')
    with open(walarchive.find_segment(repo, names[3]), 'r+b') as handle:
        handle.truncate(100)
    settings = async_settings(repo)
    for name in names[:3]:
        assert command(datadir, settings, 'fetch', name, 'pg_wal/RECOVERYXLOG').returncode == 0
    proc = command(datadir, settings, 'fetch', names[3], 'pg_wal/RECOVERYXLOG')
    # Fatal, as without prefetching: recovery stops instead of ending early on a damaged archive.
    assert proc.returncode == 126 and 'ERROR' in proc.stderr
    assert sha(str(datadir / 'pg_wal' / 'RECOVERYXLOG')) == sha(str(source / names[2]))


def test_history_files_are_fetched_directly(datadir, repo, tmp_path):
    (tmp_path / '00000002.history').write_text('1\t0/3000000\tno recovery target specified\n')
    walarchive.push(str(tmp_path / '00000002.history'), '00000002.history', repo=repo)
    proc = command(datadir, async_settings(repo), 'fetch', '00000002.history', 'pg_wal/RECOVERYHISTORY')
    assert proc.returncode == 0, proc.stderr
    assert (datadir / 'pg_wal' / 'RECOVERYHISTORY').read_text().startswith('1\t0/3000000')
    assert not os.path.exists(str(datadir / 'pg_wal' / walspool.SPOOL / walspool.IN))
    assert command(datadir, async_settings(repo), 'fetch', '00000003.history', 'pg_wal/RECOVERYHISTORY').returncode == 1
