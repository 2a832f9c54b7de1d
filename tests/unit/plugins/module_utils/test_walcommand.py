# -*- coding: utf-8 -*-
"""walcommand: the installed archive command runs the wal package and its settings from their compiled form."""

import os
import subprocess

from ansible_collections.modulo.pgbackup.plugins.module_utils import walcommand
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import archive as walarchive, s3 as wals3
from ansible_collections.modulo.pgbackup.tests.unit.plugins.module_utils.test_walarchive import make_segment

SEGMENT = '000000010000000000000003'

NEUTRAL_ENV = {'PATH': '/usr/bin:/bin', 'LC_ALL': 'C'}


def run(command, *args, **env):
    environ = dict(NEUTRAL_ENV, **env)
    return subprocess.run([command] + list(args), cwd='/', env=environ, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, check=False)


def install(tmp_path, name='pgbackup-wal', **settings):
    return walcommand.install(str(tmp_path / name), dict({'repo': str(tmp_path / 'repo')}, **settings))


def test_installed_command_runs_the_package_with_the_system_python(tmp_path):
    command = install(tmp_path, name="my 'bin'/pgbackup-wal")   # a quote in the path survives the launcher
    launcher = open(command, 'rb').read()
    assert launcher.startswith(b'#!/usr/bin/python3 -S\n') and len(launcher.splitlines()) < 10
    for path, content in walcommand.library_files(command):
        assert open(path, 'rb').read() == content and os.stat(path).st_mode & 0o7777 == 0o644
    assert os.stat(command).st_mode & 0o7777 == 0o755
    # Runs from a neutral directory and environment: no virtualenv, no collection on the path.
    proc = run(command, 'push', '--help')
    assert proc.returncode == 0, proc.stderr
    assert '--config' in proc.stdout
    proc = run(command, 'bogus')
    assert proc.returncode == 2 and 'invalid choice' in proc.stderr
    proc = run(command, 'status')          # the repository comes from the generated settings
    assert proc.returncode == 0 and '"segments": 0' in proc.stdout, proc.stderr


def test_command_lines_start_without_site_packages_and_add_them_for_s3(tmp_path):
    command = install(tmp_path)
    archive, restore = walcommand.command_lines(command)
    assert archive == '/usr/bin/python3 -S %s push %%p %%f' % command
    assert restore == '/usr/bin/python3 -S %s fetch %%f %%p' % command
    probe = ('import sys; sys.path.insert(0, %r); from pgbackup_wal import s3; '
             'before = any(p.endswith("-packages") for p in sys.path); s3._add_site_packages(); '
             'print(before, any(p.endswith("-packages") for p in sys.path))' % walcommand.lib_dir(command))
    proc = run('/usr/bin/python3', '-S', '-c', probe)
    assert proc.returncode == 0 and proc.stdout.split() == ['False', 'True'], proc.stderr
    assert wals3.DEFAULT_S3_PREFIX == 'database-backups/'


def test_push_and_fetch_as_installed_import_only_what_they_need(tmp_path):
    """The installed lines (``push %p %f``, ``fetch %f %p``) run without site, boto3, subprocess, argparse,
    json and re: their imports were a fifth of a push (measured), and the settings are compiled Python."""
    repo = tmp_path / 'repo'
    repo.mkdir()
    command = install(tmp_path, compression='zstd', encryption_key_files=[], s3_only=False)
    make_segment(tmp_path, SEGMENT)
    archive, restore = walcommand.command_lines(command)
    probe = ('import sys; sys.path.insert(0, %r); from pgbackup_wal.cli import main; '
             'from pgbackup_wal_settings import SETTINGS; '
             'codes = [main(line.split()[3:], SETTINGS) for line in sys.argv[1:]]; '
             'print(codes, sorted(m for m in ("site", "boto3", "subprocess", "argparse", "json", "re") '
             'if m in sys.modules))' % walcommand.lib_dir(command))
    first = archive.replace('%p', str(tmp_path / SEGMENT)).replace('%f', SEGMENT)      # writes archive.json
    again = restore.replace('%f', SEGMENT).replace('%p', str(tmp_path / 'fetched'))
    proc = run('/usr/bin/python3', '-S', '-c', probe, first)
    assert proc.returncode == 0 and '[0]' in proc.stdout, proc.stdout + proc.stderr
    (repo / 'wal').joinpath(walarchive._utc_date()).joinpath(SEGMENT + '.zst').unlink()
    proc = run('/usr/bin/python3', '-S', '-c', probe, first, again)
    assert proc.returncode == 0 and proc.stdout.strip() == '[0, 0] []', proc.stdout + proc.stderr
    assert (tmp_path / 'fetched').read_bytes() == (tmp_path / SEGMENT).read_bytes()


