# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verify a live database (runbook step 4 "Verify Restore": ``restore-script.sh verify modulodb``).

Verification only reads: every session it opens has
``default_transaction_read_only=on``, ``pg_amcheck`` runs only when the
``amcheck`` extension is already installed (it is never installed here: that
is a change to production a DBA decides on), and row counts are read in one
read-only snapshot.

Row counts are compared with a backup's ``.meta``.  A live database keeps
changing after its backup, so a difference is a warning, not a failure, unless
``expect_exact_rows`` says the database was just restored from that backup.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import socket
import subprocess
import time

from ansible_collections.modulo.pgbackup.plugins.module_utils import drill, fsutil, logical_restore, repository
from ansible_collections.modulo.pgbackup.plugins.module_utils.logical_backup import database_rows
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import PgError, psql_query

DEFAULT_DB = 'modulodb'


def add_check(report, name, passed, detail, level='error', **extra):
    """A check; ``level`` ``warning`` or ``skipped`` never fails the verification."""
    return drill.add_check(report, name, passed, detail, level=level, **extra)


def failed_checks(report):
    return [c['name'] for c in report['checks'] if not c['passed'] and c.get('level', 'error') == 'error']


def finish_report(report, finished=None):
    report['finished_at'] = repository.iso(finished or repository.utcnow())
    ok = bool(report['checks']) and not failed_checks(report) and not report.get('error')
    report['status'] = 'passed' if ok else 'failed'
    report['warnings'] = [c['name'] for c in report['checks'] if c.get('level') == 'warning' and not c['passed']]
    return report


def report_name(db, started):
    return repository.report_name(repository.VERIFY_REPORT, started, subject=db)


def write_report(repo, report):
    """Write ``logs/verify_<db>_YYYYMMDD_HHMMSS.json``; a second run in the same second gets a suffix."""
    directory = repo.path('logs')
    fsutil.ensure_dir(directory)
    base = report_name(report['database'], repository.parse_iso(report['started_at']))[:-5]
    name, serial = base + '.json', 1
    while os.path.lexists(os.path.join(directory, name)):
        serial += 1
        name = '%s_%d.json' % (base, serial)
    path = os.path.join(directory, name)
    fsutil.write_json_atomic(path, report)
    return path


