# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup repository's on-disk layout (DESIGN.md section 3) and its catalogue.

A backup exists for readers only when its ``.meta`` exists and says
``status: complete``; everything else (temporary names, orphans without a
``.meta``) is invisible to restore and listed as such by ``scan``.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import datetime
import json
import os
import re

from ansible_collections.modulo.pgbackup.plugins.module_utils import errors, fsutil, osuser
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import store as walstore

FORMAT_VERSION = 1
SUBDIRS = ('full', 'base', 'wal', 'logs', 'restore-tests')
STAMP_FORMAT = '%Y%m%d_%H%M%S'
NAME_RE = re.compile(r'^(?P<prefix>[A-Za-z0-9][A-Za-z0-9_-]*)_(?P<kind>full|base)_(?P<stamp>\d{8}_\d{6})\Z')
PREFIX_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9-]*\Z')

# format -> base suffix of the dump; compression -> extra suffix when compressed outside pg_dump
FORMAT_SUFFIX = {'plain': '.sql', 'custom': '.dump', 'directory': '.dir'}
COMPRESSION_SUFFIX = {'gzip': '.gz', 'zstd': '.zst', 'lz4': '.lz4', 'none': ''}
META_SUFFIX = '.meta'
# A physical backup's own manifest (pg_basebackup), stored beside its archives.
MANIFEST = 'backup_manifest'

# Reports: <kind>_[<subject>_]<YYYYMMDD_HHMMSS>[_<n>].json, in logs/ (drills in restore-tests/, with a copy
# in logs/). Readers (health, retention) and writers (report, drill, verify, backup_retention) use these.
BACKUP_REPORT, RETENTION_REPORT, DRILL_REPORT, VERIFY_REPORT = 'backup_report', 'retention_report', 'monthly_drill', 'verify'
_REPORT_TAIL = r'_(?P<stamp>\d{8}_\d{6})(?:_\d+)?\.json\Z'
BACKUP_REPORT_RE = re.compile('^' + BACKUP_REPORT + _REPORT_TAIL)
DRILL_REPORT_RE = re.compile('^' + DRILL_REPORT + _REPORT_TAIL)
# Everything retention ages in logs/ (verify reports carry the database: verify_<db>_<stamp>.json).
LOG_REPORT_RE = re.compile(r'^(?:%s|%s|%s|%s_[A-Za-z0-9_-]+)' % (BACKUP_REPORT, RETENTION_REPORT, DRILL_REPORT,
                                                                 VERIFY_REPORT) + _REPORT_TAIL)
# Files of logs/ rewritten in place, never aged out.
HEALTH_FILE, AUDIT_FILE = 'health.json', 'audit.log'
# progress.py's files: the state of the latest (or running) base backup and restore.
PROGRESS_FILES = {'backup': 'progress-backup.json', 'restore': 'progress-restore.json'}
KEPT_LOGS = {HEALTH_FILE: 'the latest health check (playbooks/health-check.yml rewrites it)',
             AUDIT_FILE: 'the audit log: one line per operation, kept for compliance (rotate it with logrotate)',
             PROGRESS_FILES['backup']: 'progress of the latest base backup (each one rewrites it)',
             PROGRESS_FILES['restore']: 'progress of the latest restore (each one rewrites it)'}
# Emergency recovery records are evidence, never aged out: logs/incident_<id>.json (incident.py) and
# logs/dr_simulation_<id>.md (playbooks/dr-simulation.yml).
INCIDENT_PREFIX = 'incident_'
KEPT_LOG_RE = re.compile(r'^(?:%s[A-Za-z0-9][A-Za-z0-9_.-]*\.json|dr_simulation_[A-Za-z0-9_.-]+\.md)\Z' % INCIDENT_PREFIX)


class RepositoryError(errors.PgBackupError):
    pass


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def progress_path(root, kind):
    """``logs/progress-backup.json`` or ``logs/progress-restore.json`` of the repository at ``root``."""
    return os.path.join(root, 'logs', PROGRESS_FILES[kind])


