# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Delta restore: bring an existing data directory to the content of a base backup, in place
(backup_restore ``mode=cluster delta=true``).

A full cluster restore unpacks beside the old directory and so needs twice the room.  Here the
tar stream is still read from start to end (it is one compressed stream), but each member's bytes
are compared with the file already in the data directory, page by page, and only the pages that
differ are written.  Byte comparison is exact (no checksum can collide), costs a memcmp where a
checksum would cost a hash of both sides, needs no manifest (an encrypted backup keeps its manifest
inside the tar) and lets a relation file with a few changed pages be patched instead of rewritten.
Files the backup does not have are removed, as they would be absent after a full restore; the
configuration kept in the data directory and the server's logs are left as they are, because a
full restore keeps today's configuration too and the logs of an incident are evidence.

There is no old directory to go back to, so the directory must never look startable while it is
half done: ``begin`` writes a marker and takes ``global/pg_control`` away before the first byte
changes; the backup's pg_control is written under another name and put in place only by ``commit``,
after everything else is written and flushed.  An interrupted run leaves a directory PostgreSQL
refuses to start ("could not open file global/pg_control"); running the delta again finishes it.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import concurrent.futures
import json
import os
import posixpath
import queue
import shutil
import stat
import subprocess
import threading
import time

from ansible_collections.modulo.pgbackup.plugins.module_utils import compression, encryption, errors, untar
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import codec as walcodec, durable

MARKER = 'modulo_delta_restore.json'
CONTROL = 'global/pg_control'
HELD_CONTROL = 'global/pg_control.modulo-delta'
PAGE = 8192
QUEUE_DEPTH = 16
READ_CHUNK = 1024 * 1024
# Flushed concurrently at the end: the disk can take many small flushes in one journal commit.
FLUSH_THREADS = 8
# Kept whole: the server's log files of today are not part of the backup's state of the data.
KEEP_TREES = ('log', 'pg_log')


class DeltaError(errors.PgBackupError):
    pass


