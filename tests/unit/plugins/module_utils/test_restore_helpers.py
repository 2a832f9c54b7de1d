# -*- coding: utf-8 -*-
"""logical_restore helpers that need no server: names, row comparison, finding the backup."""

import glob
import json
import os

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import logical_restore
from ansible_collections.modulo.pgbackup.plugins.module_utils.logical_restore import RestoreError

from ansible_collections.modulo.pgbackup.tests.unit.plugins.module_utils.fakerepo import make_meta, write_backup


# --- validate_dbname ----------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['modulodb', 'modulo_restore', 'Modulo-Restore-2', '_scratch', 'a', 'x' * 63])
def test_validate_dbname_accepts(name):
    assert logical_restore.validate_dbname(name) == name


@pytest.mark.parametrize('name', [
    '', None, 'x' * 64, 'my db', 'my"db', "my'db", 'my;db', '1db', '-db', 'db.name', 'db/name', 'caf\u00e9',
    'db\tname', 'db\nname'])
def test_validate_dbname_rejects_bad_names(name):
    with pytest.raises(RestoreError) as info:
        logical_restore.validate_dbname(name)
    assert 'target_db %r is not accepted' % (name,) in str(info.value)


@pytest.mark.parametrize('name', ['postgres', 'template0', 'template1'])
def test_validate_dbname_rejects_system_databases(name):
    with pytest.raises(RestoreError) as info:
        logical_restore.validate_dbname(name)
    assert 'system database' in str(info.value)


def test_validate_dbname_names_the_option():
    with pytest.raises(RestoreError) as info:
        logical_restore.validate_dbname('bad name', option='db')
    assert str(info.value).startswith("db 'bad name' is not accepted")


def test_validate_dbname_rejects_a_trailing_newline():
    with pytest.raises(RestoreError):
        logical_restore.validate_dbname('modulo_restore\n')


# --- compare_rows / aside_name -----------------------------------------------------------------

def test_compare_rows():
    expected = {'public.orders': 10, 'public.customers': 3, 'audit.log': 0}
    assert logical_restore.compare_rows(expected, dict(expected)) == []
    actual = {'public.orders': 9, 'public.customers': 3, 'public.extra': 1}
    assert logical_restore.compare_rows(expected, actual) == [
        {'table': 'audit.log', 'expected': 0, 'restored': None},
        {'table': 'public.extra', 'expected': None, 'restored': 1},
        {'table': 'public.orders', 'expected': 10, 'restored': 9},
    ]
    assert logical_restore.compare_rows({}, {}) == []


def test_aside_name():
    assert logical_restore.aside_name('modulodb', '20261124_020000') == 'modulodb_old_20261124_020000'
    long_name = 'x' * 63
    aside = logical_restore.aside_name(long_name, '20261124_020000')
    assert len(aside) == 63
    assert aside.endswith('_old_20261124_020000')
    assert aside.startswith('x' * 43)
    assert logical_restore.validate_dbname(aside) == aside
    for length in range(1, 64):
        assert len(logical_restore.aside_name('d' * length, '20261124_020000')) <= 63


# --- resolve_backup -----------------------------------------------------------------------------

def populate(repo):
    full = repo.path('full')
    metas = {
        'old': make_meta('modulo_full_20261122_020000', '2026-11-22T02:00:00Z'),
        'good': make_meta('modulo_full_20261123_020000', '2026-11-23T02:00:00Z'),
        'other_db': make_meta('modulo_full_20261123_030000', '2026-11-23T03:00:00Z', database='otherdb'),
        'running': make_meta('modulo_full_20261124_020000', '2026-11-24T02:00:00Z', status='running'),
    }
    paths = dict((key, write_backup(full, meta)) for key, meta in metas.items())
    return metas, paths