def iso(ts):
    return ts.astimezone(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def parse_iso(text):
    return datetime.datetime.strptime(text, '%Y-%m-%dT%H:%M:%SZ').replace(tzinfo=datetime.timezone.utc)


def validate_prefix(prefix):
    if not PREFIX_RE.match(prefix or ''):
        raise RepositoryError('name_prefix %r is invalid: use letters, digits and dashes only '
                              '(the underscore separates the parts of a backup name)' % (prefix,))
    return prefix


def backup_name(prefix, kind, ts):
    """``modulo_full_20261124_020000``: the name every other artefact is keyed on."""
    return '%s_%s_%s' % (validate_prefix(prefix), kind, stamp(ts))


def stamp(ts):
    """``YYYYMMDD_HHMMSS`` in UTC whatever the zone of ``ts`` (names must sort by real time)."""
    if ts.tzinfo is not None:
        ts = ts.astimezone(datetime.timezone.utc)
    return ts.strftime(STAMP_FORMAT)


def report_name(kind, ts, serial=1, subject=None):
    """``monthly_drill_20261206_040000.json``; ``serial`` 2 and up for a second report of the same second."""
    return '%s%s_%s%s.json' % (kind, '_' + subject if subject else '', stamp(ts), '_%d' % serial if serial > 1 else '')


def dump_suffix(fmt, compression, native_compression):
    """File suffix for a logical dump; compression inside pg_dump adds no suffix."""
    suffix = FORMAT_SUFFIX[fmt]
    if fmt == 'directory' or native_compression:
        return suffix
    return suffix + COMPRESSION_SUFFIX[compression]


class Repository(object):
    """The repository at ``root``, owned by ``os_user`` (the server's OS user) when written as root."""

    def __init__(self, root, os_user='postgres'):
        if not root:
            raise RepositoryError('backup_root is required')
        self.root = os.path.abspath(os.path.expanduser(root))
        self.os_user = os_user

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def ensure(self):
        """Create the layout with 0700 dirs; say clearly when the root is not writable."""
        try:
            fsutil.ensure_dir(self.root)
            self._hand_to_server_user()
            for sub in SUBDIRS:
                fsutil.ensure_dir(self.path(sub))
        except (OSError, osuser.OsUserError) as exc:
            raise RepositoryError('cannot create the backup repository at %s (%s): check that '
                                  'backup_root exists or can be created and is writable by user %s'
                                  % (self.root, getattr(exc, 'strerror', None) or exc, osuser.current_user()))
        for sub in ('full', 'logs'):
            if not os.access(self.path(sub), os.W_OK | os.X_OK):
                raise RepositoryError('backup_root %s is not writable by user %s: fix its owner or mode (or '
                                      'remount it read-write if the file system is read-only), or run as the '
                                      'repository owner' % (self.path(sub), osuser.current_user()))
        return self

    def _hand_to_server_user(self):
        """As root, a repository that root owns goes to the server's OS user, with what root wrote in it.

        Whoever runs first (a backup as root, the archive command, a drill), every later step must be
        able to use the repository; the archive command and the scratch clusters run as the server's
        OS user. A repository another user owns is left as it is: that owner was chosen on purpose.
        """
        uid, gid = osuser.ids(self.os_user)
        if uid is None or os.stat(self.root).st_uid != 0:
            return
        for base, dirs, files in os.walk(self.root):
            for path in [base] + [os.path.join(base, n) for n in dirs + files]:
                if os.lstat(path).st_uid == 0:
                    os.lchown(path, uid, gid)

    def check_readable(self):
        """A repository that exists but that this user cannot enter is an error, not an empty repository."""
        if os.path.lexists(self.root) and not os.access(self.root, os.R_OK | os.X_OK):
            raise RepositoryError('backup_root %s exists but user %s cannot read it (it belongs to the server\'s OS '
                                  'user, mode 0700): run the play with become: true, or as that user'
                                  % (self.root, osuser.current_user()))

    def meta_path(self, kind_dir, filename):
        """Where the ``.meta`` of the backup file (or directory) ``filename`` is written."""
        return self.path(kind_dir, meta_name(filename))

    def name_in_use(self, kind_dir, name):
        """True when a file of backup ``name`` exists in ``kind_dir``, in any format, under either ``.meta`` name."""
        try:
            return any(_stem(n) == name for n in os.listdir(self.path(kind_dir)))
        except OSError:
            return False

    def lock(self, operation, wait_s=0):
        return fsutil.RepositoryLock(self.root, operation, wait_s=wait_s)

    def scan(self, kind_dir='full'):
        """All ``.meta`` in ``kind_dir`` (oldest first) plus the names of orphans.

        Returns ``(entries, problems)``: entries are the parsed metas with ``path``
        added; problems list files that look like backups but cannot be used.
        """
        directory = self.path(kind_dir)
        entries, problems = [], []
        if not os.path.isdir(directory):
            self.check_readable()
            return entries, problems
        names = sorted(os.listdir(directory))

        def load(filename):
            with open(os.path.join(directory, filename)) as handle:
                return json.load(handle)

        metas = meta_files_by_backup(n for n in names if not n.startswith(fsutil.TMP_PREFIX))
        for name, meta_file, meta, problem in read_metas(metas, load):
            meta_file = os.path.join(directory, meta_file)
            if problem:
                problems.append({'path': meta_file, 'problem': problem})
                continue
            meta['path'] = os.path.join(directory, meta.get('file', name))
            meta['meta_path'] = meta_file
            meta['location'] = 'local'
            entries.append(meta)
        for name in names:
            if name.startswith(fsutil.TMP_PREFIX):
                problems.append({'path': os.path.join(directory, name),
                                 'problem': 'temporary file of an interrupted run (not a backup)'})
                continue
            stem = _stem(name)
            if not name.endswith(META_SUFFIX) and stem not in metas:
                problems.append({'path': os.path.join(directory, name),
                                 'problem': 'no .meta: incomplete or foreign file, never used for restore'})
        entries.sort(key=lambda m: (m.get('started_at') or '', m.get('name') or ''))
        return entries, problems


def with_s3(local, s3, kind_dir):
    """A local listing (``Repository.scan``) and the S3 mirror's as one (``wal.store.merge``): oldest first, one
    entry per name, ``location`` ``local``, ``s3`` or ``both`` (then ``s3_uri`` too); S3-only entries have no
    ``path``."""
    def also_in_s3(kept, remote):
        kept['s3_uri'] = remote['s3_uri']

    remote = [dict(meta, path=None) for meta in s3.list_metas(kind_dir)] if s3 is not None else None
    merged = walstore.merge(local, remote, key=lambda m: m['name'], both=also_in_s3)
    return sorted(merged, key=lambda m: (m.get('started_at') or '', m.get('name') or ''))


def _stem(filename):
    match = re.match(r'^([A-Za-z0-9][A-Za-z0-9-]*_(?:full|base)_\d{8}_\d{6})', filename)
    return match.group(1) if match else filename


def manifest_bytes(manifest):
    """Bytes of the files a parsed ``backup_manifest`` lists (about what unpacking the backup writes), or None
    when it is not a manifest."""
    try:
        return sum(int(f.get('Size', 0)) for f in manifest.get('Files', []))
    except (AttributeError, TypeError, ValueError):
        return None


def meta_name(filename):
    """The runbook's name for a backup's metadata: the backup file's (or directory's) name plus ``.meta``,
    ``modulo_full_20261124_020000.sql.gz.meta``, ``modulo_base_20261124_020000.meta``."""
    return filename + META_SUFFIX


def backup_of_meta(meta_filename):
    """The backup name a ``.meta`` file belongs to, for the runbook's name and for the name earlier releases
    wrote (``modulo_full_20261124_020000.meta``, the backup name plus ``.meta``), or None for another file."""
    if not meta_filename.endswith(META_SUFFIX) or meta_filename.startswith('.'):
        return None
    return _stem(meta_filename[:-len(META_SUFFIX)])


def meta_files_by_backup(filenames):
    """``{backup name: [.meta file names]}``, the runbook's name first when a backup has both names (the
    older one is read only when it is the only one; retention and S3 remove both)."""
    found = {}
    for filename in filenames:
        name = backup_of_meta(filename)
        if name is not None:
            found.setdefault(name, []).append(filename)
    for files in found.values():
        # The runbook's name is the longer one (``.sql.gz.meta`` against ``.meta``).
        files.sort(key=lambda f: (-len(f), f))
    return found


def read_metas(metas, load):
    """Read the ``.meta`` of each backup of ``meta_files_by_backup``'s answer with ``load(filename)`` (a local
    directory's or the S3 mirror's): ``(name, meta file, meta, problem)`` by name, where an unreadable or
    non-object ``.meta`` is a problem, never a backup. Errors of the store itself (S3 unreachable) pass."""
    for name in sorted(metas):
        meta_file = metas[name][0]
        try:
            meta = load(meta_file)
        except (OSError, ValueError) as exc:
            yield name, meta_file, None, 'unreadable .meta: %s' % exc
            continue
        if not isinstance(meta, dict):
            yield name, meta_file, None, 'unreadable .meta: not a JSON object'
            continue
        yield name, meta_file, meta, None


def is_complete(meta):
    return meta.get('status') == 'complete'


def select(entries, selector):
    """Pick backups by ``all`` | ``latest`` | a name; latest means latest *complete*."""
    if selector in (None, 'all'):
        return entries
    complete = [e for e in entries if is_complete(e)]
    if selector == 'latest':
        return complete[-1:]
    return [e for e in entries if e.get('name') == selector]
