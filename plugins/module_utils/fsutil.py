# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Durable file-system primitives shared by every writer in the repository.

A backup is only trusted when its bytes reached the disk before its name did,
so everything that publishes a file goes through ``publish`` (fsync file,
rename, fsync directory).  Temporary names always start with ``TMP_PREFIX`` so
that readers and retention can tell them from finished backups.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno
import fcntl
import hashlib
import json
import os
import shutil
import time

from ansible_collections.modulo.pgbackup.plugins.module_utils import errors, osuser
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import durable as waldurable

TMP_PREFIX = '.tmp-'
DIR_MODE = 0o700
FILE_MODE = 0o600
_CHUNK = 1024 * 1024


class LockBusy(errors.PgBackupError):
    pass


def ensure_dir(path, mode=DIR_MODE):
    """Create ``path`` with ``mode``; remove permissions beyond ``mode`` from an existing dir we own.

    Missing parents above it get the usual umask mode: they are outside the
    repository (e.g. /var/backups) and other users may need to traverse them.
    What is created inherits the owner of the directory it is made in (inherit_owner).
    """
    if not os.path.isdir(path):
        made = []
        head = os.path.abspath(path)
        while head and not os.path.isdir(head):
            made.insert(0, head)
            head = os.path.dirname(head)
        os.makedirs(path, mode)
        for directory in made:
            inherit_owner(directory)
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    st = os.stat(path)
    current = st.st_mode & 0o777
    # Only ever take permissions away: a directory an operator made read-only
    # (0500) must stay read-only, and the failure must be reported, not undone.
    if (st.st_uid == os.geteuid() or osuser.is_root()) and current & ~mode:
        os.chmod(path, current & mode)
    return path


def inherit_owner(path):
    """As root, give ``path`` (just made: a file or a tree) the owner of the directory it is in.

    The repository has one owner, the server's OS user (Repository.ensure): the archive command, the
    drills and PITR run as that user and must be able to use whatever a module run as root wrote
    there. Made in a directory root owns (/var/backups, /tmp), it stays root's.
    """
    if not osuser.is_root():
        return
    parent = os.stat(os.path.dirname(os.path.abspath(path)))
    if parent.st_uid != 0:
        osuser.chown_tree(path, parent.st_uid, parent.st_gid)


# One implementation, the archive command's (the wal package is stdlib only, so the host command has it too).
fsync_dir = waldurable.fsync_dir
fsync_file = waldurable.fsync_file


def fsync_tree(path):
    """fsync every file and directory below ``path`` (a directory-format dump)."""
    for root, dirs, files in os.walk(path):
        for name in files:
            fsync_file(os.path.join(root, name))
        fsync_dir(root)


def tmp_path_for(final_path):
    """Temporary sibling of ``final_path``: same filesystem, so rename is atomic."""
    head, tail = os.path.split(final_path)
    return os.path.join(head, '%s%s.%d' % (TMP_PREFIX, tail, os.getpid()))


def publish(tmp_path, final_path, overwrite=False):
    """Make ``tmp_path`` durable and visible as ``final_path``.

    Never replaces an existing ``final_path`` unless ``overwrite`` (used only for
    metadata we own, such as a ``.meta`` being rewritten in place).
    """
    inherit_owner(tmp_path)
    if os.path.isdir(tmp_path):
        fsync_tree(tmp_path)
    else:
        fsync_file(tmp_path)
    if not overwrite and os.path.lexists(final_path):
        raise OSError(errno.EEXIST, 'refusing to overwrite existing %s' % final_path)
    os.rename(tmp_path, final_path)
    fsync_dir(os.path.dirname(os.path.abspath(final_path)))


def publish_backup(tmp_path, final_path):
    """Publish a finished backup (a file or a directory dump): private modes, then ``publish``.

    Returns (size in bytes, sha256) of what was published, measured before the rename, so the .meta
    written next describes exactly the bytes that became visible.
    """
    chmod_tree(tmp_path)
    size = size_of(tmp_path)
    digest = sha256_path(tmp_path)
    publish(tmp_path, final_path)
    return size, digest


