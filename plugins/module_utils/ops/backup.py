# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup use case: one logical backup of a database, or one base backup of the cluster, into the
repository, with its S3 copy and its run report (what the pg_backup module runs).

``Backup(request, conn, repo, ...)``: ``prepare()`` checks everything that can be checked before the
repository is touched and says what would be written (check mode stops there); ``run()`` takes the backup
under the repository's backup lock and returns an ``Outcome``. A failure after ``prepare()`` writes a failed
run report (health reads it) and raises ``BackupFailed``, whose message says what happened and what to do,
and which still carries the backup when only its upload failed.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import time

from ansible_collections.modulo.pgbackup.plugins.module_utils import errors, logical_backup, physical_backup, progress, standby
from ansible_collections.modulo.pgbackup.plugins.module_utils import report as reports
from ansible_collections.modulo.pgbackup.plugins.module_utils.s3store import S3Error

LOGICAL, PHYSICAL = 'logical', 'physical'


class BackupFailed(errors.PgBackupError):
    """The backup did not complete as asked; ``backup`` is the local backup when only its S3 copy failed."""

    def __init__(self, message, backup=None, report_path=None):
        super(BackupFailed, self).__init__(message)
        self.backup = backup
        self.report_path = report_path


class Request(object):
    """What to back up and how, as typed values (the module's options, checked)."""

    def __init__(self, kind=LOGICAL, db='modulodb', fmt='plain', compression=None, compression_level=None,
                 jobs=2, name_prefix='modulo', lock_wait=0, wait_archive=300, checkpoint='fast', max_rate=None,
                 backup_from=standby.PRIMARY, primary_host=None, primary_port=None, max_replay_lag=300):
        if kind not in (LOGICAL, PHYSICAL):
            raise errors.PgBackupError('type must be logical or physical, not %r' % kind)
        if kind == LOGICAL and (checkpoint != 'fast' or max_rate):
            raise errors.PgBackupError('checkpoint and max_rate are settings of a base backup (type: physical); '
                                       'a logical backup (pg_dump) takes no checkpoint and has no rate limit')
        if backup_from not in standby.SOURCES:
            raise errors.PgBackupError('backup_from must be primary or standby, not %r' % (backup_from,))
        if kind == LOGICAL and backup_from != standby.PRIMARY:
            raise errors.PgBackupError('backup_from is a setting of a base backup (type: physical); a logical '
                                       'backup (pg_dump) reads from whichever server login_host and port name')
        if backup_from == standby.PRIMARY and (primary_host or primary_port):
            raise errors.PgBackupError('primary_host and primary_port name the primary of a standby: they go with '
                                       'backup_from: standby')
        if max_replay_lag is not None and max_replay_lag < 0:
            raise errors.PgBackupError('max_replay_lag must be 0 (no limit) or more seconds')
        if jobs < 1:
            raise errors.PgBackupError('jobs must be 1 or more')
        self.kind = kind
        self.db = db if kind == LOGICAL else None
        self.fmt = fmt
        # A base backup is compressed with zstd unless told otherwise; a dump with gzip, the runbook's.
        self.compression = compression or ('gzip' if kind == LOGICAL else 'zstd')
        self.compression_level = compression_level
        self.jobs = jobs
        self.name_prefix = name_prefix
        self.lock_wait = lock_wait
        self.wait_archive = wait_archive
        self.checkpoint = checkpoint
        self.max_rate = max_rate
        self.backup_from = backup_from
        self.primary_host = primary_host
        self.primary_port = primary_port
        self.max_replay_lag = max_replay_lag

    @property
    def section(self):
        """The repository directory the backup goes to."""
        return 'full' if self.kind == LOGICAL else 'base'

    @property
    def target(self):
        return self.db if self.kind == LOGICAL else 'cluster'


class Outcome(object):
    """A completed backup: ``backup`` {path, meta, s3_uri}, the runbook ``thresholds`` it was checked
    against, its run report, and the message for the operator."""

    def __init__(self, backup, thresholds, report_path, msg, warnings=None):
        self.backup, self.thresholds, self.report_path, self.msg = backup, thresholds, report_path, msg
        self.warnings = list(warnings or [])

    @property
    def breached(self):
        return [c['check'] for c in self.thresholds if c.get('breached')]


