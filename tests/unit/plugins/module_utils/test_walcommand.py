# -*- coding: utf-8 -*-
"""walcommand: the installed archive command runs walarchive.py from its compiled form."""

import os
import subprocess

from ansible_collections.modulo.pgbackup.plugins.module_utils import walarchive, walcommand
from ansible_collections.modulo.pgbackup.tests.unit.plugins.module_utils.test_walarchive import make_segment

SEGMENT = '000000010000000000000003'

NEUTRAL_ENV = {'PATH': '/usr/bin:/bin', 'LC_ALL': 'C'}


def run(command, *args, **env):
    environ = dict(NEUTRAL_ENV, **env)
    return subprocess.run([command] + list(args), cwd='/', env=environ, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, check=False)


def test_installed_command_runs_walarchive_with_the_system_python(tmp_path):
    command = str(tmp_path / "my 'bin'" / 'pgbackup-wal')   # a quote in the path survives the launcher
    walcommand.install(command)
    launcher = open(command, 'rb').read()
    assert launcher.startswith(b'#!/usr/bin/python3 -S\n') and len(launcher.splitlines()) < 10
    assert open(walcommand.library_path(command), 'rb').read() == walcommand.library_source()
    assert b'def main(' in walcommand.library_source() and not walcommand.library_source().startswith(b'#!')
    assert os.stat(command).st_mode & 0o7777 == 0o755
    assert os.stat(walcommand.library_path(command)).st_mode & 0o7777 == 0o644
    # Runs from a neutral directory and environment: no virtualenv, no collection on the path.
    proc = run(command, 'push', '--help')
    assert proc.returncode == 0, proc.stderr
    assert '--config' in proc.stdout
    proc = run(command, 'bogus')
    assert proc.returncode == 2 and 'invalid choice' in proc.stderr


def test_command_lines_start_without_site_packages_and_add_them_for_s3(tmp_path):
    command = str(tmp_path / 'pgbackup-wal')
    walcommand.install(command)
    archive, restore = walcommand.command_lines(command, command + '.json')
    assert archive.startswith('/usr/bin/python3 -S %s push ' % command)
    assert restore.startswith('/usr/bin/python3 -S %s fetch ' % command)
    probe = ('import sys; sys.path.insert(0, %r); import walarchive; '
             'before = any(p.endswith("-packages") for p in sys.path); walarchive._add_site_packages(); '
             'print(before, any(p.endswith("-packages") for p in sys.path))'
             % os.path.dirname(walcommand.library_path(command)))
    proc = run('/usr/bin/python3', '-S', '-c', probe)
    assert proc.returncode == 0 and proc.stdout.split() == ['False', 'True'], proc.stderr


def test_push_and_fetch_as_installed_import_only_what_they_need(tmp_path):
    """The installed lines (``push --config F %p %f``, ``fetch --config F %f %p``) run without site, boto3,
    subprocess, argparse, json and re: their imports were a fifth of a push (measured, see _loads)."""
    command = str(tmp_path / 'pgbackup-wal')
    walcommand.install(command)
    repo = tmp_path / 'repo'
    repo.mkdir()
    config = tmp_path / 'wal.json'
    config.write_text('{"repo": "%s", "compression": "zstd", "encryption_key_files": [], "s3_only": false}' % repo)
    make_segment(tmp_path, SEGMENT)
    archive, restore = walcommand.command_lines(command, str(config))
    probe = ('import sys; sys.path.insert(0, %r); import walarchive; '
             'codes = [walarchive.main(line.split()[3:]) for line in sys.argv[1:]]; '
             'print(codes, sorted(m for m in ("site", "boto3", "subprocess", "argparse", "json", "re") '
             'if m in sys.modules))' % os.path.dirname(walcommand.library_path(command)))
    first = archive.replace('%p', str(tmp_path / SEGMENT)).replace('%f', SEGMENT)      # writes archive.json
    again = restore.replace('%f', SEGMENT).replace('%p', str(tmp_path / 'fetched'))
    proc = run('/usr/bin/python3', '-S', '-c', probe, first)
    assert proc.returncode == 0 and '[0]' in proc.stdout, proc.stdout + proc.stderr
    (repo / 'wal').joinpath(walarchive._utc_date()).joinpath(SEGMENT + '.zst').unlink()
    proc = run('/usr/bin/python3', '-S', '-c', probe, first, again)
    assert proc.returncode == 0 and proc.stdout.strip() == '[0, 0] []', proc.stdout + proc.stderr
    assert (tmp_path / 'fetched').read_bytes() == (tmp_path / SEGMENT).read_bytes()


def test_the_command_loads_bytecode_written_at_install(tmp_path):
    command = str(tmp_path / 'pgbackup-wal')
    walcommand.install(command)
    assert walcommand.bytecode(command, write=False) is None          # current: nothing to do
    pyc = [n for n in os.listdir(walcommand.bytecode_dir(command)) if n.startswith('walarchive.')]
    assert len(pyc) == 1 and os.stat(os.path.join(walcommand.bytecode_dir(command), pyc[0])).st_mode & 0o777 == 0o644
    # Python's verbose import log names the file each module's code came from; the server's
    # environment may forbid writing bytecode, which must not matter.
    proc = run(command, 'status', '--repo', str(tmp_path / 'repo'), PYTHONVERBOSE='1', PYTHONDONTWRITEBYTECODE='1')
    loaded = [line for line in proc.stderr.splitlines() if 'code object from' in line and 'walarchive' in line]
    assert loaded and all(line.rstrip("'").endswith('.pyc') for line in loaded), loaded
    assert os.path.join(walcommand.bytecode_dir(command), pyc[0]) in loaded[0]


def test_an_edited_library_is_never_shadowed_by_its_old_bytecode(tmp_path):
    command = str(tmp_path / 'pgbackup-wal')
    walcommand.install(command)
    library = walcommand.library_path(command)
    source = open(library).read()
    assert "prog='walarchive'" in source
    with open(library, 'w') as handle:
        handle.write(source.replace("prog='walarchive'", "prog='walarchive-edited'"))
    stale = walcommand.bytecode(command, write=False)
    assert stale and stale.endswith('.pyc') and os.path.dirname(stale) == walcommand.bytecode_dir(command)
    proc = run(command, 'push', '--help', PYTHONDONTWRITEBYTECODE='1')
    assert proc.returncode == 0 and 'walarchive-edited' in proc.stdout   # the hash check caught it
    assert walcommand.bytecode(command) == stale                          # recompiled ...
    assert walcommand.bytecode(command, write=False) is None              # ... and current again
    walcommand.install(command)                                           # a reinstall restores the shipped code
    assert run(command, 'push', '--help').stdout.startswith('usage: walarchive ')


def test_launcher_and_library_are_the_collections_walarchive():
    files = walcommand.files('/usr/local/lib/modulo-pgbackup/pgbackup-wal')
    # The library first: the launcher must never be there without it.
    assert [(path, mode) for path, _content, mode in files] == [
        ('/usr/local/lib/modulo-pgbackup/pgbackup-wal.lib/walarchive.py', 0o644),
        ('/usr/local/lib/modulo-pgbackup/pgbackup-wal', 0o755)]
    assert b"sys.path.insert(0, '/usr/local/lib/modulo-pgbackup/pgbackup-wal.lib')" in files[1][1]
    assert files[0][1].decode('utf-8') in open(walarchive.__file__.replace('.pyc', '.py')).read()