def in_progress(pgdata):
    """The marker of a delta restore that did not finish, as a dict, or None."""
    try:
        with open(os.path.join(pgdata, MARKER)) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def begin(pgdata, backup_name, uid=None, gid=None):
    """Make ``pgdata`` unstartable (marker written, pg_control removed) before anything else changes."""
    _write_marker(pgdata, {'backup': backup_name, 'started_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                           'applied': False, 'resume': 'run the same delta restore again'}, uid, gid)
    control = os.path.join(pgdata, CONTROL)
    if os.path.lexists(control):
        os.unlink(control)
        durable.fsync_dir(os.path.dirname(control))


def _write_marker(pgdata, content, uid=None, gid=None):
    marker = os.path.join(pgdata, MARKER)
    data = json.dumps(content).encode()
    tmp = marker + '.tmp'
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
        if uid is not None:
            os.fchown(fd, uid, gid)
    finally:
        os.close(fd)
    os.rename(tmp, marker)
    durable.fsync_dir(pgdata)


def commit(pgdata):
    """Put the backup's pg_control in place and remove the marker: the directory may start from now on."""
    held = os.path.join(pgdata, HELD_CONTROL)
    if not (in_progress(pgdata) or {}).get('applied'):
        raise DeltaError('the delta restore of %s did not apply the whole base backup: run it again' % pgdata)
    if not os.path.isfile(held):
        raise DeltaError('%s is missing: the delta restore did not receive the backup\'s pg_control' % held)
    os.rename(held, os.path.join(pgdata, CONTROL))
    durable.fsync_dir(os.path.dirname(held))
    os.unlink(os.path.join(pgdata, MARKER))
    durable.fsync_dir(pgdata)


def archive_chunks(archive, keys=None):
    """The tar stream of a stored base.tar[.zst|.gz|.lz4][.age], decrypted and decompressed, in chunks."""
    codec = compression.codec_of_path(archive)
    encrypted = encryption.is_encrypted(archive)
    if codec in ('zstd', 'gzip', 'none'):
        settings = {'identities': encryption.require_keys(archive, keys).identities()} if encrypted else None
        return walcodec.content_chunks(archive, codec, settings, encrypted)
    return _piped_chunks(archive, keys)


def _piped_chunks(archive, keys):
    stages, stdin_path = compression.read_stages(archive, keys)
    procs = []
    source = open(stdin_path, 'rb') if stdin_path else subprocess.DEVNULL
    try:
        for argv in stages:
            proc = subprocess.Popen(argv, stdin=procs[-1].stdout if procs else source, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            if procs:
                procs[-1].stdout.close()
            procs.append(proc)
        while True:
            chunk = procs[-1].stdout.read(READ_CHUNK)
            if not chunk:
                break
            yield chunk
        for proc, argv in zip(procs, stages):
            if proc.wait() != 0:
                raise DeltaError('%s failed: %s' % (argv[0], proc.stderr.read().decode('utf-8', 'replace').strip()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if stdin_path:
            source.close()


class _Patcher(object):
    """A thread that compares member data with the file on disk and writes only the pages that differ."""

    def __init__(self, stats, uid, gid, sync):
        self.stats, self.uid, self.gid, self.sync = stats, uid, gid, sync
        self.to_flush = []
        self.error = None
        self.queue = queue.Queue(QUEUE_DEPTH)
        self.thread = threading.Thread(target=self._run, name='delta-patcher')
        self.thread.daemon = True
        self.thread.start()

    def put(self, item):
        if self.error is not None:
            raise self.error
        self.queue.put(item)

    def finish(self):
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def _run(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                if item[0] == 'end':
                    os.close(item[1]['fd'])
                continue
            try:
                if item[0] == 'data':
                    self._data(*item[1:])
                else:
                    self._end(item[1])
            except OSError as exc:
                # _end closes its file itself, whatever happens.
                self.error = exc

    def _data(self, f, offset, data):
        fd, old_size = f['fd'], f['old_size']
        end = offset + len(data)
        same = min(end, old_size) - offset
        if same > 0:
            old = os.pread(fd, same, offset)
            if old != (data if same == len(data) else data[:same]):
                # Only the pages that differ, in runs, so that a changed row costs one page write.
                # Pieces aligned on the file's pages, however the stream happened to cut the data.
                cuts = [0] + list(range((-offset) % PAGE or PAGE, same, PAGE)) + [same]
                start = None
                for pos, stop in zip(cuts, cuts[1:]):
                    differs = old[pos:stop] != data[pos:stop]
                    if differs and start is None:
                        start = pos
                    elif not differs and start is not None:
                        self._write(f, memoryview(data)[start:pos], offset + start)
                        start = None
                if start is not None:
                    self._write(f, memoryview(data)[start:same], offset + start)
        if end > old_size:
            first = max(offset, old_size)
            self._write(f, memoryview(data)[first - offset:], first)

    def _write(self, f, view, offset):
        while view:
            done = os.pwrite(f['fd'], view, offset)
            view, offset = view[done:], offset + done
            f['written'] += done

    def _end(self, f):
        fd = f['fd']
        try:
            changed = f['new'] or f['written'] > 0
            if f['old_size'] > f['size']:
                os.ftruncate(fd, f['size'])
                changed = True
            st = os.fstat(fd)
            if st.st_mode & 0o7777 != f['mode']:
                os.fchmod(fd, f['mode'])
            if self.uid is not None and (st.st_uid, st.st_gid) != (self.uid, self.gid):
                os.fchown(fd, self.uid, self.gid)
            if changed:
                if self.sync and f['size'] >= untar.FLUSH_FROM:
                    # Large ones now, so that the disk works while the stream is still being read.
                    os.fdatasync(fd)
                elif self.sync:
                    self.to_flush.append(f['path'])
                os.utime(fd, (f['mtime'], f['mtime']))
                self.stats['written_files'] += 1
                self.stats['written_bytes'] += f['written']
            else:
                self.stats['reused_files'] += 1
                self.stats['reused_bytes'] += f['size']
        finally:
            os.close(fd)


def apply(chunks, pgdata, keep=(), uid=None, gid=None, sync=True):
    """Make the existing directory ``pgdata`` hold what the tar stream ``chunks`` holds.

    ``keep``: paths (relative, e.g. ``postgresql.conf``) whose existing file is left as it is.  The
    backup's ``global/pg_control`` is written to HELD_CONTROL (see ``commit``).  Returns the counts
    ``reused_files``, ``reused_bytes`` (left untouched), ``written_files``, ``written_bytes`` (bytes
    actually written), ``removed_files``, ``kept_files`` and ``total_bytes`` (the backup's files).
    """
    stats = dict(reused_files=0, reused_bytes=0, written_files=0, written_bytes=0, removed_files=0, kept_files=0,
                 total_bytes=0)
    keep = set(keep)
    listed = set()
    touched_dirs = set()
    known_dirs = set([''])
    patcher = _Patcher(stats, uid, gid, sync)
    current = {'file': None}    # the file being compared; None for a member whose data is not used

    def on_member(member):
        path = member.path
        if path in (MARKER, HELD_CONTROL):
            raise untar.UntarError('tar member %r has a name this restore uses for itself: refused' % member.name)
        listed.add(path)
        if member.kind in untar.REGULAR:
            _parents(pgdata, path, uid, gid, touched_dirs, known_dirs)
            stats['total_bytes'] += member.size
            if _kept(path, keep) and os.path.isfile(os.path.join(pgdata, path)):
                stats['kept_files'] += 1
                current['file'] = None
            else:
                current['file'] = _open(pgdata, HELD_CONTROL if path == CONTROL else path, member.size,
                                        member.mode or 0o600, member.mtime, touched_dirs)
                if current['file']['new'] and uid is not None:
                    os.fchown(current['file']['fd'], uid, gid)
        elif member.kind == untar.DIRECTORY:
            if path:
                _parents(pgdata, path, uid, gid, touched_dirs, known_dirs)
                _directory(pgdata, path, member.mode or 0o700, uid, gid, touched_dirs)
                known_dirs.add(path)
        else:
            _parents(pgdata, path, uid, gid, touched_dirs, known_dirs)
            _symlink(pgdata, path, member.target, uid, gid, touched_dirs)

    def on_data(piece, last):
        f = current['file']
        if f is None:
            return
        if piece:
            patcher.put(('data', f, f['pos'], bytes(piece)))
            f['pos'] += len(piece)
        if last:
            # The patcher closes the file with its end.
            patcher.put(('end', f))
            current['file'] = None

    try:
        untar.walk(chunks, on_member, on_data)
    except BaseException:
        try:
            patcher.finish()
        except OSError:
            pass
        if current['file'] is not None:
            os.close(current['file']['fd'])
        raise
    patcher.finish()
    stats['removed_files'] = _remove_unlisted(pgdata, listed, keep, touched_dirs)
    if sync:
        _flush([(durable.fsync_file, path) for path in patcher.to_flush]
               + [(durable.fsync_dir, os.path.join(pgdata, directory) if directory else pgdata)
                  for directory in touched_dirs])
    marker = in_progress(pgdata)
    if marker is not None:
        marker['applied'] = True
        st = os.stat(os.path.join(pgdata, MARKER))
        _write_marker(pgdata, marker, uid if uid is None else st.st_uid, st.st_gid)
    return stats


def _flush(calls):
    with concurrent.futures.ThreadPoolExecutor(FLUSH_THREADS) as pool:
        for done in [pool.submit(call, path) for call, path in calls]:
            done.result()


def _kept(path, keep):
    return path in keep or ('/' in path and path.split('/', 1)[0] in KEEP_TREES)


def _open(pgdata, path, size, mode, mtime, touched_dirs):
    full = os.path.join(pgdata, path)
    _clear_unless(full, 'file', touched_dirs, posixpath.dirname(path))
    try:
        fd = os.open(full, os.O_RDWR | os.O_NOFOLLOW)
        new = False
    except FileNotFoundError:
        fd = os.open(full, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        new = True
        touched_dirs.add(posixpath.dirname(path))
    # A file that is a hard link elsewhere would be patched there too: write a new one instead.
    if not new and os.fstat(fd).st_nlink > 1:
        os.close(fd)
        os.unlink(full)
        fd = os.open(full, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        new = True
    old_size = 0 if new else os.fstat(fd).st_size
    return {'fd': fd, 'path': full, 'pos': 0, 'size': size, 'old_size': old_size, 'mode': mode, 'mtime': mtime,
            'new': new, 'written': 0}


def _clear_unless(full, kind, touched_dirs, parent):
    """Remove what is at ``full`` when it is not a ``kind`` (file, directory), so that one can be made."""
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        return
    if kind == 'file' and stat.S_ISREG(st.st_mode) or kind == 'directory' and stat.S_ISDIR(st.st_mode):
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(full)
    else:
        os.unlink(full)
    touched_dirs.add(parent)


def _directory(pgdata, path, mode, uid, gid, touched_dirs):
    full = os.path.join(pgdata, path)
    if path == 'pg_wal' and os.path.islink(full) and os.path.isdir(full):
        # WAL kept on another volume through a symbolic link stays there; its content is replaced.
        return
    _clear_unless(full, 'directory', touched_dirs, posixpath.dirname(path))
    if not os.path.isdir(full):
        os.mkdir(full, mode)
        touched_dirs.add(posixpath.dirname(path))
    st = os.lstat(full)
    if st.st_mode & 0o7777 != mode:
        os.chmod(full, mode)
    if uid is not None and (st.st_uid, st.st_gid) != (uid, gid):
        os.lchown(full, uid, gid)


def _parents(pgdata, path, uid, gid, touched_dirs, known_dirs):
    """Directories a member needs that the archive did not list before it (``known_dirs``: made or checked)."""
    parent = posixpath.dirname(path)
    if parent in known_dirs:
        return
    _parents(pgdata, parent, uid, gid, touched_dirs, known_dirs)
    if not os.path.isdir(os.path.join(pgdata, parent)) or os.path.islink(os.path.join(pgdata, parent)):
        _directory(pgdata, parent, 0o700, uid, gid, touched_dirs)
    known_dirs.add(parent)


def _symlink(pgdata, path, target, uid, gid, touched_dirs):
    full = os.path.join(pgdata, path)
    if os.path.islink(full) and os.readlink(full) == target:
        return
    if os.path.lexists(full):
        _clear_unless(full, 'symlink', touched_dirs, posixpath.dirname(path))
    os.symlink(target, full)
    touched_dirs.add(posixpath.dirname(path))
    if uid is not None:
        os.lchown(full, uid, gid)


def _remove_unlisted(pgdata, listed, keep, touched_dirs):
    """Remove what the backup does not have; the number of files removed."""
    removed = 0
    own = {MARKER, HELD_CONTROL, MARKER + '.tmp'}
    for base, dirs, files in os.walk(pgdata):
        rel_base = os.path.relpath(base, pgdata)
        rel_base = '' if rel_base == '.' else rel_base
        for name in list(dirs):
            rel = posixpath.join(rel_base, name)
            full = os.path.join(base, name)
            if rel == 'pg_wal' and rel in listed and os.path.islink(full):
                removed += _empty_symlinked_wal(full, listed)
                continue
            if rel in listed or rel in keep or rel in KEEP_TREES:
                if rel in KEEP_TREES:
                    dirs.remove(name)
                continue
            dirs.remove(name)
            if os.path.islink(full):
                os.unlink(full)
                removed += 1
            else:
                removed += sum(len(f) for _b, _d, f in os.walk(full))
                shutil.rmtree(full)
            touched_dirs.add(rel_base)
        for name in files:
            rel = posixpath.join(rel_base, name)
            if rel in listed or rel in keep or rel in own:
                continue
            os.unlink(os.path.join(base, name))
            removed += 1
            touched_dirs.add(rel_base)
    return removed


def _empty_symlinked_wal(full, listed):
    """pg_wal as a symbolic link: its files are the old cluster's WAL, which recovery must not find."""
    removed = 0
    for base, _dirs, files in os.walk(full):
        for name in files:
            rel = posixpath.join('pg_wal', os.path.relpath(os.path.join(base, name), full))
            if rel not in listed:
                os.unlink(os.path.join(base, name))
                removed += 1
        durable.fsync_dir(base)
    return removed
