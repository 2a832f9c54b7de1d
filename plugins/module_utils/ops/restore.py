# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The restore use cases (what the backup_restore module runs): a logical backup into a database, and a
point-in-time recovery into a database (through a scratch cluster) or of the whole cluster.

Each is ``prepare()`` (everything checked, nothing changed: the backup chosen, the target checked, the
confirmation and, for the cluster, the service control; check mode stops there, with ``plan()`` and
``would()``) then ``run()``, which returns an ``Outcome``. Refusals raise errors.PgBackupError subclasses
whose message says what to do; a failure once something changed raises ``RestoreFailed``, which carries
the cluster's rollback state when there is one.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import time

from ansible_collections.modulo.pgbackup.plugins.module_utils import (
    cluster_recovery, delta, errors, logical_restore, pitr, progress, repository, scratch)
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import s3 as wals3

DATABASE, CLUSTER = 'database', 'cluster'
PITR_TARGETS = ('target_time', 'target_xid', 'target_lsn', 'target_name', 'target')
DELTA_NEEDS_CLUSTER = ('delta=true applies only to mode=cluster (it rewrites the data directory of the whole cluster '
                       'in place); a restore into a database never needs it')


class RestoreFailed(errors.PgBackupError):
    """The restore failed after it started changing things; ``rollback`` is a cluster recovery's rollback state."""

    def __init__(self, message, rollback=None):
        super(RestoreFailed, self).__init__(message)
        self.rollback = rollback


class Request(object):
    """What to restore, where, and to which point, as typed values (the module's options)."""

    def __init__(self, backup='latest', db=None, target_db=None, confirm=None, keep_old=True, jobs=2,
                 mode=DATABASE, target_time=None, target_xid=None, target_lsn=None, target_name=None, target=None,
                 scratch_dir=None, scratch_port=None, recovery_timeout=3600, pgdata=None, pg_service=None,
                 service_control='auto', pg_os_user='postgres', delta=False):
        if mode not in (DATABASE, CLUSTER):
            raise errors.PgBackupError('mode must be database or cluster, not %r' % (mode,))
        if delta and mode != CLUSTER:
            raise errors.PgBackupError(DELTA_NEEDS_CLUSTER)
        self.backup, self.db, self.target_db, self.confirm = backup or 'latest', db, target_db, confirm
        self.keep_old, self.jobs, self.mode = keep_old, jobs, mode
        self.target_time, self.target_xid, self.target_lsn = target_time, target_xid, target_lsn
        self.target_name, self.target = target_name, target
        self.scratch_dir, self.scratch_port, self.recovery_timeout = scratch_dir, scratch_port, recovery_timeout
        self.pgdata, self.pg_service, self.service_control = pgdata, pg_service, service_control
        self.pg_os_user, self.delta = pg_os_user, bool(delta)

    @property
    def pitr(self):
        """A point-in-time recovery: a target is given, or the whole cluster is recovered."""
        return self.mode == CLUSTER or any(getattr(self, name) for name in PITR_TARGETS)

    def targets(self):
        return dict((name, getattr(self, name)) for name in PITR_TARGETS)


class Outcome(object):
    def __init__(self, restore, msg, warnings=None):
        self.restore, self.msg, self.warnings = restore, msg, list(warnings or [])


def _refuse_existing(db, relations):
    raise logical_restore.RestoreError(
        'database %s exists and is not empty (%d relations): to replace it, set confirm: %s (the old one is kept '
        'renamed unless keep_old is false)' % (db, relations, db))


