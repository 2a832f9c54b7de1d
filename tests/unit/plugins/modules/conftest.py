# -*- coding: utf-8 -*-
"""Run a module's main() in-process, the way ansible-test's unit tests do on ansible-core 2.19.

The arguments go in through ``patch_module_args``; the module's real ``exit_json``/``fail_json``
print the JSON result and exit, and the fixture returns ``(exit code, result)``.
"""

import gzip
import hashlib
import json
import os

import pytest

from ansible.module_utils.testing import patch_module_args

PG_BINDIR = '/usr/lib/postgresql/15/bin'


@pytest.fixture
def run_module(capsys):
    def run(module, args, check_mode=False):
        args = dict(args)
        if check_mode:
            args['_ansible_check_mode'] = True
        with patch_module_args(args):
            with pytest.raises(SystemExit) as exited:
                module.main()
        out = capsys.readouterr().out
        return exited.value.code, json.loads(out)
    return run


@pytest.fixture
def make_backup(tmp_path):
    """A real gzip'ed plain dump with a truthful .meta (sha256, size), named like pg_backup names it."""
    root = str(tmp_path / 'repo')

    def make(stamp, sql=b'SELECT 1;\n', database='modulodb'):
        full = os.path.join(root, 'full')
        os.makedirs(full, mode=0o700, exist_ok=True)
        name = 'modulo_full_%s' % stamp
        path = os.path.join(full, name + '.sql.gz')
        with gzip.open(path, 'wb') as handle:
            handle.write(sql)
        with open(path, 'rb') as handle:
            data = handle.read()
        iso = '%s-%s-%sT%s:%s:%sZ' % (stamp[0:4], stamp[4:6], stamp[6:8], stamp[9:11], stamp[11:13], stamp[13:15])
        meta = {
            'format_version': 1, 'name': name, 'file': name + '.sql.gz', 'type': 'logical',
            'database': database, 'format': 'plain', 'compression': 'gzip', 'started_at': iso,
            'finished_at': iso, 'duration_s': 1.0, 'size_bytes': len(data),
            'sha256': hashlib.sha256(data).hexdigest(), 'server_version': '15.8',
            'system_identifier': '7000000000000000001', 'status': 'complete', 'table_rows': {'public.t': 1},
        }
        with open(os.path.join(full, name + '.meta'), 'w') as handle:
            json.dump(meta, handle)
        return path
    make.root = root
    return make