def write_atomic(final_path, data, mode=FILE_MODE, overwrite=False):
    """Write bytes or text to ``final_path`` atomically and durably."""
    if not isinstance(data, bytes):
        data = data.encode('utf-8')
    tmp = tmp_path_for(final_path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        remove_quietly(tmp)
        raise
    os.close(fd)
    try:
        publish(tmp, final_path, overwrite=overwrite)
    except BaseException:
        remove_quietly(tmp)
        raise
    return final_path


def write_json_atomic(final_path, obj, overwrite=False):
    return write_atomic(final_path, json.dumps(obj, indent=2, sort_keys=True) + '\n',
                        overwrite=overwrite)


def remove_quietly(path):
    """Remove a temporary file or tree; used on failure paths only."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except OSError:
        pass


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b''):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_path(path):
    """sha256 of a file, or of a directory as its sorted (relative name, content) pairs."""
    if not os.path.isdir(path):
        return sha256_file(path)
    return tree_digest(file_digests(path))


def file_digests(path):
    """``{relative name: sha256}`` of every file under the directory ``path``."""
    return dict((rel, sha256_file(os.path.join(path, rel))) for rel in _walk_files(path))


def tree_digest(file_digests):
    """The sha256 ``sha256_path`` gives a directory, from ``{relative name: sha256 of that file}``: a backup
    streamed from S3 is checked without being on disk whole."""
    digest = hashlib.sha256()
    for rel in sorted(file_digests):
        digest.update(rel.encode('utf-8') + b'\0')
        digest.update(file_digests[rel].encode('ascii') + b'\n')
    return digest.hexdigest()


def size_of(path):
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(path, rel)) for rel in _walk_files(path))


def _walk_files(path):
    for root, _dirs, files in os.walk(path):
        for name in files:
            yield os.path.relpath(os.path.join(root, name), path)


def chmod_tree(path, dir_mode=DIR_MODE, file_mode=FILE_MODE):
    if not os.path.isdir(path):
        os.chmod(path, file_mode)
        return
    os.chmod(path, dir_mode)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(root, name), dir_mode)
        for name in files:
            os.chmod(os.path.join(root, name), file_mode)


class RepositoryLock(object):
    """Serializes one operation (e.g. ``backup``) on one repository.

    flock is released by the kernel when the process dies, so a crashed run
    never leaves a lock that blocks the next night's backup. The lock file is
    removed when the lock is released, so one-off operations (a restore into
    each database) do not leave files behind; a waiter that locked the file
    just removed sees that its inode is no longer the path's and tries again.
    """

    def __init__(self, root, operation, wait_s=0):
        self.path = os.path.join(root, '.lock-%s' % operation)
        self.operation = operation
        self.wait_s = wait_s
        self._fd = None

    def __enter__(self):
        deadline = time.time() + self.wait_s
        while True:
            fd = self._open()
            try:
                self._wait_for(fd, deadline)
            except BaseException:
                os.close(fd)
                raise
            if self._still_the_path(fd):
                break
            os.close(fd)    # its holder removed it while we waited: lock the path's new file
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, ('pid=%d started=%s\n' % (os.getpid(), time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))).encode())
        return self

    def _open(self):
        fresh = not os.path.exists(self.path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        if fresh:
            inherit_owner(self.path)
        return fd

    def _wait_for(self, fd, deadline):
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except (IOError, OSError) as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.time() >= deadline:
                    raise LockBusy(
                        'another %s is already running on this repository (%s, held by %s); '
                        'wait for it to finish or check for a hung process'
                        % (self.operation, self.path, self._holder() or 'unknown process'))
                time.sleep(0.5)

    def _still_the_path(self, fd):
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except OSError:
            return False

    def _holder(self):
        try:
            with open(self.path) as handle:
                return handle.read().strip()
        except OSError:
            return None

    def __exit__(self, *exc):
        if self._fd is not None:
            # Removed while still held: whoever opens the path next gets a new file and the lock.
            remove_quietly(self.path)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        return False
