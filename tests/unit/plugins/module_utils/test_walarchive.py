# -*- coding: utf-8 -*-
"""The wal package: WAL name arithmetic, durable push, duplicate/conflict rules, sysid guard, fetch, CLI.

Segments here are synthetic but carry a real XLogLongPageHeaderData (the
integration tests check the parser against a real cluster), 1 MiB long so the
tests stay fast; the code takes the segment size from the header.
"""

import errno
import hashlib
import json
import os
import stat
import struct
import subprocess
import time

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import (
    archive as walarchive, cli as walcli, codec as walcodec, durable as waldurable, errors as walerrors,
    names as walnames)

# The package as the installed launcher imports it: its parent directory first on sys.path.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(walcli.__file__)))
LAUNCH = 'import sys; sys.path.insert(0, %r); from wal.cli import main; sys.exit(main(sys.argv[1:]))' % PACKAGE_PARENT
SYSTEM_PYTHON = '/usr/bin/python3'
SEG = 1024 * 1024
SYSID = 7312345678901234567
OTHER_SYSID = 7399999999999999999
MAGIC_PG15 = 0xD110


def make_segment(directory, name, sysid=SYSID, seg_size=SEG, seed=b'x', magic=MAGIC_PG15, size=None):
    """A file that looks like a WAL segment: long page header, some varied content, zeros."""
    tli, segno = walnames.parse_segment_name(name, seg_size)
    header = struct.pack('<HHIQI4xQII', magic, walnames.XLP_LONG_HEADER, tli, segno * seg_size, 0,
                         sysid, seg_size, 8192)
    body = hashlib.sha256(seed + name.encode()).digest() * 2048   # 64 KiB that compress a little
    data = (header + body).ljust(seg_size, b'\0')
    if size is not None:
        data = data[:size]
    path = os.path.join(str(directory), name)
    with open(path, 'wb') as handle:
        handle.write(data)
    return path


