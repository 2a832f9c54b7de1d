# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Durable files: temporary names, fsync, publishing without ever replacing a file, stale temporaries."""

import _thread
import errno
import os
import time


TMP_PREFIX = '.tmp-'
DIR_MODE = 0o700
FILE_MODE = 0o600
# A crashed push leaves its temporary file behind; it is removed by a later
# push of the same name once its process is gone and it is this old.
STALE_TMP_S = 3600
CHUNK = 1024 * 1024


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def ensure_dir(path):
    """Create ``path`` 0700 if missing and make the new entry durable; True when created."""
    try:
        os.mkdir(path, DIR_MODE)
    except OSError as exc:
        if exc.errno == errno.EEXIST and os.path.isdir(path):
            return False
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    return True


def tmp_name(directory, filename):
    """``.tmp-<file>.<pid>.<thread>``: the background pusher's threads can write the same file at once
    (``archive.json``, on the first pushes), each into its own temporary file."""
    return os.path.join(directory, '%s%s.%d.%d' % (TMP_PREFIX, filename, os.getpid(), _thread.get_ident()))


def publish_no_replace(tmp, final):
    """Give the fsynced ``tmp`` its final name without ever replacing an existing file.

    link(2) fails with EEXIST instead of replacing, which rename(2) would do
    silently.  Some file systems (e.g. CIFS) refuse hard links: there we check
    first and rename, a window that only matters for concurrent pushes.
    """
    try:
        os.link(tmp, final)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
        if os.path.lexists(final):
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), final)
        os.rename(tmp, final)
    else:
        os.unlink(tmp)
    fsync_dir(os.path.dirname(os.path.abspath(final)))


def open_tmp(path):
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise
    # The name carries our pid, so on this host it can only be left over by a
    # dead process that had the same pid.
    os.unlink(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def cleanup_stale_tmp(directory, filename):
    """Remove temporary files of earlier, crashed pushes of the same file."""
    prefix = TMP_PREFIX + filename + '.'
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for entry in names:
        if not entry.startswith(prefix):
            continue
        try:
            pid = int(entry[len(prefix):].split('.')[0])
            path = os.path.join(directory, entry)
            if time.time() - os.lstat(path).st_mtime < STALE_TMP_S:
                continue
            os.kill(pid, 0)
        except ProcessLookupError:
            remove_quietly(path)
        except (ValueError, OSError):
            continue
