# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The monthly restore drill: restore a backup into a throwaway cluster and prove it works.

A drill never touches production: the backup is restored into a scratch
cluster on the drill host (own directory and port, a private Unix socket,
``listen_addresses=''``, ``archive_mode=off``) that is removed afterwards,
whatever happened.  Every step records a check; a step that breaks records a
failed check with the reason and the drill stops there.  The report is always
written, passed or failed, because a drill that fails silently is worse than
no drill.

Definitions used in the report:

* RTO measured = restore time + recovery time (loading the dump, or unpacking
  the base backup plus WAL replay until promotion): the time an on-call
  engineer would wait for a usable database.  Checksums and checks are timed
  separately.
* RPO measured = drill start - newest recoverable point.  The newest
  recoverable point is what the drill *proved*, not what file times suggest:
  for ``pitr`` the commit time of the last transaction WAL replay applied
  (``pg_last_xact_replay_timestamp``), never earlier than the end of the base
  backup; for ``physical`` the end of the base backup; for ``logical`` the
  dump's snapshot (its ``started_at``).  On an idle database this overstates
  the RPO (a false alarm, never a false pass).  Only a ``pitr`` drill can meet
  an RPO of an hour with nightly backups, so RPO decides the outcome only for
  ``pitr``; the other kinds report it for information.
* Scratch port "in use": something already listens on 127.0.0.1:<port> (a
  TCP bind fails) or another postmaster's socket ``.s.PGSQL.<port>`` exists in
  a standard socket directory.  The scratch cluster itself only listens on its
  private socket, but a second server on the same port number is confusing
  for everybody and is refused.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import datetime
import os
import shutil
import socket
import subprocess
import time

from ansible_collections.modulo.pgbackup.plugins.module_utils import (
    compression, encryption, errors, fsutil, logical_restore, osuser, pipeline, pitr, repository, scratch)
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import (
    Connection, PgError, quote_ident)

KINDS = ('logical', 'physical', 'pitr')
SOCKET_DIRS = ('/var/run/postgresql', '/run/postgresql', '/tmp')
DEFAULT_RTO_S = 1800
DEFAULT_RPO_S = 3600


class DrillError(errors.PgBackupError):
    """A drill step failed; ``check`` names the check it fails."""

    def __init__(self, message, check=None):
        super(DrillError, self).__init__(message)
        self.check = check


# -- small pure pieces (unit-tested) -----------------------------------------

def port_in_use(port, socket_dirs=SOCKET_DIRS):
    """True when a TCP listener holds 127.0.0.1:``port`` or a postmaster socket for it exists."""
    for directory in socket_dirs:
        if os.path.exists(os.path.join(directory, '.s.PGSQL.%d' % port)):
            return True
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(('127.0.0.1', port))
    except OSError:
        return True
    finally:
        sock.close()
    return False


def free_port(socket_dirs=SOCKET_DIRS, attempts=20):
    for _attempt in range(attempts):
        with socket.socket() as sock:
            sock.bind(('127.0.0.1', 0))
            port = sock.getsockname()[1]
        if not port_in_use(port, socket_dirs):
            return port
    raise DrillError('no free port found for the scratch cluster', check='scratch_cluster')


def _expected_text(value):
    """The text psql prints for ``value``: YAML gives ints and booleans, psql gives strings."""
    if isinstance(value, bool):
        return 't' if value else 'f'
    return str(value)


def validate_smoke_query(query, index=0):
    if not isinstance(query, dict) or not query.get('sql'):
        raise DrillError('smoke query #%d has no sql' % (index + 1), check='smoke_queries')
    if query.get('expect') is not None and (query.get('min_rows') is not None or query.get('max_rows') is not None):
        raise DrillError('smoke query %s: give either expect or min_rows/max_rows, not both'
                         % (query.get('name') or '#%d' % (index + 1)), check='smoke_queries')
    return query