def sha(path):
    with open(path, 'rb') as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def mode_of(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def temp_files(repo):
    found = []
    for base, _dirs, files in os.walk(str(repo)):
        found.extend(os.path.join(base, n) for n in files if n.startswith(waldurable.TMP_PREFIX))
    return found


def today():
    return time.strftime('%Y%m%d', time.gmtime())


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / 'backups'
    path.mkdir()
    return str(path)


@pytest.fixture
def pg_wal(tmp_path):
    path = tmp_path / 'pg_wal'
    path.mkdir()
    return path


@pytest.fixture(params=['libzstd', 'zstd program'])
def zstd_by(request, monkeypatch):
    """Runs a test with zstd done in this process by libzstd, then by the zstd program."""
    if request.param == 'libzstd':
        assert walcodec._libzstd(), 'libzstd1 is installed with the zstd package'
    else:
        monkeypatch.setattr(walcodec, '_libzstd', lambda: None)
    return request.param


# --- names and LSN arithmetic -----------------------------------------------------------------

def test_parse_lsn():
    assert walnames.parse_lsn('0/2000028') == 0x2000028
    assert walnames.parse_lsn('16/B374D848') == (0x16 << 32) | 0xB374D848
    assert walnames.parse_lsn(42) == 42
    assert walnames.format_lsn(walnames.parse_lsn('1/FF000000')) == '1/FF000000'
    assert walnames.parse_lsn(' ab/cd\n') == (0xAB << 32) | 0xCD
    for bad in ('', '0x2000028', '0/', '1/2/3', 'G/0', '/1', '123456789/0', '0/123456789', '+1/0', '1 /0',
                '\u0661/0'):
        with pytest.raises(ValueError):
            walnames.parse_lsn(bad)


def test_segment_name():
    assert walnames.segment_name(1, '0/2000028') == '000000010000000000000002'
    assert walnames.segment_name(1, '0/FF000000') == '0000000100000000000000FF'
    assert walnames.segment_name(1, '0/FFFFFFFF') == '0000000100000000000000FF'
    # 0xFF is the last segment of an xlogid with 16 MiB segments: the next one starts 1/00.
    assert walnames.segment_name(1, '1/0') == '000000010000000100000000'
    assert walnames.segment_name(3, '1/1000000') == '000000030000000100000001'
    # A stop LSN exactly on a boundary belongs to the previous segment (pg_walfile_name).
    assert walnames.segment_name(1, '1/0', prev=True) == '0000000100000000000000FF'
    assert walnames.segment_name(1, '0/2000028', prev=True) == '000000010000000000000002'
    assert walnames.segment_name(2, '0/100000', seg_size=SEG) == '000000020000000000000001'
    assert walnames.segment_name(1, '0/FFF00000', seg_size=SEG) == '000000010000000000000FFF'
    with pytest.raises(ValueError):
        walnames.segment_name(1, '0/0', seg_size=3 * SEG)


def test_wal_range_crosses_the_xlogid_boundary():
    assert walnames.wal_range('0000000100000000000000FE', '000000010000000100000001') == [
        '0000000100000000000000FE', '0000000100000000000000FF',
        '000000010000000100000000', '000000010000000100000001']
    assert walnames.wal_range('000000010000000000000003', '000000010000000000000003') == [
        '000000010000000000000003']
    assert len(walnames.wal_range('000000020000000000000001', '000000020000000200000000')) == 2 * 256
    with pytest.raises(ValueError):
        walnames.wal_range('000000010000000000000005', '000000010000000000000004')
    with pytest.raises(ValueError):
        walnames.wal_range('000000010000000000000001', '000000020000000000000002')
    with pytest.raises(ValueError):   # 0x100 cannot exist with 16 MiB segments
        walnames.wal_range('000000010000000000000001', '000000010000000000000100')
    with pytest.raises(ValueError):
        walnames.wal_range('00000001.history', '000000010000000000000001')


def test_segment_name_and_range_agree():
    names = walnames.wal_range('0000000100000000000000FD', '000000010000000100000002')
    lsns = ['0/FD000000', '0/FE000000', '0/FF000000', '1/0', '1/1000000', '1/2000000']
    assert names == [walnames.segment_name(1, lsn) for lsn in lsns]


def test_wal_kind():
    assert walnames.wal_kind('000000010000000000000001') == 'segment'
    assert walnames.wal_kind('000000010000000000000001.partial') == 'partial'
    assert walnames.wal_kind('000000010000000000000002.00000028.backup') == 'backup'
    assert walnames.wal_kind('00000002.history') == 'history'
    for bad in ('../etc/passwd', '000000010000000000000001.zst', 'RECOVERYXLOG', '00000001000000000000001',
                '0000000100000000000000g1', '/tmp/000000010000000000000001', '00000001000000000000000a',
                '0000000100000000000000011', '000000010000000000000001.partial.partial', '0000002.history',
                '000000010000000000000002.0000028.backup', '000000010000000000000002-00000028.backup',
                '000000010000000000000002.00000028.backupx', '0000000100000000000000\u0661\u0661'):
        with pytest.raises(ValueError):
            walnames.wal_kind(bad)


def test_read_sysid_and_header_checks(tmp_path):
    path = make_segment(tmp_path, '000000010000000000000007')
    with open(path, 'rb') as handle:
        first = handle.read(8192)
    assert walnames.read_sysid(first) == SYSID
    header = walnames.read_long_header(first)
    assert header['seg_size'] == SEG and header['pageaddr'] == 7 * SEG and header['pg_version'] == 15
    with pytest.raises(ValueError, match='magic'):
        walnames.read_sysid(b'\0' * 64)
    no_long = bytearray(first)
    struct.pack_into('<H', no_long, 2, 0)
    with pytest.raises(ValueError, match='long header'):
        walnames.read_sysid(bytes(no_long))
    with pytest.raises(ValueError, match='too short'):
        walnames.read_sysid(first[:30])


# --- push and fetch ---------------------------------------------------------------------------

@pytest.mark.parametrize('codec,magic', [('zstd', b'\x28\xb5\x2f\xfd'), ('gzip', b'\x1f\x8b'), ('none', None)])
def test_push_fetch_round_trip(repo, pg_wal, tmp_path, codec, magic, zstd_by):
    name = '000000010000000000000003'
    src = make_segment(pg_wal, name)
    result = walarchive.push(src, name, repo=repo, compression=codec)
    stored = os.path.join(repo, 'wal', today(), name + walnames.SUFFIX[codec])
    assert result['status'] == 'archived' and result['path'] == stored
    assert result['relpath'] == 'wal/%s/%s' % (today(), os.path.basename(stored))
    with open(stored, 'rb') as handle:
        head = handle.read(4)
    if magic:
        assert head.startswith(magic)
        assert os.path.getsize(stored) < SEG
    else:
        assert sha(stored) == sha(src)
    assert mode_of(stored) == 0o600
    assert mode_of(os.path.dirname(stored)) == 0o700 and mode_of(os.path.join(repo, 'wal')) == 0o700
    info = json.load(open(os.path.join(repo, 'wal', 'archive.json')))
    assert info['system_identifier'] == str(SYSID) and info['wal_segment_size'] == SEG

    dest = str(tmp_path / 'RECOVERYXLOG')
    assert walarchive.fetch(name, dest, repo=repo) == 'local'
    assert sha(dest) == sha(src)
    assert mode_of(dest) == 0o600
    assert temp_files(repo) == [] and temp_files(tmp_path) == []


def test_auto_compression_prefers_zstd_and_falls_back_to_gzip(repo, pg_wal, monkeypatch):
    assert walcodec.resolve_codec('auto') == 'zstd'
    monkeypatch.setattr(walcodec, 'zstd_program', lambda: None)
    assert walcodec.resolve_codec('auto') == 'zstd'      # libzstd alone reads and writes .zst
    monkeypatch.setattr(walcodec, '_libzstd', lambda: None)
    assert walcodec.resolve_codec('auto') == 'gzip'
    with pytest.raises(walerrors.WalArchiveError, match='libzstd or the zstd program'):
        walcodec.resolve_codec('zstd')
    name = '000000010000000000000004'
    assert walarchive.push(make_segment(pg_wal, name), name, repo=repo)['path'].endswith('.gz')


def test_compression_level_is_checked(repo, pg_wal):
    name = '000000010000000000000004'
    src = make_segment(pg_wal, name)
    with pytest.raises(walerrors.WalArchiveError, match='out of range'):
        walarchive.push(src, name, repo=repo, compression='gzip', level=12)
    assert walarchive.push(src, name, repo=repo, compression='zstd', level=19)['status'] == 'archived'


def test_identical_duplicate_push_succeeds_without_rewriting(repo, pg_wal):
    name = '000000010000000000000005'
    src = make_segment(pg_wal, name)
    yesterday = time.time() - 86400
    first = walarchive.push(src, name, repo=repo, compression='gzip', now=yesterday)
    before = os.stat(first['path'])
    # Another day and another codec: still found, still the same WAL.
    again = walarchive.push(src, name, repo=repo, compression='zstd')
    assert again['status'] == 'duplicate' and again['path'] == first['path']
    after = os.stat(first['path'])
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert [e['file'] for e in walarchive.list_archive(repo)] == [name + '.gz']
    assert temp_files(repo) == []


def test_conflicting_push_fails_and_keeps_the_original(repo, pg_wal, tmp_path):
    name = '000000010000000000000006'
    src = make_segment(pg_wal, name)
    stored = walarchive.push(src, name, repo=repo)['path']
    digest = sha(stored)
    other_dir = tmp_path / 'other'
    other_dir.mkdir()
    different = make_segment(other_dir, name, seed=b'something else')
    with pytest.raises(walerrors.Conflict) as info:
        walarchive.push(different, name, repo=repo)
    assert 'CONFLICT' in str(info.value) and stored in str(info.value)
    assert sha(stored) == digest
    assert len(walarchive.list_archive(repo)) == 1 and temp_files(repo) == []
    dest = str(tmp_path / 'RECOVERYXLOG')
    walarchive.fetch(name, dest, repo=repo)
    assert sha(dest) == sha(src)


def test_unreadable_archived_copy_is_a_conflict_not_an_overwrite(repo, pg_wal):
    name = '000000010000000000000006'
    src = make_segment(pg_wal, name)
    stored = walarchive.push(src, name, repo=repo)['path']
    with open(stored, 'r+b') as handle:
        handle.seek(10)
        handle.write(b'garbage garbage')
    digest = sha(stored)
    with pytest.raises(walerrors.Conflict, match='cannot be read'):
        walarchive.push(src, name, repo=repo)
    assert sha(stored) == digest


def test_wal_from_another_cluster_is_refused(repo, pg_wal, tmp_path):
    walarchive.push(make_segment(pg_wal, '000000010000000000000001'), '000000010000000000000001', repo=repo)
    other_dir = tmp_path / 'other'
    other_dir.mkdir()
    foreign = make_segment(other_dir, '000000010000000000000002', sysid=OTHER_SYSID)
    with pytest.raises(walerrors.WalArchiveError) as info:
        walarchive.push(foreign, '000000010000000000000002', repo=repo)
    message = str(info.value)
    assert str(SYSID) in message and str(OTHER_SYSID) in message and 'must not archive here' in message
    assert walarchive.find_segment(repo, '000000010000000000000002') is None
    # .partial files carry the header too.
    partial = make_segment(other_dir, '000000010000000000000002.partial', sysid=OTHER_SYSID)
    with pytest.raises(walerrors.WalArchiveError, match='REFUSED'):
        walarchive.push(partial, '000000010000000000000002.partial', repo=repo)
    assert temp_files(repo) == []


def test_preseeded_archive_json_is_enforced(repo, pg_wal):
    os.mkdir(os.path.join(repo, 'wal'))
    with open(os.path.join(repo, 'wal', 'archive.json'), 'w') as handle:
        json.dump({'system_identifier': str(OTHER_SYSID)}, handle)
    name = '000000010000000000000001'
    with pytest.raises(walerrors.WalArchiveError, match=str(OTHER_SYSID)):
        walarchive.push(make_segment(pg_wal, name), name, repo=repo)
    with open(os.path.join(repo, 'wal', 'archive.json'), 'w') as handle:
        handle.write('{broken')
    with pytest.raises(walerrors.WalArchiveError, match='not valid JSON'):
        walarchive.push(make_segment(pg_wal, name), name, repo=repo)
    assert walarchive.list_archive(repo) == []


def test_history_backup_and_partial_files(repo, pg_wal, tmp_path):
    history = pg_wal / '00000002.history'
    history.write_text('1\t0/3000000\tno recovery target specified\n')
    label = pg_wal / '000000010000000000000002.00000028.backup'
    label.write_text('START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n')
    # Text files have no header: accepted before any segment, no archive.json yet, stored as-is.
    for path in (history, label):
        result = walarchive.push(str(path), path.name, repo=repo, compression='zstd')
        assert result['path'].endswith(os.sep + path.name)
        assert open(result['path']).read() == path.read_text()
    assert not os.path.exists(os.path.join(repo, 'wal', 'archive.json'))
    partial_name = '000000010000000000000003.partial'
    partial = make_segment(pg_wal, partial_name)
    assert walarchive.push(partial, partial_name, repo=repo)['path'].endswith(partial_name + '.zst')
    kinds = {e['name']: e['kind'] for e in walarchive.list_archive(repo)}
    assert kinds == {'00000002.history': 'history', '000000010000000000000002.00000028.backup': 'backup',
                     partial_name: 'partial'}
    for name, src in (('00000002.history', str(history)), (partial_name, partial)):
        dest = str(tmp_path / ('restored-' + name))
        walarchive.fetch(name, dest, repo=repo)
        assert sha(dest) == sha(src)


def test_fetch_missing_is_not_found(repo, tmp_path):
    dest = str(tmp_path / 'RECOVERYXLOG')
    with pytest.raises(walerrors.NotFound):
        walarchive.fetch('000000010000000000000009', dest, repo=repo)   # no wal/ at all
    os.makedirs(os.path.join(repo, 'wal', today()))
    with pytest.raises(walerrors.NotFound):
        walarchive.fetch('00000005.history', dest, repo=repo)
    assert not os.path.exists(dest) and temp_files(tmp_path) == []


def test_fetch_of_a_corrupt_copy_is_fatal_and_leaves_nothing(repo, pg_wal, tmp_path):
    name = '000000010000000000000003'
    stored = walarchive.push(make_segment(pg_wal, name), name, repo=repo)['path']
    with open(stored, 'r+b') as handle:
        handle.truncate(os.path.getsize(stored) // 2)
    dest = str(tmp_path / 'RECOVERYXLOG')
    with pytest.raises(walerrors.FatalError):
        walarchive.fetch(name, dest, repo=repo)
    assert not os.path.exists(dest) and temp_files(tmp_path) == []
    assert walcli.main(['fetch', '--repo', repo, name, dest]) == walerrors.EXIT_FATAL


def test_fetch_of_a_zstd_copy_with_a_flipped_byte_is_fatal(repo, pg_wal, tmp_path, zstd_by):
    # zstd writes straight into the destination: its content checksum must still stop a damaged copy.
    name = '000000010000000000000003'
    stored = walarchive.push(make_segment(pg_wal, name), name, repo=repo, compression='zstd')['path']
    assert stored.endswith('.zst')
    with open(stored, 'r+b') as handle:
        handle.seek(os.path.getsize(stored) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    dest = str(tmp_path / 'RECOVERYXLOG')
    with pytest.raises(walerrors.FatalError, match='zstd could not decompress'):
        walarchive.fetch(name, dest, repo=repo)
    assert not os.path.exists(dest) and temp_files(tmp_path) == []


def test_bad_sources_are_refused(repo, pg_wal, tmp_path):
    name = '000000010000000000000003'
    short = make_segment(pg_wal, name, size=SEG // 2)
    with pytest.raises(walerrors.WalArchiveError, match='truncated'):
        walarchive.push(short, name, repo=repo)
    elsewhere = tmp_path / 'x'
    elsewhere.mkdir()
    wrong = make_segment(elsewhere, '000000010000000000000004')
    with pytest.raises(walerrors.WalArchiveError, match='wrong file'):
        walarchive.push(wrong, name, repo=repo)
    not_wal = pg_wal / 'junk'
    not_wal.write_bytes(b'\0' * SEG)
    with pytest.raises(walerrors.WalArchiveError, match='not a valid WAL segment'):
        walarchive.push(str(not_wal), name, repo=repo)
    with pytest.raises(walerrors.WalArchiveError, match='not a WAL file name'):
        walarchive.push(str(not_wal), '../../etc/cron.d/x', repo=repo)
    with pytest.raises(walerrors.WalArchiveError, match='does not exist'):
        walarchive.push(short, name, repo=str(tmp_path / 'not-mounted'))
    assert walarchive.list_archive(repo) == [] and temp_files(repo) == []


# --- failures never leave temporary files or partial archives ---------------------------------

def test_compressor_failure_leaves_no_temp_file(repo, pg_wal, monkeypatch):
    name = '000000010000000000000003'
    src = make_segment(pg_wal, name)
    monkeypatch.setattr(walcodec, '_libzstd', lambda: None)
    monkeypatch.setattr(walcodec, 'zstd_program', lambda: '/bin/false')
    with pytest.raises(walerrors.WalArchiveError, match='zstd failed'):
        walarchive.push(src, name, repo=repo, compression='zstd')
    assert walarchive.list_archive(repo) == [] and temp_files(repo) == []


class _FailingSource(object):
    """A source whose second read fails, the way a disk error would half way through a segment."""
    name = None

    def __init__(self):
        self.reads = 0

    def read(self, _size):
        self.reads += 1
        if self.reads > 1:
            raise OSError(5, 'Input/output error')
        return b'x' * 1024


def test_a_read_error_kills_the_zstd_program_and_is_the_error_raised(tmp_path, monkeypatch):
    """The compressor must not finish a truncated stream that looks complete, and the read error (not zstd's
    exit status after the kill) is what the caller sees."""
    monkeypatch.setattr(walcodec, '_libzstd', lambda: None)
    out = tmp_path / 'out.zst'
    with open(str(out), 'wb') as handle:
        with pytest.raises(OSError, match='Input/output error'):
            walcodec.compress_into(_FailingSource(), handle.fileno(), 'zstd', 3)
    assert subprocess.run(['zstd', '-t', '-q', str(out)], check=False, stderr=subprocess.DEVNULL).returncode != 0


def test_an_encrypter_that_fails_says_so_with_its_own_words(tmp_path, monkeypatch):
    script = tmp_path / 'age'
    script.write_text('#!/bin/sh\ncat >/dev/null\necho "age: no identity matched" >&2\nexit 3\n')
    script.chmod(0o755)
    monkeypatch.setattr(walcodec, '_age_or_fail', lambda: str(script))
    src = tmp_path / 'src'
    src.write_bytes(b'y' * 4096)
    with open(str(src), 'rb') as source, open(str(tmp_path / 'out'), 'wb') as handle:
        with pytest.raises(walerrors.WalArchiveError, match=r'age failed to encrypt \(exit 3\): age: no identity matched'):
            walcodec.compress_into(source, handle.fileno(), 'gzip', 1, encryption={'recipient': 'age1x'})


def test_libzstd_failure_leaves_no_temp_file(repo, pg_wal, monkeypatch):
    name = '000000010000000000000003'
    src = make_segment(pg_wal, name)
    monkeypatch.setattr(walcodec, '_ZSTD_C_CHECKSUM_FLAG', 12345)    # a parameter libzstd refuses
    with pytest.raises(walerrors.WalArchiveError, match='zstd could not enable checksums: Unsupported parameter'):
        walarchive.push(src, name, repo=repo, compression='zstd')
    assert walarchive.list_archive(repo) == [] and temp_files(repo) == []


def test_libzstd_and_the_zstd_program_read_each_others_files(repo, pg_wal, tmp_path, monkeypatch):
    first, second = '000000010000000000000003', '000000010000000000000004'
    src1, src2 = make_segment(pg_wal, first), make_segment(pg_wal, second)
    by_lib = walarchive.push(src1, first, repo=repo, compression='zstd', level=19)['path']
    # The program checks the frame (content size and checksum recorded) and gets the same bytes.
    program = subprocess.run([walcodec.zstd_program(), '-d', '-q', '-c', '--', by_lib],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    assert hashlib.sha256(program.stdout).hexdigest() == sha(src1)
    listing = subprocess.run([walcodec.zstd_program(), '-l', '-v', by_lib], stdout=subprocess.PIPE,
                             check=True, universal_newlines=True).stdout
    assert 'Check: XXH64' in listing and '(1048576 B)' in listing.split('Decompressed Size:')[1].split('\n')[0]
    # A frame from a pipe does not record its size: libzstd still streams it.
    with monkeypatch.context() as patch:
        patch.setattr(walcodec, '_libzstd', lambda: None)
        by_program = walarchive.push(src2, second, repo=repo, compression='zstd')['path']
    with open(src2, 'rb') as handle:
        piped = subprocess.run([walcodec.zstd_program(), '-q', '-c'], stdin=handle, stdout=subprocess.PIPE,
                               check=True).stdout
    with open(by_program, 'wb') as handle:
        handle.write(piped)
    for name, src in ((first, src1), (second, src2)):
        dest = str(tmp_path / name)
        walarchive.fetch(name, dest, repo=repo)
        assert sha(dest) == sha(src)
        assert walcodec.raw_sha256(walarchive.find_segment(repo, name)) == sha(src)


def test_libzstd_stream_reads_several_frames_and_refuses_a_truncated_one(tmp_path):
    libzstd = walcodec._libzstd()
    parts = []
    for seed in (b'a', b'b'):
        raw = tmp_path / seed.decode()
        raw.write_bytes(hashlib.sha256(seed).digest() * 70000)      # 2.2 MB: more than one buffer
        out = tmp_path / (seed.decode() + '.zst')
        fd = os.open(str(out), os.O_WRONLY | os.O_CREAT)
        with open(str(raw), 'rb') as src:
            walcodec._ZstdStream(libzstd).compress(src, fd, 3)
        os.close(fd)
        parts.append((raw.read_bytes(), out.read_bytes()))
    both = tmp_path / 'both.zst'
    both.write_bytes(parts[0][1] + parts[1][1])
    with open(str(both), 'rb') as handle:
        assert b''.join(bytes(c) for c in walcodec._ZstdStream(libzstd).decompress(handle, 'both')) == \
            parts[0][0] + parts[1][0]
    cut = tmp_path / 'cut.zst'
    cut.write_bytes(parts[0][1][:-3])               # the frame's checksum is missing
    with open(str(cut), 'rb') as handle:
        with pytest.raises(walerrors.WalArchiveError, match='cut: the file is truncated'):
            list(walcodec._ZstdStream(libzstd).decompress(handle, 'cut'))
    empty = tmp_path / 'empty.zst'
    empty.write_bytes(b'')
    with open(str(empty), 'rb') as handle:
        with pytest.raises(walerrors.WalArchiveError, match='truncated'):
            list(walcodec._ZstdStream(libzstd).decompress(handle, 'empty'))


def test_without_libzstd_the_program_does_the_work(repo, pg_wal, tmp_path, monkeypatch):
    monkeypatch.setattr(walcodec, '_LIBZSTD', {})
    monkeypatch.setattr(walcodec, '_LIBZSTD_SONAME', 'libzstd-not-installed.so.9')
    assert walcodec._libzstd() is None and walcodec.resolve_codec('auto') == 'zstd'
    name = '000000010000000000000003'
    src = make_segment(pg_wal, name)
    assert walarchive.push(src, name, repo=repo)['path'].endswith('.zst')
    walarchive.fetch(name, str(tmp_path / 'back'), repo=repo)
    assert sha(str(tmp_path / 'back')) == sha(src)
    monkeypatch.setattr(walcodec, '_LIBZSTD', {})
    monkeypatch.setattr(walcodec, '_LIBZSTD_MIN_VERSION', 99999999)      # a library too old
    assert walcodec._libzstd() is None


def test_libzstd_holds_the_input_to_the_size_it_recorded(tmp_path):
    """A source that grows (or shrinks) while it is compressed is an error, not a frame that lies."""
    libzstd = walcodec._libzstd()
    small, large = tmp_path / 'small', tmp_path / 'large'
    small.write_bytes(b'x' * 1000)
    large.write_bytes(b'x' * 5000)

    class Growing(object):
        def __init__(self):
            self.sized, self.data = open(str(small), 'rb'), open(str(large), 'rb')

        def fileno(self):
            return self.sized.fileno()

        def tell(self):
            return 0

        def readinto(self, buffer):
            return self.data.readinto(buffer)

    source = Growing()
    fd = os.open(str(tmp_path / 'out.zst'), os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(walerrors.WalArchiveError, match='zstd could not compress: Src size is incorrect'):
            walcodec._ZstdStream(libzstd).compress(source, fd, 3)
    finally:
        os.close(fd)
        source.sized.close()
        source.data.close()


def test_fsync_failure_leaves_no_temp_file(repo, pg_wal, monkeypatch):
    name = '000000010000000000000003'
    src = make_segment(pg_wal, name)
    walarchive.push(make_segment(pg_wal, '000000010000000000000002'), '000000010000000000000002', repo=repo)

    def broken_fsync(fd):
        raise OSError(errno.EIO, 'Input/output error')

    monkeypatch.setattr(walarchive.os, 'fsync', broken_fsync)
    with pytest.raises(OSError):
        walarchive.push(src, name, repo=repo)
    monkeypatch.undo()
    assert walarchive.find_segment(repo, name) is None and temp_files(repo) == []
    assert walcli.main(['push', '--repo', repo, src, name]) == 0


def test_source_read_error_does_not_publish_a_truncated_copy(repo, pg_wal, monkeypatch, zstd_by):
    name = '000000010000000000000003'
    src = make_segment(pg_wal, name)
    real_compress = walcodec.compress_into

    class FailingReader(object):
        def __init__(self, handle):
            self.handle, self.calls = handle, 0

        def fileno(self):
            return self.handle.fileno()

        def tell(self):
            return self.handle.tell()

        def read(self, size):
            self.calls += 1
            if self.calls > 1:
                raise OSError(errno.EIO, 'read error')
            return self.handle.read(size // 4)

        def readinto(self, buffer):
            data = self.read(len(buffer))
            buffer[:len(data)] = data
            return len(data)

    monkeypatch.setattr(walarchive, 'compress_into',
                        lambda src_, fd, codec, level, encryption=None, digest=True: real_compress(
                            FailingReader(src_), fd, codec, level, encryption, digest))
    with pytest.raises(OSError):
        walarchive.push(src, name, repo=repo, compression='zstd')
    assert walarchive.list_archive(repo) == [] and temp_files(repo) == []


def test_stale_temp_file_of_a_dead_push_is_removed(repo, pg_wal):
    name = '000000010000000000000003'
    proc = subprocess.Popen(['true'])
    proc.wait()
    directory = os.path.join(repo, 'wal', today())
    os.makedirs(directory)
    stale = os.path.join(directory, '.tmp-%s.zst.%d' % (name, proc.pid))
    open(stale, 'wb').close()
    old = time.time() - 2 * waldurable.STALE_TMP_S
    os.utime(stale, (old, old))
    walarchive.push(make_segment(pg_wal, name), name, repo=repo, compression='zstd')
    assert not os.path.exists(stale)


def test_list_archive_and_status(repo, pg_wal):
    names = walnames.wal_range('0000000100000000000000FE', '000000010000000000000100', seg_size=SEG)
    for n in names:
        walarchive.push(make_segment(pg_wal, n), n, repo=repo, now=time.time() - 86400 if n == names[0] else None)
    (pg_wal / '00000002.history').write_text('1\t0/3000000\tx\n')
    walarchive.push(str(pg_wal / '00000002.history'), '00000002.history', repo=repo)
    entries = walarchive.list_archive(repo)
    assert [e['name'] for e in entries] == names + ['00000002.history']
    assert set(entries[0]) >= {'name', 'file', 'date', 'path', 'size', 'compression', 'kind'}
    assert all(os.path.getsize(e['path']) == e['size'] for e in entries)
    summary = walarchive.status(repo)
    assert summary['segments'] == 3 and summary['history'] == 1 and summary['files'] == 4
    assert summary['newest_segment'] == '000000010000000000000100'
    assert summary['oldest_segment'] == names[0]
    assert summary['system_identifier'] == str(SYSID)
    assert summary['newest_segment_archived_at'].endswith('Z') and len(summary['date_dirs']) in (1, 2)


# --- the command line, run the way PostgreSQL runs it -------------------------------------------

def system_python_env():
    """No virtualenv, no PYTHONPATH: what the postmaster's environment offers at most."""
    return {'PATH': '/usr/bin:/bin', 'LANG': 'C.UTF-8', 'HOME': '/nonexistent'}


def cli(*args, **kwargs):
    return subprocess.run([SYSTEM_PYTHON, '-S', '-c', LAUNCH] + list(args), env=kwargs.pop('env', system_python_env()),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          cwd=kwargs.pop('cwd', None), check=False)


def test_cli_with_the_system_python(repo, pg_wal, tmp_path):
    name = '000000010000000000000003'
    src = make_segment(pg_wal, name)
    proc = cli('push', '--repo', repo, src, name)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ''
    assert os.path.exists(os.path.join(repo, 'wal', today(), name + '.zst'))

    proc = cli('push', '--repo', repo, src, name)
    assert proc.returncode == 0 and 'identical' in proc.stderr

    other = tmp_path / 'other'
    other.mkdir()
    proc = cli('push', '--repo', repo, make_segment(other, name, seed=b'different'), name)
    assert proc.returncode == 1 and 'CONFLICT' in proc.stderr

    proc = cli('push', '--repo', repo, make_segment(other, '000000010000000000000004', sysid=OTHER_SYSID),
               '000000010000000000000004')
    assert proc.returncode == 1 and 'system identifier' in proc.stderr and str(OTHER_SYSID) in proc.stderr

    # restore_command runs in the data directory with a relative %p.
    proc = cli('fetch', '--repo', repo, name, 'pg_wal/RECOVERYXLOG', cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert sha(str(pg_wal / 'RECOVERYXLOG')) == sha(src)

    proc = cli('fetch', '--repo', repo, '000000010000000000000009', str(tmp_path / 'x'))
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    proc = cli('fetch', '--repo', repo, '00000002.history', str(tmp_path / 'x'))
    assert proc.returncode == 1 and proc.stderr == ''
    assert not os.path.exists(str(tmp_path / 'x'))

    proc = cli('status', '--repo', repo)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary['segments'] == 1 and summary['newest_segment'] == name
    assert summary['system_identifier'] == str(SYSID)

    assert cli('push', '--repo', repo, src).returncode == 2
    assert cli('frobnicate').returncode == 2


def test_cli_config_file(repo, pg_wal, tmp_path):
    config = tmp_path / 'walarchive.json'
    config.write_text(json.dumps({'repo': repo, 'compression': 'gzip', 'level': 1}))
    name = '000000010000000000000003'
    src = make_segment(pg_wal, name)
    proc = cli('push', '--config', str(config), src, name)
    assert proc.returncode == 0, proc.stderr
    assert walarchive.find_segment(repo, name).endswith('.gz')
    proc = cli('fetch', '--config', str(config), name, str(tmp_path / 'back'))
    assert proc.returncode == 0 and sha(str(tmp_path / 'back')) == sha(src)
    config.write_text(json.dumps({'repo': repo, 'compresion': 'gzip'}))
    proc = cli('push', '--config', str(config), src, name)
    assert proc.returncode == 1 and 'compresion' in proc.stderr


def test_cli_fetch_of_a_corrupt_copy_exits_fatal(repo, pg_wal, tmp_path):
    name = '000000010000000000000003'
    stored = walarchive.push(make_segment(pg_wal, name), name, repo=repo)['path']
    with open(stored, 'r+b') as handle:
        handle.truncate(100)
    proc = cli('fetch', '--repo', repo, name, str(tmp_path / 'RECOVERYXLOG'))
    assert proc.returncode == walerrors.EXIT_FATAL >= 126, proc.stderr
    assert 'ERROR' in proc.stderr and not os.path.exists(str(tmp_path / 'RECOVERYXLOG'))


def test_cli_s3_without_boto3_is_a_clear_error(repo, pg_wal):
    has_boto3 = subprocess.run([SYSTEM_PYTHON, '-c', 'import boto3'], env=system_python_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False).returncode == 0
    if has_boto3:
        pytest.skip('/usr/bin/python3 has boto3 here')
    name = '000000010000000000000003'
    proc = cli('push', '--repo', repo, '--s3-bucket', 'b', make_segment(pg_wal, name), name)
    assert proc.returncode == 1 and 'boto3 is not installed' in proc.stderr and 'python3-boto3' in proc.stderr
    # Nothing half-done locally either: the S3 setting is checked before anything is written.
    assert walarchive.list_archive(repo) == []


def test_the_package_imports_nothing_outside_the_standard_library():
    package = os.path.join(PACKAGE_PARENT, 'wal')
    for name in sorted(os.listdir(package)):
        if name.endswith('.py'):
            with open(os.path.join(package, name)) as handle:
                imports = [line for line in handle.read().splitlines() if line.startswith(('import', 'from'))]
            assert not [line for line in imports if 'ansible' in line], name
    # -I: no PYTHONPATH, no user site, no virtualenv: the host's Python alone.
    proc = subprocess.run([SYSTEM_PYTHON, '-I', '-S', '-c', LAUNCH, '--help'], env=system_python_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert proc.returncode == 0 and 'push' in proc.stdout, proc.stderr


def test_a_push_imports_neither_json_nor_argparse_nor_re(repo, pg_wal):
    """The installed line with generated settings: nothing parsed per segment (each import is paid per push)."""
    name = '000000010000000000000003'
    src = make_segment(pg_wal, name)
    walarchive.write_archive_info(repo, walnames.read_sysid(open(src, 'rb').read(64)))
    probe = ('import sys; sys.path.insert(0, %r); from wal.cli import main; '
             'rc = main(["push", %r, %r], {"repo": %r, "compression": "gzip"}); '
             'print(rc, sorted(m for m in ("json", "argparse", "re", "shutil", "subprocess") if m in sys.modules))'
             % (PACKAGE_PARENT, src, name, repo))
    proc = subprocess.run([SYSTEM_PYTHON, '-S', '-c', probe], env=system_python_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert proc.stdout.split() == ['0', '[]'], proc.stdout + proc.stderr
    assert walarchive.find_segment(repo, name)


def test_the_archive_identity_is_found_without_a_parser_and_parsed_when_unusual(repo):
    walarchive.write_archive_info(repo, 7312345678901234567, 16 * 1024 * 1024)
    assert walarchive.recorded_sysid(repo) == '7312345678901234567'
    assert walarchive.read_archive_info(repo)['system_identifier'] == '7312345678901234567'
    path = os.path.join(walarchive.wal_dir(repo), walnames.INFO_FILE)
    # Written by hand, on one line, with the identifier as a number: the parser decides.
    with open(path, 'w') as handle:
        handle.write('{"system_identifier":7312345678901234568,"format_version":1}')
    assert walarchive.recorded_sysid(repo) == '7312345678901234568'
    with open(path, 'w') as handle:
        handle.write('{"system_identifier": "7312345678901234567", "system_identifier": "1"}')
    assert walarchive.recorded_sysid(repo) == '1'      # what json.loads says, not the first match
    with open(path, 'w') as handle:
        handle.write('{"format_version": 1')
    with pytest.raises(walerrors.WalArchiveError, match='is not valid JSON'):
        walarchive.recorded_sysid(repo)


def test_generated_settings_are_python_that_reads_back_the_same(tmp_path):
    settings = {'repo': '/var/backups/it\'s "here"', 'compression': 'zstd', 'level': 5, 's3_bucket': 'b',
                's3_prefix': 'p/', 's3_sse': False, 'encryption_key_files': ['/etc/k 1', '/etc/k2']}
    source = walcli.settings_source(settings)
    namespace = {}
    exec(compile(source, 'pgbackup_wal_settings.py', 'exec'), namespace)   # pylint: disable=exec-used
    assert namespace['SETTINGS'] == dict((k, settings.get(k)) for k in walcli.SETTINGS_KEYS)
    with pytest.raises(walerrors.WalArchiveError, match='does not know the settings colour'):
        walcli.settings_source({'colour': 'blue'})
    with pytest.raises(walerrors.WalArchiveError, match='setting level must be'):
        walcli.settings_source({'level': 1.5})


@pytest.mark.parametrize('argv', [['push', 'a', 'b', '--s3-only'], ['push', '--repo', '/r', 'a', 'b'], ['fetch', '-h']])
def test_anything_but_the_installed_lines_goes_to_argparse(argv, monkeypatch):
    seen = []
    real = walcli._parser

    def parser():
        seen.append(1)
        return real()
    monkeypatch.setattr(walcli, '_parser', parser)
    try:
        walcli.main(argv, {'repo': '/nonexistent'})
    except SystemExit:
        pass
    assert seen == [1]


def test_concurrent_push_that_loses_the_race_never_replaces(repo, pg_wal, tmp_path, monkeypatch):
    """Two pushes of one name both see no copy; link(2) lets only one publish."""
    name = '000000010000000000000003'
    src = make_segment(pg_wal, name)
    stored = walarchive.push(src, name, repo=repo)['path']
    digest = sha(stored)
    monkeypatch.setattr(walarchive, 'find_segment', lambda repo_, name_: None)
    assert walarchive.push(src, name, repo=repo)['status'] == 'duplicate'
    other = tmp_path / 'other'
    other.mkdir()
    with pytest.raises(walerrors.Conflict):
        walarchive.push(make_segment(other, name, seed=b'different'), name, repo=repo)
    assert sha(stored) == digest and temp_files(repo) == []


def test_a_new_segment_is_hashed_only_when_there_is_something_to_compare(repo, pg_wal, monkeypatch, zstd_by):
    # Hashing 16 MB costs a core for ~10 ms of every push; only a re-push (or an S3 mirror) needs it.
    name = '000000010000000000000003'
    src = make_segment(pg_wal, name)
    hashed = []
    real = walcodec.new_sha256

    def counted():
        hashed.append(1)
        return real()
    monkeypatch.setattr(walarchive, 'new_sha256', counted)   # the source's hash, in push
    monkeypatch.setattr(walcodec, 'new_sha256', counted)     # the archived copy's, in the codec
    for codec in ('zstd', 'gzip'):
        other_repo = os.path.join(repo, codec)
        os.makedirs(other_repo)
        assert walarchive.push(src, name, repo=other_repo, compression=codec)['status'] == 'archived'
        assert hashed == [], codec
        assert walarchive.push(src, name, repo=other_repo, compression=codec)['status'] == 'duplicate'
        assert len(hashed) == 2, codec     # the source and the archived copy
        del hashed[:]
        walarchive.fetch(name, os.path.join(other_repo, 'fetched'), repo=other_repo)
        with open(src, 'rb') as a, open(os.path.join(other_repo, 'fetched'), 'rb') as b:
            assert a.read() == b.read()


@pytest.mark.parametrize('stored, expected', [
    ('000000010000000000000003', ('000000010000000000000003', 'none', False)),
    ('000000010000000000000003.zst', ('000000010000000000000003', 'zstd', False)),
    ('000000010000000000000003.gz.age', ('000000010000000000000003', 'gzip', True)),
    ('000000010000000000000003.partial.zst.age', ('000000010000000000000003.partial', 'zstd', True)),
    ('00000002.history.zst', ('00000002.history', 'zstd', False)),
    ('00000002.history.age', ('00000002.history', 'none', True)),
    ('000000010000000000000003.00000028.backup.gz', ('000000010000000000000003.00000028.backup', 'gzip', False)),
    ('modulo_full_20261124_020000.dump.lz4.age', ('modulo_full_20261124_020000.dump', 'lz4', True)),
])
def test_one_parser_for_every_stored_suffix(stored, expected):
    assert walnames.split_stored_name(stored) == expected
    assert walnames.codec_of(stored) == expected[1] and walnames.name_of_stored(stored) == expected[0]


def test_list_archive_and_the_backup_readers_agree_on_suffixes(tmp_path):
    from ansible_collections.modulo.pgbackup.plugins.module_utils import compression
    directory = tmp_path / 'wal' / '20261124'
    directory.mkdir(parents=True)
    files = ['000000010000000000000003.zst.age', '000000010000000000000004.partial.gz', '00000002.history.age',
             '000000010000000000000003.00000028.backup.zst']
    for name in files:
        (directory / name).write_bytes(b'x')
    listed = dict((e['file'], (e['name'], e['kind'], e['compression'])) for e in walarchive.list_archive(str(tmp_path)))
    assert listed == {
        files[0]: ('000000010000000000000003', 'segment', 'zstd'),
        files[1]: ('000000010000000000000004.partial', 'partial', 'gzip'),
        files[2]: ('00000002.history', 'history', 'none'),
        files[3]: ('000000010000000000000003.00000028.backup', 'backup', 'zstd')}
    for name in files:
        assert compression.codec_of_path(str(directory / name)) == listed[name][2]
