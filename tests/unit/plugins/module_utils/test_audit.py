# -*- coding: utf-8 -*-
"""audit: one JSON line per operation, 0600, never a secret, never hiding the operation's result."""

import contextlib
import json
import os
import stat
import threading

import pytest

from ansible.module_utils.testing import patch_module_args

from ansible_collections.modulo.pgbackup.plugins.module_utils import audit, repository
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import errors as walerrors
from ansible_collections.modulo.pgbackup.plugins.module_utils.module_base import PgBackupModule


@contextlib.contextmanager
def real_module(check_mode=False):
    """A real PgBackupModule, as a module's main() makes it (exit_json and fail_json raise SystemExit)."""
    with patch_module_args({'_ansible_check_mode': True} if check_mode else {}):
        yield PgBackupModule(argument_spec={}, supports_check_mode=True)


def finish(capsys, method, *args, **result):
    """Exit ``method`` (a bound exit_json or fail_json) and return the JSON it printed."""
    with pytest.raises(SystemExit):
        method(*args, **result)
    return json.loads(capsys.readouterr().out)


def lines(repo):
    with open(repo.path('logs', audit.AUDIT_FILE)) as handle:
        return [json.loads(line) for line in handle]


def test_a_successful_and_a_failed_operation(repo, capsys):
    with real_module() as module:
        module.audit(repo.root, 'backup', 'modulodb', db_user='backup', details={'type': 'logical'})
        out = finish(capsys, module.exit_json, changed=True, login_password='never-in-the-log',
                     backup={'path': '/x/modulo_full_20261124_020000.sql.gz',
                             'meta': {'name': 'modulo_full_20261124_020000'}})
    assert out['changed'] is True and out['backup']['meta']['name'] == 'modulo_full_20261124_020000'
    with real_module() as module:
        module.audit(repo.root, 'restore', lambda result: result.get('target_db') or 'unknown')
        out = finish(capsys, module.fail_json, 'target database modulodb exists: set confirm=modulodb',
                     target_db='modulodb')
    assert out['failed'] is True and 'set confirm' in out['msg']
    first, second = lines(repo)
    assert first['operation'] == 'backup' and first['result'] == 'success' and first['target'] == 'modulodb'
    assert first['backup'] == 'modulo_full_20261124_020000' and first['type'] == 'logical'
    assert first['db_user'] == 'backup' and first['os_user'] and first['host'] and first['duration_s'] >= 0
    assert second['operation'] == 'restore' and second['result'] == 'failed' and 'set confirm' in second['error']
    assert second['target'] == 'modulodb'
    with open(repo.path('logs', audit.AUDIT_FILE)) as handle:
        assert 'never-in-the-log' not in handle.read()
    assert stat.S_IMODE(os.stat(repo.path('logs', audit.AUDIT_FILE)).st_mode) == 0o600


def test_check_mode_is_not_audited(repo, capsys):
    with real_module(check_mode=True) as module:
        module.audit(repo.root, 'retention', repo.root)
        finish(capsys, module.exit_json, changed=True, deleted=[{'relpath': 'full/x'}])
    assert not os.path.exists(repo.path('logs', audit.AUDIT_FILE))


def test_retention_lists_what_it_deleted(repo, capsys):
    with real_module() as module:
        module.audit(repo.root, 'retention', repo.root)
        finish(capsys, module.exit_json, changed=True, freed_bytes=123,
               deleted=[{'relpath': 'full/a.meta'}, {'relpath': 'full/a.sql.gz'}])
    record = lines(repo)[0]
    assert record['deleted'] == 2 and record['deleted_paths'] == ['full/a.meta', 'full/a.sql.gz']
    assert record['freed_bytes'] == 123


def test_an_unwritable_log_is_a_warning_not_a_lost_result(repo, capsys, monkeypatch):
    os.makedirs(repo.path('logs', audit.AUDIT_FILE))  # a directory where the file should be
    given = []
    with real_module() as module:
        # How Ansible then shows a warning depends on what else the process loaded (controller code
        # routes it differently): the test looks at the warning the module gives.
        monkeypatch.setattr(module, 'warn', given.append)
        module.audit(repo.root, 'backup', 'modulodb')
        out = finish(capsys, module.exit_json, changed=True)
    assert out['changed'] is True
    assert len(given) == 1 and 'audit line could not be written' in given[0]


def test_an_explained_error_fails_with_the_result_so_far_and_is_audited_once(repo, capsys):
    def fail_inside(module, error, prefix=''):
        with module.errors_fail(prefix):
            raise error

    with real_module() as module:
        module.audit(repo.root, 'backup', 'modulodb')
        module.command_log.add(['pg_dump', '--dbname=modulodb'])
        out = finish(capsys, fail_inside, module, repository.RepositoryError('backup_root /x is not writable'),
                     'backup failed: ')
    assert out['failed'] is True and out['msg'] == 'backup failed: backup_root /x is not writable'
    assert out['executed_commands'] == [['pg_dump', '--dbname=modulodb']]
    assert [r['result'] for r in lines(repo)] == ['failed']
    with real_module() as module:
        out = finish(capsys, fail_inside, module, walerrors.WalArchiveError('segment X differs from the archived one'))
    assert out['msg'] == 'segment X differs from the archived one'
    # anything else is a bug, not a message for the operator: it is not turned into a tidy failure
    with real_module() as module:
        with pytest.raises(KeyError):
            fail_inside(module, KeyError('x'))


def test_concurrent_appends_never_mix_lines(repo):
    def write(n):
        for i in range(50):
            audit.append(repo, audit.line('backup', 'db%d' % n, True, 0, result={'freed_bytes': i}))
    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = lines(repo)
    assert len(records) == 200 and set(r['target'] for r in records) == {'db0', 'db1', 'db2', 'db3'}


def test_who_names_the_operator(monkeypatch):
    monkeypatch.setenv('SUDO_USER', 'alice')
    monkeypatch.setenv('MODULO_PGBACKUP_OPERATOR', 'on-call: bob')
    actor = audit.who()
    assert actor['sudo_user'] == 'alice' and actor['operator'] == 'on-call: bob' and actor['os_user']
