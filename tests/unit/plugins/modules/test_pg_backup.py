# -*- coding: utf-8 -*-
"""pg_backup's argument handling and check mode, run in-process (no server needed)."""

import os
import re

from ansible_collections.modulo.pgbackup.plugins.modules import pg_backup

PG_BINDIR = '/usr/lib/postgresql/15/bin'


def base_args(tmp_path, **extra):
    args = dict(backup_root=str(tmp_path / 'repo'), pg_bindir=PG_BINDIR, login_host='127.0.0.1', port=1)
    args.update(extra)
    return args


def test_check_mode_plans_the_runbook_name_and_writes_nothing(tmp_path, run_module):
    code, result = run_module(pg_backup, base_args(tmp_path), check_mode=True)
    assert code == 0, result
    assert result['changed'] is True
    planned = result['backup']['path']
    assert re.match(r'^%s/full/modulo_full_\d{8}_\d{6}\.sql\.gz$' % re.escape(str(tmp_path / 'repo')), planned)
    assert result['msg'] == 'would back up database modulodb to %s' % planned
    assert not os.path.exists(str(tmp_path / 'repo'))


def test_check_mode_custom_zstd_gets_its_own_suffix(tmp_path, run_module):
    code, result = run_module(pg_backup, base_args(tmp_path, format='custom', compression='zstd', db='sales'),
                              check_mode=True)
    assert code == 0, result
    assert re.search(r'/full/modulo_full_\d{8}_\d{6}\.dump\.zst$', result['backup']['path'])
    assert 'database sales' in result['msg']


def test_directory_format_with_zstd_is_refused_with_the_reason(tmp_path, run_module):
    code, result = run_module(pg_backup, base_args(tmp_path, format='directory', compression='zstd'), check_mode=True)
    assert code == 1
    assert result['failed'] is True
    assert 'needs pg_dump 16 or newer (this host has 15)' in result['msg']


def test_zero_jobs_is_refused(tmp_path, run_module):
    code, result = run_module(pg_backup, base_args(tmp_path, jobs=0))
    assert code == 1
    assert result['msg'] == 'jobs must be 1 or more'
    assert not os.path.exists(str(tmp_path / 'repo'))


def test_unknown_codec_is_refused_by_the_argument_spec(tmp_path, run_module):
    code, result = run_module(pg_backup, base_args(tmp_path, compression='bzip2'))
    assert code == 1
    assert 'compression' in result['msg'] and 'gzip, zstd, lz4, none' in result['msg']


def test_backup_root_is_required(run_module):
    code, result = run_module(pg_backup, dict(pg_bindir=PG_BINDIR))
    assert code == 1
    assert result['msg'] == 'missing required arguments: backup_root'


def test_a_bindir_without_pg_dump_is_named_in_the_message(tmp_path, run_module):
    code, result = run_module(pg_backup, base_args(tmp_path, pg_bindir=str(tmp_path)), check_mode=True)
    assert code == 1
    assert 'pg_bindir %s does not contain pg_dump' % tmp_path in result['msg']


def test_the_password_never_appears_in_the_result(tmp_path, run_module):
    code, result = run_module(pg_backup, base_args(tmp_path, login_password='Sup3r-s3cret-pw'), check_mode=True)
    assert code == 0, result
    assert 'Sup3r-s3cret-pw' not in repr(result)