class LogicalRestore(object):
    """A logical backup (local or in S3) into ``target_db``; an existing database only with confirm."""

    def __init__(self, request, conn, repo, keys, s3=None, log=None):
        self.request, self.conn, self.repo, self.keys, self.s3, self.log = request, conn, repo, keys, s3, log
        self.backup = None
        self.existing = None

    def prepare(self):
        r = self.request
        logical_restore.validate_dbname(r.target_db)
        self.backup = logical_restore.resolve_backup(self.repo, r.backup, database=r.db, s3=self.s3)
        self.existing = logical_restore.database_state(self.conn, r.target_db, log=self.log)
        if self.existing and r.confirm != r.target_db:
            _refuse_existing(r.target_db, self.existing)

    def plan(self):
        return dict(backup=self.backup['name'], target_db=self.request.target_db,
                    replaced_existing=self.existing is not None, fetch_from_s3=self.backup.get('location') == 's3')

    def would(self):
        return 'would restore %s into %s' % (self.backup['name'], self.request.target_db)

    @progress.reported('restore', lambda run: 'restore of %s into %s' % (run.backup['name'], run.request.target_db))
    def run(self):
        r, meta = self.request, self.backup
        try:
            self.repo.ensure()
            with self.repo.lock('restore-%s' % r.target_db):
                if meta.get('location') == 's3':
                    progress.report('downloading from S3')
                    meta['path'] = self.s3.download_backup(self.repo.root, meta)
                    meta['location'] = 'both'
                progress.report('loading')
                outcome = logical_restore.restore(self.conn, meta, r.target_db, confirm=r.confirm, keep_old=r.keep_old,
                                                  jobs=r.jobs, log=self.log, keys=self.keys)
        except OSError as exc:
            raise RestoreFailed('restore failed: %s (is the repository readable and the disk not full?)' % exc)
        return Outcome(outcome, 'restored %s into %s: %d rows in %d tables, matching the backup' % (
            meta['name'], r.target_db, outcome['row_total'], len(outcome['table_rows'])))