def evaluate_smoke(query, rows):
    """(passed, detail) for the rows a smoke query returned."""
    count = len(rows)
    if query.get('expect') is not None:
        got = rows[0][0] if rows and rows[0] else None
        want = _expected_text(query['expect'])
        if got == want:
            return True, 'returned %r as expected' % got
        return False, 'returned %r, expected %r' % (got, want)
    problems = []
    if query.get('min_rows') is not None and count < int(query['min_rows']):
        problems.append('at least %d' % int(query['min_rows']))
    if query.get('max_rows') is not None and count > int(query['max_rows']):
        problems.append('at most %d' % int(query['max_rows']))
    if problems:
        return False, 'returned %d row(s), expected %s' % (count, ' and '.join(problems))
    return True, 'returned %d row(s)' % count


def measure_rto(restore_s, recovery_s, target_s=DEFAULT_RTO_S):
    measured = round((restore_s or 0.0) + (recovery_s or 0.0), 3)
    return {'target_s': target_s, 'measured_s': measured, 'passed': measured <= target_s,
            'restore_s': round(restore_s or 0.0, 3), 'recovery_s': round(recovery_s or 0.0, 3)}


def measure_rpo(drill_time, newest_point, target_s=DEFAULT_RPO_S, basis=None, enforced=True):
    """Age of the newest recoverable point at drill time; None measured when nothing was proven."""
    result = {'target_s': target_s, 'basis': basis, 'enforced': enforced,
              'newest_recoverable_point': repository.iso(newest_point) if newest_point else None}
    if newest_point is None:
        result.update(measured_s=None, passed=False)
        return result
    measured = max(0.0, round((drill_time - newest_point).total_seconds(), 3))
    result.update(measured_s=measured, passed=measured <= target_s)
    return result


def parse_pg_time(text):
    """A timestamptz as psql or the server log prints it (``2026-11-25 09:12:33.123+00``) as aware UTC."""
    if not text:
        return None
    value = text.strip().replace(' UTC', '+00:00')
    if value.endswith(('+00', '-00')) or (len(value) > 3 and value[-3] in '+-' and value[-2:].isdigit()):
        value += ':00'
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.astimezone(datetime.timezone.utc)


def new_report(kind, started, host=None):
    return {
        'report': 'restore_drill', 'status': 'running', 'kind': kind, 'host': host or socket.gethostname(),
        'started_at': repository.iso(started), 'finished_at': None, 'backup': None, 'checks': [],
        'timings': {}, 'rto': None, 'rpo': None, 'reached': None, 'error': None,
    }


def add_check(report, name, passed, detail, **extra):
    check = {'name': name, 'passed': bool(passed), 'detail': detail}
    check.update(extra)
    report['checks'].append(check)
    return check


def failed_checks(report):
    return [c['name'] for c in report['checks'] if not c['passed']]


def finish_report(report, finished=None):
    """Set ``status``: passed only with at least one check, none failed, RTO and enforced RPO met, no error."""
    report['finished_at'] = repository.iso(finished or repository.utcnow())
    ok = bool(report['checks']) and not failed_checks(report) and not report.get('error')
    report['status'] = 'passed' if ok else 'failed'
    return report


def backup_summary(meta):
    if not meta:
        return None
    return {'name': meta.get('name'), 'type': meta.get('type'), 'database': meta.get('database'),
            'format': meta.get('format'), 'compression': meta.get('compression'),
            'started_at': meta.get('started_at'), 'finished_at': meta.get('finished_at'),
            'size_bytes': meta.get('size_bytes'), 'sha256': meta.get('sha256'),
            'location': meta.get('location'), 'path': meta.get('path')}


def report_name(started, serial=1):
    return repository.report_name(repository.DRILL_REPORT, started, serial)


