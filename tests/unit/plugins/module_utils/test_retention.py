# -*- coding: utf-8 -*-
"""retention: the cleanup plan over fake repositories made of real files and real WAL names."""

import datetime
import json
import os
import time

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import retention

from ansible_collections.modulo.pgbackup.tests.unit.plugins.module_utils.fakerepo import make_meta, write_backup

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
SYSID = '7000000000000000001'


def ago(days, hours=0):
    return NOW - datetime.timedelta(days=days, hours=hours)


def iso(ts):
    return ts.strftime('%Y-%m-%dT%H:%M:%SZ')


def stamp(ts):
    return ts.strftime('%Y%m%d_%H%M%S')


def logical(repo, days, status='complete', db='modulodb', globals_file=True, touch_now=True):
    """A logical backup finished ``days`` ago; its files' mtimes say "now" (a copy reset them)."""
    when = ago(days)
    name = 'modulo_full_%s' % stamp(when - datetime.timedelta(minutes=5))
    meta = make_meta(name, iso(when - datetime.timedelta(minutes=5)), iso(when), status=status, database=db)
    path = write_backup(repo.path('full'), meta)
    if globals_file:
        with open(repo.path('full', name + '.globals.sql'), 'w') as handle:
            handle.write('CREATE ROLE app;\n')
    if touch_now:
        for entry in os.listdir(repo.path('full')):
            os.utime(repo.path('full', entry), (time.time(), time.time()))
    return name, path


def physical(repo, days, wal_start, status='complete', timeline=None):
    when = ago(days)
    name = 'modulo_base_%s' % stamp(when)
    timeline = timeline or 1
    meta = make_meta(name, iso(when), iso(when), status=status, database=None, kind='physical',
                     file_suffix='', format='tar', system_identifier=SYSID, timeline=timeline,
                     wal_start=wal_start, wal_stop=wal_start)
    os.makedirs(repo.path('base', name))
    for part in ('base.tar.zst', 'backup_manifest'):
        with open(repo.path('base', name, part), 'wb') as handle:
            handle.write(b'x' * 100)
    with open(repo.path('base', name + '.meta'), 'w') as handle:
        json.dump(meta, handle)
    return name


def wal(repo, days, filename, size=64):
    """A WAL file archived ``days`` days before NOW (its date directory says so)."""
    date = ago(days).strftime('%Y%m%d')
    directory = repo.path('wal', date)
    if not os.path.isdir(directory):
        os.makedirs(directory)
    path = os.path.join(directory, filename)
    with open(path, 'wb') as handle:
        handle.write(b'w' * size)
    return 'wal/%s/%s' % (date, filename)


def run(repo, **policy):
    return retention.plan(repo, now=NOW, **policy)


def deleted(result):
    return set(i['relpath'] for i in result['deleted'])


def unclassified(result):
    return set(i['relpath'] for i in result['unclassified'])


def kept_wal(result):
    return dict((i['relpath'], i) for i in result['kept'] if i['kind'] == 'wal')


def all_files(repo):
    found = set()
    for base, _dirs, files in os.walk(repo.root):
        for name in files:
            found.add(os.path.relpath(os.path.join(base, name), repo.root))
    return found


# --- policy values --------------------------------------------------------------------------------

@pytest.mark.parametrize('option', ['full_days', 'wal_days', 'report_days'])
@pytest.mark.parametrize('value', [0, -3, None])
def test_days_below_one_are_refused(option, value):
    values = dict(full_days=7, wal_days=14, report_days=90, min_full=1)
    values[option] = value
    with pytest.raises(retention.RetentionError, match='%s must be 1 or more' % option):
        retention.check_policy(**values)


def test_min_full_zero_is_allowed_with_a_warning_and_negative_is_refused():
    assert retention.check_policy(7, 14, 90, 1) == []
    warnings = retention.check_policy(7, 14, 90, 0, label='s3_')
    assert len(warnings) == 1 and 's3_min_full is 0' in warnings[0]
    with pytest.raises(retention.RetentionError, match='min_full must be 0 or more'):
        retention.check_policy(7, 14, 90, -1)