class PointInTimeRecovery(object):
    """A base backup and the archived WAL up to a target: into ``target_db`` through a scratch cluster
    (mode database), or as the live cluster (mode cluster, the old data directory kept renamed)."""

    def __init__(self, request, connect, bindir, repo, keys, s3=None, s3_settings=None, log=None):
        """``connect(db)``: a pgclient.Connection to ``db`` with the module's login options."""
        self.request, self.connect, self.bindir, self.repo = request, connect, bindir, repo
        self.keys, self.s3, self.s3_settings, self.log = keys, s3, s3_settings, log
        self.backup = self.cluster = self.conn = None
        self.target_settings = self.description = None

    def prepare(self):
        r = self.request
        self.target_settings, self.description, when = pitr.build_target(r.targets())
        bases = repository.with_s3(self.repo.scan('base')[0], self.s3, 'base')
        self.backup = pitr.choose_base(bases, backup=r.backup, when=when, target_lsn=r.target_lsn)
        if self.backup.get('location') == 's3':
            self.backup['restored_bytes'] = self.s3.manifest_size(self.backup)
        if when is not None:
            pitr.check_archive_reaches(self.repo.root, when, wals3.s3_archive(self.s3_settings))
        if r.mode == DATABASE:
            logical_restore.validate_dbname(r.target_db)
            self.conn = self.connect(r.target_db)
            state = logical_restore.database_state(self.conn, r.target_db, log=self.log)
            if state and r.confirm != r.target_db:
                _refuse_existing(r.target_db, state)
            return
        self.cluster = cluster_recovery.ClusterRecovery(
            self.connect('postgres'), r.pgdata, self.bindir, r.pg_os_user, unit=r.pg_service,
            method=r.service_control, timeout_s=r.recovery_timeout, log=self.log)
        if r.delta:
            self._prepare_delta()
            return
        if os.path.abspath((r.confirm or '').rstrip('/') or '.') != self.cluster.pgdata:
            raise pitr.PitrError('mode=cluster replaces the live data directory %s (it is kept renamed, never '
                                 'deleted): to go ahead, set confirm: %s' % (self.cluster.pgdata, self.cluster.pgdata))
        problems = self.cluster.precheck(self.backup)
        if problems:
            raise pitr.PitrError('cannot replace the data directory %s: %s. Nothing was changed: the server was '
                                 'not stopped' % (self.cluster.pgdata, '; '.join(problems)))

    def _prepare_delta(self):
        pgdata = self.cluster.pgdata
        if os.path.abspath((self.request.confirm or '').rstrip('/') or '.') != pgdata:
            raise pitr.PitrError('mode=cluster delta=true rewrites the data directory %s in place: files that differ '
                                 'from the base backup are overwritten and files it does not have are deleted, and '
                                 'no old directory is kept to roll back to. To go ahead, set confirm: %s'
                                 % (pgdata, pgdata))
        refusal = cluster_recovery.running_refusal(pgdata, self.cluster.control, self.cluster.layout['running'])
        if refusal:
            raise pitr.PitrError(refusal)
        problems = cluster_recovery.precheck_delta(self.cluster.layout, self.cluster.control, self.request.pg_os_user,
                                                   self.backup)
        if problems:
            raise pitr.PitrError('cannot restore %s in place: %s. Nothing was changed' % (pgdata, '; '.join(problems)))

    def _planned(self):
        return dict(base_backup=self.backup['name'], target=self.description, mode=self.request.mode)

    def plan(self):
        restore = dict(recovery=self._planned(), target_db=self.request.target_db)
        if self.cluster is not None:
            restore['cluster'] = self.cluster.plan()
            restore['cluster']['delta'] = self.request.delta
            if self.request.delta:
                restore['cluster']['delta_in_progress'] = delta.in_progress(self.cluster.pgdata)
        return restore

    def would(self):
        return 'would recover to %s from %s (%s mode%s%s)' % (
            self.description, self.backup['name'], self.request.mode,
            ', delta: in place, no old directory kept' if self.request.delta else '',
            (', ' + self.cluster.describe()) if self.cluster is not None else '')

    @progress.reported('restore', lambda run: 'point-in-time recovery from %s' % run.backup['name'])
    def run(self):
        r, base, started = self.request, self.backup, time.time()
        warnings = []
        try:
            self.repo.ensure()
            progress.report('starting', target=self.description)
            if base.get('location') == 's3':
                self._fetch_base(base)
            if r.mode == DATABASE:
                reached, outcome = self._into_database()
            else:
                try:
                    run = self.cluster.run_delta if r.delta else self.cluster.run
                    reached = run(base, self.repo.root, self.target_settings, s3_settings=self.s3_settings,
                                  keys=self.keys)
                except cluster_recovery.ClusterRecoveryError as exc:
                    raise RestoreFailed(cluster_recovery.failure_message(str(exc), exc.state,
                                                                         self.cluster.control.describe()),
                                        rollback=exc.state)
                if reached.get('warning'):
                    warnings.append(reached.pop('warning'))
                outcome = {'target_db': None, 'old_pgdata': reached.pop('old_pgdata', None),
                           'cluster': self.cluster.plan()}
                if r.delta:
                    outcome['delta'] = reached.pop('delta')
        except OSError as exc:
            raise RestoreFailed('point-in-time recovery failed: %s' % exc)
        finally:
            if base.get('stream') is not None:
                base.pop('stream').close()
        reached.update(self._planned())
        outcome['recovery'] = reached
        outcome['duration_s'] = round(time.time() - started, 3)
        where = (' into database %s' % r.target_db) if r.mode == DATABASE else \
            (' as the live cluster %s' % self.cluster.pgdata)
        if r.mode == CLUSTER and r.delta:
            d = outcome['delta']
            where += (' (delta, in place: %d files reused, %d written with %s, %d removed)'
                      % (d['reused_files'], d['written_files'], cluster_recovery._human(d['written_bytes']),
                         d['removed_files']))
        return Outcome(outcome, 'recovered to %s from %s%s' % (self.description, base['name'], where), warnings)

    def _fetch_base(self, base):
        """A base backup in S3 is unpacked as it is read, checked against its checksum at the end (before the
        recovered server starts); it is downloaded whole first only for a delta, which changes the data
        directory as it reads and so must start from a verified copy, or when the archive is read by a program
        from a file (lz4)."""
        if not self.request.delta:
            stream = self.s3.stream_backup(self.repo.root, base, 'base', scratch.stream_archive)
            if stream is not None:
                base['stream'], base['path'] = stream, stream.path
                progress.report('unpacking the base backup as it is read from S3')
                return
        progress.report('downloading the base backup from S3')
        base['path'] = self.s3.download_backup(self.repo.root, base, kind_dir='base')

    def _into_database(self):
        r = self.request
        with self.repo.lock('restore-%s' % r.target_db):
            workdir = pitr.scratch_workdir(r.scratch_dir or self.repo.path('restore-tests'), r.pg_os_user)
            recovery = pitr.ScratchRecovery(self.bindir, workdir, r.pg_os_user, port=r.scratch_port)
            try:
                reached = recovery.recover(self.backup, self.repo.root, self.target_settings,
                                           s3_settings=self.s3_settings, timeout_s=r.recovery_timeout, log=self.log,
                                           keys=self.keys)
                reached['last_replayed_transaction'] = recovery.query('SELECT pg_last_xact_replay_timestamp()')[0][0]
                outcome = pitr.copy_database(recovery, r.db or 'modulodb', self.conn, r.target_db, r.confirm,
                                             r.keep_old, r.jobs, workdir, log=self.log)
            finally:
                recovery.close()
        return reached, outcome