def write_report(repo, report, report_dir=None):
    """Write the report under ``restore-tests/`` and a copy under ``logs/``; returns both paths.

    The runbook looks for the newest drill in both places (``find restore-tests
    -name monthly_drill_*.json`` and the ``logs/`` listing), so both get a real
    file: a symlink would break when one directory is copied elsewhere.
    """
    report_dir = report_dir or repo.path('restore-tests')
    directories = [report_dir]
    if os.path.abspath(repo.path('logs')) != os.path.abspath(report_dir):
        directories.append(repo.path('logs'))
    for directory in directories:
        fsutil.ensure_dir(directory)
    name = report_name(repository.parse_iso(report['started_at']))
    # Two drills in the same second (a retry) keep both reports, under one name in both places.
    serial = 1
    while any(os.path.lexists(os.path.join(d, name)) for d in directories):
        serial += 1
        name = report_name(repository.parse_iso(report['started_at']), serial)
    paths = []
    for directory in directories:
        path = os.path.join(directory, name)
        fsutil.write_json_atomic(path, report)
        paths.append(path)
    return paths


def publish_report(repo, report, s3=None, report_dir=None):
    """Write the report (``write_report``) and copy it to the S3 mirror when there is one.

    Returns (paths, s3_uri, warning). A drill host apart from production keeps nothing the database host's
    health check could read, so the report goes to the mirror, where backup_info finds it; a failed copy is
    a warning that says how to finish by hand, never a lost report.
    """
    paths = write_report(repo, report, report_dir)
    if s3 is None:
        return paths, None, None
    try:
        return paths, s3.upload_file(paths[0], 'restore-tests/' + os.path.basename(paths[0])), None
    except (errors.PgBackupError, OSError) as exc:
        return paths, None, ('the drill report could not be copied to S3 (%s): health checks that read the '
                             'mirror will not see this drill; copy %s there by hand' % (exc, paths[0]))


# -- the scratch clusters -----------------------------------------------------

class ScratchCluster(scratch.PrivateCluster):
    """A brand-new empty cluster for loading a logical dump; always removed by ``close``."""

    def create(self, timeout_s=600, log=None):
        osuser.give_to(self.socket_dir, self.os_user)
        argv = osuser.run_as(self.os_user) + [
            os.path.join(self.bindir, 'initdb'), '-D', self.pgdata, '-U', 'postgres', '--auth=trust',
            '--encoding=UTF8', '--locale=C.UTF-8', '--no-sync']
        if log is not None:
            log.add(argv)
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False, cwd='/')
        if proc.returncode != 0:
            raise DrillError('initdb of the scratch cluster failed: %s'
                             % proc.stdout.decode('utf-8', 'replace').strip()[-600:], check='scratch_cluster')
        scratch.write_auto_conf(self.pgdata, scratch.private_settings(self.port, self.socket_dir), self.os_user)
        self.server.start(timeout_s)


# -- the drill ----------------------------------------------------------------

class Request(object):
    """What to drill and how, as typed values (the module's options)."""

    def __init__(self, kind='logical', backup='latest', db=None, scratch_dir=None, scratch_port=None,
                 smoke_queries=None, rto_target_s=DEFAULT_RTO_S, rpo_target_s=DEFAULT_RPO_S, jobs=2,
                 recovery_timeout=3600, pg_bindir=None, pg_os_user='postgres'):
        if kind not in KINDS:
            raise DrillError('kind must be one of %s, not %r' % (', '.join(KINDS), kind))
        self.kind = kind
        self.backup = backup or 'latest'
        self.db = db
        self.scratch_dir = scratch_dir
        self.scratch_port = scratch_port
        self.smoke_queries = list(smoke_queries or [])
        self.rto_target_s = DEFAULT_RTO_S if rto_target_s is None else rto_target_s
        self.rpo_target_s = DEFAULT_RPO_S if rpo_target_s is None else rpo_target_s
        self.jobs = max(1, int(jobs or 1))
        self.recovery_timeout = int(recovery_timeout or 3600)
        self.pg_bindir = pg_bindir
        self.pg_os_user = pg_os_user or 'postgres'


def _row_check_method(rows, recounted):
    if not recounted:
        return "counted by the server during the load"
    if len(recounted) == len(rows):
        return "count(*) of every table"
    return "counted during the load; count(*) of %d table(s)" % len(recounted)


