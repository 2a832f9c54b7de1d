# -*- coding: utf-8 -*-
"""ops/restore: the typed request decides between a logical restore and a point-in-time recovery."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import errors
from ansible_collections.modulo.pgbackup.plugins.module_utils.ops import restore as restores


def test_a_target_or_the_cluster_mode_makes_it_a_point_in_time_recovery():
    assert not restores.Request(target_db='staging').pitr
    assert restores.Request(target_db='staging', target_time='2026-12-04 03:00').pitr
    assert restores.Request(target='latest').pitr and restores.Request(mode='cluster').pitr
    assert restores.Request(target_xid='42').targets() == {
        'target_time': None, 'target_xid': '42', 'target_lsn': None, 'target_name': None, 'target': None}
    assert restores.Request(backup='').backup == 'latest'


def test_an_unknown_mode_is_refused():
    with pytest.raises(errors.PgBackupError, match='mode must be database or cluster'):
        restores.Request(mode='tablespace')


def test_a_failed_restore_carries_the_rollback_state():
    failure = restores.RestoreFailed('recovery failed', rollback={'rolled_back': True})
    assert isinstance(failure, errors.PgBackupError) and failure.rollback == {'rolled_back': True}
