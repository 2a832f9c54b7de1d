# -*- coding: utf-8 -*-
"""wal_archive refuses bad timeouts before touching the server or the host."""

import os

from ansible_collections.modulo.pgbackup.plugins.modules import wal_archive


def test_a_negative_archive_timeout_is_refused(tmp_path, run_module):
    command = str(tmp_path / 'bin' / 'pgbackup-wal')
    code, result = run_module(wal_archive, dict(backup_root=str(tmp_path / 'repo'), archive_timeout=-1,
                                                command_path=command))
    assert code == 1
    assert result['msg'] == 'archive_timeout must be 0 or more and verify_timeout 1 or more'
    assert not os.path.exists(command) and not os.path.exists(str(tmp_path / 'repo'))


def test_an_unknown_state_is_refused(tmp_path, run_module):
    code, result = run_module(wal_archive, dict(backup_root=str(tmp_path), state='paused'))
    assert code == 1
    assert 'state' in result['msg'] and 'present, absent' in result['msg']


def test_an_unreachable_server_fails_with_a_message_and_installs_nothing(tmp_path, run_module):
    command = str(tmp_path / 'bin' / 'pgbackup-wal')
    code, result = run_module(wal_archive, dict(backup_root=str(tmp_path / 'repo'), command_path=command,
                                                login_host='127.0.0.1', port=1, pg_bindir='/usr/lib/postgresql/15/bin'),
                              check_mode=True)
    assert code == 1
    assert result['changed'] is False
    assert result['msg'].startswith('cannot reach PostgreSQL at postgres@127.0.0.1:1/postgres: is the server running')
    assert not os.path.exists(command)