def test_parse_time_accepts_meta_timestamps():
    assert retention.parse_time('2026-11-24T02:00:00Z') == datetime.datetime(2026, 11, 24, 2, tzinfo=UTC)
    assert retention.parse_time('2026-11-24T02:00:00+00:00') == datetime.datetime(2026, 11, 24, 2, tzinfo=UTC)
    assert retention.parse_time('yesterday') is None and retention.parse_time(None) is None


# --- backups --------------------------------------------------------------------------------------

def test_logical_backups_go_after_full_days_by_meta_date_meta_first(repo):
    names = dict((days, logical(repo, days)[0]) for days in (1, 3, 6, 8, 15, 29))
    result = run(repo)
    gone = sorted(set(i['backup'] for i in result['deleted']))
    assert gone == sorted(names[d] for d in (8, 15, 29))
    for name in gone:
        items = [i for i in result['deleted'] if i['backup'] == name]
        # .meta first (a half-deleted backup never looks complete), then the dump, then its globals
        assert [i['kind'] for i in items] == ['meta', 'logical_backup', 'globals']
        assert items[0]['relpath'] == 'full/%s.sql.gz.meta' % name
    assert result['freed_bytes'] == sum(i['size_bytes'] for i in result['deleted']) > 0
    kept = dict((i['relpath'], i['reason']) for i in result['kept'])
    assert '6.0 days old (keep 7 days)' in kept['full/%s.sql.gz.meta' % names[6]]
    # the plan itself deletes nothing (check mode is the plan)
    assert all(os.path.exists(i['path']) for i in result['deleted'])
    done, errors = retention.apply_local(repo, result)
    assert errors == [] and len(done) == 9
    left = set(os.listdir(repo.path('full')))
    assert not [n for n in left if any(names[d] in n for d in (8, 15, 29))]
    assert len([n for n in left if n.endswith('.meta')]) == 3


def test_min_full_keeps_an_old_backup_when_the_newer_ones_failed(repo):
    old = logical(repo, 20)[0]
    older = logical(repo, 25)[0]
    failed_young = [logical(repo, d, status='failed')[0] for d in (1, 2)]
    failed_old = logical(repo, 10, status='failed')[0]
    result = run(repo, min_full=1)
    gone = set(i.get('backup') for i in result['deleted'])
    assert gone == {older, failed_old}
    reasons = dict((i['relpath'], i['reason']) for i in result['kept'])
    assert 'min_full' in reasons['full/%s.sql.gz.meta' % old]
    for name in failed_young:
        assert 'does not count toward min_full' in reasons['full/%s.sql.gz.meta' % name]
    assert 'status failed' in [i for i in result['deleted'] if i['backup'] == failed_old][0]['reason']


def test_min_full_counts_per_database_and_min_full_zero_keeps_nothing_old(repo):
    a_old = logical(repo, 30, db='modulodb')[0]
    a_older = logical(repo, 31, db='modulodb')[0]
    b_old = logical(repo, 40, db='reporting')[0]
    result = run(repo, min_full=1)
    assert set(i['backup'] for i in result['deleted']) == {a_older}
    result = run(repo, min_full=2)
    assert result['deleted'] == []
    result = run(repo, min_full=0)
    assert set(i['backup'] for i in result['deleted']) == {a_old, a_older, b_old}


def test_base_backups_count_per_cluster_and_their_directory_goes_whole(repo):
    old = physical(repo, 20, '000000010000000000000005')
    new = physical(repo, 9, '000000010000000000000010')
    result = run(repo)
    items = [i for i in result['deleted'] if i.get('backup') == old]
    assert [(i['kind'], i['relpath']) for i in items] == [
        ('meta', 'base/%s.meta' % old), ('physical_backup', 'base/%s' % old)]
    assert items[1]['size_bytes'] == 200
    assert not [i for i in result['deleted'] if i.get('backup') == new]
    retention.apply_local(repo, result)
    assert sorted(os.listdir(repo.path('base'))) == [new, new + '.meta']


# --- WAL ------------------------------------------------------------------------------------------

