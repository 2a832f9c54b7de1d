# -*- coding: utf-8 -*-
"""pg_restore_drill: argument checks and check mode on real files."""

from ansible_collections.modulo.pgbackup.plugins.modules import pg_restore_drill

PG_BINDIR = '/usr/lib/postgresql/15/bin'


def test_check_mode_names_the_backup_it_would_drill(make_backup, run_module):
    make_backup('20261120_020000')
    make_backup('20261121_020000')
    code, result = run_module(pg_restore_drill, dict(backup_root=make_backup.root, s3_bucket='', pg_bindir=PG_BINDIR),
                              check_mode=True)
    assert code == 0, result
    assert result['plan']['backup'] == 'modulo_full_20261121_020000'
    assert result['msg'] == 'would restore modulo_full_20261121_020000 (logical) into a scratch cluster and check it'


def test_check_mode_without_any_backup_says_the_drill_would_fail(tmp_path, run_module):
    code, result = run_module(pg_restore_drill, dict(backup_root=str(tmp_path), s3_bucket='', pg_bindir=PG_BINDIR),
                              check_mode=True)
    assert code == 1
    assert result['msg'].startswith('the drill would fail: ')


def test_a_smoke_query_cannot_expect_a_value_and_a_row_count(make_backup, run_module):
    make_backup('20261120_020000')
    code, result = run_module(pg_restore_drill, dict(
        backup_root=make_backup.root, smoke_queries=[dict(name='orders', sql='SELECT 1', expect='1', min_rows=1)]))
    assert code == 1
    assert 'mutually exclusive: expect|min_rows' in result['msg']


def test_unknown_kind_is_refused(make_backup, run_module):
    code, result = run_module(pg_restore_drill, dict(backup_root=make_backup.root, kind='snapshot'))
    assert code == 1
    assert 'kind' in result['msg'] and 'logical, physical, pitr' in result['msg']