def test_resolve_latest_skips_incomplete_and_filters_by_database(repo):
    populate(repo)
    assert logical_restore.resolve_backup(repo, 'latest')['name'] == 'modulo_full_20261123_030000'
    assert logical_restore.resolve_backup(repo, None)['name'] == 'modulo_full_20261123_030000'
    assert logical_restore.resolve_backup(repo, '')['name'] == 'modulo_full_20261123_030000'
    meta = logical_restore.resolve_backup(repo, 'latest', database='modulodb')
    assert meta['name'] == 'modulo_full_20261123_020000'
    assert meta['path'] == os.path.join(repo.path('full'), 'modulo_full_20261123_020000.sql.gz')
    assert meta['location'] == 'local'


def test_resolve_latest_without_a_complete_backup(repo):
    write_backup(repo.path('full'), make_meta('modulo_full_20261124_020000', '2026-11-24T02:00:00Z',
                                              status='failed'))
    with pytest.raises(RestoreError) as info:
        logical_restore.resolve_backup(repo, 'latest')
    assert 'no complete logical backup found in %s' % repo.path('full') in str(info.value)
    with pytest.raises(RestoreError) as info:
        logical_restore.resolve_backup(repo, 'latest', database='nosuchdb')
    assert 'for database nosuchdb' in str(info.value)


def test_resolve_by_name(repo):
    populate(repo)
    meta = logical_restore.resolve_backup(repo, 'modulo_full_20261122_020000')
    assert meta['name'] == 'modulo_full_20261122_020000'
    assert os.path.isfile(meta['path'])
    with pytest.raises(RestoreError) as info:
        logical_restore.resolve_backup(repo, 'modulo_full_20991231_000000')
    assert 'no backup named modulo_full_20991231_000000' in str(info.value)
    with pytest.raises(RestoreError) as info:
        logical_restore.resolve_backup(repo, 'modulo_full_20261124_020000')
    assert "is not complete (status 'running')" in str(info.value)


def test_resolve_by_path(repo, tmp_path):
    _metas, paths = populate(repo)
    meta = logical_restore.resolve_backup(repo, paths['good'])
    assert meta['name'] == 'modulo_full_20261123_020000'
    assert meta['path'] == paths['good']
    # a copy of the backup and its .meta outside the repository is found by its path
    elsewhere = tmp_path / 'copied'
    elsewhere.mkdir()
    copy = write_backup(str(elsewhere), make_meta('modulo_full_20261101_020000', '2026-11-01T02:00:00Z',
                                                  file_suffix='.dump'))
    assert logical_restore.resolve_backup(repo, copy)['path'] == copy


def test_resolve_by_path_without_meta_is_refused(repo):
    orphan = write_backup(repo.path('full'), make_meta('modulo_full_20261125_020000', '2026-11-25T02:00:00Z'),
                          with_meta=False)
    with pytest.raises(RestoreError) as info:
        logical_restore.resolve_backup(repo, orphan)
    message = str(info.value)
    assert 'has no .meta next to it' in message
    assert repo.path('full', 'modulo_full_20261125_020000.sql.gz.meta') in message
    assert 'not trusted' in message


def test_resolve_by_path_of_an_incomplete_backup_is_refused(repo):
    _metas, paths = populate(repo)
    with pytest.raises(RestoreError) as info:
        logical_restore.resolve_backup(repo, paths['running'])
    assert "is not complete (status 'running')" in str(info.value)


def test_resolve_by_missing_path(repo):
    missing = os.path.join(repo.path('full'), 'modulo_full_20000101_000000.sql.gz')
    with pytest.raises(RestoreError) as info:
        logical_restore.resolve_backup(repo, missing)
    assert str(info.value) == 'backup file %s does not exist' % missing


