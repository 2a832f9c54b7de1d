# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The errors of the WAL archive command and the exit codes main() turns them into."""


EXIT_OK = 0
EXIT_FAIL = 1
EXIT_FATAL = 126


class WalArchiveError(Exception):
    """A push or fetch that must not report success; ``exit_code`` is what main() returns."""
    exit_code = EXIT_FAIL


class NotFound(WalArchiveError):
    pass


class Conflict(WalArchiveError):
    pass


class FatalError(WalArchiveError):
    exit_code = EXIT_FATAL


class S3Failure(WalArchiveError):
    pass
