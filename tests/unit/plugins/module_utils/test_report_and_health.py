# -*- coding: utf-8 -*-
"""report and catalog: the runbook's thresholds, run reports and verification (health: test_health.py)."""

import datetime
import gzip
import json
import os
import stat

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import catalog, fsutil, report

from ansible_collections.modulo.pgbackup.tests.unit.plugins.module_utils.fakerepo import make_meta, write_backup

UTC = datetime.timezone.utc


def check(checks, name):
    found = [c for c in checks if c['check'] == name]
    assert len(found) == 1, checks
    return found[0]


# --- thresholds ---------------------------------------------------------------------------------

@pytest.mark.parametrize('duration, breached', [(60, False), (1800, False), (1800.001, True), (1801, True)])
def test_duration_threshold(duration, breached):
    checks = report.thresholds({'duration_s': duration, 'size_bytes': 10}, None)
    result = check(checks, 'backup_duration')
    assert result['breached'] is breached
    assert result['value_s'] == duration and result['limit_s'] == 1800
    assert (result['advice'] is not None) is breached
    assert [c['check'] for c in checks] == ['backup_duration']  # no previous: no growth check


@pytest.mark.parametrize('size, breached, growth', [
    (1000, False, 0.0), (1500, False, 0.5), (1501, True, 0.501), (3000, True, 2.0), (400, False, -0.6)])
def test_size_growth_threshold(size, breached, growth):
    previous = {'name': 'modulo_full_20261123_020000', 'size_bytes': 1000}
    result = check(report.thresholds({'duration_s': 1, 'size_bytes': size}, previous), 'size_growth')
    assert result['breached'] is breached
    assert result['value'] == growth
    assert result['limit'] == 0.5
    assert result['previous_backup'] == 'modulo_full_20261123_020000'
    assert result['previous_size_bytes'] == 1000
    assert (result['advice'] is not None) is breached


def test_thresholds_custom_limits_and_missing_values():
    checks = report.thresholds({'duration_s': 100, 'size_bytes': 130}, {'name': 'p', 'size_bytes': 100},
                               max_duration_s=99, max_growth=0.25)
    assert check(checks, 'backup_duration')['breached'] is True
    assert check(checks, 'size_growth')['breached'] is True
    assert report.thresholds({}, None) == []
    # a previous backup of size 0 gives no growth ratio (and no division by zero)
    assert [c['check'] for c in report.thresholds({'size_bytes': 5}, {'size_bytes': 0})] == []


# --- previous_backup ----------------------------------------------------------------------------

def test_previous_backup_picks_newest_complete_older_of_same_database_and_type():
    entries = [
        make_meta('modulo_full_20261120_020000', '2026-11-20T02:00:00Z'),
        make_meta('modulo_full_20261121_020000', '2026-11-21T02:00:00Z'),
        make_meta('modulo_full_20261122_020000', '2026-11-22T02:00:00Z', database='otherdb'),
        make_meta('modulo_base_20261122_030000', '2026-11-22T03:00:00Z', kind='physical'),
        make_meta('modulo_full_20261123_020000', '2026-11-23T02:00:00Z', status='failed'),
        make_meta('modulo_full_20261124_020000', '2026-11-24T02:00:00Z'),
        make_meta('modulo_full_20261125_020000', '2026-11-25T02:00:00Z'),
    ]
    current = entries[5]
    assert report.previous_backup(entries, current)['name'] == 'modulo_full_20261121_020000'
    assert report.previous_backup(entries, entries[0]) is None
    assert report.previous_backup(entries, entries[2]) is None
    assert report.previous_backup(entries, entries[6])['name'] == 'modulo_full_20261124_020000'
    assert report.previous_backup([current], current) is None


# --- write_backup_report ------------------------------------------------------------------------

def test_write_backup_report(repo):
    started = datetime.datetime(2026, 11, 24, 2, 0, 0, tzinfo=UTC)
    checks = report.thresholds({'duration_s': 2000, 'size_bytes': 100}, {'name': 'p', 'size_bytes': 100})
    path, content = report.write_backup_report(repo, started, 'ok', backups=[{'name': 'b'}], checks=checks,
                                               extra={'database': 'modulodb'})
    assert path == repo.path('logs', 'backup_report_20261124_020000.json')
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path) as handle:
        on_disk = json.load(handle)
    assert on_disk == content
    assert on_disk['report'] == 'backup' and on_disk['status'] == 'ok'
    assert on_disk['started_at'] == '2026-11-24T02:00:00Z'
    assert on_disk['thresholds_breached'] == ['backup_duration']
    assert on_disk['database'] == 'modulodb'
    assert on_disk['backups'] == [{'name': 'b'}]
    assert [n for n in os.listdir(repo.path('logs')) if n.startswith(fsutil.TMP_PREFIX)] == []

    # a second report of the same second does not overwrite the first
    path2, content2 = report.write_backup_report(repo, started, 'failed', error='boom')
    assert path2 != path and path2.startswith(repo.path('logs', 'backup_report_20261124_020000_'))
    assert content2['error'] == 'boom' and content2['thresholds_breached'] == []
    with open(path) as handle:
        assert json.load(handle)['status'] == 'ok'


# --- catalog.list_backups / verify -------------------------------------------------------------

def gz_backup(repo, name='modulo_full_20261124_020000', started='2026-11-24T02:00:00Z'):
    payload = gzip.compress(b'CREATE TABLE t (id int);\n' * 5000)
    meta = make_meta(name, started)
    path = write_backup(repo.path('full'), meta, data=payload)
    meta['sha256'] = fsutil.sha256_path(path)
    fsutil.write_json_atomic(repo.meta_path('full', meta['file']), meta, overwrite=True)
    return path


def test_list_backups_local(repo):
    gz_backup(repo, 'modulo_full_20261124_020000', '2026-11-24T02:00:00Z')
    gz_backup(repo, 'modulo_full_20261123_020000', '2026-11-23T02:00:00Z')
    write_backup(repo.path('full'), make_meta('modulo_full_20261125_020000', '2026-11-25T02:00:00Z'),
                 with_meta=False)
    backups, problems = catalog.list_backups(repo)
    assert [b['name'] for b in backups] == ['modulo_full_20261123_020000', 'modulo_full_20261124_020000']
    assert all(b['location'] == 'local' for b in backups)
    assert len(problems) == 1 and 'no .meta' in problems[0]['problem']


def test_verify_intact_damaged_and_missing(repo):
    path = gz_backup(repo)
    backups, _problems = catalog.list_backups(repo)
    meta = backups[0]
    good = catalog.verify(meta)
    assert good == {'name': meta['name'], 'checksum_ok': True, 'decompress_ok': True, 'errors': [], 'ok': True}

    with open(path, 'r+b') as handle:
        handle.seek(os.path.getsize(path) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x10]))
    bad = catalog.verify(meta)
    assert bad['ok'] is False
    assert bad['checksum_ok'] is False and bad['decompress_ok'] is False
    assert any('does not match the .meta' in e for e in bad['errors'])
    assert any('reports a damaged file' in e for e in bad['errors'])

    os.unlink(path)
    missing = catalog.verify(meta)
    assert missing['ok'] is False and 'not present locally' in missing['errors'][0]
