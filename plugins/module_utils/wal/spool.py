# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Asynchronous archiving (``archive_async``): push ahead of PostgreSQL's archiver, prefetch ahead of recovery.

PostgreSQL runs archive_command for one segment at a time, oldest first, and runs the next only when the last
one returned; restore_command likewise. One process per segment, one segment at a time, is what bounds a busy
primary's archive rate and a PITR's replay rate (pgBackRest's archive-async and WAL-G's upload concurrency
answer the same way).

Push. The call for segment X starts (if none runs) a background pusher, a child process that holds the
spool's lock and pushes every ``.ready`` file in ``pg_wal/archive_status`` (X first) with a few worker threads,
each through the same ``push()`` as a synchronous call: same durability, duplicate and system-identifier rules.
When a push has returned (the file is durable in every destination) the pusher writes the marker
``pg_wal/pgbackup/out/<name>.ok`` with the identity of the file it pushed (inode, size, mtime). The call for X
acknowledges X only when it finds that marker and the file in pg_wal is still the same one; otherwise it
pushes X itself. So the contract PostgreSQL relies on does not change: exit 0 means this file is durable.
A pusher killed at any point loses nothing: a file without its marker is pushed again (a duplicate push of
identical content is a success that rewrites nothing). A failed push leaves ``<name>.error``, whose message
the call for that name reports (exit 1, and PostgreSQL retries, which starts a new attempt).

``queue_max`` bounds how far ahead of PostgreSQL's acknowledgements the pusher goes (markers waiting plus
pushes running). Unlike pgBackRest's archive-push-queue-max, nothing is ever dropped when PostgreSQL falls
behind: skipping WAL would break every later point-in-time recovery; a growing backlog is for monitoring.

Fetch. The call for segment X takes it from ``pg_wal/pgbackup/in/X`` when the prefetcher already restored it
there (a rename into place), else fetches it itself; then it records X as the position and makes sure a
prefetcher runs, which restores the next ``queue_max`` segments of X's timeline into ``in/``. The archive never
replaces a file (a different file under an archived name is refused), so a prefetched copy is the archive's
copy. ``.history``, ``.backup`` and ``.partial`` files are always fetched directly. The prefetcher stops at the
first segment the archive does not have, or on any error (the call then meets the error itself), and empties
``in/`` when it exits after ``IDLE_S`` without a new request.

