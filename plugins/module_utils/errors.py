# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one base of the errors the collection raises for a problem it can explain.

Every error class of module_utils derives from ``PgBackupError`` (the wal package's excepted: it runs
alone on the database host and imports nothing of the collection), so a module catches one class and
turns its message, written for the operator, into ``fail_json``.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import errors as walerrors


class PgBackupError(Exception):
    """A failure with a message that says what happened and what to do."""


# The wal package runs alone on the database host and imports nothing of the collection, so its errors do not
# derive from PgBackupError; they are just as much written for the operator.
EXPLAINED_ERRORS = (PgBackupError, walerrors.WalArchiveError)
