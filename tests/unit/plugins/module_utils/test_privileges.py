# -*- coding: utf-8 -*-
"""The privilege model on real files and users: who runs the client programs, who owns what a root-run
module writes into the repository, and the hand-over of a repository root made."""

import os
import pwd
import stat

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import fsutil, osuser, pgclient, pipeline, repository

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason='chown to another user needs root')


def postgres():
    try:
        pw = pwd.getpwnam('postgres')
    except KeyError:
        pytest.skip('no postgres OS user here')
    return pw.pw_uid, pw.pw_gid


def owner(path):
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def test_run_as_switches_only_from_root_to_another_user():
    if os.geteuid() == 0:
        assert osuser.run_as('postgres') == ['runuser', '-u', 'postgres', '--']
        assert osuser.run_as('root') == []
    else:
        assert osuser.run_as('postgres') == []
    assert osuser.run_as(None) == [] and osuser.run_as('') == []


def test_lookup_names_the_option_when_the_user_does_not_exist():
    with pytest.raises(osuser.OsUserError, match='set pg_os_user'):
        osuser.lookup('modulo_no_such_user')


@pytest.mark.parametrize('host, socket_dir, expected', [
    (None, None, True), ('', '/var/run/postgresql', True), ('/var/run/postgresql', None, True),
    ('127.0.0.1', None, False), ('db1.example.internal', '/tmp', False)])
def test_client_programs_switch_user_over_the_socket_only(host, socket_dir, expected):
    conn = pgclient.Connection(login_host=host, login_unix_socket=socket_dir, bindir='/usr/lib/postgresql/15/bin',
                               os_user='postgres')
    assert conn.over_socket() is expected
    argv = conn.command('psql', '-c', 'SELECT 1')
    assert argv[-3:] == ['/usr/lib/postgresql/15/bin/psql', '-c', 'SELECT 1']
    assert (argv[0] == 'runuser') is (expected and os.geteuid() == 0)


def test_pipeline_names_a_stage_by_its_program_past_runuser():
    assert pipeline.program(['runuser', '-u', 'postgres', '--', '/usr/lib/postgresql/15/bin/pg_dump', '-Fc']) == 'pg_dump'
    assert pipeline.program(['/usr/bin/zstd', '-3']) == 'zstd'


def test_peer_authentication_failure_says_to_become_root():
    conn = pgclient.Connection(bindir='/usr/lib/postgresql/15/bin', os_user='postgres')
    msg = pgclient.explain_connection_error('psql: error: FATAL:  Peer authentication failed for user "postgres"', conn)
    assert msg.startswith('peer authentication failed') and 'become: true' in msg


@ROOT_ONLY
def test_files_made_in_a_directory_of_the_server_user_are_its_own(tmp_path):
    uid, gid = postgres()
    repo_dir = tmp_path / 'repo'
    repo_dir.mkdir()
    os.chown(str(repo_dir), uid, gid)
    made = fsutil.ensure_dir(str(repo_dir / 'a' / 'b'))
    assert owner(str(repo_dir / 'a')) == (uid, gid) and owner(made) == (uid, gid)
    path = fsutil.write_atomic(str(repo_dir / 'x.meta'), b'{}')
    assert owner(path) == (uid, gid) and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with fsutil.RepositoryLock(str(repo_dir), 'backup'):
        assert owner(str(repo_dir / '.lock-backup')) == (uid, gid)
    out = str(repo_dir / 'dump.sql')
    pipeline.run([['echo', 'data']], stdout_path=out)
    assert owner(out) == (uid, gid)
    # Made where root owns the directory (/tmp, /var/backups), a file stays root's.
    assert owner(fsutil.write_atomic(str(tmp_path / 'y'), b'')) == (0, 0)


@ROOT_ONLY
def test_a_repository_root_makes_is_handed_to_the_server_user_with_what_root_wrote(tmp_path):
    uid, gid = postgres()
    root = str(tmp_path / 'backups' / 'postgresql')
    os.makedirs(os.path.join(root, 'full'))
    with open(os.path.join(root, 'full', 'old.meta'), 'w') as handle:
        handle.write('{}')
    with open(os.path.join(root, '.lock-backup'), 'w') as handle:
        handle.write('')
    repository.Repository(root, 'postgres').ensure()
    for base, dirs, files in os.walk(root):
        for name in [base] + [os.path.join(base, n) for n in dirs + files]:
            assert owner(name) == (uid, gid), name
    assert owner(str(tmp_path / 'backups')) == (0, 0)      # outside the repository: not ours to give away
    # A repository another user owns was chosen so: left as it is.
    os.chown(root, 0, 0)
    os.chown(root, 65534, 65534)
    repository.Repository(root, 'postgres').ensure()
    assert owner(root) == (65534, 65534)


def test_a_repository_this_user_cannot_enter_is_an_error_not_empty(tmp_path):
    root = tmp_path / 'repo'
    (root / 'base').mkdir(parents=True)
    os.chmod(str(root), 0)
    try:
        if os.access(str(root), os.R_OK | os.X_OK):
            pytest.skip('root reads every directory')
        with pytest.raises(repository.RepositoryError, match='cannot read it'):
            repository.Repository(str(root)).scan('base')
    finally:
        os.chmod(str(root), 0o700)
    assert repository.Repository(str(tmp_path / 'missing')).scan('base') == ([], [])
