# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The audit log: one JSON line per operation in ``<backup_root>/logs/audit.log``.

Every backup, restore, PITR, drill, verification, retention run and WAL
archiving change appends who ran it, where, what, on which target, the result
and how long it took.  The line is built from a fixed list of fields, never
from the module's parameters, so no password or key can reach it.

Lines are written with a single ``write`` on a file opened with ``O_APPEND``:
POSIX appends of one write are not interleaved, so concurrent runs never mix
their lines.  The file is 0600 and belongs to the repository's owner, like
everything in the repository.  A failure to write the audit line never hides
the operation's own result: it is returned as a warning.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import socket
import time

from ansible_collections.modulo.pgbackup.plugins.module_utils import fsutil, osuser, repository

AUDIT_FILE = repository.AUDIT_FILE
# Result keys copied into the line when a module returns them; all are names or counts, never secrets.
RESULT_FIELDS = ('backup', 'target_db', 'mode', 'kind', 'status', 'report_path', 'restart_required',
                 'freed_bytes', 'recovered_to', 'encryption_key_id')


def who():
    """The OS user, the user behind sudo/su when known, and the AWX job when there is one."""
    actor = {'os_user': osuser.current_user()}
    for key, env in (('sudo_user', 'SUDO_USER'), ('awx_job_id', 'JOB_ID'), ('awx_user', 'AWX_USER_NAME'),
                     ('operator', 'MODULO_PGBACKUP_OPERATOR')):
        if os.environ.get(env):
            actor[key] = os.environ[env]
    return actor


def _summary(result):
    out = {}
    for key in RESULT_FIELDS:
        value = result.get(key)
        if value is None:
            continue
        if key == 'backup' and isinstance(value, dict):
            meta = value.get('meta') or value
            if meta.get('encryption_key_id'):
                out['encryption_key_id'] = meta['encryption_key_id']
            path = value.get('path')
            value = meta.get('name') or value.get('name') or (os.path.basename(path) if path else None)
        if key == 'status' and isinstance(value, dict):
            continue
        out[key] = value
    if isinstance(result.get('deleted'), list):
        out['deleted'] = len(result['deleted'])
        out['deleted_paths'] = [d.get('relpath') or d.get('path') for d in result['deleted']][:200]
    report = result.get('report')
    if isinstance(report, dict) and report.get('status'):
        out['status'] = report['status']
    return out


def line(operation, target, ok, started, result=None, error=None, db_user=None, details=None):
    """The audit record of one operation, as a dict."""
    record = {
        'ts': repository.iso(repository.utcnow()), 'host': socket.gethostname(), 'operation': operation,
        'target': target, 'result': 'success' if ok else 'failed',
        'duration_s': round(time.time() - started, 3),
    }
    record.update(who())
    if db_user:
        record['db_user'] = db_user
    record.update((k, v) for k, v in (details or {}).items() if v is not None)
    if result:
        record.update(_summary(result))
    if error:
        record['error'] = str(error)[:2000]
    return record


def append(repo, record):
    """Append one line; returns None or a warning text when it could not be written."""
    if not os.path.isdir(repo.path('logs')):
        return None  # no repository yet (e.g. refused before creating it): nothing to audit into
    path = repo.path('logs', AUDIT_FILE)
    data = (json.dumps(record, sort_keys=True) + '\n').encode('utf-8')
    try:
        fresh = not os.path.exists(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, fsutil.FILE_MODE)
        try:
            if fresh:
                fsutil.inherit_owner(path)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return 'the audit line could not be written to %s: %s' % (path, exc.strerror or exc)
    return None


class Auditor(object):
    """The audit of one module run: ``record`` is called by the module's exit_json or fail_json
    (module_base.PgBackupModule), once, with the result about to be returned.

    ``target`` may be a callable of the result, for targets only known at the end (the backup picked
    as latest).
    """

    def __init__(self, backup_root, operation, target, db_user=None, details=None):
        self.backup_root = backup_root
        self.operation = operation
        self.target = target
        self.db_user = db_user
        self.details = details
        self.started = time.time()

    def record(self, ok, result):
        """Append the line; returns None or a warning for the module to give (never an exception)."""
        try:
            repo = repository.Repository(self.backup_root)
            name = self.target(result) if callable(self.target) else self.target
            return append(repo, line(self.operation, name, ok, self.started, result=result,
                                     error=None if ok else result.get('msg'), db_user=self.db_user,
                                     details=self.details))
        except (repository.RepositoryError, OSError, ValueError) as exc:
            return 'audit log not written: %s' % exc
