# -*- coding: utf-8 -*-
"""backup_restore refuses unsafe or ambiguous requests before it connects or writes anything."""

import os

from ansible_collections.modulo.pgbackup.plugins.modules import backup_restore


def test_a_target_name_that_needs_quoting_is_refused(tmp_path, run_module):
    code, result = run_module(backup_restore, dict(backup_root=str(tmp_path), target_db='modulo"; DROP'))
    assert code == 1
    assert result['msg'].startswith('target_db \'modulo"; DROP\' is not accepted: use letters, digits')
    assert not os.listdir(str(tmp_path))


def test_database_mode_needs_a_target_database(tmp_path, run_module):
    code, result = run_module(backup_restore, dict(backup_root=str(tmp_path)))
    assert code == 1
    assert result['msg'] == 'mode is database but all of the following are missing: target_db'


def test_two_recovery_targets_are_refused(tmp_path, run_module):
    code, result = run_module(backup_restore, dict(backup_root=str(tmp_path), target_db='modulodb_recovery',
                                                   target_time='2026-11-24T14:30:00', target_xid='1234'))
    assert code == 1
    assert result['msg'] == 'parameters are mutually exclusive: target_time|target_xid|target_lsn|target_name|target'


def test_a_repository_without_backups_says_so(tmp_path, run_module):
    os.makedirs(str(tmp_path / 'repo' / 'full'))
    code, result = run_module(backup_restore, dict(backup_root=str(tmp_path / 'repo'), target_db='modulodb_test',
                                                   s3_bucket='', login_host='127.0.0.1', port=1), check_mode=True)
    assert code == 1
    assert result['changed'] is False
    assert result['msg'] == ('no complete logical backup found in %s: run playbooks/nightly-backup.yml first or '
                             'give backup: <name|path>' % (tmp_path / 'repo' / 'full'))
