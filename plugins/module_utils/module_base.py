# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every modulo.pgbackup module shares, in one AnsibleModule subclass.

- ``command_log``: the external commands run, returned as ``executed_commands`` (``result`` holds it from the
  start, so even an early failure returns the commands run so far);
- ``audit(...)``: from then on the run's exit_json or fail_json appends its audit line first (check mode
  is never audited); a failure to write the line is a warning, never a lost result;
- ``fail(msg)``: fail_json with the result built so far;
- ``errors_fail(prefix)``: a context in which any error the collection raises (``errors.PgBackupError``,
  and the wal package's, which cannot share that base) becomes ``fail(prefix + message)``.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import contextlib

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.modulo.pgbackup.plugins.module_utils import audit, errors
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import CommandLog

EXPLAINED_ERRORS = errors.EXPLAINED_ERRORS


class PgBackupModule(AnsibleModule):

    def __init__(self, *args, **kwargs):
        # Before AnsibleModule's own __init__, which fails the run itself on an invalid argument.
        self.command_log = CommandLog()
        self.result = {'changed': False, 'executed_commands': self.command_log.commands}
        self._auditor = None
        super(PgBackupModule, self).__init__(*args, **kwargs)

    def audit(self, backup_root, operation, target, db_user=None, details=None):
        """Audit this run (see audit.Auditor); nothing in check mode or without a repository."""
        if not self.check_mode and backup_root:
            self._auditor = audit.Auditor(backup_root, operation, target, db_user=db_user, details=details)

    def _audit_once(self, ok, result):
        auditor, self._auditor = self._auditor, None
        if auditor is not None:
            warning = auditor.record(ok, result)
            if warning:
                self.warn(warning)

    def exit_json(self, **kwargs):
        self._audit_once(True, kwargs)
        super(PgBackupModule, self).exit_json(**kwargs)

    def fail_json(self, msg, **kwargs):
        self._audit_once(False, dict(kwargs, msg=msg))
        super(PgBackupModule, self).fail_json(msg=msg, **kwargs)

    def fail(self, msg, **extra):
        """fail_json with the result built so far (``extra`` added to it)."""
        self.fail_json(msg=msg, **dict(self.result, **extra))

    @contextlib.contextmanager
    def errors_fail(self, prefix=''):
        try:
            yield
        except EXPLAINED_ERRORS as exc:
            self.fail(prefix + str(exc))