The spool is a directory inside ``pg_wal``: on the same file system as the segments (a rename, not a copy,
puts a prefetched segment in place), private to the cluster, and left out of base backups, which never copy
what is in pg_wal. PostgreSQL ignores it. A file-level copy of a data directory that carries markers along
cannot misuse them: a marker names the inode of the file it acknowledges.
"""

import errno
import os
import time

from .errors import NotFound, WalArchiveError
from .durable import remove_quietly
from .names import LONG_HEADER, WAL_SEG_SIZE, parse_segment_name, read_long_header, wal_kind

SPOOL = 'pgbackup'
OUT = 'out'
IN = 'in'
LOCK = '.lock'
POSITION = '.position'
OK = '.ok'
ERROR = '.error'
BUSY = '.busy'
DEFAULT_WORKERS = 4
DEFAULT_QUEUE_MAX = 16
# A background process with nothing to do for this long exits (a fork of the command: starting one is cheap).
IDLE_S = 10.0
# How long the call for a segment waits for the background process before doing the work itself.
WAIT_S = 120.0
POLL_S = 0.005


def spool_dir(wal_dir, side):
    """``pg_wal/pgbackup/<side>``, created 0700 when missing."""
    path = os.path.join(wal_dir, SPOOL, side)
    try:
        os.makedirs(path, 0o700)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise
    return path


def _identity(path):
    st = os.stat(path)
    return '%d %d %d' % (st.st_ino, st.st_size, st.st_mtime_ns)


def _write_marker(directory, filename, text):
    """Marker files are small and replaced whole (rename): a reader sees the old one, the new one or none."""
    tmp = os.path.join(directory, '.tmp-%s.%d' % (filename, os.getpid()))
    with open(tmp, 'w') as handle:
        handle.write(text)
    os.rename(tmp, os.path.join(directory, filename))


def _take(path):
    """The text of marker ``path``, which is removed; None when there is none."""
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    remove_quietly(path)
    return text


def _lock_or_none(directory):
    """An fd holding the spool's exclusive lock, or None when a background process holds it."""
    import fcntl
    fd = os.open(os.path.join(directory, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def running(directory):
    """Whether a background process holds ``directory``'s lock (creates nothing)."""
    import fcntl
    try:
        fd = os.open(os.path.join(directory, LOCK), os.O_RDWR)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return True
        raise
    finally:
        os.close(fd)
    return False


def _start(directory, work):
    """Run ``work()`` in a detached child unless one already holds the lock; True when started.

    The child inherits the lock (flock belongs to the open file, which both share until the parent
    closes its descriptor, and it ends with the child): no window where two could start.
    """
    fd = _lock_or_none(directory)
    if fd is None:
        return False
    pid = os.fork()
    if pid:
        os.close(fd)
        return True
    # The child: its own session (PostgreSQL's signals to the archiver are not for it), no terminal, no
    # log pipe held open; it never returns into the caller.
    code = 0
    try:
        os.setsid()
        # Who holds the spool, for whoever looks (the lock is the fd, not this text).
        os.ftruncate(fd, 0)
        os.write(fd, ('%d\n' % os.getpid()).encode())
        null = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(null, target)
        work()
    except BaseException:  # pylint: disable=broad-except
        code = 1
    finally:
        os._exit(code)  # pylint: disable=protected-access


# ------------------------------------------------------------------------------------------------
# push
# ------------------------------------------------------------------------------------------------

def _ready(status_dir):
    """Names with a ``.ready`` file, in the order PostgreSQL's archiver takes them (history files first)."""
    names = [n[:-6] for n in os.listdir(status_dir) if n.endswith('.ready')]
    return sorted(names, key=lambda n: (not n.endswith('.history'), n))


def push_async(path, name, push_one, workers=DEFAULT_WORKERS, queue_max=DEFAULT_QUEUE_MAX, wait_s=WAIT_S, prepare=None):
    """archive_command with a background pusher: returns push_one's result, or an acknowledgement
    (``status`` ``archived``, ``async`` true) once the pusher made this very file durable.

    ``push_one(path, name)`` is the synchronous push; ``prepare()``, when given, runs once in the background
    process before its threads start (to make what they share, such as one S3 client)."""
    wal_dir = os.path.dirname(os.path.abspath(path))
    status_dir = os.path.join(wal_dir, 'archive_status')
    if not os.path.isdir(status_dir):
        # Not a server's pg_wal (a push by hand): nothing to push ahead of.
        return push_one(path, name)
    out = spool_dir(wal_dir, OUT)
    deadline = time.time() + wait_s
    started = False
    while True:
        marker = _take(os.path.join(out, name + OK))
        if marker is not None:
            if marker.strip() == _identity(path):
                return {'name': name, 'status': 'archived', 's3_status': None, 'path': None, 's3_uri': None,
                        'async': True}
            # Not this file (copied data directory, reused name): push it here, where the rules are checked.
            return push_one(path, name)
        if _take(os.path.join(out, name + ERROR)) is not None:
            # The pusher's attempt failed: this call pushes the file itself, and its own error (if it fails
            # again) is the one PostgreSQL logs, up to date and in its own words.
            return push_one(path, name)
        if not started:
            try:
                _start(out, lambda: _pusher(wal_dir, status_dir, out, push_one, workers, queue_max, prepare))
            except OSError:
                # No process to be had (limits, memory): archiving goes on one file at a time.
                return push_one(path, name)
            started = True
        elif not running(out) or time.time() > deadline:
            # The pusher exited (or stalls) without an answer for this file: push it here.
            return push_one(path, name)
        time.sleep(POLL_S)


def _push_marked(path, name, out, push_one):
    try:
        before = _identity(path)
        push_one(path, name)
        if _identity(path) == before:
            _write_marker(out, name + OK, before + '\n')
    except BaseException as exc:  # pylint: disable=broad-except
        _write_marker(out, name + ERROR, '%s\n' % (exc,))


def _pusher(wal_dir, status_dir, out, push_one, workers, queue_max, prepare):
    """The background pusher: keeps up to ``workers`` pushes running, at most ``queue_max`` ahead."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
    if prepare:
        prepare()
    inflight = {}
    idle_since = time.time()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while True:
            ready = _ready(status_dir)
            markers = set(os.listdir(out))
            pending = set(ready)
            busy = set(inflight.values())
            for marker in markers:
                # Markers of files PostgreSQL has finished with (it pushed them itself after a timeout).
                base, dot, kind = marker.rpartition('.')
                if dot and '.' + kind in (OK, ERROR) and base not in pending and base not in busy:
                    remove_quietly(os.path.join(out, marker))
            waiting = sum(1 for n in ready if n + OK in markers)
            for name in ready:
                if len(inflight) >= workers or waiting + len(inflight) >= queue_max:
                    break
                if name in busy or name + OK in markers or name + ERROR in markers:
                    continue
                inflight[pool.submit(_push_marked, os.path.join(wal_dir, name), name, out, push_one)] = name
            if not inflight:
                if time.time() - idle_since > IDLE_S:
                    return
                time.sleep(0.05)
                continue
            done, _running = wait(list(inflight), timeout=0.05, return_when=FIRST_COMPLETED)
            for future in done:
                inflight.pop(future)
            idle_since = time.time()


# ------------------------------------------------------------------------------------------------
# fetch
# ------------------------------------------------------------------------------------------------

def _next_names(name, seg_size, count):
    tli, segno = parse_segment_name(name, seg_size)
    per_id = 0x100000000 // seg_size
    return ['%08X%08X%08X' % (tli, n // per_id, n % per_id) for n in range(segno + 1, segno + 1 + count)]


def _seg_size(path):
    try:
        with open(path, 'rb') as handle:
            return read_long_header(handle.read(LONG_HEADER.size))['seg_size']
    except (OSError, ValueError):
        return WAL_SEG_SIZE


def fetch_prefetch(name, dest, fetch_one, workers=DEFAULT_WORKERS, queue_max=DEFAULT_QUEUE_MAX, wait_s=WAIT_S, prepare=None):
    """restore_command with a prefetcher: ``name`` from the prefetched copy when there is one, else
    ``fetch_one(name, dest)``; then the prefetcher is told to stay ``queue_max`` segments ahead."""
    if wal_kind(name) != 'segment':
        return fetch_one(name, dest)
    wal_dir = os.path.dirname(os.path.abspath(dest))
    inn = spool_dir(wal_dir, IN)
    staged = os.path.join(inn, name)
    source = 'prefetched'
    deadline = time.time() + wait_s
    while True:
        try:
            os.rename(staged, dest)
            break
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
        # Being fetched right now by the prefetcher: wait for it rather than fetch it twice.
        if os.path.exists(staged + BUSY) and running(inn) and time.time() < deadline:
            time.sleep(POLL_S)
            continue
        source = fetch_one(name, dest)
        break
    _write_marker(inn, POSITION, name + '\n')
    seg_size = _seg_size(dest)
    try:
        _start(inn, lambda: _prefetcher(inn, seg_size, fetch_one, workers, queue_max, prepare))
    except OSError:
        pass    # recovery goes on one segment at a time
    return source


def _fetch_staged(name, inn, fetch_one):
    """One prefetch; False when the archive has no such segment (or it could not be read)."""
    busy = os.path.join(inn, name + BUSY)
    _write_marker(inn, name + BUSY, '')
    try:
        fetch_one(name, os.path.join(inn, name))
        return True
    except (NotFound, WalArchiveError, OSError):
        # Missing means the end of the archive (for now); an error is left to the call for that segment,
        # which meets it itself and reports it.
        return False
    finally:
        remove_quietly(busy)


def _prefetcher(inn, seg_size, fetch_one, workers, queue_max, prepare):
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
    if prepare:
        prepare()
    inflight = {}
    position, moved_at, stop_at = None, time.time(), None
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            while True:
                try:
                    with open(os.path.join(inn, POSITION)) as handle:
                        now_at = handle.read().strip()
                except OSError:
                    now_at = position
                if now_at != position:
                    position, moved_at, stop_at = now_at, time.time(), None
                window = _next_names(position, seg_size, queue_max) if position else []
                wanted = set(window)
                for entry in os.listdir(inn):
                    if not entry.startswith('.') and not entry.endswith(BUSY) and entry not in wanted:
                        remove_quietly(os.path.join(inn, entry))
                busy = set(inflight.values())
                for name in window:
                    if len(inflight) >= workers or (stop_at is not None and name >= stop_at):
                        break
                    if name in busy or os.path.exists(os.path.join(inn, name)):
                        continue
                    inflight[pool.submit(_fetch_staged, name, inn, fetch_one)] = name
                if not inflight:
                    if time.time() - moved_at > IDLE_S:
                        return
                    time.sleep(0.05)
                    continue
                done, _running = wait(list(inflight), timeout=0.05, return_when=FIRST_COMPLETED)
                for future in done:
                    name = inflight.pop(future)
                    if not future.result():
                        # The end of the archive: nothing past it until recovery moves on.
                        stop_at = name if stop_at is None else min(stop_at, name)
    finally:
        for entry in os.listdir(inn):
            if entry != LOCK:
                remove_quietly(os.path.join(inn, entry))


def finish_prefetch(wal_dir, timeout_s=10.0):
    """After recovery (promoted, or given up): stop the prefetcher and remove what it restored ahead.

    Recovery no longer calls restore_command, but the prefetcher would go on filling its window until idle,
    into a data directory that is about to serve (or be removed). Returns whether one was stopped.
    """
    import signal
    inn = os.path.join(wal_dir, SPOOL, IN)
    if not os.path.isdir(inn):
        return False
    stopped = False
    deadline = time.time() + timeout_s
    while running(inn) and time.time() < deadline:
        try:
            with open(os.path.join(inn, LOCK)) as handle:
                os.kill(int(handle.read().strip()), signal.SIGTERM)
            stopped = True
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    for entry in os.listdir(inn):
        remove_quietly(os.path.join(inn, entry))
    return stopped
