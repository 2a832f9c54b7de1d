# -*- coding: utf-8 -*-
"""audit: one JSON line per operation, 0600, never a secret, never hiding the operation's result."""

import json
import os
import stat
import threading

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import audit


class Exited(Exception):
    pass


class ModuleStandIn(object):
    """The three AnsibleModule methods bind() wraps, recording instead of exiting the process."""

    def __init__(self, check_mode=False):
        self.check_mode = check_mode
        self.warnings = []
        self.exited = None

    def exit_json(self, **kwargs):
        self.exited = ('exit', kwargs)
        raise Exited()

    def fail_json(self, msg, **kwargs):
        self.exited = ('fail', dict(kwargs, msg=msg))
        raise Exited()

    def warn(self, text):
        self.warnings.append(text)


def lines(repo):
    with open(repo.path('logs', audit.AUDIT_FILE)) as handle:
        return [json.loads(line) for line in handle]


def test_a_successful_and_a_failed_operation(repo):
    module = ModuleStandIn()
    audit.bind(module, repo.root, 'backup', 'modulodb', db_user='backup', details={'type': 'logical'})
    with pytest.raises(Exited):
        module.exit_json(changed=True, backup={'path': '/x/modulo_full_20261124_020000.sql.gz',
                                               'meta': {'name': 'modulo_full_20261124_020000'}},
                         login_password='never-in-the-log')
    assert module.exited[0] == 'exit' and module.exited[1]['changed'] is True  # the result itself is untouched
    module = ModuleStandIn()
    audit.bind(module, repo.root, 'restore', lambda result: result.get('target_db') or 'unknown')
    with pytest.raises(Exited):
        module.fail_json(msg='target database modulodb exists: set confirm=modulodb', target_db='modulodb')
    first, second = lines(repo)
    assert first['operation'] == 'backup' and first['result'] == 'success' and first['target'] == 'modulodb'
    assert first['backup'] == 'modulo_full_20261124_020000' and first['type'] == 'logical'
    assert first['db_user'] == 'backup' and first['os_user'] and first['host'] and first['duration_s'] >= 0
    assert second['operation'] == 'restore' and second['result'] == 'failed' and 'set confirm' in second['error']
    assert second['target'] == 'modulodb'
    with open(repo.path('logs', audit.AUDIT_FILE)) as handle:
        assert 'never-in-the-log' not in handle.read()
    assert stat.S_IMODE(os.stat(repo.path('logs', audit.AUDIT_FILE)).st_mode) == 0o600


def test_check_mode_is_not_audited(repo):
    module = ModuleStandIn(check_mode=True)
    audit.bind(module, repo.root, 'retention', repo.root)
    with pytest.raises(Exited):
        module.exit_json(changed=True, deleted=[{'relpath': 'full/x'}])
    assert not os.path.exists(repo.path('logs', audit.AUDIT_FILE))


def test_retention_lists_what_it_deleted(repo):
    module = ModuleStandIn()
    audit.bind(module, repo.root, 'retention', repo.root)
    with pytest.raises(Exited):
        module.exit_json(changed=True, deleted=[{'relpath': 'full/a.meta'}, {'relpath': 'full/a.sql.gz'}],
                         freed_bytes=123)
    record = lines(repo)[0]
    assert record['deleted'] == 2 and record['deleted_paths'] == ['full/a.meta', 'full/a.sql.gz']
    assert record['freed_bytes'] == 123


def test_an_unwritable_log_is_a_warning_not_a_lost_result(repo):
    os.makedirs(repo.path('logs', audit.AUDIT_FILE))  # a directory where the file should be
    module = ModuleStandIn()
    audit.bind(module, repo.root, 'backup', 'modulodb')
    with pytest.raises(Exited):
        module.exit_json(changed=True)
    assert module.exited[0] == 'exit'
    assert module.warnings and 'audit line could not be written' in module.warnings[0]


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
