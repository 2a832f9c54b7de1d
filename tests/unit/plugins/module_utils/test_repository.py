# -*- coding: utf-8 -*-
"""repository: names, suffixes, the on-disk layout and its scan, with real directories."""

import datetime
import os
import stat

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import fsutil, logical_backup, repository
from ansible_collections.modulo.pgbackup.plugins.module_utils.compression import CompressionError

from ansible_collections.modulo.pgbackup.tests.unit.plugins.module_utils.fakerepo import make_meta, write_backup

UTC = datetime.timezone.utc


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# --- names and stamps ---------------------------------------------------------------------------

def test_backup_name_matches_the_runbook_layout():
    ts = datetime.datetime(2026, 11, 24, 2, 0, 0, tzinfo=UTC)
    assert repository.backup_name('modulo', 'full', ts) == 'modulo_full_20261124_020000'
    assert repository.backup_name('modulo', 'base', ts) == 'modulo_base_20261124_020000'
    name = repository.backup_name('prod-eu1', 'full', datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert name == 'prod-eu1_full_20260102_030405'
    assert repository.NAME_RE.match(name).group('prefix', 'kind', 'stamp') == ('prod-eu1', 'full', '20260102_030405')


def test_backup_name_stamp_is_utc_for_an_aware_non_utc_datetime():
    paris = datetime.timezone(datetime.timedelta(hours=1))
    ts = datetime.datetime(2026, 11, 24, 3, 0, 0, tzinfo=paris)
    assert repository.iso(ts) == '2026-11-24T02:00:00Z'
    assert repository.backup_name('modulo', 'full', ts) == 'modulo_full_20261124_020000'


def test_utcnow_iso_and_parse_iso_round_trip():
    now = repository.utcnow()
    assert now.tzinfo is not None and now.utcoffset() == datetime.timedelta(0)
    assert now.microsecond == 0
    text = repository.iso(now)
    assert text.endswith('Z') and len(text) == 20
    assert repository.parse_iso(text) == now
    paris = datetime.timezone(datetime.timedelta(hours=1))
    assert repository.iso(datetime.datetime(2026, 11, 24, 3, 0, tzinfo=paris)) == '2026-11-24T02:00:00Z'
    with pytest.raises(ValueError):
        repository.parse_iso('2026-11-24 02:00:00')


@pytest.mark.parametrize('prefix', ['modulo', 'prod-eu1', 'A1', '9db'])
def test_validate_prefix_accepts(prefix):
    assert repository.validate_prefix(prefix) == prefix


@pytest.mark.parametrize('prefix', ['', None, 'modulo_prod', 'a/b', '/modulo', 'modulo/', '-x', 'a b', 'a.b', '..'])
def test_validate_prefix_rejects(prefix):
    with pytest.raises(repository.RepositoryError) as info:
        repository.validate_prefix(prefix)
    assert 'name_prefix' in str(info.value)
    assert 'letters, digits and dashes' in str(info.value)


def test_validate_prefix_rejects_a_trailing_newline():
    with pytest.raises(repository.RepositoryError):
        repository.validate_prefix('modulo\n')


def test_backup_name_rejects_a_bad_prefix():
    with pytest.raises(repository.RepositoryError):
        repository.backup_name('my_prefix', 'full', repository.utcnow())


@pytest.mark.parametrize('fmt, codec, native, suffix', [
    ('plain', 'gzip', False, '.sql.gz'),
    ('plain', 'zstd', False, '.sql.zst'),
    ('plain', 'lz4', False, '.sql.lz4'),
    ('plain', 'none', False, '.sql'),
    ('custom', 'gzip', True, '.dump'),
    ('custom', 'zstd', False, '.dump.zst'),
    ('custom', 'zstd', True, '.dump'),
    ('custom', 'none', False, '.dump'),
    ('directory', 'gzip', True, '.dir'),
    ('directory', 'none', False, '.dir'),
    ('directory', 'zstd', False, '.dir'),
])
def test_dump_suffix(fmt, codec, native, suffix):
    assert repository.dump_suffix(fmt, codec, native) == suffix


def test_native_compression_and_plan(tmp_path):
    assert logical_backup.native_compression('plain', 'gzip', 15) is False
    assert logical_backup.native_compression('custom', 'gzip', 15) is True
    assert logical_backup.native_compression('custom', 'zstd', 15) is False
    assert logical_backup.native_compression('custom', 'zstd', 16) is True
    assert logical_backup.native_compression('custom', 'none', 16) is False

    repo = repository.Repository(str(tmp_path))
    now = datetime.datetime(2026, 11, 24, 2, 0, 0, tzinfo=UTC)
    plan = logical_backup.plan(repo, 'modulodb', 'plain', 'gzip', None, 'modulo', 15, now=now)
    assert plan['name'] == 'modulo_full_20261124_020000'
    assert plan['file'] == 'modulo_full_20261124_020000.sql.gz'
    assert plan['path'] == os.path.join(str(tmp_path), 'full', 'modulo_full_20261124_020000.sql.gz')
    assert plan['meta_path'] == os.path.join(str(tmp_path), 'full', 'modulo_full_20261124_020000.sql.gz.meta')
    assert plan['compression_level'] == 6
    custom = logical_backup.plan(repo, 'modulodb', 'custom', 'zstd', 19, 'modulo', 15, now=now)
    assert custom['file'] == 'modulo_full_20261124_020000.dump.zst' and custom['native_compression'] is False
    with pytest.raises(logical_backup.BackupError) as info:
        logical_backup.plan(repo, 'modulodb', 'directory', 'zstd', None, 'modulo', 15, now=now)
    assert 'pg_dump 16' in str(info.value)
    with pytest.raises(logical_backup.BackupError):
        logical_backup.plan(repo, 'modulodb', 'tar', 'gzip', None, 'modulo', 15, now=now)
    with pytest.raises(logical_backup.BackupError):
        logical_backup.plan(repo, 'modulodb', 'plain', 'brotli', None, 'modulo', 15, now=now)
    with pytest.raises(CompressionError):
        logical_backup.plan(repo, 'modulodb', 'plain', 'gzip', 10, 'modulo', 15, now=now)
    with pytest.raises(repository.RepositoryError):
        logical_backup.plan(repo, 'modulodb', 'plain', 'gzip', None, 'bad_prefix', 15, now=now)


# --- Repository.ensure --------------------------------------------------------------------------

def test_repository_requires_a_root():
    with pytest.raises(repository.RepositoryError) as info:
        repository.Repository('')
    assert 'backup_root is required' in str(info.value)


def test_ensure_creates_the_layout_with_0700_dirs(tmp_path):
    root = str(tmp_path / 'backups')
    repo = repository.Repository(root).ensure()
    assert repo.root == root
    assert sorted(os.listdir(root)) == sorted(repository.SUBDIRS)
    for sub in ('',) + repository.SUBDIRS:
        assert mode_of(os.path.join(root, sub)) == 0o700
    # Idempotent, and tightens a loosened subdirectory.
    os.chmod(os.path.join(root, 'full'), 0o755)
    repository.Repository(root).ensure()
    assert mode_of(os.path.join(root, 'full')) == 0o700


def test_ensure_fails_clearly_on_an_unwritable_path(tmp_path):
    blocker = tmp_path / 'not-a-dir'
    blocker.write_bytes(b'regular file')
    root = str(blocker / 'backups')
    with pytest.raises(repository.RepositoryError) as info:
        repository.Repository(root).ensure()
    message = str(info.value)
    assert 'cannot create the backup repository at %s' % root in message
    assert 'Not a directory' in message
    assert 'writable by user' in message
    assert blocker.read_bytes() == b'regular file'


def test_repository_paths(tmp_path):
    repo = repository.Repository(str(tmp_path) + '/./x/../r')
    assert repo.root == str(tmp_path / 'r')
    assert repo.meta_path('base', 'modulo_base_20261124_020000') == str(
        tmp_path / 'r' / 'base' / 'modulo_base_20261124_020000.meta')
    lock = repo.lock('backup')
    assert lock.path == str(tmp_path / 'r' / '.lock-backup')


# --- scan / select ------------------------------------------------------------------------------

def populate(full):
    metas = [
        make_meta('modulo_full_20261124_020000', '2026-11-24T02:00:00Z'),
        make_meta('modulo_full_20261122_020000', '2026-11-22T02:00:00Z'),
        make_meta('modulo_full_20261123_020000', '2026-11-23T02:00:00Z'),
        make_meta('modulo_full_20261125_020000', '2026-11-25T02:00:00Z', status='failed'),
    ]
    for meta in metas:
        write_backup(full, meta)
    return metas


def test_scan_lists_oldest_first_and_reports_orphans_tmp_and_bad_metas(repo):
    full = repo.path('full')
    populate(full)
    # A dump without its .meta (interrupted before the .meta was written).
    orphan = write_backup(full, make_meta('modulo_full_20261126_020000', '2026-11-26T02:00:00Z'), with_meta=False)
    # A temporary file of a run that is still going or died.
    tmp = os.path.join(full, fsutil.TMP_PREFIX + 'modulo_full_20261127_020000.sql.gz.4242')
    with open(tmp, 'wb') as handle:
        handle.write(b'partial')
    tmp_meta = os.path.join(full, fsutil.TMP_PREFIX + 'modulo_full_20261127_020000.meta')
    with open(tmp_meta, 'w') as handle:
        handle.write('{"name": "modulo_full_20261127_020000", "status": "complete"}')
    # A .meta that cannot be parsed.
    bad_data = write_backup(full, make_meta('modulo_full_20261121_020000', '2026-11-21T02:00:00Z'), with_meta=False)
    bad_meta = os.path.join(full, 'modulo_full_20261121_020000.meta')
    with open(bad_meta, 'w') as handle:
        handle.write('{"name": "modulo_full_2026')

    entries, problems = repo.scan('full')
    assert [e['name'] for e in entries] == [
        'modulo_full_20261122_020000', 'modulo_full_20261123_020000',
        'modulo_full_20261124_020000', 'modulo_full_20261125_020000']
    first = entries[0]
    assert first['path'] == os.path.join(full, 'modulo_full_20261122_020000.sql.gz')
    assert first['meta_path'] == os.path.join(full, 'modulo_full_20261122_020000.sql.gz.meta')
    assert first['location'] == 'local'

    by_path = dict((p['path'], p['problem']) for p in problems)
    assert set(by_path) == {orphan, tmp, tmp_meta, bad_meta}
    assert 'no .meta' in by_path[orphan]
    assert 'temporary file' in by_path[tmp] and 'temporary file' in by_path[tmp_meta]
    assert by_path[bad_meta].startswith('unreadable .meta')
    assert bad_data not in by_path  # its .meta exists; the .meta is the reported problem


def test_scan_sorts_by_started_at_not_by_name(repo):
    full = repo.path('full')
    # Prefixes sort differently from times: 'b-' > 'a-' but started earlier.
    write_backup(full, make_meta('b-site_full_20261101_020000', '2026-11-01T02:00:00Z'))
    write_backup(full, make_meta('a-site_full_20261102_020000', '2026-11-02T02:00:00Z'))
    entries, _problems = repo.scan('full')
    assert [e['name'] for e in entries] == ['b-site_full_20261101_020000', 'a-site_full_20261102_020000']


def test_scan_of_missing_directory_is_empty(tmp_path):
    assert repository.Repository(str(tmp_path / 'none')).scan('full') == ([], [])


def test_scan_base_directory_backups(repo):
    base = repo.path('base')
    name = 'modulo_base_20261124_020000'
    os.makedirs(os.path.join(base, name))
    fsutil.write_json_atomic(os.path.join(base, name + '.meta'),
                             make_meta(name, '2026-11-24T02:00:00Z', kind='physical', file_suffix=''))
    os.makedirs(os.path.join(base, 'modulo_base_20261125_020000'))
    entries, problems = repo.scan('base')
    assert [e['path'] for e in entries] == [os.path.join(base, name)]
    assert [p['path'] for p in problems] == [os.path.join(base, 'modulo_base_20261125_020000')]


def test_scan_reports_a_meta_that_is_json_but_not_an_object(repo):
    full = repo.path('full')
    write_backup(full, make_meta('modulo_full_20261124_020000', '2026-11-24T02:00:00Z'))
    with open(os.path.join(full, 'modulo_full_20261123_020000.meta'), 'w') as handle:
        handle.write('null\n')
    entries, problems = repo.scan('full')
    assert [e['name'] for e in entries] == ['modulo_full_20261124_020000']
    assert [p['path'] for p in problems] == [os.path.join(full, 'modulo_full_20261123_020000.meta')]


def test_select_latest_ignores_incomplete_and_name_and_all(repo):
    populate(repo.path('full'))
    entries, _problems = repo.scan('full')
    latest = repository.select(entries, 'latest')
    assert [e['name'] for e in latest] == ['modulo_full_20261124_020000']
    assert repository.select(entries, 'all') == entries
    assert repository.select(entries, None) == entries
    assert [e['name'] for e in repository.select(entries, 'modulo_full_20261123_020000')] == [
        'modulo_full_20261123_020000']
    assert repository.select(entries, 'modulo_full_19990101_000000') == []
    assert repository.select([], 'latest') == []
    only_failed = [e for e in entries if e['status'] != 'complete']
    assert repository.select(only_failed, 'latest') == []


def test_is_complete():
    assert repository.is_complete({'status': 'complete'})
    assert not repository.is_complete({'status': 'running'})
    assert not repository.is_complete({})


# --- the .meta's name: the runbook's (<backup file name>.meta), and the one earlier releases wrote ----------

def test_meta_is_named_after_the_backup_file_for_every_format(tmp_path):
    repo = repository.Repository(str(tmp_path))
    now = datetime.datetime(2026, 11, 24, 2, 0, 0, tzinfo=UTC)
    for fmt, codec, major, meta_file in (('plain', 'gzip', 15, 'modulo_full_20261124_020000.sql.gz.meta'),
                                         ('custom', 'zstd', 16, 'modulo_full_20261124_020000.dump.meta'),
                                         ('plain', 'zstd', 15, 'modulo_full_20261124_020000.sql.zst.meta'),
                                         ('directory', 'gzip', 15, 'modulo_full_20261124_020000.dir.meta')):
        plan = logical_backup.plan(repo, 'modulodb', fmt, codec, None, 'modulo', major, now=now)
        assert os.path.basename(plan['meta_path']) == meta_file == plan['file'] + '.meta'
    encrypted = logical_backup.plan(repo, 'modulodb', 'custom', 'zstd', None, 'modulo', 16, now=now, encrypted=True)
    assert os.path.basename(encrypted['meta_path']) == 'modulo_full_20261124_020000.dump.age.meta'
    assert repo.meta_path('base', 'modulo_base_20261124_020000') == repo.path('base', 'modulo_base_20261124_020000.meta')


def test_backup_of_meta_reads_both_names_and_nothing_else():
    assert repository.backup_of_meta('modulo_full_20261124_020000.sql.gz.meta') == 'modulo_full_20261124_020000'
    assert repository.backup_of_meta('modulo_full_20261124_020000.dump.age.meta') == 'modulo_full_20261124_020000'
    assert repository.backup_of_meta('modulo_full_20261124_020000.meta') == 'modulo_full_20261124_020000'
    assert repository.backup_of_meta('modulo_base_20261124_020000.meta') == 'modulo_base_20261124_020000'
    assert repository.backup_of_meta('modulo_full_20261124_020000.sql.gz') is None
    assert repository.backup_of_meta('.lock-backup') is None


def test_scan_reads_a_meta_under_either_name_and_one_entry_when_both_exist(repo):
    full = repo.path('full')
    new = write_backup(full, make_meta('modulo_full_20261122_020000', '2026-11-22T02:00:00Z'))
    old = write_backup(full, make_meta('modulo_full_20261123_020000', '2026-11-23T02:00:00Z'), legacy_meta_name=True)
    both = make_meta('modulo_full_20261124_020000', '2026-11-24T02:00:00Z', size_bytes=1)
    write_backup(full, both, legacy_meta_name=True)
    both['size_bytes'] = 2  # the runbook-named copy is the one read
    write_backup(full, both)

    entries, problems = repo.scan('full')
    assert problems == []
    assert [(e['name'], os.path.basename(e['meta_path'])) for e in entries] == [
        ('modulo_full_20261122_020000', 'modulo_full_20261122_020000.sql.gz.meta'),
        ('modulo_full_20261123_020000', 'modulo_full_20261123_020000.meta'),
        ('modulo_full_20261124_020000', 'modulo_full_20261124_020000.sql.gz.meta')]
    assert [e['path'] for e in entries[:2]] == [new, old]
    assert entries[2]['size_bytes'] == 2


def test_name_in_use_sees_a_backup_of_any_format_under_either_meta_name(repo):
    full = repo.path('full')
    write_backup(full, make_meta('modulo_full_20261122_020000', '2026-11-22T02:00:00Z', file_suffix='.dump'))
    assert repo.name_in_use('full', 'modulo_full_20261122_020000')
    assert not repo.name_in_use('full', 'modulo_full_20261122_020001')
    os.unlink(os.path.join(full, 'modulo_full_20261122_020000.dump'))
    os.unlink(os.path.join(full, 'modulo_full_20261122_020000.dump.meta'))
    with open(os.path.join(full, 'modulo_full_20261122_020000.meta'), 'w') as handle:
        handle.write('{}')
    assert repo.name_in_use('full', 'modulo_full_20261122_020000')
    assert not repository.Repository(repo.path('missing')).name_in_use('full', 'modulo_full_20261122_020000')


def test_every_report_name_written_is_read_back_by_the_readers_patterns():
    """One place for report names: what report, drill, verify and retention write is what health and
    retention look for."""
    ts = datetime.datetime(2026, 12, 6, 4, 0, 0, tzinfo=UTC)
    drill = repository.report_name(repository.DRILL_REPORT, ts)
    assert drill == 'monthly_drill_20261206_040000.json'
    assert repository.DRILL_REPORT_RE.match(drill).group('stamp') == '20261206_040000'
    assert repository.DRILL_REPORT_RE.match(repository.report_name(repository.DRILL_REPORT, ts, 2))
    backup = repository.report_name(repository.BACKUP_REPORT, ts)
    assert repository.BACKUP_REPORT_RE.match(backup) and not repository.DRILL_REPORT_RE.match(backup)
    verify = repository.report_name(repository.VERIFY_REPORT, ts, subject='modulodb')
    assert verify == 'verify_modulodb_20261206_040000.json'
    for name in (drill, backup, verify, repository.report_name(repository.RETENTION_REPORT, ts, 3)):
        assert repository.LOG_REPORT_RE.match(name).group('stamp') == '20261206_040000', name
    assert not repository.LOG_REPORT_RE.match('incident_20261206.json')