def test_resolve_directory_format_by_path(repo):
    full = repo.path('full')
    name = 'modulo_full_20261124_020000'
    os.makedirs(os.path.join(full, name + '.dir'))
    with open(os.path.join(full, name + '.dir', 'toc.dat'), 'wb') as handle:
        handle.write(b'toc')
    meta = make_meta(name, '2026-11-24T02:00:00Z', file_suffix='.dir', format='directory')
    with open(repo.meta_path('full', name), 'w') as handle:
        json.dump(meta, handle)
    found = logical_restore.resolve_backup(repo, os.path.join(full, name + '.dir') + '/')
    assert found['name'] == name
    assert found['format'] == 'directory'


def damage_meta(repo, name):
    path, = glob.glob(repo.path('full', name + '*.meta'))
    with open(path, 'r+b') as handle:
        handle.write(b'z')              # '{' -> 'z': the .meta is no longer JSON
    return path


def test_latest_never_falls_back_past_a_damaged_newer_meta(repo):
    populate(repo)
    path = damage_meta(repo, 'modulo_full_20261123_030000')
    with pytest.raises(RestoreError) as info:
        logical_restore.resolve_backup(repo, 'latest')
    assert 'the .meta %s of a newer backup is damaged' % path in str(info.value)
    assert 'backup: modulo_full_20261123_020000' in str(info.value)
    # Named, the older backup is a deliberate choice; the damaged one says why it cannot be used.
    assert logical_restore.resolve_backup(repo, 'modulo_full_20261123_020000')['name'] == 'modulo_full_20261123_020000'
    with pytest.raises(RestoreError) as info:
        logical_restore.resolve_backup(repo, 'modulo_full_20261123_030000')
    assert 'its .meta %s is damaged' % path in str(info.value)


def test_a_damaged_meta_older_than_latest_does_not_block_it(repo):
    populate(repo)
    damage_meta(repo, 'modulo_full_20261122_020000')
    assert logical_restore.resolve_backup(repo, 'latest')['name'] == 'modulo_full_20261123_030000'


def test_resolve_by_path_reads_a_meta_under_the_older_name(repo):
    legacy = write_backup(repo.path('full'), make_meta('modulo_full_20261101_020000', '2026-11-01T02:00:00Z'),
                          legacy_meta_name=True)
    found = logical_restore.resolve_backup(repo, legacy)
    assert found['name'] == 'modulo_full_20261101_020000' and found['path'] == legacy
    assert logical_restore.resolve_backup(repo, 'modulo_full_20261101_020000')['path'] == legacy


# --- maintenance_work_mem for the load ------------------------------------------------------------

GB = 1024 ** 3
MB = 1024 ** 2


@pytest.mark.parametrize('memory,sessions,server,expected', [
    (16 * GB, 1, 64 * MB, 2 * GB),            # an eighth of 16 GB, the cap
    (4 * GB, 1, 64 * MB, 512 * MB),           # an eighth of 4 GB
    (4 * GB, 4, 64 * MB, 128 * MB),           # shared by four pg_restore jobs
    (64 * GB, 2, 64 * MB, 2 * GB),            # never more than 2 GB a session
    (24 * GB, 2, 4 * GB, None),               # the DBA's larger setting is kept
    (512 * MB, 1, 64 * MB, None),             # a small host: no more than the default, keep the server's
    (None, 1, 64 * MB, None),                 # memory unknown
    (3 * GB + 12345, 1, 64 * MB, 384 * MB),   # whole megabytes
])
def test_maintenance_work_mem_is_a_share_of_the_host_and_never_lowers_the_servers(memory, sessions, server, expected):
    assert logical_restore.maintenance_work_mem(memory, sessions, server) == expected


def test_host_memory_reads_memtotal(tmp_path):
    meminfo = tmp_path / 'meminfo'
    meminfo.write_text('MemTotal:       24567808 kB\nMemFree:         1234 kB\n')
    assert logical_restore.host_memory(str(meminfo)) == 24567808 * 1024
    assert logical_restore.host_memory(str(tmp_path / 'missing')) is None
    meminfo.write_text('MemFree: 1 kB\n')
    assert logical_restore.host_memory(str(meminfo)) is None