class Drill(object):
    """One drill run.  ``run`` never raises for a failing backup: it records checks instead."""

    def __init__(self, request, repo, keys=None, s3=None, s3_settings=None, log=None, now=None):
        self.request = request
        self.repo = repo
        self.s3 = s3
        self.s3_settings = s3_settings
        self.log = log
        self.started = now or repository.utcnow()
        self.kind = request.kind
        self.report = new_report(self.kind, self.started)
        self.timings = self.report['timings']
        self.meta = None
        self.bindir = Connection(bindir=request.pg_bindir).bindir
        self.jobs = request.jobs
        self.os_user = request.pg_os_user
        self.cluster = None
        self.workdir = None
        self.keys = keys if keys is not None else encryption.Keys()

    @property
    def scratch_base(self):
        return self.request.scratch_dir or self.repo.path('restore-tests')

    # Selecting the backup -------------------------------------------------
    def select_backup(self):
        selector = self.request.backup
        try:
            if self.kind == 'logical':
                meta = logical_restore.resolve_backup(self.repo, selector, database=self.request.db, s3=self.s3)
            else:
                bases = repository.with_s3(self.repo.scan('base')[0], self.s3, 'base')
                meta = pitr.choose_base(bases, backup=selector)
        except (logical_restore.RestoreError, pitr.PitrError) as exc:
            raise DrillError('no backup to test: %s' % exc, check='backup_selected')
        self.meta = meta
        self.report['backup'] = backup_summary(meta)
        return meta

    def database(self):
        if self.kind == 'logical':
            return self.meta.get('database') or self.request.db or 'modulodb'
        return self.request.db or 'modulodb'

    def scratch_port(self):
        port = self.request.scratch_port
        if port:
            if port_in_use(port):
                raise DrillError('scratch port %d is in use (a listener on 127.0.0.1:%d or a PostgreSQL socket '
                                 '.s.PGSQL.%d exists): choose another scratch_port or leave it unset for a free one'
                                 % (port, port, port), check='scratch_port')
            return port
        return free_port()

    def plan(self):
        """What the drill would do (check mode)."""
        meta = self.select_backup()
        return {'kind': self.kind, 'backup': meta['name'], 'database': self.database(),
                'fetch_from_s3': meta.get('location') == 's3',
                'scratch_dir': self.scratch_base,
                'smoke_queries': [q.get('name') or q.get('sql') for q in self.request.smoke_queries]}

    # Steps ----------------------------------------------------------------------
    def _timed(self, key, func, *args):
        started = time.time()
        try:
            return func(*args)
        finally:
            self.timings[key] = round(self.timings.get(key, 0.0) + time.time() - started, 3)

    def fetch_and_checksum(self):
        meta = self.meta
        if meta.get('location') == 's3':
            kind_dir = 'full' if self.kind == 'logical' else 'base'
            try:
                meta['path'] = self._timed('fetch_s', self.s3.download_backup, self.repo.root, meta, kind_dir)
            except Exception as exc:  # noqa: BLE001  S3 errors and damaged copies alike fail the drill
                raise DrillError('fetching %s from S3 failed: %s' % (meta['name'], exc), check='checksum')
            meta['location'] = 'both'
            self.report['backup']['path'] = meta['path']
            self.report['backup']['fetched_from_s3'] = True
        if not meta.get('path') or not os.path.exists(meta['path']):
            raise DrillError('backup %s is listed but its data is missing at %s' % (meta['name'], meta.get('path')),
                             check='checksum')
        try:
            digest = self._timed('checksum_s', logical_restore.verify_checksum, meta)
        except logical_restore.RestoreError as exc:
            raise DrillError(str(exc), check='checksum')
        add_check(self.report, 'checksum', True, 'sha256 %s matches the .meta' % digest)

    def make_workdir(self):
        base = self.scratch_base
        try:
            self.workdir = pitr.scratch_workdir(base, self.os_user)
        except pitr.PitrError as exc:
            raise DrillError(str(exc), check='scratch_cluster')
        return self.workdir

    def restore_logical(self, port):
        db = self.database()
        logical_restore.validate_dbname(db, option='database')
        self.cluster = ScratchCluster(self.bindir, self.make_workdir(), self.os_user, port)
        started = time.time()
        try:
            self.cluster.create(log=self.log)
        except scratch.ScratchError as exc:
            raise DrillError('the scratch cluster did not start: %s' % exc, check='scratch_cluster')
        add_check(self.report, 'scratch_cluster', True, 'initdb and start on port %d (private socket %s, '
                  'archive_mode=off)' % (port, self.cluster.socket_dir))
        conn = self.cluster.conn(db)
        self._load_globals(conn)
        self.cluster.query('CREATE DATABASE %s TEMPLATE template0' % quote_ident(db), log=self.log)
        try:
            logical_restore.load(conn, self.meta, db, jobs=self.jobs, log=self.log, workdir=self.workdir,
                                 keys=self.keys)
        except logical_restore.RestoreError as exc:
            self.timings['restore_s'] = round(time.time() - started, 3)
            raise DrillError(str(exc), check='restore')
        self.timings['restore_s'] = round(time.time() - started, 3)
        self.timings['recovery_s'] = 0.0
        add_check(self.report, 'restore', True, 'loaded %s into database %s in %.1f s'
                  % (self.meta['name'], db, self.timings['restore_s']))
        checks_started = time.time()
        expected = self.meta.get('table_rows') or {}
        restored, recounted = logical_restore.loaded_rows(conn, db, expected, log=self.log)
        diffs = logical_restore.compare_rows(expected, restored)
        if diffs:
            add_check(self.report, 'table_rows', False, '%d table(s) differ from the .meta: %s'
                      % (len(diffs), ', '.join('%s expected %s restored %s' % (d['table'], d['expected'], d['restored'])
                                               for d in diffs[:10])), differences=diffs)
        else:
            add_check(self.report, 'table_rows', True, '%d tables, %d rows, equal to the .meta (%s)'
                      % (len(restored), sum(restored.values()), _row_check_method(restored, recounted)),
                      tables=len(restored), rows=sum(restored.values()), recounted=recounted)
        self.timings['checks_s'] = round(time.time() - checks_started, 3)
        self.report['rpo'] = measure_rpo(self.started, _meta_time(self.meta, 'started_at'),
                                         self.request.rpo_target_s,
                                         basis='snapshot of the logical dump (started_at)', enforced=False)

    def _load_globals(self, conn):
        """Roles the dump's objects belong to; a role that already exists is not an error here."""
        info = self.meta.get('globals') or {}
        path = os.path.join(os.path.dirname(self.meta['path']), info['file']) if info.get('file') else None
        if not path or not os.path.exists(path):
            return
        stages, stdin_path = compression.read_stages(path, self.keys)
        psql = conn.command('psql', '-X', '-q', '--no-password', '-o', '/dev/null', '-d', 'postgres')
        try:
            pipeline.run(stages + [psql], env=conn.env('postgres'), stdin_path=stdin_path, log=self.log)
        except pipeline.PipelineError as exc:
            if exc.stage != 'psql':
                raise DrillError('cannot read the roles of %s (%s): %s' % (self.meta['name'], info['file'], exc),
                                 check='restore')

    def restore_physical(self, port):
        self.cluster = pitr.ScratchRecovery(self.bindir, self.make_workdir(), self.os_user, port=port)
        marks = {'started': time.time()}

        def verify(pgdata):
            marks['extracted'] = time.time()
            self._verifybackup(pgdata)
            marks['verified'] = time.time()

        target = {'recovery_target': 'immediate'} if self.kind == 'physical' else {}
        try:
            outcome = self.cluster.recover(self.meta, self.repo.root, target, s3_settings=self.s3_settings,
                                           timeout_s=self.request.recovery_timeout, log=self.log,
                                           after_extract=verify, keys=self.keys)
        except (scratch.ScratchError, PgError, pipeline.PipelineError) as exc:
            self.timings['restore_s'] = round(marks.get('extracted', time.time()) - marks['started'], 3)
            if 'verified' in marks:
                self.timings['recovery_s'] = round(time.time() - marks['verified'], 3)
            raise DrillError('the restored cluster did not recover: %s' % exc,
                             check='restore' if 'extracted' not in marks else 'recovery')
        self.timings['restore_s'] = round(marks['extracted'] - marks['started'], 3)
        self.timings['recovery_s'] = outcome.get('recovery_s', 0.0)
        add_check(self.report, 'restore', True, 'unpacked %s into %s in %.1f s'
                  % (self.meta['name'], self.cluster.pgdata, self.timings['restore_s']))
        replay = self.cluster.query('SELECT pg_last_xact_replay_timestamp()')[0][0]
        reached = dict(outcome, last_replayed_transaction=replay)
        self.report['reached'] = reached
        what = ('consistent at the end of the base backup' if self.kind == 'physical'
                else 'replayed the archived WAL to %s' % (outcome.get('redo_done_at') or 'its end'))
        add_check(self.report, 'cluster_started' if self.kind == 'physical' else 'recovery', True,
                  'started and promoted on timeline %s, %s; last replayed transaction %s; recovery %.1f s'
                  % (outcome.get('timeline'), what, replay or 'none', self.timings['recovery_s']))
        base_end = _meta_time(self.meta, 'finished_at')
        if self.kind == 'pitr':
            replayed = parse_pg_time(replay)
            proven = [t for t in (replayed, base_end) if t is not None]
            newest = max(proven) if proven else None
            basis = 'last transaction replayed from the WAL archive (pg_last_xact_replay_timestamp)'
            self.report['rpo'] = measure_rpo(self.started, newest, self.request.rpo_target_s,
                                             basis=basis, enforced=True)
        else:
            self.report['rpo'] = measure_rpo(self.started, base_end, self.request.rpo_target_s,
                                             basis='end of the base backup (finished_at)', enforced=False)
        names = [r[0] for r in self.cluster.query('SELECT datname FROM pg_database WHERE NOT datistemplate')]
        if self.database() not in names:
            raise DrillError('database %s does not exist in the restored cluster (there: %s)'
                             % (self.database(), ', '.join(sorted(names))), check='database_present')

    def _verifybackup(self, pgdata):
        manifest = os.path.join(self.meta['path'], 'backup_manifest')
        if not os.path.exists(manifest) and encryption.is_encrypted(self.meta):
            # An encrypted base backup is one stream with the manifest inside: it was unpacked with the files.
            manifest = os.path.join(pgdata, 'backup_manifest')
        if not os.path.exists(manifest):
            raise DrillError('base backup %s has no backup_manifest: pg_verifybackup cannot check it'
                             % self.meta['name'], check='pg_verifybackup')
        # PostgreSQL 15's pg_verifybackup reads plain directories only: it checks the unpacked copy
        # before anything in it is changed, against the manifest kept with the backup.  The WAL is
        # not part of the base backup (it comes from the archive), so WAL parsing is skipped.
        argv = [os.path.join(self.bindir, 'pg_verifybackup'), '--no-parse-wal', '--manifest-path', manifest, pgdata]
        started = time.time()
        try:
            pipeline.run([argv], log=self.log)
        except pipeline.PipelineError as exc:
            self.timings['checks_s'] = round(self.timings.get('checks_s', 0.0) + time.time() - started, 3)
            raise DrillError('pg_verifybackup found problems in %s: %s' % (self.meta['name'], exc),
                             check='pg_verifybackup')
        self.timings['checks_s'] = round(self.timings.get('checks_s', 0.0) + time.time() - started, 3)
        add_check(self.report, 'pg_verifybackup', True, 'every file matches backup_manifest')

    def amcheck(self):
        db = self.database()
        conn = self.cluster.conn(db)
        # --install-missing creates the amcheck extension, in the scratch copy only.
        argv = conn.command('pg_amcheck', '--install-missing', '--heapallindexed', '--no-password',
                            '--jobs=%d' % self.jobs, db)
        if self.log is not None:
            self.log.add(argv)
        proc = subprocess.run(argv, env=conn.env(db), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        output = proc.stdout.decode('utf-8', 'replace').strip()
        if proc.returncode == 0:
            add_check(self.report, 'amcheck', True, 'pg_amcheck --heapallindexed: heap and btree indexes of %s '
                      'are consistent' % db)
        else:
            add_check(self.report, 'amcheck', False, 'pg_amcheck on %s exited %d: %s'
                      % (db, proc.returncode, output[-1500:] or 'no output'))

    def smoke(self):
        for index, query in enumerate(self.request.smoke_queries):
            name = 'smoke: %s' % (query.get('name') or '#%d' % (index + 1))
            try:
                validate_smoke_query(query, index)
                db = query.get('db') or self.database()
                rows = self.cluster.query(query['sql'], db=db)
            except (DrillError, PgError) as exc:
                add_check(self.report, name, False, 'smoke query failed: %s' % exc, sql=query.get('sql'))
                continue
            passed, detail = evaluate_smoke(query, rows)
            add_check(self.report, name, passed, detail, sql=query['sql'])

    def run(self):
        """Run every step; the scratch cluster is removed in every case."""
        started = time.time()
        try:
            if not self.meta:
                self.select_backup()
            port = self.scratch_port()
            self.report['scratch'] = {'port': port, 'dir': self.scratch_base}
            self.fetch_and_checksum()
            if self.kind == 'logical':
                self.restore_logical(port)
            else:
                self.restore_physical(port)
            checks_started = time.time()
            self.amcheck()
            self.smoke()
            self.timings['checks_s'] = round(self.timings.get('checks_s', 0.0) + time.time() - checks_started, 3)
        except DrillError as exc:
            self._record_error(exc.check or 'drill', str(exc))
        except (logical_restore.RestoreError, scratch.ScratchError, PgError, pitr.PitrError,
                pipeline.PipelineError, repository.RepositoryError) as exc:
            self._record_error('drill', str(exc))
        except OSError as exc:
            self._record_error('drill', 'drill failed: %s' % exc)
        except Exception as exc:  # noqa: BLE001  S3 listing and the unforeseen: the report is still written
            self._record_error('drill', 'drill failed: %s: %s' % (type(exc).__name__, exc))
        finally:
            self.cleanup()
        rto = measure_rto(self.timings.get('restore_s'), self.timings.get('recovery_s'),
                          self.request.rto_target_s)
        self.report['rto'] = rto
        if 'restore_s' in self.timings and not self.report.get('error'):
            add_check(self.report, 'rto', rto['passed'], 'restore + recovery took %.1f s, target %d s'
                      % (rto['measured_s'], rto['target_s']))
        rpo = self.report.get('rpo')
        if rpo and rpo.get('enforced') and not self.report.get('error'):
            add_check(self.report, 'rpo', rpo['passed'], 'newest recoverable point %s is %s s old, target %d s'
                      % (rpo['newest_recoverable_point'], rpo['measured_s'], rpo['target_s']))
        self.timings['total_s'] = round(time.time() - started, 3)
        return finish_report(self.report)

    def _record_error(self, check, message):
        self.report['error'] = message
        add_check(self.report, check, False, message)

    def cleanup(self):
        self.keys.close()
        removed = []
        if self.cluster is not None:
            try:
                self.cluster.close()
            finally:
                removed.append(self.cluster.workdir)
        elif self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            removed.append(self.workdir)
        self.report['scratch_removed'] = [p for p in removed if not os.path.exists(p)] == removed


def _meta_time(meta, field):
    try:
        return repository.parse_iso(meta[field])
    except (KeyError, TypeError, ValueError):
        return None
