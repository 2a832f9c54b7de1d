# -*- coding: utf-8 -*-
"""untar: the in-process unpacking of base backups.

Archives are written by GNU tar and by Python's tarfile (ustar), fed in
awkward chunk sizes, and the unpacked tree is compared with what GNU tar
itself unpacks.  Real pg_basebackup output is unpacked by the integration
tests (PITR, drills with pg_verifybackup, emergency recovery).
"""

import io
import os
import stat
import subprocess
import tarfile

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import scratch, untar


def make_tree(root):
    """A small data directory: nested dirs, an empty file, a file over one block, a big one, a symlink."""
    os.makedirs(os.path.join(root, 'base', '1'))
    os.makedirs(os.path.join(root, 'pg_wal', 'archive_status'))
    with open(os.path.join(root, 'PG_VERSION'), 'w') as handle:
        handle.write('15\n')
    open(os.path.join(root, 'base', '1', 'empty'), 'w').close()
    with open(os.path.join(root, 'base', '1', '16384'), 'wb') as handle:
        handle.write(bytes(range(256)) * 1031)          # not a multiple of 512
    with open(os.path.join(root, 'base', '1', 'big'), 'wb') as handle:
        handle.write(os.urandom(3 * 1024 * 1024 + 17))
    os.chmod(os.path.join(root, 'PG_VERSION'), 0o640)
    os.symlink('/somewhere/else', os.path.join(root, 'pg_tblspc_link'))
    stamp = 1700000000
    os.utime(os.path.join(root, 'base', '1', '16384'), (stamp, stamp))