def test_wal_needed_by_a_retained_base_stays_whatever_its_age_and_the_timeline_rule(repo):
    physical(repo, 20, '000000010000000000000005')            # deleted: older than 7 days, not among newest 2
    base_b = physical(repo, 10, '000000010000000000000010')   # kept by min_full=2
    base_c = physical(repo, 2, '000000020000000000000020')    # young, on timeline 2
    files = {
        'old_seg': wal(repo, 30, '000000010000000000000003'),
        'old_seg_gz': wal(repo, 25, '00000001000000000000000F.gz'),
        'old_backup_label': wal(repo, 25, '00000001000000000000000F.00000028.backup'),
        'old_partial': wal(repo, 25, '00000001000000000000000E.partial'),
        'b_start': wal(repo, 20, '000000010000000000000010.zst'),
        'b_label': wal(repo, 20, '000000010000000000000010.00000028.backup'),
        'b_next': wal(repo, 20, '000000010000000000000011.zst'),
        'later_tli_low_segno': wal(repo, 20, '00000002000000000000000A'),
        'young_low_segno': wal(repo, 3, '000000010000000000000004'),
        'history_2': wal(repo, 25, '00000002.history'),
        'c_start': wal(repo, 2, '000000020000000000000020'),
    }
    result = run(repo, min_full=2)
    gone = deleted(result) - set(i['relpath'] for i in result['deleted'] if i['relpath'].startswith('base/'))
    assert gone == {files[k] for k in ('old_seg', 'old_seg_gz', 'old_backup_label', 'old_partial')}
    kinds = dict((i['relpath'], i['kind']) for i in result['deleted'])
    assert kinds[files['old_seg']] == 'wal_segment' and kinds[files['old_backup_label']] == 'wal_backup'
    assert kinds[files['old_partial']] == 'wal_partial'
    reasons = [i for i in result['deleted'] if i['relpath'] == files['old_seg']][0]['reason']
    assert 'before the wal_start of every retained base backup' in reasons
    kept = kept_wal(result)
    b_dir = files['b_start'].rsplit('/', 1)[0] + '/'
    needed = [i for i in kept.values() if i['relpath'] == b_dir and base_b in i['reason']]
    # b_start, b_label, b_next (needed by B) and the timeline-2 segment numbered below B's start
    assert needed and needed[0]['files'] == 4
    assert [i for i in kept.values() if 'timeline >= 1' in i['reason'] and i['wal_kinds'] == ['history']]
    assert [i for i in kept.values() if 'archived less than 14 days ago' in i['reason']]
    assert not result['warnings']
    retention.apply_local(repo, result, today=NOW.strftime('%Y%m%d'))
    left = all_files(repo)
    for key in ('b_start', 'b_label', 'b_next', 'later_tli_low_segno', 'young_low_segno', 'history_2', 'c_start'):
        assert files[key] in left, key
    # emptied date directories are removed
    assert not os.path.exists(repo.path(files['old_seg'].rsplit('/', 1)[0]))
    assert base_c in os.listdir(repo.path('base'))


def test_segments_of_the_base_timeline_below_its_start_go_and_old_history_below_it_too(repo):
    physical(repo, 2, '000000030000000000000040')
    same_tli_low = wal(repo, 20, '000000030000000000000030')
    earlier_tli_high = wal(repo, 20, '000000020000000000000050')
    history_2 = wal(repo, 20, '00000002.history')
    history_3 = wal(repo, 20, '00000003.history')
    young_history = wal(repo, 5, '00000001.history')
    result = run(repo)
    # timeline 2 < 3: only reachable before the switch; numbered above B's start it is still kept,
    # since the rule only deletes what is numbered below wal_start
    assert deleted(result) == {same_tli_low, history_2}
    left = set(i['relpath'] for i in result['kept'] if i['kind'] == 'wal')
    assert left == {earlier_tli_high.rsplit('/', 1)[0] + '/', young_history.rsplit('/', 1)[0] + '/'}
    assert history_3 not in deleted(result)


def test_without_a_retained_base_wal_is_aged_alone_with_a_warning(repo):
    logical(repo, 1)
    old = wal(repo, 15, '000000010000000000000003')
    young = wal(repo, 13, '000000010000000000000004')
    result = run(repo)
    assert deleted(result) == {old}
    assert young not in deleted(result)
    assert any('no complete base backup is retained' in w for w in result['warnings'])
    # a failed base backup does not protect anything
    physical(repo, 1, '000000010000000000000001', status='failed')
    assert deleted(run(repo)) == {old}


