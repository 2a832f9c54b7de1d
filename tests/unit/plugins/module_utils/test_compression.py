# -*- coding: utf-8 -*-
"""compression: levels, and real data through the real pigz/gzip, zstd and lz4 programs."""

import os
import subprocess

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import compression

CODECS = ('gzip', 'zstd', 'lz4')


def sample_data():
    """Compressible SQL-like text with an incompressible block in the middle (~1.3 MiB)."""
    text = b''.join(b'INSERT INTO orders VALUES (%d, \'customer %d\', %d.%02d);\n' % (i, i % 97, i, i % 100)
                    for i in range(12000))
    return text + os.urandom(512 * 1024) + text


@pytest.fixture(scope='module')
def data():
    return sample_data()


# --- levels -------------------------------------------------------------------------------------

@pytest.mark.parametrize('codec, level', [
    ('gzip', 1), ('gzip', 9), ('zstd', 1), ('zstd', 19), ('lz4', 1), ('lz4', 12)])
def test_check_level_accepts_the_range_ends(codec, level):
    assert compression.check_level(codec, level) == level


@pytest.mark.parametrize('codec, level', [
    ('gzip', 0), ('gzip', 10), ('zstd', 0), ('zstd', 20), ('zstd', 22), ('lz4', 0), ('lz4', 13), ('gzip', -1)])
def test_check_level_rejects_out_of_range(codec, level):
    with pytest.raises(compression.CompressionError) as info:
        compression.check_level(codec, level)
    low, high = compression.LEVEL_RANGE[codec]
    assert str(info.value) == 'compression_level %s is out of range for %s (%d..%d)' % (level, codec, low, high)


def test_check_level_defaults():
    assert compression.check_level('gzip', None) == 6
    assert compression.check_level('zstd', None) == 3
    assert compression.check_level('lz4', None) == 1
    assert compression.check_level('none', None) is None
    assert compression.check_level('none', 9) is None  # no level for no compression


# --- argv and round trips -----------------------------------------------------------------------

def compress(codec, level, raw, threads=None):
    proc = subprocess.run(compression.compress_argv(codec, level, threads=threads), input=raw,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    assert proc.stderr == b''
    return proc.stdout


@pytest.mark.parametrize('codec', CODECS)
def test_round_trip_through_stdin_and_from_a_file(codec, data, tmp_path):
    level = compression.DEFAULT_LEVEL[codec]
    packed = compress(codec, level, data, threads=2)
    assert packed != data and len(packed) < len(data)
    path = str(tmp_path / ('dump.sql' + {'gzip': '.gz', 'zstd': '.zst', 'lz4': '.lz4'}[codec]))
    with open(path, 'wb') as handle:
        handle.write(packed)
    assert compression.codec_of_path(path) == codec

    from_file = subprocess.run(compression.decompress_argv(codec, path), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, check=True)
    assert from_file.stdout == data
    from_stdin = subprocess.run(compression.decompress_argv(codec), input=packed, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, check=True)
    assert from_stdin.stdout == data
    # decompression to stdout must not create or remove files next to the backup
    assert os.listdir(str(tmp_path)) == [os.path.basename(path)]

    assert subprocess.run(compression.test_argv(codec, path), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, check=False).returncode == 0


@pytest.mark.parametrize('codec', CODECS)
def test_levels_change_the_output(codec, data):
    low, high = compression.LEVEL_RANGE[codec]
    text = data[:200000]
    fast = compress(codec, low, text)
    best = compress(codec, high, text)
    assert len(best) < len(fast)


@pytest.mark.parametrize('codec', CODECS)
@pytest.mark.parametrize('where', ['middle', 'last'])
def test_test_argv_detects_a_flipped_byte(codec, where, data, tmp_path):
    packed = bytearray(compress(codec, compression.DEFAULT_LEVEL[codec], data))
    index = len(packed) // 2 if where == 'middle' else len(packed) - 2
    packed[index] ^= 0x40
    path = str(tmp_path / 'damaged')
    with open(path, 'wb') as handle:
        handle.write(bytes(packed))
    proc = subprocess.run(compression.test_argv(codec, path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    assert proc.returncode != 0


@pytest.mark.parametrize('codec', CODECS)
def test_test_argv_detects_truncation(codec, data, tmp_path):
    packed = compress(codec, compression.DEFAULT_LEVEL[codec], data)
    path = str(tmp_path / 'truncated')
    with open(path, 'wb') as handle:
        handle.write(packed[:len(packed) * 2 // 3])
    assert subprocess.run(compression.test_argv(codec, path), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, check=False).returncode != 0


def test_gzip_prefers_pigz_and_passes_threads():
    argv = compression.compress_argv('gzip', 6, threads=3)
    assert os.path.basename(argv[0]) == 'pigz'
    assert argv[1:] == ['-c', '-6', '-p', '3']
    zstd = compression.compress_argv('zstd', 19, threads=4)
    assert zstd[1:] == ['-c', '-19', '-q', '-T4']


def test_gzip_falls_back_to_gzip_without_pigz(tmp_path, monkeypatch, data):
    bindir = tmp_path / 'bin'
    bindir.mkdir()
    os.symlink('/usr/bin/gzip', str(bindir / 'gzip'))
    monkeypatch.setenv('PATH', str(bindir))
    argv = compression.compress_argv('gzip', 9, threads=8)
    assert argv == [str(bindir / 'gzip'), '-c', '-9']
    packed = subprocess.run(argv, input=data, stdout=subprocess.PIPE, check=True).stdout
    unpacked = subprocess.run(compression.decompress_argv('gzip'), input=packed, stdout=subprocess.PIPE,
                              check=True).stdout
    assert unpacked == data


@pytest.mark.parametrize('codec, package', [('gzip', 'gzip'), ('zstd', 'zstd'), ('lz4', 'lz4')])
def test_missing_program_is_a_clear_error(codec, package, tmp_path, monkeypatch):
    monkeypatch.setenv('PATH', str(tmp_path))
    with pytest.raises(compression.CompressionError) as info:
        compression.compress_argv(codec, 1)
    assert '%s is not installed on this host' % codec in str(info.value)
    assert 'Debian package %r' % package in str(info.value)
    with pytest.raises(compression.CompressionError):
        compression.test_argv(codec, '/x')


@pytest.mark.parametrize('path, codec', [
    ('/b/full/modulo_full_20261124_020000.sql.gz', 'gzip'),
    ('modulo_full_20261124_020000.dump.zst', 'zstd'),
    ('x.sql.lz4', 'lz4'),
    ('x.sql', 'none'),
    ('x.dump', 'none'),
    ('x.dir', 'none'),
    ('x.gz.sql', 'none'),
    ('000000010000000000000001.gz', 'gzip'),
])
def test_codec_of_path(path, codec):
    assert compression.codec_of_path(path) == codec


@pytest.mark.parametrize('codec, level', [('zstd', 20), ('zstd', 0), ('gzip', 10)])
def test_backups_and_the_wal_archive_accept_the_same_levels(codec, level):
    from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import codec as walcodec, errors as walerrors
    with pytest.raises(compression.CompressionError, match='out of range'):
        compression.check_level(codec, level)
    with pytest.raises(walerrors.WalArchiveError, match='out of range'):
        walcodec.check_level(codec, level)
    assert compression.check_level(codec, level - 1 if level > 1 else 1) == walcodec.check_level(
        codec, level - 1 if level > 1 else 1)
