# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one base of the errors the collection raises for a problem it can explain.

Every error class of module_utils derives from ``PgBackupError`` (walarchive's excepted: that file runs
alone on the database host and imports nothing of the collection), so a module catches one class and
turns its message, written for the operator, into ``fail_json``.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class PgBackupError(Exception):
    """A failure with a message that says what happened and what to do."""