@pytest.mark.parametrize('suffix', ['', '.zst', '.gz', '.age', '.zst.age', '.gz.age'])
def test_old_wal_goes_whatever_its_compression_and_encryption(repo, suffix):
    """An encrypted archive used to grow for ever: .zst.age landed in "unclassified"."""
    physical(repo, 1, '000000010000000000000010')
    old = [wal(repo, 20, name + suffix) for name in (
        '000000010000000000000003', '000000010000000000000004.partial', '00000001000000000000000A.00000028.backup')]
    result = run(repo)
    assert deleted(result) == set(old)
    assert result['unclassified'] == []


def test_a_base_without_a_valid_wal_start_keeps_every_wal_file(repo):
    physical(repo, 1, 'garbage')
    wal(repo, 40, '000000010000000000000003')
    result = run(repo)
    assert deleted(result) == set()
    assert any('no valid wal_start' in w for w in result['warnings'])


def test_wal_age_is_the_archive_date_not_the_mtime(repo):
    physical(repo, 1, '000000010000000000000010')
    path = wal(repo, 15, '000000010000000000000003')
    os.utime(repo.path(path), (time.time(), time.time()))
    # archived 14 days ago counts as the end of that day: not yet older than 14 days
    edge = wal(repo, 14, '000000010000000000000002')
    os.utime(repo.path(edge), (0, 0))
    assert deleted(run(repo)) == {path}


# --- reports, temporary files, unknown files ------------------------------------------------------

def test_reports_go_after_report_days_by_the_stamp_in_their_name(repo):
    names = {}
    for days, pattern in ((100, 'logs/backup_report_%s.json'), (80, 'logs/backup_report_%s.json'),
                          (91, 'logs/retention_report_%s.json'), (95, 'logs/backup_report_%s_4242.json'),
                          (91, 'restore-tests/monthly_drill_%s.json'), (30, 'restore-tests/monthly_drill_%s.json'),
                          # the drill's copy in logs/ and verify results (verify_<db>_<stamp>[_N].json)
                          (92, 'logs/monthly_drill_%s.json'), (20, 'logs/monthly_drill_%s.json'),
                          (93, 'logs/verify_modulo_db-1_%s.json'), (94, 'logs/verify_modulodb_%s_2.json'),
                          (10, 'logs/verify_modulodb_%s.json')):
        relpath = pattern % stamp(ago(days))
        with open(repo.path(relpath), 'w') as handle:
            handle.write('{}')
        os.utime(repo.path(relpath), (time.time(), time.time()))
        names[(days, pattern)] = relpath
    for kept in ('logs/health.json', 'logs/audit.log', 'logs/incident_20260101_030000.json',
                 'logs/dr_simulation_20260101_030000.md'):
        with open(repo.path(kept), 'w') as handle:
            handle.write('{}')
        os.utime(repo.path(kept), (0, 0))
    result = run(repo)
    assert deleted(result) == {v for (d, _p), v in names.items() if d > 90}
    assert all(i['kind'] == 'report' for i in result['deleted'])
    assert {'logs/health.json', 'logs/audit.log', 'logs/incident_20260101_030000.json',
            'logs/dr_simulation_20260101_030000.md'} <= set(i['relpath'] for i in result['kept'])
    assert unclassified(result) == set()
    assert deleted(run(repo, report_days=100)) == set()


def test_stale_temporary_files_go_fresh_ones_stay(repo):
    stale = []
    for relpath in ('full/.tmp-modulo_full_20261101_020000.sql.gz.4242', 'base/.tmp-modulo_base_20261101_020000.77',
                    'logs/.tmp-backup_report_20261101_020000.json.1'):
        path = repo.path(relpath)
        if 'base' in relpath:
            os.makedirs(path)
            with open(os.path.join(path, 'base.tar'), 'w') as handle:
                handle.write('x')
        else:
            with open(path, 'w') as handle:
                handle.write('x')
        os.utime(path, (time.time() - 2 * 86400, time.time() - 2 * 86400))
        stale.append(relpath)
    stale.append(wal(repo, 0, '.tmp-000000010000000000000009.999'))
    os.utime(repo.path(stale[-1]), (time.time() - 3 * 86400, time.time() - 3 * 86400))
    fresh = repo.path('full', '.tmp-modulo_full_20261125_020000.sql.gz.5151')
    with open(fresh, 'w') as handle:
        handle.write('x')
    # ages of temporary files are counted from the real clock (their mtime is all they have)
    result = retention.plan(repo, full_days=7)
    assert deleted(result) == set(stale)
    assert all(i['kind'] == 'temporary' for i in result['deleted'])
    assert 'full/' + os.path.basename(fresh) in set(i['relpath'] for i in result['kept'])


