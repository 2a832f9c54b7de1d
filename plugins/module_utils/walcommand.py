# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The WAL archive command as installed on a host: a launcher, the ``wal`` package, its settings, bytecode.

PostgreSQL starts archive_command once per WAL segment and restore_command once per segment replayed, so the
command's start-up is paid thousands of times a day. Python compiles the script it is asked to run on every
start, but loads an *imported* module's compiled form from ``__pycache__``. So the command is installed as:

* ``<command>``: a few lines that put ``<command>.lib`` first on sys.path, import the settings and call
  ``pgbackup_wal.cli.main(argv, SETTINGS)`` (archive_command and restore_command name it);
* ``<command>.lib/pgbackup_wal/``: the collection's ``module_utils/wal`` package, its own sources, the very
  code the collection tests and imports;
* ``<command>.lib/pgbackup_wal_settings.py``: the settings (repository, compression, S3, encryption) as a
  generated Python dict, so a push parses neither JSON nor options;
* ``__pycache__/*.pyc`` of all of them: written at install time by the system Python that runs the command
  (the server's OS user cannot write there), hash-checked, so an edited source is never shadowed by stale
  bytecode: Python then compiles it on the fly, slower but right.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import inspect
import os
import shlex
import subprocess

from ansible_collections.modulo.pgbackup.plugins.module_utils import errors, fsutil
# Every module of the package, imported by name so that Ansible ships them with the modules that install it.
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import (
    archive as _archive, cli as walcli, codec as _codec, durable as _durable, errors as _errors, names as _names, s3 as _s3,
    spool as _spool, store as _store)

SYSTEM_PYTHON = '/usr/bin/python3'
# -S: no site-packages at start-up.  The command needs the standard library only (wal/s3.py adds
# site-packages itself when S3 needs boto3), and what site does on every start (.pth files such as
# setuptools' distutils hack, whatever else is installed) cost each segment a few milliseconds and
# could break archiving with an error of its own.
PYTHON_FLAGS = ('-S',)
LIB_SUFFIX = '.lib'
PACKAGE = 'pgbackup_wal'
SETTINGS_MODULE = 'pgbackup_wal_settings'
PACKAGE_MODULES = (('errors', _errors), ('names', _names), ('durable', _durable), ('codec', _codec),
                   ('store', _store), ('s3', _s3), ('archive', _archive), ('spool', _spool), ('cli', walcli))
COMMAND_MODE = 0o755
LIBRARY_MODE = 0o644

# Run by SYSTEM_PYTHON: the bytecode must match the interpreter that imports it.  Prints the
# .pyc paths that are missing or stale (and writes them unless asked only to check), one a line.
_BYTECODE = r'''
import importlib.util, os, py_compile, sys
mode, sources = sys.argv[1], sys.argv[2:]
for src in sources:
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
    if not current:
        sys.stdout.write(cfile + '\n')
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


def command_lines(command_path):
    """(archive_command, restore_command) that run the installed command with the system Python."""
    prefix = ' '.join([SYSTEM_PYTHON] + list(PYTHON_FLAGS) + [shell_word(command_path)])
    return ('%s push %%p %%f' % prefix, '%s fetch %%f %%p' % prefix)


def lib_dir(command_path):
    return command_path + LIB_SUFFIX


def settings_path(command_path):
    return os.path.join(lib_dir(command_path), SETTINGS_MODULE + '.py')


def library_files(command_path):
    """[(path, source bytes)] of the package as installed beside ``command_path``."""
    package = os.path.join(lib_dir(command_path), PACKAGE)
    found = [(os.path.join(package, '__init__.py'), b'')]
    for name, module in PACKAGE_MODULES:
        found.append((os.path.join(package, name + '.py'), inspect.getsource(module).encode('utf-8')))
    return found


def installed_settings(command_path):
    """The settings an installed command runs with (its generated module, executed), or None without one."""
    try:
        with open(settings_path(command_path)) as handle:
            source = handle.read()
    except OSError:
        return None
    namespace = {}
    exec(compile(source, settings_path(command_path), 'exec'), namespace)   # pylint: disable=exec-used
    return namespace.get('SETTINGS')


def launcher_source(command_path):
    """The script archive_command runs: imports the package and its settings from ``<command>.lib``."""
    return (
        '#!%s %s\n'
        '# modulo.pgbackup WAL archive command (archive_command and restore_command), installed by the\n'
        '# collection: edits here are overwritten.  The code is the package %s and the settings are\n'
        '# %s; both are imported, not run, so that Python loads their compiled form.\n'
        'import sys\n'
        'sys.path.insert(0, %r)\n'
        'from %s.cli import main  # noqa: E402\n'
        'from %s import SETTINGS  # noqa: E402\n'
        'sys.exit(main(sys.argv[1:], SETTINGS))\n'
        % (SYSTEM_PYTHON, ' '.join(PYTHON_FLAGS), os.path.join(lib_dir(command_path), PACKAGE),
           settings_path(command_path), lib_dir(command_path), PACKAGE, SETTINGS_MODULE)
    ).encode('utf-8')


def bytecode_dirs(command_path):
    return [os.path.join(lib_dir(command_path), PACKAGE, '__pycache__'), os.path.join(lib_dir(command_path), '__pycache__')]


def files(command_path, settings):
    """[(path, content bytes, mode)] of the command, in the order to write them: the package and its
    settings, then the launcher that imports them (PostgreSQL may start the command while it is installed).

    ``settings``: the command's settings (wal/cli.py SETTINGS_KEYS).
    """
    try:
        source = walcli.settings_source(settings)
    except _errors.WalArchiveError as exc:
        raise WalCommandError(str(exc))
    return [(path, content, LIBRARY_MODE) for path, content in library_files(command_path)] + \
        [(settings_path(command_path), source.encode('utf-8'), LIBRARY_MODE),
         (command_path, launcher_source(command_path), COMMAND_MODE)]


def bytecode(command_path, write=True, log=None):
    """Compile the package and the settings with SYSTEM_PYTHON where their .pyc is missing or stale.

    Returns the .pyc paths written (``write``) or that would be; empty when all are current.
    """
    sources = [path for path, _content in library_files(command_path)] + [settings_path(command_path)]
    sources = [path for path in sources if os.path.exists(path)]
    if not sources:
        return []
    argv = [SYSTEM_PYTHON, '-I', '-c', _BYTECODE, 'write' if write else 'check'] + sources
    if log is not None:
        log.add([SYSTEM_PYTHON, '-I', '-c', '<compile %s>' % PACKAGE, lib_dir(command_path)])
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, cwd='/',
                              env={'PATH': '/usr/bin:/bin', 'LC_ALL': 'C'})
    except OSError as exc:
        raise WalCommandError('cannot run %s to compile %s: %s' % (SYSTEM_PYTHON, lib_dir(command_path), exc))
    if proc.returncode:
        raise WalCommandError('%s could not compile %s: %s' % (
            SYSTEM_PYTHON, lib_dir(command_path), proc.stderr.decode('utf-8', 'replace').strip()[-500:]))
    return proc.stdout.decode('utf-8').split()


def install(command_path, settings, log=None):
    """Write the command, its package, settings and bytecode (a private copy, e.g. a scratch cluster's
    restore_command)."""
    for path, content, mode in files(command_path, settings):
        if path == command_path:
            bytecode(command_path, log=log)
        fsutil.ensure_dir(os.path.dirname(path), mode=0o755)
        fsutil.write_atomic(path, content, mode=mode, overwrite=True)
        os.chmod(path, mode)
    return command_path