def tree(root):
    """Everything that matters about a tree: kind, mode, size, content, link target, file mtimes."""
    found = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            rel = os.path.relpath(path, root)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                found[rel] = ('link', os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[rel] = ('dir', stat.S_IMODE(info.st_mode))
            else:
                with open(path, 'rb') as handle:
                    found[rel] = ('file', stat.S_IMODE(info.st_mode), int(info.st_mtime), handle.read())
    return found


def gnu_tar(src, dest_file):
    subprocess.run(['tar', '--format=ustar', '-c', '-f', dest_file, '-C', src, '.'], check=True)


def chunked(data, size):
    return (data[i:i + size] for i in range(0, len(data), size))


@pytest.fixture
def source(tmp_path):
    root = str(tmp_path / 'src')
    os.mkdir(root)
    make_tree(root)
    archive = str(tmp_path / 'base.tar')
    gnu_tar(root, archive)
    with open(archive, 'rb') as handle:
        return root, handle.read()


@pytest.mark.parametrize('chunk', [1, 511, 512, 4096, 1024 * 1024])
def test_unpacks_what_gnu_tar_unpacks(source, tmp_path, chunk):
    root, data = source
    if chunk == 1:
        data_chunks = chunked(data[:200000], 1)      # byte by byte through the headers, then the rest
        data_chunks = list(data_chunks) + [data[200000:]]
    else:
        data_chunks = chunked(data, chunk)
    dest = str(tmp_path / 'dest')
    os.mkdir(dest)
    stats = untar.extract(data_chunks, dest)
    assert tree(dest) == tree(root)
    assert stats['files'] == 4
    assert stats['bytes'] == sum(len(entry[3]) for entry in tree(root).values() if entry[0] == 'file')


def test_python_tarfile_ustar_with_prefix(tmp_path):
    """Names longer than 100 bytes are split into ustar's prefix and name."""
    buf = io.BytesIO()
    long_dir = 'd' * 90 + '/' + 'e' * 50
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(long_dir + '/file')
        info.size = 5
        info.mode = 0o600
        tar.addfile(info, io.BytesIO(b'hello'))
    dest = str(tmp_path / 'dest')
    os.mkdir(dest)
    untar.extract([buf.getvalue()], dest)
    with open(os.path.join(dest, long_dir, 'file'), 'rb') as handle:
        assert handle.read() == b'hello'


def test_owner_is_set(source, tmp_path):
    root, data = source
    dest = str(tmp_path / 'dest')
    os.mkdir(dest)
    untar.extract([data], dest, uid=os.getuid(), gid=os.getgid())
    assert all(os.lstat(os.path.join(b, n)).st_uid == os.getuid()
               for b, ds, fs in os.walk(dest) for n in ds + fs)


def archive(*members):
    """A ustar archive of (name, type, data, linkname) members, written by Python's tarfile."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=tarfile.USTAR_FORMAT) as tar:
        for name, kind, data, linkname in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = linkname
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


def one_member(name, kind=tarfile.REGTYPE, data=b'x', linkname=''):
    return archive((name, kind, data, linkname))


@pytest.mark.parametrize('name', ['../escape', 'a/../../escape', '/etc/escape'])
def test_refuses_names_outside(tmp_path, name):
    dest = str(tmp_path / 'dest')
    os.mkdir(dest)
    with pytest.raises(untar.UntarError, match='outside the data directory'):
        untar.extract([one_member(name)], dest)
    assert not os.path.exists(str(tmp_path / 'escape'))


def test_refuses_writing_through_an_archived_symlink(tmp_path):
    outside = tmp_path / 'outside'
    outside.mkdir()
    dest = str(tmp_path / 'dest')
    os.mkdir(dest)
    data = archive(('pg_wal', tarfile.SYMTYPE, b'', str(outside)),
                   ('pg_wal/000000010000000000000001', tarfile.REGTYPE, b'x', ''))
    with pytest.raises(untar.UntarError, match='through the symbolic link pg_wal'):
        untar.extract([data], dest)
    assert os.listdir(str(outside)) == []


@pytest.mark.parametrize('kind, what', [(tarfile.LNKTYPE, 'hard link'), (tarfile.FIFOTYPE, 'FIFO'),
                                        (tarfile.CHRTYPE, 'character device')])
def test_refuses_what_a_base_backup_does_not_contain(tmp_path, kind, what):
    dest = str(tmp_path / 'dest')
    os.mkdir(dest)
    with pytest.raises(untar.UntarError, match=what):
        untar.extract([one_member('thing', kind, linkname='PG_VERSION')], dest)


def test_truncated_stream_is_an_error(source, tmp_path):
    _root, data = source
    for cut in (100, 3 * 512 + 7, len(data) // 2):
        dest = str(tmp_path / ('dest%d' % cut))
        os.mkdir(dest)
        with pytest.raises(untar.UntarError, match='truncated'):
            untar.extract(chunked(data[:cut], 4096), dest)


def test_damaged_header_is_an_error(source, tmp_path):
    _root, data = source
    damaged = bytearray(data)
    damaged[10] ^= 0x01                       # inside the first member's name
    dest = str(tmp_path / 'dest')
    os.mkdir(dest)
    with pytest.raises(untar.UntarError, match='damaged tar header at byte 0'):
        untar.extract([bytes(damaged)], dest)


def test_existing_file_is_not_overwritten(source, tmp_path):
    _root, data = source
    dest = str(tmp_path / 'dest')
    os.mkdir(dest)
    with open(os.path.join(dest, 'PG_VERSION'), 'w') as handle:
        handle.write('mine')
    with pytest.raises(OSError):
        untar.extract([data], dest)
    with open(os.path.join(dest, 'PG_VERSION')) as handle:
        assert handle.read() == 'mine'


def test_write_error_stops_the_unpacking(source, tmp_path, monkeypatch):
    """A failing write (a full disk) in the writer thread surfaces in the caller, and no descriptor leaks."""
    _root, data = source
    dest = str(tmp_path / 'dest')
    os.mkdir(dest)
    real_write = os.write

    def full_disk(fd, view):
        if len(view) > 1000:
            raise OSError(28, 'No space left on device')
        return real_write(fd, view)
    monkeypatch.setattr(untar.os, 'write', full_disk)
    before = len(os.listdir('/proc/self/fd'))
    with pytest.raises(OSError, match='No space left'):
        untar.extract(chunked(data, 65536), dest)
    assert len(os.listdir('/proc/self/fd')) == before


@pytest.mark.parametrize('field, value', [(b'0000644\0', 0o644), (b'00000000000\0', 0), (b'        ', 0),
                                          (b'\x80' + b'\0' * 6 + b'\x02' + b'\0' * 3 + b'\x05', (2 << 32) + 5)])
def test_numbers(field, value):
    assert untar.parse_number(field) == value


def test_extract_base_uses_it_for_zstd_gzip_and_plain(source, tmp_path):
    """scratch.extract_base unpacks each codec a base backup may have, through walarchive's reader."""
    root, data = source
    for suffix, argv in (('', None), ('.zst', ['zstd', '-q', '-c']), ('.gz', ['gzip', '-c'])):
        base_dir = tmp_path / ('backup' + suffix)
        base_dir.mkdir()
        stored = base_dir / ('base.tar' + suffix)
        stored.write_bytes(subprocess.run(argv, input=data, stdout=subprocess.PIPE, check=True).stdout
                           if argv else data)
        dest = str(tmp_path / ('dest' + suffix))
        scratch.extract_base(str(base_dir), dest)
        assert tree(dest) == tree(root)


def test_extract_base_reports_a_corrupt_zstd_frame(source, tmp_path):
    _root, data = source
    base_dir = tmp_path / 'backup'
    base_dir.mkdir()
    packed = bytearray(subprocess.run(['zstd', '-q', '-c'], input=data, stdout=subprocess.PIPE,
                                      check=True).stdout)
    packed[len(packed) // 2] ^= 0xff
    (base_dir / 'base.tar.zst').write_bytes(bytes(packed))
    with pytest.raises(scratch.ScratchError, match='cannot unpack'):
        scratch.extract_base(str(base_dir), str(tmp_path / 'dest'))


def test_large_files_are_flushed_small_ones_left_to_postgresql(source, tmp_path, monkeypatch):
    _root, data = source
    flushed = []
    real_fdatasync = os.fdatasync

    def recording(fd):
        flushed.append(os.fstat(fd).st_size)
        return real_fdatasync(fd)
    monkeypatch.setattr(untar.os, 'fdatasync', recording)
    dest = str(tmp_path / 'dest')
    os.mkdir(dest)
    untar.extract([data], dest)
    assert flushed == [3 * 1024 * 1024 + 17]          # 'big' only, not PG_VERSION, 16384 or empty
    flushed[:] = []
    other = str(tmp_path / 'other')
    os.mkdir(other)
    untar.extract([data], other, sync=False)
    assert flushed == []


@pytest.mark.parametrize('chunk', [1, 700, 1024 * 1024])
def test_walk_reports_each_member_and_its_data_as_gnu_tar_wrote_them(source, chunk):
    """The one reader under extract and the delta restore: every member in the archive's order, its data
    in pieces whose last one says so, an empty file as one empty last piece; what tarfile lists."""
    _root, data = source
    events = []
    pieces = {}

    def on_member(member):
        events.append((member.path, member.kind, member.size, member.target))
        pieces[member.path] = []

    def on_data(piece, last):
        pieces[events[-1][0]].append((bytes(piece), last))

    untar.walk(chunked(data, chunk), on_member, on_data)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        expected = [(os.path.normpath(m.name) if m.name != '.' else '', m.type, m.size if m.isfile() else 0,
                     m.linkname) for m in archive.getmembers()]
        contents = dict((os.path.normpath(m.name), archive.extractfile(m).read())
                        for m in archive.getmembers() if m.isfile())
    assert events == expected
    for path, content in contents.items():
        got = pieces[path]
        assert b''.join(p for p, _last in got) == content
        assert [last for _p, last in got] == [False] * (len(got) - 1) + [True]
        assert all(p for p, _last in got) or content == b''
    assert pieces[os.path.join('base', '1', 'empty')] == [(b'', True)]
    for path, kind, _size, _target in events:
        if kind != tarfile.REGTYPE:
            assert pieces[path] == []


def test_walk_refuses_a_path_through_an_archived_symlink_before_calling_back():
    data = archive(('pg_wal', tarfile.SYMTYPE, b'', '/elsewhere'), ('pg_wal/x', tarfile.REGTYPE, b'x', ''))
    seen = []
    with pytest.raises(untar.UntarError, match='through the symbolic link pg_wal'):
        untar.walk([data], lambda m: seen.append(m.path), lambda piece, last: None)
    assert seen == ['pg_wal']


@pytest.mark.parametrize('name, streams', [
    ('base.tar.zst', True), ('base.tar.gz', True), ('base.tar', True),
    ('base.tar.zst.age', True), ('base.tar.gz.age', True), ('base.tar.lz4', False), ('base.tar.lz4.age', False)])
def test_only_archives_read_in_this_process_are_streamed_from_s3(name, streams):
    from ansible_collections.modulo.pgbackup.plugins.module_utils import scratch
    assert scratch.streams_in_process(name) is streams


def test_a_base_backup_with_tablespaces_or_without_its_archive_is_refused_before_it_is_streamed():
    from ansible_collections.modulo.pgbackup.plugins.module_utils import scratch
    assert scratch.stream_archive(['backup_manifest', 'base.tar.zst', 'pg_wal.tar.zst'], 's3://b/base/x') == 'base.tar.zst'
    assert scratch.stream_archive(['backup_manifest', 'base.tar.lz4'], 's3://b/base/x') is None
    with pytest.raises(scratch.ScratchError, match=r's3://b/base/x contains tablespaces \(16384.tar.zst\)'):
        scratch.stream_archive(['base.tar.zst', '16384.tar.zst'], 's3://b/base/x')
    with pytest.raises(scratch.ScratchError, match='holds no base.tar'):
        scratch.stream_archive(['backup_manifest'], 's3://b/base/x')
