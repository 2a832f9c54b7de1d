# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The WAL archive command as installed on a host: a launcher, the library it imports, its bytecode.

PostgreSQL starts archive_command once per WAL segment and restore_command once
per segment replayed, so the command's start-up is paid thousands of times a
day.  Python compiles the script it is asked to run on every start, but loads
an *imported* module's compiled form from ``__pycache__``; compiling
walarchive.py (1,300 lines) was a fifth of the cost of a push.  So the command
is installed as three files:

* ``<command>``: a few lines that put ``<command>.lib`` first on sys.path and
  call ``walarchive.main()`` (the archive_command in postgresql.conf names it);
* ``<command>.lib/walarchive.py``: walarchive.py's own source, the very code
  the collection tests and imports;
* ``<command>.lib/__pycache__/walarchive.cpython-XY.pyc``: written at install
  time by the system Python that runs the command (the server's OS user cannot
  write there), hash-checked, so an edited source is never shadowed by stale
  bytecode: Python then compiles it on the fly, slower but right.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import inspect
import os
import shlex
import subprocess

from ansible_collections.modulo.pgbackup.plugins.module_utils import errors, fsutil, walarchive

SYSTEM_PYTHON = '/usr/bin/python3'
# -S: no site-packages at start-up.  The command needs the standard library only (walarchive adds
# site-packages itself when S3 needs boto3), and what site does on every start (.pth files such as
# setuptools' distutils hack, whatever else is installed) cost each segment a few milliseconds and
# could break archiving with an error of its own.
PYTHON_FLAGS = ('-S',)
LIB_SUFFIX = '.lib'
LIBRARY_NAME = 'walarchive.py'
COMMAND_MODE = 0o755
LIBRARY_MODE = 0o644

# Run by SYSTEM_PYTHON: the bytecode must match the interpreter that imports it.  Prints the
# .pyc path when it is missing or stale (and writes it unless asked only to check), else nothing.
_BYTECODE = r'''
import importlib.util, os, py_compile, sys
src, mode = sys.argv[1], sys.argv[2]
cfile = importlib.util.cache_from_source(src)
with open(src, 'rb') as handle:
    data = handle.read()
try:
    with open(cfile, 'rb') as handle:
        head = handle.read(16)
except OSError:
    head = b''
current = (head[:4] == importlib.util.MAGIC_NUMBER and head[4:8] == b'\x03\x00\x00\x00'
           and head[8:16] == importlib.util.source_hash(data))
if not current and mode == 'write':
    py_compile.compile(src, cfile=cfile, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    os.chmod(os.path.dirname(cfile), 0o755)
    os.chmod(cfile, 0o644)
sys.stdout.write('' if current else cfile)
'''


class WalCommandError(errors.PgBackupError):
    """The command could not be installed; ``str()`` is meant for the operator."""


def shell_word(path):
    """``path`` as one /bin/sh word inside archive_command or restore_command, ``%`` kept literal.

    PostgreSQL hands these to /bin/sh after replacing ``%p``, ``%f`` and ``%%``; a path with a blank
    or a ``%`` must survive both.
    """
    if '\n' in path or '\r' in path or '\0' in path:
        raise WalCommandError('%r cannot be used in archive_command: it contains a line break' % (path,))
    return shlex.quote(path).replace('%', '%%')


def command_lines(command_path, config_path):
    """(archive_command, restore_command) that run the installed command with the system Python."""
    prefix = ' '.join([SYSTEM_PYTHON] + list(PYTHON_FLAGS) + [shell_word(command_path)])
    config = shell_word(config_path)
    return ('%s push --config %s %%p %%f' % (prefix, config),
            '%s fetch --config %s %%f %%p' % (prefix, config))


def library_path(command_path):
    return os.path.join(command_path + LIB_SUFFIX, LIBRARY_NAME)


def library_source():
    """walarchive.py's source, without a shebang (it is imported, not run)."""
    source = inspect.getsource(walarchive)
    if source.startswith('#!'):
        source = source.split('\n', 1)[1]
    return source.encode('utf-8')


def launcher_source(command_path):
    """The script archive_command runs: imports walarchive from ``<command>.lib`` and calls main()."""
    return (
        '#!%s %s\n'
        '# modulo.pgbackup WAL archive command (archive_command and restore_command), installed by the\n'
        '# collection: edits here are overwritten.  The code is %s; it is\n'
        '# imported, not run, so that Python loads its compiled form instead of compiling it per segment.\n'
        'import sys\n'
        'sys.path.insert(0, %r)\n'
        'import walarchive  # noqa: E402\n'
        'sys.exit(walarchive.main())\n'
        % (SYSTEM_PYTHON, ' '.join(PYTHON_FLAGS), library_path(command_path),
           os.path.dirname(library_path(command_path)))
    ).encode('utf-8')


def bytecode_dir(command_path):
    return os.path.join(command_path + LIB_SUFFIX, '__pycache__')


def files(command_path):
    """[(path, content bytes, mode)] of the command, in the order to write them: the library, then the
    launcher that imports it (PostgreSQL may start the command while it is being installed)."""
    return [(library_path(command_path), library_source(), LIBRARY_MODE),
            (command_path, launcher_source(command_path), COMMAND_MODE)]


def bytecode(command_path, write=True, log=None):
    """Compile the library with SYSTEM_PYTHON when its .pyc is missing or stale.

    Returns the .pyc path when it was written (``write``) or would be, else None.
    """
    argv = [SYSTEM_PYTHON, '-I', '-c', _BYTECODE, library_path(command_path), 'write' if write else 'check']
    if log is not None:
        log.add([SYSTEM_PYTHON, '-I', '-c', '<compile %s>' % LIBRARY_NAME, library_path(command_path)])
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, cwd='/',
                              env={'PATH': '/usr/bin:/bin', 'LC_ALL': 'C'})
    except OSError as exc:
        raise WalCommandError('cannot run %s to compile %s: %s' % (SYSTEM_PYTHON, library_path(command_path), exc))
    if proc.returncode:
        raise WalCommandError('%s could not compile %s: %s' % (
            SYSTEM_PYTHON, library_path(command_path), proc.stderr.decode('utf-8', 'replace').strip()[-500:]))
    return proc.stdout.decode('utf-8').strip() or None


def install(command_path, log=None):
    """Write the command, its library and bytecode (a private copy, e.g. a scratch cluster's restore_command)."""
    for path, content, mode in files(command_path):
        if path == command_path:
            bytecode(command_path, log=log)
        fsutil.ensure_dir(os.path.dirname(path), mode=0o755)
        fsutil.write_atomic(path, content, mode=mode, overwrite=True)
        os.chmod(path, mode)
    return command_path
