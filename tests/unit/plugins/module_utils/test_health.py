# -*- coding: utf-8 -*-
"""health and walchain: every threshold breached once and detected, a healthy set passing, the WAL chain walk."""

import datetime
import json
import os
import re
import shutil
import subprocess

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import health, report, repository, walchain

from ansible_collections.modulo.pgbackup.tests.unit.plugins.module_utils.fakerepo import make_meta

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 24, 3, 0, 0, tzinfo=UTC)
GIB = 1024 ** 3


def check(result, name):
    found = [c for c in result['checks'] if c['check'] == name]
    assert len(found) == 1, [c['check'] for c in result['checks']]
    return found[0]


def daily(days, size=1000, duration=120.0, status='complete', kind='logical'):
    metas = []
    for offset in range(days, 0, -1):
        day = NOW - datetime.timedelta(days=offset - 1, hours=1)
        metas.append(make_meta(repository.backup_name('modulo', 'full' if kind == 'logical' else 'base', day),
                               repository.iso(day), finished_at=repository.iso(day + datetime.timedelta(seconds=duration)),
                               size_bytes=size, duration_s=duration, status=status, kind=kind))
    return metas


def seg(tli, segno):
    return '%08X%08X%08X' % (tli, segno // 256, segno % 256)


def wal_entries(*names):
    return [{'name': n, 'kind': 'history' if n.endswith('.history') else 'segment'} for n in names]


def drill_report(days_ago=3, status='passed'):
    started = NOW - datetime.timedelta(days=days_ago)
    return {'report': 'restore_drill', 'kind': 'logical', 'status': status, 'started_at': repository.iso(started),
            'checks': [{'name': 'row_counts', 'passed': status == 'passed'}], 'error': None}


def disk(free_gib=50, total_gib=100, path='/backups'):
    return {'path': path, 'total_bytes': total_gib * GIB, 'free_bytes': free_gib * GIB,
            'free_percent': round(100.0 * free_gib / total_gib, 2)}


def facts(backups, drill='passed', archive=None, histories=None, server=None, runs=None, repo_disk=None):
    out = {'repository': '/backups', 'backups': backups,
           'backup_runs': runs if runs is not None else [{'status': 'success', 'type': 'logical',
                                                          'database': 'modulodb', 'report_path': '/r.json'}],
           'drill_path': '/backups/restore-tests/monthly_drill_x.json',
           'drill': drill_report() if drill == 'passed' else drill,
           'archive': archive or {'entries': [], 'segments': 0, 'seg_size': 16 * 1024 * 1024,
                                  'newest_segment': None, 'newest_archived_at': None},
           'read_history': (histories or {}).get,
           'repository_disk': repo_disk or disk()}
    if server is not None:
        out['server'] = server
    return out


def archive_of(names, newest_at):
    entries = wal_entries(*names)
    segments = [e['name'] for e in entries if e['kind'] == 'segment']
    return {'entries': entries, 'segments': len(segments), 'seg_size': 16 * 1024 * 1024,
            'newest_segment': max(segments, key=lambda n: (n[8:], n[:8])) if segments else None,
            'newest_archived_at': newest_at}


def healthy_server(**changes):
    server = {'reachable': True, 'archive_mode': 'on', 'archive_timeout_s': 60, 'pgdata': '/pgdata',
              'archiver': {'archived_count': 40, 'failed_count': 0, 'last_archived_wal': seg(1, 9),
                           'last_archived_time': '2026-11-24T02:59:00+00:00', 'last_failed_wal': None,
                           'last_failed_time': None},
              'ready_count': 0, 'oldest_ready_at': None, 'pg_wal_disk': disk(path='/pgdata/pg_wal')}
    server.update(changes)
    return server


def pitr_set():
    """A base backup at segment 3 with WAL 3..9, the newest archived 5 minutes ago, and a logical backup from last night."""
    base = make_meta('modulo_base_20261124_020000', '2026-11-24T02:00:00Z', finished_at='2026-11-24T02:01:00Z',
                     kind='physical', wal_start=seg(1, 3), wal_stop=seg(1, 4), duration_s=60.0)
    archive = archive_of([seg(1, n) for n in range(3, 10)], NOW - datetime.timedelta(minutes=5))
    return daily(2) + [base], archive


# --- thresholds ---------------------------------------------------------------------------------

@pytest.mark.parametrize('given, message', [
    ({'rpo_target_s': 0}, 'rpo_target_s must be 1 or more'),
    ({'max_duration_s': -5}, 'max_duration_s must be 1 or more'),
    ({'max_size_growth': 0}, 'max_size_growth must be above 0'),
    ({'drill_max_age_days': -1}, 'drill_max_age_days must be 0'),
    ({'min_free_percent': 100}, 'min_free_percent must be from 0 to 99'),
    ({'max_archive_backlog': -1}, 'max_archive_backlog must be 0 or more'),
])
def test_bad_thresholds_are_refused(given, message):
    with pytest.raises(ValueError, match=message):
        health.thresholds(**given)


def test_thresholds_defaults_and_none():
    assert health.thresholds(rpo_target_s=None, max_archive_backlog=3) == dict(health.DEFAULTS, max_archive_backlog=3)


# --- a healthy repository, and each check breached once -------------------------------------------

def test_a_healthy_logical_only_repository_passes():
    backups = daily(3)
    result = health.evaluate(facts(backups), now=NOW)
    assert result['ok'] is True, health.summary(result)
    assert result['breached'] == [] and result['latest'] == backups[-1]['name']
    age = check(result, 'backup_age')
    assert age['value_s'] == 3600 - 120 and age['basis'] == 'backup %s' % backups[-1]['name']
    assert check(result, 'wal_chain')['status'] == 'skipped'
    assert check(result, 'logical_size_growth')['value'] == 0.0
    assert 'archiver' not in [c['check'] for c in result['checks']]  # no server asked


def test_a_healthy_pitr_repository_passes_with_the_newest_wal_as_recovery_point():
    backups, archive = pitr_set()
    result = health.evaluate(facts(backups, archive=archive, server=healthy_server()), now=NOW)
    assert result['ok'] is True, health.summary(result)
    assert check(result, 'wal_chain')['status'] == 'ok' and result['wal_chain']['to'] == seg(1, 9)
    age = check(result, 'backup_age')
    # nothing waits in pg_wal and archive_timeout is 60 s: the recovery point is at most 60 s old
    assert age['value_s'] == 60 and 'live archiving' in age['basis']
    assert check(result, 'archiver')['status'] == 'ok' and check(result, 'archive_backlog')['value'] == 0
    assert check(result, 'pg_wal_free_space')['status'] == 'ok'


def test_recovery_point_older_than_the_rpo():
    backups = daily(2)
    result = health.evaluate(facts(backups), now=NOW + datetime.timedelta(days=2))
    age = check(result, 'backup_age')
    assert age['breached'] and age['value_s'] == 2 * 86400 + 3600 - 120
    assert result['ok'] is False and 'backup_age' in result['breached']
    assert 'RPO' in age['advice']
    limits = health.thresholds(rpo_target_s=3 * 86400, drill_max_age_days=0)
    assert health.evaluate(facts(backups), limits, now=NOW + datetime.timedelta(days=2))['ok'] is True


def test_recovery_point_exactly_at_the_rpo_is_not_breached():
    backups = daily(1)
    finished = repository.parse_iso(backups[-1]['finished_at'])
    assert not check(health.evaluate(facts(backups), now=finished + datetime.timedelta(seconds=3600)),
                     'backup_age')['breached']
    assert check(health.evaluate(facts(backups), now=finished + datetime.timedelta(seconds=3601)),
                 'backup_age')['breached']


def test_a_recovery_point_from_the_future_is_a_clock_problem_not_a_fresh_backup():
    backups = daily(2)
    finished = repository.parse_iso(backups[-1]['finished_at'])
    # Within the tolerance between two hosts' clocks: fine.
    assert check(health.evaluate(facts(backups), now=finished - datetime.timedelta(seconds=health.CLOCK_TOLERANCE_S)),
                 'backup_age')['status'] == 'ok'
    result = health.evaluate(facts(backups), now=finished - datetime.timedelta(hours=3))
    age = check(result, 'backup_age')
    assert age['breached'] and 'backup_age' in result['breached']
    assert '3.0 h in the future' in age['detail'] and 'NTP' in age['advice']
    assert age['value_s'] == -3 * 3600


def test_no_backup_at_all():
    result = health.evaluate(facts([], runs=[]), now=NOW)
    assert result['ok'] is False and result['latest'] is None
    assert check(result, 'backup_age')['detail'] == 'no complete backup at all'
    assert check(result, 'last_backup_run')['status'] == 'skipped'


def test_wal_with_a_gap_does_not_count_as_recovery_point():
    backups, archive = pitr_set()
    archive = archive_of([seg(1, n) for n in (3, 4, 5, 7, 8, 9)], NOW - datetime.timedelta(minutes=1))
    result = health.evaluate(facts(backups, archive=archive), now=NOW + datetime.timedelta(hours=2))
    chain = check(result, 'wal_chain')
    assert chain['breached'] and chain['missing'] == [seg(1, 6)] and chain['missing_count'] == 1
    assert seg(1, 6) in chain['detail'] and 'base backup' in chain['advice']
    # the newest WAL is past the gap: the recovery point falls back to the newest backup
    assert check(result, 'backup_age')['basis'] == 'backup %s' % backups[1]['name']


def test_a_gap_before_the_newest_base_backup_shortens_the_window_and_only_warns():
    """A missing segment before the newest base backup used to keep the check failed until every older base
    backup expired, although the newest one restores fine."""
    backups, _archive = pitr_set()
    newer = make_meta('modulo_base_20261124_024000', '2026-11-24T02:40:00Z', finished_at='2026-11-24T02:41:00Z',
                      kind='physical', wal_start=seg(1, 7), wal_stop=seg(1, 7), duration_s=60.0)
    archive = archive_of([seg(1, n) for n in (3, 4, 5, 7, 8, 9)], NOW - datetime.timedelta(minutes=1))
    result = health.evaluate(facts(backups + [newer], archive=archive, server=healthy_server()), now=NOW)
    chain = check(result, 'wal_chain')
    assert chain['status'] == 'ok' and not chain['breached'], chain
    assert chain['base_backup'] == newer['name'] and chain['gap'] == [seg(1, 6)]
    assert chain['unusable_base_backups'] == [backups[-1]['name']]
    assert 'WAL gap before base backup %s' % newer['name'] in chain['warning'] and seg(1, 6) in chain['warning']
    assert 'reaches back only to 2026-11-24T02:41:00Z' in chain['warning']
    assert result['wal_chain']['base_finished_at'] == newer['finished_at']
    # the newest WAL counts again: the chain from the newer base backup is whole
    assert check(result, 'backup_age')['basis'] == 'archived WAL %s' % seg(1, 9)
    assert result['ok'] is True

    # A gap after the newest base backup is still a failure, named from that base backup.
    archive = archive_of([seg(1, n) for n in (3, 4, 5, 7, 9)], NOW - datetime.timedelta(minutes=1))
    result = health.evaluate(facts(backups + [newer], archive=archive, server=healthy_server()), now=NOW)
    chain = check(result, 'wal_chain')
    assert chain['breached'] and chain['missing'] == [seg(1, 8)] and chain['base_backup'] == newer['name']


def test_duration_and_growth_thresholds_per_kind():
    backups = daily(2)
    backups[-1]['size_bytes'] = 1600
    backups[-1]['duration_s'] = 1900
    failed = make_meta('modulo_full_20261124_025000', '2026-11-24T02:50:00Z', status='failed')
    result = health.evaluate(facts(backups + [failed]), now=NOW)
    assert result['latest'] == backups[-1]['name']  # a newer failed backup is never "latest"
    assert check(result, 'logical_backup_duration')['breached'] is True
    growth = check(result, 'logical_size_growth')
    assert growth['breached'] is True and growth['value'] == 0.6 and '+60 %' in growth['detail']
    assert set(result['breached']) == {'logical_backup_duration', 'logical_size_growth'}


def test_a_failed_last_backup_run_is_breached_even_with_an_older_good_backup():
    runs = [{'status': 'success', 'type': 'logical', 'database': 'modulodb', 'report_path': '/l.json'},
            {'status': 'failed', 'type': 'physical', 'database': 'modulodb', 'started_at': '2026-11-24T02:05:00Z',
             'error': 'WAL archiving is failing', 'report_path': '/p.json'}]
    result = health.evaluate(facts(daily(2), runs=runs), now=NOW)
    run = check(result, 'last_backup_run')
    assert run['breached'] and 'WAL archiving is failing' in run['detail'] and '/p.json' in run['advice']


@pytest.mark.parametrize('drill, breached, words', [
    ('passed', False, 'passed'),
    (None, True, 'no restore drill report'),
    (drill_report(status='failed'), True, 'failed: row_counts'),
    (drill_report(days_ago=40), True, 'passed, but 40.0 days ago'),
])
def test_drill_result_and_age(drill, breached, words):
    result = health.evaluate(facts(daily(2), drill=drill), now=NOW)
    item = check(result, 'restore_drill')
    assert item['breached'] is breached and words in item['detail'], item


def test_drill_check_can_be_turned_off():
    limits = health.thresholds(drill_max_age_days=0)
    assert check(health.evaluate(facts(daily(2), drill=None), limits, now=NOW), 'restore_drill')['status'] == 'skipped'


def test_archiver_failing():
    backups, archive = pitr_set()
    server = healthy_server()
    server['archiver'].update(failed_count=3, last_failed_wal=seg(1, 10), last_failed_time='2026-11-24T02:59:30+00:00')
    result = health.evaluate(facts(backups, archive=archive, server=server), now=NOW)
    item = check(result, 'archiver')
    assert item['breached'] and 'archive_command is failing' in item['detail'] and item['failed_count'] == 3
    # a failing archiver is not "live archiving": the recovery point is the newest archived WAL
    assert check(result, 'backup_age')['basis'] == 'archived WAL %s' % seg(1, 9)


def test_a_failure_followed_by_a_success_is_healthy():
    backups, archive = pitr_set()
    server = healthy_server()
    server['archiver'].update(failed_count=3, last_failed_time='2026-11-24T02:30:00+00:00')
    assert check(health.evaluate(facts(backups, archive=archive, server=server), now=NOW), 'archiver')['status'] == 'ok'


def test_archive_backlog():
    backups, archive = pitr_set()
    server = healthy_server(ready_count=11, oldest_ready_at=NOW - datetime.timedelta(minutes=7))
    result = health.evaluate(facts(backups, archive=archive, server=server), now=NOW)
    item = check(result, 'archive_backlog')
    assert item['breached'] and item['value'] == 11 and item['lag_s'] == 420
    server = healthy_server(ready_count=10, oldest_ready_at=NOW - datetime.timedelta(minutes=7))
    assert not check(health.evaluate(facts(backups, archive=archive, server=server), now=NOW), 'archive_backlog')['breached']


def test_backlog_unknown_without_privilege_is_reported_not_failed():
    backups, archive = pitr_set()
    server = healthy_server(ready_error='cannot list pg_wal/archive_status: grant pg_monitor to backup')
    del server['ready_count']
    result = health.evaluate(facts(backups, archive=archive, server=server), now=NOW)
    item = check(result, 'archive_backlog')
    assert item['status'] == 'unknown' and not item['breached'] and 'pg_monitor' in item['advice']
    assert result['unknown'] == ['archive_backlog'] and result['ok'] is True


def test_unreachable_server_and_archiving_turned_off():
    backups, archive = pitr_set()
    result = health.evaluate(facts(backups, archive=archive, server={'reachable': False, 'error': 'cannot reach'}),
                             now=NOW)
    assert check(result, 'archiver')['breached'] and 'cannot reach' in check(result, 'archiver')['detail']
    result = health.evaluate(facts(backups, archive=archive, server=healthy_server(archive_mode='off')), now=NOW)
    assert check(result, 'archiver')['breached'] and 'configure-pitr' in check(result, 'archiver')['advice']
    result = health.evaluate(facts(daily(2), server=healthy_server(archive_mode='off')), now=NOW)
    assert check(result, 'archiver')['status'] == 'skipped'


@pytest.mark.parametrize('free_gib, size, breached', [
    (50, 1000, False),          # plenty
    (9, 1000, True),            # under 10 %
    (20, 15 * GIB, True),       # 20 % free but the next 15 GiB backup (+50 %) would not fit
    (23, 15 * GIB, False),
])
def test_repository_free_space(free_gib, size, breached):
    result = health.evaluate(facts(daily(2, size=size), repo_disk=disk(free_gib)), now=NOW)
    item = check(result, 'repository_free_space')
    assert item['breached'] is breached, item


def test_pg_wal_free_space():
    backups, archive = pitr_set()
    server = healthy_server(pg_wal_disk=disk(free_gib=5, path='/pgdata/pg_wal'))
    item = check(health.evaluate(facts(backups, archive=archive, server=server), now=NOW), 'pg_wal_free_space')
    assert item['breached'] and 'pg_wal' in item['advice']


def test_wal_without_base_backup_and_base_without_wal():
    archive = archive_of([seg(1, 3)], NOW)
    item = check(health.evaluate(facts(daily(1), archive=archive), now=NOW), 'wal_chain')
    assert item['breached'] and 'no complete base backup' in item['detail']
    backups, _archive = pitr_set()
    item = check(health.evaluate(facts(backups), now=NOW), 'wal_chain')
    assert item['breached'] and 'no WAL' in item['detail']


# --- walchain -----------------------------------------------------------------------------------

def test_parse_history_and_timeline_starts():
    text = '1\t0/3000060\tno recovery target specified\n\n2\t0/50000A0\tbefore 2026-11-24 02:00:00+00\n'
    points = walchain.parse_history(text)
    assert points == [(1, 3), (2, 5)]
    assert walchain.timeline_starts(3, points) == {1: 0, 2: 3, 3: 5}
    assert walchain.reading_timeline(2, {1: 0, 2: 3, 3: 5}) == 1
    assert walchain.reading_timeline(3, {1: 0, 2: 3, 3: 5}) == 2
    with pytest.raises(ValueError):
        walchain.parse_history('garbage line\n')


def test_chain_follows_a_timeline_switch():
    # timeline 1 up to segment 5 (5 is archived as .partial on tli 1), timeline 2 from segment 5 on
    names = [seg(1, n) for n in (2, 3, 4)] + [seg(2, n) for n in (5, 6, 7)] + ['00000002.history']
    histories = {'00000002.history': '1\t0/5000100\tno recovery target specified\n'}
    chain = walchain.check_chain(wal_entries(*names), seg(1, 2), histories.get)
    assert chain['ok'] is True, chain
    assert chain['to'] == seg(2, 7) and chain['segments'] == 6 and chain['timeline'] == 2
    # the switch segment must come from the new timeline: tli 1's copy does not count
    names = [seg(1, n) for n in (2, 3, 4, 5)] + [seg(2, n) for n in (6, 7)] + ['00000002.history']
    chain = walchain.check_chain(wal_entries(*names), seg(1, 2), histories.get)
    assert chain['ok'] is False and chain['missing'] == [seg(2, 5)]


def test_chain_missing_history_and_foreign_timeline():
    names = [seg(1, 2), seg(2, 3)]
    chain = walchain.check_chain(wal_entries(*names), seg(1, 2), {}.get)
    assert chain['ok'] is False and '00000002.history is missing' in chain['problem']
    histories = {'00000003.history': '2\t0/3000000\tx\n'}  # timeline 3 branched from 2, not from 1
    names = [seg(1, 2), seg(3, 3), '00000003.history']
    chain = walchain.check_chain(wal_entries(*names), seg(1, 2), histories.get)
    assert chain['ok'] is False and 'not in the history' in chain['problem']


def test_chain_counts_every_missing_segment_but_lists_a_few():
    names = [seg(1, 1)] + [seg(1, 100)]
    chain = walchain.check_chain(wal_entries(*names), seg(1, 1), {}.get)
    assert chain['missing_count'] == 98 and len(chain['missing']) == walchain.MAX_LISTED
    assert chain['missing'][0] == seg(1, 2)


# --- rendering ----------------------------------------------------------------------------------

def test_metrics_are_valid_prometheus_text():
    backups, archive = pitr_set()
    result = health.evaluate(facts(backups, archive=archive, server=healthy_server()), now=NOW)
    text = health.metrics(result)
    sample = re.compile(r'^modulo_pgbackup_[a-z_]+\{repository="/backups"(,[a-z_]+="[^"]*")*\} -?[0-9.e+-]+$')
    seen_help = set()
    for line in text.splitlines():
        if line.startswith('# HELP '):
            name = line.split()[2]
            assert name not in seen_help, 'HELP repeated for %s' % name
            seen_help.add(name)
        elif not line.startswith('# TYPE '):
            assert sample.match(line), line
    assert 'modulo_pgbackup_health_ok{repository="/backups"} 1' in text
    assert 'modulo_pgbackup_recovery_point_age_seconds{repository="/backups"} 60' in text
    assert 'modulo_pgbackup_check_breached{repository="/backups",check="wal_chain"} 0' in text
    assert 'modulo_pgbackup_free_bytes{repository="/backups",volume="pg_wal"}' in text
    assert 'modulo_pgbackup_last_drill_passed{repository="/backups"} 1' in text
    assert '# TYPE modulo_pgbackup_archiver_archived_total counter' in text
    assert 'modulo_pgbackup_archiver_failed_total{repository="/backups"} 0' in text
    assert '_count{' not in text
    assert text.endswith('\n')


def test_metrics_pass_promtool(tmp_path):
    """Prometheus' own linter (Debian package prometheus; make bootstrap installs it as root)."""
    promtool = shutil.which('promtool')
    if not promtool:
        pytest.skip('promtool is not installed (apt-get install prometheus)')
    backups, archive = pitr_set()
    text = health.metrics(health.evaluate(facts(backups, archive=archive, server=healthy_server()), now=NOW))
    proc = subprocess.run([promtool, 'check', 'metrics'], input=text.encode(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, check=False)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout.decode()


def test_summary_says_what_is_wrong_and_what_to_do():
    result = health.evaluate(facts(daily(2), drill=None), now=NOW)
    lines = health.summary(result)
    assert lines[0].endswith('NOT OK (restore_drill)')
    failed = [n for n, line in enumerate(lines) if line.startswith('FAILED ') and 'restore_drill' in line][0]
    assert 'playbooks/restore-drill.yml' in lines[failed + 1]
    json.dumps(result)  # the module returns it as is


# --- facts from files ---------------------------------------------------------------------------

def test_last_backup_runs_newest_per_type_and_database(repo):
    def write(stamp, status, kind, db='modulodb'):
        started = datetime.datetime.strptime(stamp, '%Y%m%d_%H%M%S').replace(tzinfo=UTC)
        report.write_backup_report(repo, started, status, extra={'type': kind, 'database': db})
    write('20261123_020000', 'failed', 'logical')
    write('20261124_020000', 'success', 'logical')
    write('20261124_020500', 'failed', 'physical')
    write('20261124_021000', 'success', 'logical', db='otherdb')
    runs = health.last_backup_runs(repo)
    got = sorted((r['type'], r['database'], r['status']) for r in runs)
    assert got == [('logical', 'modulodb', 'success'), ('logical', 'otherdb', 'success'),
                   ('physical', 'modulodb', 'failed')]


def test_gather_reads_the_newest_drill_and_skips_broken_reports(repo):
    os.makedirs(repo.path('restore-tests'), exist_ok=True)
    for stamp, doc in (('20261101_040000', drill_report(days_ago=23)), ('20261122_040000', drill_report(days_ago=2))):
        with open(repo.path('restore-tests', 'monthly_drill_%s.json' % stamp), 'w') as handle:
            json.dump(doc, handle)
    with open(repo.path('restore-tests', 'monthly_drill_20261123_040000.json'), 'w') as handle:
        handle.write('{broken')
    found = health.gather(repo, [])
    assert found['drill_path'].endswith('monthly_drill_20261122_040000.json')
    assert found['archive']['segments'] == 0 and found['repository_disk']['free_bytes'] > 0
    assert 'server' not in found


def test_chain_reachable_is_the_last_segment_before_the_first_gap():
    chain = walchain.check_chain(wal_entries(seg(1, 3), seg(1, 4), seg(1, 6)), seg(1, 3), {}.get)
    assert chain['reachable'] == seg(1, 4) and chain['missing'] == [seg(1, 5)]
    chain = walchain.check_chain(wal_entries(seg(1, 3), seg(1, 4)), seg(1, 3), {}.get)
    assert chain['ok'] and chain['reachable'] == seg(1, 4)
    chain = walchain.check_chain(wal_entries(seg(1, 4)), seg(1, 3), {}.get)
    assert chain['reachable'] is None  # not even the base backup's first segment


def test_recovery_window_ends_at_a_gap(tmp_path):
    """catalog.recovery_window (what emergency recovery's assess step shows) never promises past a gap."""
    from ansible_collections.modulo.pgbackup.plugins.module_utils import catalog
    repo = str(tmp_path)
    day = os.path.join(repo, 'wal', '20261124')
    os.makedirs(day)
    for n, stamp in ((3, 1000), (4, 2000), (6, 3000)):
        path = os.path.join(day, seg(1, n))
        with open(path, 'wb') as handle:
            handle.write(b'x')
        os.utime(path, (stamp, stamp))
    base = make_meta('modulo_base_19700101_000000', '1970-01-01T00:00:00Z', kind='physical', wal_start=seg(1, 3))
    entries = [{'name': seg(1, n), 'kind': 'segment'} for n in (3, 4, 6)]
    chain = walchain.check_chain(entries, seg(1, 3), {}.get)
    window = catalog.recovery_window([base], repo, chain=chain)
    assert window['pitr']['gap'] == seg(1, 5) and window['pitr']['newest_segment'] == seg(1, 4)
    assert window['pitr']['to'] == '1970-01-01T00:33:20Z'   # segment 4's archive time, not segment 6's
    assert catalog.recovery_window([base], repo)['pitr']['to'] == '1970-01-01T00:50:00Z'
