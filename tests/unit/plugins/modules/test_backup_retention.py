# -*- coding: utf-8 -*-
"""backup_retention: check mode is an exact dry run on real files; bad policies are refused."""

import datetime
import os

from ansible_collections.modulo.pgbackup.plugins.modules import backup_retention


def days_ago(days):
    return (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=days)).strftime('%Y%m%d_%H%M%S')


def test_check_mode_lists_what_would_go_and_deletes_nothing(make_backup, run_module):
    old = make_backup(days_ago(10))
    new = make_backup(days_ago(1))
    code, result = run_module(backup_retention, dict(backup_root=make_backup.root, s3_bucket=''), check_mode=True)
    assert code == 0, result
    assert result['changed'] is True
    gone = sorted(os.path.basename(i['path']) for i in result['deleted'])
    assert gone == sorted([os.path.basename(old), os.path.basename(old)[:-len('.sql.gz')] + '.meta'])
    assert result['freed_bytes'] == sum(i['size_bytes'] for i in result['deleted']) > 0
    assert result['msg'].startswith('would delete 2 item(s)')
    assert os.path.exists(old) and os.path.exists(new)
    assert not os.path.exists(os.path.join(make_backup.root, 'logs'))   # no report in check mode


def test_the_newest_backup_stays_whatever_its_age(make_backup, run_module):
    only = make_backup(days_ago(30))
    code, result = run_module(backup_retention, dict(backup_root=make_backup.root, s3_bucket=''), check_mode=True)
    assert code == 0, result
    assert result['deleted'] == [] and result['changed'] is False
    assert os.path.exists(only)


def test_a_missing_repository_is_an_error_not_a_silent_success(tmp_path, run_module):
    code, result = run_module(backup_retention, dict(backup_root=str(tmp_path / 'typo'), s3_bucket=''))
    assert code == 1
    assert 'does not exist' in result['msg'] and str(tmp_path / 'typo') in result['msg']


def test_a_negative_age_is_refused(make_backup, run_module):
    make_backup(days_ago(1))
    code, result = run_module(backup_retention, dict(backup_root=make_backup.root, s3_bucket='', full_days=-1))
    assert code == 1
    assert result['msg'].startswith('full_days must be 1 or more (got -1)')