def test_unknown_files_are_reported_and_never_deleted(repo):
    logical(repo, 1)
    strays = []
    for relpath in ('full/notes.txt', 'logs/notes.log', 'wal/README', 'restore-tests/drill-output.txt',
                    'full/modulo_full_20261001_020000.sql.gz'):
        with open(repo.path(relpath), 'w') as handle:
            handle.write('x')
        strays.append(relpath)
    os.makedirs(repo.path('base', 'random_dir'))
    strays.append('base/random_dir')
    os.makedirs(repo.path('wal', '2026-11-01'))
    with open(repo.path('wal', '2026-11-01', '000000010000000000000001'), 'w') as handle:
        handle.write('x')
    strays.append('wal/2026-11-01')
    strays.append(wal(repo, 40, 'not-a-segment.txt'))
    with open(repo.path('full', 'modulo_full_20261002_020000.meta'), 'w') as handle:
        handle.write('{not json')
    strays.append('full/modulo_full_20261002_020000.meta')
    result = run(repo, min_full=0)
    assert unclassified(result) == set(strays)
    assert deleted(result) == set()
    by_path = dict((i['relpath'], i['reason']) for i in result['unclassified'])
    assert 'no readable .meta' in by_path['full/modulo_full_20261001_020000.sql.gz']
    assert 'unreadable .meta' in by_path['full/modulo_full_20261002_020000.meta']
    before = all_files(repo)
    retention.apply_local(repo, result)
    assert all_files(repo) == before


def test_archive_info_and_restore_scratch_dirs_are_kept(repo):
    with open(repo.path('wal', 'archive.json'), 'w') as handle:
        handle.write('{"system_identifier": "1"}')
    os.makedirs(repo.path('restore-tests', '.pitr-20261001_020000-77'))
    result = run(repo)
    kinds = dict((i['relpath'], i['kind']) for i in result['kept'])
    assert kinds == {'wal/archive.json': 'archive_info', 'restore-tests/.pitr-20261001_020000-77': 'scratch'}
    assert not result['unclassified'] and not result['deleted']


def test_a_meta_that_cannot_be_removed_keeps_its_data(repo, monkeypatch):
    name, data = logical(repo, 20)
    logical(repo, 1)
    result = run(repo)
    real_unlink = os.unlink

    def refuse_meta(path, *args, **kwargs):
        if path.endswith('.meta'):
            raise PermissionError(13, 'Permission denied', path)
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, 'unlink', refuse_meta)
    done, errors = retention.apply_local(repo, result)
    assert done == []
    assert len(errors) == 3 and 'Permission denied' in errors[0]['error']
    assert 'skipped' in errors[1]['error']
    assert os.path.exists(data) and os.path.exists(repo.path('full', name + '.sql.gz.meta'))


def test_a_meta_under_the_older_name_or_both_names_goes_first_and_whole(repo):
    legacy_when, both_when = ago(20), ago(21)
    legacy = make_meta('modulo_full_%s' % stamp(legacy_when), iso(legacy_when))
    write_backup(repo.path('full'), legacy, legacy_meta_name=True)
    both = make_meta('modulo_full_%s' % stamp(both_when), iso(both_when))
    write_backup(repo.path('full'), both, legacy_meta_name=True)
    write_backup(repo.path('full'), both)
    logical(repo, 1, globals_file=False)
    result = run(repo)
    assert unclassified(result) == set()
    by_backup = {}
    for item in result['deleted']:
        by_backup.setdefault(item['backup'], []).append((item['kind'], item['relpath']))
    assert by_backup[legacy['name']] == [('meta', 'full/%s.meta' % legacy['name']),
                                         ('logical_backup', 'full/%s' % legacy['file'])]
    # Every .meta before the data: the backup never looks complete with its data half gone.
    assert by_backup[both['name']] == [('meta', 'full/%s.meta' % both['file']), ('meta', 'full/%s.meta' % both['name']),
                                       ('logical_backup', 'full/%s' % both['file'])]
    done, errors = retention.apply_local(repo, result)
    assert errors == [] and len(done) == 5
    assert len(os.listdir(repo.path('full'))) == 2
