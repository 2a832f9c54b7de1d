# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stream compressors: which program compresses, tests and decompresses each codec.

External programs (pigz/gzip, zstd, lz4) run in their own processes, so the
compression of a dump uses a second core while pg_dump uses the first.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import shutil

from ansible_collections.modulo.pgbackup.plugins.module_utils import encryption, errors
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import names as walnames

CODECS = ('gzip', 'zstd', 'lz4', 'none')
# gzip and zstd as the WAL archive command has them (one range for a codec, whatever compresses).
DEFAULT_LEVEL = dict(walnames.DEFAULT_LEVEL, lz4=1)
LEVEL_RANGE = dict(walnames.LEVEL_RANGE, lz4=(1, 12))
DEBIAN_PACKAGE = {'gzip': 'gzip', 'zstd': 'zstd', 'lz4': 'lz4'}


class CompressionError(errors.PgBackupError):
    pass


def check_level(codec, level):
    if codec == 'none' or level is None:
        return DEFAULT_LEVEL[codec]
    low, high = LEVEL_RANGE[codec]
    if not low <= level <= high:
        raise CompressionError('compression_level %s is out of range for %s (%d..%d)' % (level, codec, low, high))
    return level


def _program(codec):
    if codec == 'gzip':
        for name in ('pigz', 'gzip'):
            path = shutil.which(name)
            if path:
                return path
    else:
        path = shutil.which(codec)
        if path:
            return path
    raise CompressionError('%s is not installed on this host: install the Debian package %r '
                           'or choose another compression' % (codec, DEBIAN_PACKAGE[codec]))


def compress_argv(codec, level, threads=None):
    """argv that reads stdin and writes the compressed stream to stdout."""
    prog = _program(codec)
    argv = [prog, '-c', '-%d' % level]
    name = os.path.basename(prog)
    if name == 'pigz' and threads:
        argv += ['-p', str(threads)]
    if name == 'zstd':
        argv += ['-q', '-T%d' % (threads or 0)]
    if name == 'lz4':
        argv += ['-q']
    return argv


def decompress_argv(codec, path=None):
    """argv that decompresses ``path`` (or stdin) to stdout."""
    argv = [_program(codec), '-d', '-c']
    if codec == 'lz4' or os.path.basename(argv[0]) == 'zstd':
        argv.append('-q')
    if path:
        argv.append(path)
    return argv


def test_argv(codec, path):
    """argv of the codec's own integrity test (``gzip -t`` of the runbook)."""
    argv = [_program(codec), '-t']
    if codec in ('zstd', 'lz4'):
        argv.append('-q')
    return argv + [path]


def codec_of_path(path):
    return walnames.codec_of(os.path.basename(str(path)))


def read_stages(path, keys=None):
    """Pipeline stages that turn a stored file into its raw content on stdout: decrypt, then decompress.

    Returns ``(stages, stdin_path)``; ``stdin_path`` is the file itself when no stage is needed.
    """
    codec = codec_of_path(path)
    if encryption.is_encrypted(path):
        keys = encryption.require_keys(path, keys)
        return [keys.decrypt_argv(path)] + ([decompress_argv(codec)] if codec != 'none' else []), None
    if codec != 'none':
        return [decompress_argv(codec, path)], None
    return [], path
