# -*- coding: utf-8 -*-
"""backup_info on a repository of real files: selection, verification, unusable files."""

import os

from ansible_collections.modulo.pgbackup.plugins.modules import backup_info


def test_lists_oldest_first_and_selects_the_newest(make_backup, run_module):
    make_backup('20261120_020000')
    make_backup('20261121_020000')
    code, result = run_module(backup_info, dict(backup_root=make_backup.root, s3_bucket=''))
    assert code == 0, result
    assert [b['name'] for b in result['backups']] == ['modulo_full_20261120_020000', 'modulo_full_20261121_020000']
    assert result['latest']['name'] == 'modulo_full_20261121_020000'
    assert result['changed'] is False

    code, result = run_module(backup_info, dict(backup_root=make_backup.root, s3_bucket='', select='latest'))
    assert [b['name'] for b in result['backups']] == ['modulo_full_20261121_020000']


def test_an_unknown_backup_name_fails_naming_the_repository(make_backup, run_module):
    make_backup('20261120_020000')
    code, result = run_module(backup_info, dict(backup_root=make_backup.root, s3_bucket='',
                                                select='modulo_full_20990101_000000'))
    assert code == 1
    assert result['msg'] == 'no backup named modulo_full_20990101_000000 in %s' % make_backup.root


def test_verify_passes_then_catches_a_flipped_byte(make_backup, run_module):
    path = make_backup('20261120_020000', sql=b'INSERT INTO t VALUES (1);\n' * 200)
    args = dict(backup_root=make_backup.root, s3_bucket='', verify=True)
    code, result = run_module(backup_info, args)
    assert code == 0, result
    assert [v['ok'] for v in result['verification']] == [True]

    with open(path, 'r+b') as handle:
        handle.seek(os.path.getsize(path) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    code, result = run_module(backup_info, args)
    assert code == 1
    assert result['msg'].startswith('1 backup(s) failed verification: modulo_full_20261120_020000: ')
    assert 'sha256' in result['msg']


def test_a_dump_without_meta_is_a_problem_not_a_backup(make_backup, run_module):
    make_backup('20261120_020000')
    os.unlink(os.path.join(make_backup.root, 'full', 'modulo_full_20261120_020000.meta'))
    code, result = run_module(backup_info, dict(backup_root=make_backup.root, s3_bucket=''))
    assert code == 0, result
    assert result['backups'] == [] and result['latest'] is None
    assert [os.path.basename(p['path']) for p in result['problems']] == ['modulo_full_20261120_020000.sql.gz']
