# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The WAL archive command from this checkout, without installing it (tests, and by hand): the package
plugins/module_utils/wal imported the way the installed launcher imports it, with options instead of
generated settings (``python3 tools/pgbackup_wal.py push --repo DIR %p %f``; ``--help`` for the rest)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), 'plugins', 'module_utils'))
from wal.cli import main  # noqa: E402  # pylint: disable=wrong-import-position

sys.exit(main(sys.argv[1:]))