class Verify(object):
    """One verification of a live database; ``run`` records checks and never raises for a bad database."""

    def __init__(self, conn, repo, db=None, backup='latest', expect_exact_rows=False, smoke_queries=None, jobs=1,
                 s3=None, log=None, now=None):
        """``conn``: a pgclient.ReadOnlyConnection to ``db`` (verify never writes to the live database)."""
        self.repo = repo
        self.s3 = s3
        self.log = log
        self.started = now or repository.utcnow()
        self.db = db or DEFAULT_DB
        self.conn = conn
        self.backup = backup or 'latest'
        self.expect_exact_rows = bool(expect_exact_rows)
        self.smoke_queries = list(smoke_queries or [])
        self.jobs = max(1, int(jobs or 1))
        self.report = {
            'report': 'verify', 'status': 'running', 'database': self.db, 'host': socket.gethostname(),
            'started_at': repository.iso(self.started), 'finished_at': None, 'backup': None,
            'server_version': None, 'checks': [], 'timings': {}, 'error': None, 'warnings': [],
        }
        self.timings = self.report['timings']

    def query(self, sql, db=None):
        return psql_query(self.conn, sql, db=db or self.db, log=self.log)

    def connectivity(self):
        rows = self.query("SELECT 1, current_setting('server_version'), current_setting('server_version_num')")
        version = rows[0][1]
        self.report['server_version'] = version
        add_check(self.report, 'connectivity', rows[0][0] == '1', 'connected to %s, PostgreSQL %s'
                  % (self.conn.describe(self.db), version), server_version_num=int(rows[0][2]))

    def amcheck(self):
        installed = self.query("SELECT extversion FROM pg_extension WHERE extname = 'amcheck'")
        if not installed:
            add_check(self.report, 'amcheck', False, 'skipped: the amcheck extension is not installed in %s, and '
                      'verify installs nothing on a live database; CREATE EXTENSION amcheck in %s enables this '
                      'check' % (self.db, self.db), level='skipped')
            return
        # No --install-missing: the extension is already there, and nothing may be created here.
        argv = self.conn.command('pg_amcheck', '--heapallindexed', '--no-password', '--jobs=%d' % self.jobs, self.db)
        if self.log is not None:
            self.log.add(argv)
        proc = subprocess.run(argv, env=self.conn.env(self.db), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              check=False)
        output = proc.stdout.decode('utf-8', 'replace').strip()
        if proc.returncode == 0:
            add_check(self.report, 'amcheck', True, 'pg_amcheck --heapallindexed: heap and btree indexes of %s '
                      'are consistent (amcheck %s)' % (self.db, installed[0][0]))
        else:
            add_check(self.report, 'amcheck', False, 'pg_amcheck on %s exited %d: %s'
                      % (self.db, proc.returncode, output[-1500:] or 'no output'))

    def select_backup(self):
        """The ``.meta`` to compare with, or None (with a skipped check) when there is none."""
        selector = self.backup
        try:
            if selector == 'latest':
                # The database's own newest complete backup: the one a restore of it would have used.
                return logical_restore.resolve_backup(self.repo, 'latest', database=self.db, s3=self.s3)
            return logical_restore.resolve_backup(self.repo, selector, s3=self.s3)
        except logical_restore.RestoreError as exc:
            if selector == 'latest':
                add_check(self.report, 'table_rows', False, 'skipped: no complete logical backup of %s to compare '
                          'row counts with (%s); give backup: <name> for the backup it was restored from'
                          % (self.db, exc), level='skipped')
                return None
            raise drill.DrillError('backup %s: %s' % (selector, exc), check='table_rows')

    def table_rows(self):
        meta = self.select_backup()
        if meta is None:
            return
        self.report['backup'] = drill.backup_summary(meta)
        live = database_rows(self.conn, self.db, log=self.log)
        diffs = logical_restore.compare_rows(meta.get('table_rows') or {}, live)
        exact = self.expect_exact_rows
        if not diffs:
            add_check(self.report, 'table_rows', True, '%d tables, %d rows, equal to the .meta of %s'
                      % (len(live), sum(live.values()), meta['name']), tables=len(live), rows=sum(live.values()))
            return
        detail = '%d table(s) differ from the .meta of %s: %s' % (
            len(diffs), meta['name'], ', '.join('%s backup %s live %s' % (d['table'], d['expected'], d['restored'])
                                                for d in diffs[:10]))
        differences = [{'table': d['table'], 'backup': d['expected'], 'live': d['restored']} for d in diffs]
        if exact:
            add_check(self.report, 'table_rows', False, detail + ' (expect_exact_rows: a restored copy must match)',
                      differences=differences)
        else:
            add_check(self.report, 'table_rows', False, detail + ' (a live database moves on after its backup)',
                      level='warning', differences=differences)

    def smoke(self):
        for index, query in enumerate(self.smoke_queries):
            name = 'smoke: %s' % (query.get('name') or '#%d' % (index + 1))
            try:
                drill.validate_smoke_query(query, index)
                rows = self.query(query['sql'], db=query.get('db') or self.db)
            except (drill.DrillError, PgError) as exc:
                add_check(self.report, name, False, 'smoke query failed: %s' % exc, sql=query.get('sql'))
                continue
            passed, detail = drill.evaluate_smoke(query, rows)
            add_check(self.report, name, passed, detail, sql=query['sql'])

    def _step(self, key, func):
        started = time.time()
        try:
            func()
        finally:
            self.timings[key] = round(time.time() - started, 3)

    def run(self):
        started = time.time()
        try:
            self._step('connectivity_s', self.connectivity)
            self._step('amcheck_s', self.amcheck)
            self._step('table_rows_s', self.table_rows)
            self._step('smoke_s', self.smoke)
        except drill.DrillError as exc:
            self._record_error(exc.check or 'verify', str(exc))
        except PgError as exc:
            self._record_error('connectivity' if not self.report['checks'] else 'verify', str(exc))
        except (logical_restore.RestoreError, repository.RepositoryError, OSError) as exc:
            self._record_error('verify', str(exc))
        except Exception as exc:  # noqa: BLE001  S3 listing and the unforeseen: the report is still written
            self._record_error('verify', 'verify failed: %s: %s' % (type(exc).__name__, exc))
        self.timings['total_s'] = round(time.time() - started, 3)
        return finish_report(self.report)

    def _record_error(self, check, message):
        self.report['error'] = message
        add_check(self.report, check, False, message)
