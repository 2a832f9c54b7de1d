# -*- coding: utf-8 -*-
"""The storage interface (wal/store.py): the local directory and S3 (loopback moto server) answer the
same calls the same way, and the listings every reader uses come out of it."""

import io
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import repository, retention_s3, s3store
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import archive as walarchive, s3 as wals3, store as walstore

MODULE_UTILS = os.path.dirname(os.path.dirname(os.path.abspath(walstore.__file__)))
FILES = {'wal/20261201/000000010000000000000001.zst': b'one' * 1000,
         'wal/20261202/000000010000000000000002': b'two' * 5000,
         'wal/archive.json': b'{}\n',
         'full/modulo_full_20261201_020000.sql.gz': b'\x1f\x8bdump'}


def local_store(base):
    os.mkdir(os.path.join(str(base), 'repo'), 0o700)
    return walstore.LocalStore(os.path.join(str(base), 'repo'))


@pytest.fixture(params=['local', 's3'])
def store(request, tmp_path):
    if request.param == 'local':
        return local_store(tmp_path)
    bucket = request.getfixturevalue('s3_bucket')
    return wals3.S3Archive(bucket['name'], prefix='fleet/db1/', endpoint_url=bucket['url'])


def test_put_list_open_delete_round_trip(store):
    before = time.time() - 60
    for relpath, data in sorted(FILES.items()):
        store.put(relpath, io.BytesIO(data))
    listed = store.list('wal/')
    assert [i['relpath'] for i in listed] == sorted(r for r in FILES if r.startswith('wal/'))
    assert [i['size'] for i in listed] == [len(FILES[i['relpath']]) for i in listed]
    assert all(i['mtime'] > before for i in listed)
    assert [i['relpath'] for i in store.list()] == sorted(FILES)
    assert store.list('base/') == []
    for relpath, data in FILES.items():
        handle = store.open(relpath)
        try:
            assert handle.read() == data
        finally:
            handle.close()
    store.delete('wal/archive.json')
    store.delete('wal/archive.json')        # already gone is fine
    assert 'wal/archive.json' not in [i['relpath'] for i in store.list('wal/')]


def test_wal_entries_are_the_same_from_either_store(store):
    for relpath, data in FILES.items():
        store.put(relpath, io.BytesIO(data))
    entries = walarchive.wal_entries(store)
    assert [(e['name'], e['date'], e['compression'], e['size'], e['kind']) for e in entries] == [
        ('000000010000000000000001', '20261201', 'zstd', 3000, 'segment'),
        ('000000010000000000000002', '20261202', 'none', 15000, 'segment')]
    for entry in entries:
        assert entry['relpath'] == 'wal/%s/%s' % (entry['date'], entry['file'])


def test_a_local_put_never_replaces_and_leaves_no_temporary(tmp_path):
    store = local_store(tmp_path)
    store.put('wal/20261201/seg', io.BytesIO(b'first'))
    with pytest.raises(FileExistsError):
        store.put('wal/20261201/seg', io.BytesIO(b'second'))
    with store.open('wal/20261201/seg') as handle:
        assert handle.read() == b'first'
    assert os.listdir(str(tmp_path / 'repo' / 'wal' / '20261201')) == ['seg']