def test_the_command_loads_bytecode_written_at_install(tmp_path):
    command = install(tmp_path)
    assert walcommand.bytecode(command, write=False) == []          # current: nothing to do
    for directory in walcommand.bytecode_dirs(command):
        for name in os.listdir(directory):
            assert os.stat(os.path.join(directory, name)).st_mode & 0o777 == 0o644
    # Python's verbose import log names the file each module's code came from; the server's
    # environment may forbid writing bytecode, which must not matter.
    proc = run(command, 'status', PYTHONVERBOSE='1', PYTHONDONTWRITEBYTECODE='1')
    loaded = [line for line in proc.stderr.splitlines() if 'code object from' in line and 'pgbackup_wal' in line]
    assert len(loaded) >= 8, proc.stderr[-3000:]     # the package's modules and the settings
    assert all(line.rstrip("'").endswith('.pyc') for line in loaded), loaded


def test_an_edited_module_is_never_shadowed_by_its_old_bytecode(tmp_path):
    command = install(tmp_path)
    cli = os.path.join(walcommand.lib_dir(command), 'pgbackup_wal', 'cli.py')
    source = open(cli).read()
    assert "prog='pgbackup-wal'" in source
    with open(cli, 'w') as handle:
        handle.write(source.replace("prog='pgbackup-wal'", "prog='pgbackup-wal-edited'"))
    stale = walcommand.bytecode(command, write=False)
    assert len(stale) == 1 and stale[0].endswith('.pyc') and '/pgbackup_wal/__pycache__/cli.' in stale[0]
    proc = run(command, 'push', '--help', PYTHONDONTWRITEBYTECODE='1')
    assert proc.returncode == 0 and 'pgbackup-wal-edited' in proc.stdout   # the hash check caught it
    assert walcommand.bytecode(command) == stale                           # recompiled ...
    assert walcommand.bytecode(command, write=False) == []                 # ... and current again
    install(tmp_path)                                                      # a reinstall restores the shipped code
    assert run(command, 'push', '--help').stdout.startswith('usage: pgbackup-wal ')


def test_the_package_and_settings_come_before_the_launcher():
    command = '/usr/local/lib/modulo-pgbackup/pgbackup-wal'
    files = walcommand.files(command, {'repo': '/var/backups/postgresql'})
    lib = command + '.lib/'
    # The package and its settings first: the launcher must never be there without them.
    assert [(path, mode) for path, _content, mode in files] == [
        (lib + 'pgbackup_wal/%s.py' % name, 0o644)
        for name in ('__init__', 'errors', 'names', 'durable', 'codec', 'store', 's3', 'archive', 'spool', 'cli')] + [
        (lib + 'pgbackup_wal_settings.py', 0o644), (command, 0o755)]
    assert ("sys.path.insert(0, '%s')" % lib.rstrip('/')).encode() in files[-1][1]
    with open(walarchive.__file__.replace('.pyc', '.py'), 'rb') as handle:
        assert dict((p, c) for p, c, _m in files)[lib + 'pgbackup_wal/archive.py'] == handle.read()
    assert b"'repo': '/var/backups/postgresql'," in files[-2][1]
