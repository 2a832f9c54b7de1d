# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Saves the result of each task as JSON, for the test harness and the benchmark.

A play that registers a result and copies it to a file runs a second module,
which costs as much as a second of ansible-playbook's time: the benchmark must
not count it against the collection.  Enabled only by tests/conftest.py.
"""

from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: result_file
    type: aggregate
    short_description: write the last task result to the file named by MODULO_RESULT_FILE
    description:
      - Test harness only (tests/conftest.py); not part of the collection's plugins.
    requirements:
      - MODULO_RESULT_FILE in the environment
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'result_file'
    CALLBACK_NEEDS_ENABLED = True

    def _save(self, result, failed):
        path = os.environ.get('MODULO_RESULT_FILE')
        if not path:
            return
        data = dict(result.result)
        data['failed'] = failed   # as in a registered result
        tmp = path + '.tmp'
        with open(tmp, 'w') as handle:
            json.dump(data, handle, default=str)
        os.rename(tmp, path)

    def v2_runner_on_ok(self, result):
        self._save(result, False)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._save(result, True)