def test_an_unreadable_local_prefix_raises_instead_of_listing_empty():
    """Fetch and retention must never take an archive they cannot read for an empty one. Root reads a 000
    directory, so the listing runs as postgres (the archiver's user) in a process of its own."""
    base = tempfile.mkdtemp(prefix='modulo-store-')
    try:
        os.chmod(base, 0o755)
        store = local_store(base)
        store.put('wal/20261201/seg', io.BytesIO(b'x'))
        if os.geteuid() == 0:
            subprocess.check_call(['chown', '-R', 'postgres:', store.root])
        os.chmod(os.path.join(store.root, 'wal'), 0)
        program = ('import sys; sys.path.insert(0, %r)\n'
                   'from wal.store import LocalStore\n'
                   'try:\n    LocalStore(%r).list("wal/")\nexcept PermissionError:\n    sys.exit(3)\n'
                   % (MODULE_UTILS, store.root))
        argv = ['python3', '-c', program]
        proc = subprocess.run((['runuser', '-u', 'postgres', '--'] if os.geteuid() == 0 else []) + argv,
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 3, proc.stderr
    finally:
        os.chmod(os.path.join(base, 'repo', 'wal'), 0o700)
        shutil.rmtree(base)


def test_merged_archive_and_backup_listing_mark_where_each_copy_is(tmp_path, s3_bucket):
    local = local_store(tmp_path)
    root = local.root
    remote = wals3.S3Archive(s3_bucket['name'], prefix='p/', endpoint_url=s3_bucket['url'])
    local.put('wal/20261201/000000010000000000000001', io.BytesIO(b'a'))
    local.put('wal/20261201/000000010000000000000002', io.BytesIO(b'b'))
    remote.put('wal/20261201/000000010000000000000002', io.BytesIO(b'b'))
    remote.put('wal/20261201/000000010000000000000003.zst', io.BytesIO(b'c'))
    old = time.time() - 3600
    os.utime(local.path('wal/20261201/000000010000000000000002'), (old, old))
    merged = walarchive.merged_archive(root, remote)
    assert [(e['name'], e['location']) for e in merged] == [
        ('000000010000000000000001', 'local'), ('000000010000000000000002', 'both'), ('000000010000000000000003', 's3')]
    assert merged[1]['path'] == local.path('wal/20261201/000000010000000000000002')   # read from here
    assert merged[1]['mtime'] == old                                                  # safe since the earlier copy
    assert merged[2]['path'] == 'p/wal/20261201/000000010000000000000003.zst'         # the key

    s3 = s3store.S3Store(s3_bucket['name'], prefix='p/', endpoint_url=s3_bucket['url'])
    repo = repository.Repository(root).ensure()
    for name, where in (('modulo_full_20261201_020000', 'local'), ('modulo_full_20261202_020000', 'both')):
        with open(repo.path('full', name + '.sql.gz.meta'), 'w') as handle:
            handle.write('{"name": "%s", "file": "%s.sql.gz", "started_at": "%s"}' % (name, name, name[12:]))
    for name in ('modulo_full_20261202_020000', 'modulo_full_20261203_020000'):
        remote.put('full/%s.sql.gz.meta' % name, io.BytesIO(
            ('{"name": "%s", "file": "%s.sql.gz", "started_at": "%s"}' % (name, name, name[12:])).encode()))
    listed = repository.with_s3(repo.scan('full')[0], s3, 'full')
    assert [(m['name'], m['location']) for m in listed] == [
        ('modulo_full_20261201_020000', 'local'), ('modulo_full_20261202_020000', 'both'),
        ('modulo_full_20261203_020000', 's3')]
    assert listed[1]['s3_uri'] == 's3://%s/p/full/modulo_full_20261202_020000.sql.gz' % s3_bucket['name']
    assert listed[1]['path'] == repo.path('full', 'modulo_full_20261202_020000.sql.gz')
    assert listed[2]['path'] is None


def test_the_collections_s3_store_lists_and_deletes_in_batches_through_the_same_listing(s3_bucket):
    s3 = s3store.S3Store(s3_bucket['name'], prefix='p/', endpoint_url=s3_bucket['url'])
    files = wals3.S3Archive(s3_bucket['name'], prefix='p/', endpoint_url=s3_bucket['url'])
    for index in range(5):
        files.put('base/modulo_base_20261201_020000/f%d' % index, io.BytesIO(b'x' * index))
    assert s3.list('base/') == files.list('base/')
    units = retention_s3.inventory(s3)
    assert [(u['relpath'], u['size'], u['is_dir'], len(u['_keys'])) for u in units] == [
        ('base/modulo_base_20261201_020000', 10, True, 5)]
    assert s3.delete_keys(units[0]['_keys']) == {}
    assert s3.list('') == []


def test_a_local_write_never_creates_the_repository_root(tmp_path):
    """An unmounted repository volume must fail the push, not be recreated on the disk below the mount."""
    store = walstore.LocalStore(str(tmp_path / 'not-mounted'))
    with pytest.raises(FileNotFoundError):
        store.put('wal/20261201/seg', io.BytesIO(b'x'))
    assert not os.path.exists(str(tmp_path / 'not-mounted'))