class Backup(object):

    def __init__(self, request, conn, repo, keys, s3=None, log=None):
        self.request, self.conn, self.repo, self.keys, self.s3, self.log = request, conn, repo, keys, s3, log
        self.plan = None
        self.source = None

    # -- before anything is written ------------------------------------------------------------------
    def prepare(self):
        """Check the key, the server and (for a base backup) the archiving; plan the names.

        Returns what would be written: {path, meta: None, s3_uri}. Raises physical_backup.ArchivingNotConfigured
        for a base backup of a server that does not archive (the caller may call that a skip).
        """
        if self.keys.enabled:
            self.keys.recipient()  # a bad key fails now, not after the backup
        self.plan = self._new_plan()
        if self.request.kind == PHYSICAL:
            r = self.request
            self.source = standby.resolve(self.conn, r.backup_from, r.primary_host, r.primary_port, r.max_replay_lag,
                                          log=self.log)
            physical_backup.check_archiving(self.source.archive_conn, log=self.log)
        where = self.request.section + '/' + (self.plan['file'] if self.request.kind == LOGICAL else self.plan['name'])
        return dict(path=self.plan['path'], meta=None, s3_uri=self.s3.uri(where) if self.s3 else None)

    def would(self):
        """What check mode says it would do."""
        if self.request.kind == PHYSICAL:
            return 'would take a base backup of the cluster%s into %s' % (
                ' from the standby at %s' % standby.where(self.conn) if self.source and self.source.standby else '', self.plan['path'])
        return 'would back up database %s to %s' % (self.request.db, self.plan['path'])

    def _new_plan(self):
        r = self.request
        if r.kind == PHYSICAL:
            return physical_backup.plan(self.repo, r.name_prefix, r.compression, r.compression_level, workers=r.jobs,
                                        checkpoint=r.checkpoint, max_rate=r.max_rate)
        return logical_backup.plan(self.repo, r.db, r.fmt, r.compression, r.compression_level, r.name_prefix,
                                   logical_backup.pg_dump_major(self.conn), encrypted=self.keys.enabled)

    def _unused_plan(self):
        """Named after the moment the lock was ours: a run that waited for another one must neither pretend
        to have started earlier nor take its name."""
        if self.request.kind == LOGICAL:
            return logical_backup.unused_plan(self.repo, self.plan)
        plan = self._new_plan()
        if os.path.lexists(plan['path']) or os.path.lexists(plan['meta_path']):
            time.sleep(1.0)     # base backup names have whole seconds
            plan = self._new_plan()
        return plan

    # -- the backup --------------------------------------------------------------------------------
    @progress.reported('backup', lambda run: 'base backup' if run.request.kind == PHYSICAL
                       else 'backup of database %s' % run.request.db)
    def run(self):
        r = self.request
        self.repo.ensure()
        started, backup = self.plan['started'], None
        try:
            progress.report('waiting for the repository lock' if r.lock_wait else 'starting')
            with self.repo.lock('backup', wait_s=r.lock_wait):
                self.plan = self._unused_plan()
                started = self.plan['started']
                meta = self._take()
                backup = dict(path=self.plan['path'], meta=meta, s3_uri=None)
                entries, _problems = self.repo.scan(r.section)
                checks = reports.thresholds(meta, reports.previous_backup(entries, meta))
                if self.s3:
                    progress.report('uploading %s to S3' % progress.human_bytes(meta['size_bytes']))
                    backup['s3_uri'], _objects = self.s3.upload_backup(
                        self.repo.root, self.plan['path'], self.plan['meta_path'], extra_paths=self._extra_files(meta))
        except errors.EXPLAINED_ERRORS + (OSError,) as exc:
            raise self._failed(started, backup, exc)
        try:
            report_path, _report = reports.write_backup_report(
                self.repo, started, 'success', backups=[dict(meta, s3_uri=backup['s3_uri'])], checks=checks,
                extra=self._run_fields())
        except OSError as exc:
            # The backup itself is complete; monitoring reads the reports, so say so plainly.
            raise BackupFailed('the backup %s is complete, but its run report could not be written to %s: %s '
                               '(is the disk full or read-only?)' % (meta['name'], self.repo.path('logs'),
                                                                     exc.strerror or exc), backup=backup)
        warnings = []
        if self.source and self.source.switch_problem:
            # The backup is complete (archive_timeout brought its last segment), but each run waits that long.
            warnings.append('%s: the backup waited for archive_timeout instead; allow it pg_switch_wal() on the '
                            'primary' % self.source.switch_problem)
        return Outcome(backup, checks, report_path, self._message(meta), warnings=warnings)

    def _take(self):
        r = self.request
        if r.kind == PHYSICAL:
            return physical_backup.take(self.conn, self.repo, self.plan, wait_archive_s=r.wait_archive, log=self.log,
                                        keys=self.keys, source=self.source)
        logical_backup.check_database_reachable(self.conn, r.db, log=self.log)
        progress.report('pg_dump of %s' % r.db)
        return logical_backup.take(self.conn, self.repo, self.plan, jobs=r.jobs, log=self.log, keys=self.keys)

    def _extra_files(self, meta):
        globals_file = (meta.get('globals') or {}).get('file')
        return [self.repo.path('full', globals_file)] if globals_file else []

    def _message(self, meta):
        if self.request.kind == PHYSICAL:
            return 'base backup %s%s (%d bytes, %.1f s, WAL %s..%s archived)' % (
                meta['name'], ' from the standby at %s' % standby.where(self.conn) if self.source and self.source.standby else '',
                meta['size_bytes'], meta['duration_s'], meta['wal_start'], meta['wal_stop'])
        return 'backed up database %s to %s (%d bytes, %.1f s)' % (
            self.request.db, self.plan['path'], meta['size_bytes'], meta['duration_s'])

    def _run_fields(self):
        """What a run report says it was about, also when it failed before writing any backup (health reads it)."""
        return {'type': self.request.kind, 'database': self.request.db}

    def _failed(self, started, backup, exc):
        message = str(exc)
        if isinstance(exc, OSError):
            message = 'backup failed writing to %s: %s (is the disk full or read-only?)' % (
                exc.filename or self.repo.root, exc.strerror or exc)
        if isinstance(exc, S3Error) and backup:
            message = 'the local backup %s is complete, but the S3 upload failed: %s' % (self.plan['name'], message)
        report_path = None
        try:
            report_path, _report = reports.write_backup_report(
                self.repo, started, 'failed', backups=[backup['meta']] if backup else [], error=message,
                extra=self._run_fields())
        except OSError:
            pass
        return BackupFailed(message, backup=backup, report_path=report_path)
