# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The storage interface: a repository is a tree of files under a root, on a local disk (``LocalStore``) or
under an S3 prefix (``s3.S3Archive``), and both answer the same four calls:

``list(relprefix)``
    every stored file under ``relprefix`` as ``{'relpath', 'path', 'size', 'mtime'}`` sorted by relpath;
    ``path`` is what ``open`` and ``delete`` of that store take back (a file path, an S3 key). A missing
    prefix is an empty list; a prefix that cannot be read raises, so that nobody mistakes an unreadable
    archive for an empty one.
``open(relpath)``
    a binary file object to read.
``put(relpath, fileobj)``
    durable and whole or not at all: a reader never sees a partial file. The local store never replaces
    an existing file (``FileExistsError``); an S3 PUT replaces, so callers that must not overwrite look
    first (push does, by ``find``).
``delete(relpath)``
    gone; already gone is fine.

``merge`` is the one place where a local listing and its S3 copy become one list. This file is stdlib-only
like the rest of the package: the archive command on the host lists and merges with it too.
"""

import errno
import os
import stat

from .durable import CHUNK, ensure_dir, fsync_dir, open_tmp, publish_no_replace, remove_quietly, tmp_name, write_all

LOCAL = 'local'
S3 = 's3'
BOTH = 'both'


class LocalStore(object):
    """Files under ``root`` on this host."""

    def __init__(self, root):
        self.root = os.path.normpath(root)

    def path(self, relpath):
        return os.path.join(self.root, *relpath.split('/'))

    def list(self, relprefix=''):
        found = []
        top = self.path(relprefix.rstrip('/')) if relprefix.strip('/') else self.root
        self._walk(top, relprefix.strip('/'), found)
        found.sort(key=lambda item: item['relpath'])
        return found

    def _walk(self, directory, reldir, found):
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return
            raise
        for entry in entries:
            relpath = reldir + '/' + entry.name if reldir else entry.name
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                self._walk(entry.path, relpath, found)
            else:
                found.append({'relpath': relpath, 'path': entry.path, 'size': st.st_size, 'mtime': st.st_mtime})

    def open(self, relpath):
        return open(self.path(relpath), 'rb')

    def put(self, relpath, fileobj):
        return self.write(relpath, lambda fd: _copy(fileobj, fd))[0]

    def write(self, relpath, fill):
        """``fill(fd)`` writes the content into a temporary file beside the final name; it is fsynced, then
        linked to its name, which it never replaces (``FileExistsError``: the temporary is removed).
        Returns the path and what ``fill`` returned (push's checksum)."""
        final = self.path(relpath)
        directory = os.path.dirname(final)
        self._ensure_parents(directory)
        tmp = tmp_name(directory, os.path.basename(final))
        fd = open_tmp(tmp)
        try:
            try:
                filled = fill(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                publish_no_replace(tmp, final)
            except OSError as exc:
                if exc.errno == errno.EEXIST:
                    raise FileExistsError(errno.EEXIST, 'already stored, not replaced', final)
                raise
        finally:
            remove_quietly(tmp)
        return final, filled

    def _ensure_parents(self, directory):
        """Create the missing directories between the root and ``directory``, each made durable. Never the
        root itself: a repository that is not there (an unmounted volume) must fail the write, not be
        recreated empty on the disk below the mount point."""
        missing = []
        while not os.path.isdir(directory) and directory != self.root:
            missing.append(directory)
            directory = os.path.dirname(directory)
        for path in reversed(missing):
            ensure_dir(path)

    def delete(self, relpath):
        path = self.path(relpath)
        try:
            os.unlink(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            return
        fsync_dir(os.path.dirname(path))


def _copy(fileobj, fd):
    for chunk in iter(lambda: fileobj.read(CHUNK), b''):
        write_all(fd, chunk)


def merge(local, remote, key, both=None):
    """One entry per ``key(entry)`` out of a local listing and its S3 copy, in the local list's order first:
    ``location`` ``local``, ``both`` or ``s3``. ``both(local_entry, remote_entry)`` adds what the S3 copy
    tells about an entry kept in both places (its URI, an earlier time). The entries are copied, the
    listings are not changed."""
    merged = {}
    for entry in local:
        merged[key(entry)] = dict(entry, location=LOCAL)
    for entry in remote or ():
        name = key(entry)
        kept = merged.get(name)
        if kept is None:
            merged[name] = dict(entry, location=S3)
        else:
            kept['location'] = BOTH
            if both is not None:
                both(kept, entry)
    return list(merged.values())
