# -*- coding: utf-8 -*-
"""incident: the emergency recovery's report (steps, status, timings, RTO), and catalog.recovery_window."""

import datetime
import json
import os
import stat

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import catalog, incident
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import archive as walarchive
from ansible_collections.modulo.pgbackup.tests.unit.plugins.module_utils.fakerepo import make_meta

UTC = datetime.timezone.utc


def at(seconds):
    """An ISO time ``seconds`` after 03:00:00 on a fixed day."""
    return incident.iso(datetime.datetime(2026, 11, 24, 3, 0, 0, tzinfo=UTC) + datetime.timedelta(seconds=seconds))


def full_run(logs, incident_id='inc1', restart_at=700.0):
    for name, start, end in (('assess', 0, 5), ('stop', 10, 20), ('restore', 20, 600), ('verify', 600, 650),
                             ('start', 650, restart_at)):
        path, report = incident.record(logs, incident_id, name, 'ok', at(start), at(end), operator='oncall')
    return path, report


def test_a_full_recovery_is_recovered_with_real_timings_and_the_outage_as_rto(tmp_path):
    path, report = full_run(str(tmp_path / 'logs'))
    assert os.path.basename(path) == 'incident_inc1.json'
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path) as handle:
        assert json.load(handle) == report
    assert report['status'] == 'recovered' and report['error'] is None and report['next_step'] is None
    assert [s['step'] for s in report['steps']] == ['assess', 'stop', 'restore', 'verify', 'start']
    assert report['timings'] == {'assess_s': 5.0, 'stop_s': 10.0, 'restore_s': 580.0, 'verify_s': 50.0,
                                 'start_s': 50.0, 'total_s': 700.0}
    # The outage runs from the start of the stop to the end of the start: 690 s.
    assert report['rto'] == dict(report['rto'], target_s=1800, measured_s=690.0, passed=True, outage_open=False)
    assert report['started_at'] == at(0) and report['finished_at'] == at(700)
    assert report['operators'] == ['oncall']


def test_an_outage_longer_than_the_rto_is_missed(tmp_path):
    _path, report = full_run(str(tmp_path), restart_at=1900.5)
    assert report['rto']['measured_s'] == 1890.5 and report['rto']['passed'] is False


def test_a_failed_step_makes_the_incident_failed_and_says_what_next(tmp_path):
    logs = str(tmp_path)
    incident.record(logs, 'inc2', 'stop', 'ok', at(0), at(3))
    _path, report = incident.record(logs, 'inc2', 'restore', 'failed', at(3), at(9), error='backup is corrupt',
                                    rollback='nothing to roll back')
    assert report['status'] == 'failed' and report['error'] == 'restore: backup is corrupt'
    assert 'restore step' in report['next_step'] and report['rollback'] == 'nothing to roll back'
    # The application is still down: the outage is open and measured up to now.
    now = datetime.datetime(2026, 11, 24, 3, 1, 0, tzinfo=UTC)
    incident.summarize(report, now=now)
    assert report['rto']['outage_open'] is True and report['rto']['measured_s'] == 60.0
    assert report['rto']['passed'] is None
    # A re-run of the failed step with the same id appends to the same report and recovers it.
    incident.record(logs, 'inc2', 'restore', 'ok', at(20), at(40), backup={'name': 'modulo_full_x'})
    _path, report = incident.record(logs, 'inc2', 'start', 'ok', at(50), at(55))
    assert [s['status'] for s in report['steps']] == ['ok', 'failed', 'ok', 'ok']
    assert report['status'] == 'recovered' and report['backup'] == {'name': 'modulo_full_x'}
    assert report['timings']['restore_s'] == 26.0 and report['rto']['measured_s'] == 55.0


def test_steps_run_one_at_a_time_are_in_progress_until_the_start(tmp_path):
    _path, report = incident.record(str(tmp_path), 'inc3', 'assess', 'ok', at(0), at(2))
    assert report['status'] == 'in_progress' and report['next_step'] == 'stop'
    assert report['rto']['measured_s'] is None and report['rto']['passed'] is None


@pytest.mark.parametrize('args, words', [
    (('../etc', 'assess', 'ok', at(0), at(1)), 'incident_id'),
    (('ok-id', 'reboot', 'ok', at(0), at(1)), 'step'),
    (('ok-id', 'assess', 'fine', at(0), at(1)), 'status'),
    (('ok-id', 'assess', 'ok', 'yesterday', at(1)), 'ISO 8601'),
    (('ok-id', 'assess', 'ok', at(5), at(1)), 'before it started'),
])
def test_bad_input_is_refused_and_nothing_is_written(tmp_path, args, words):
    with pytest.raises(incident.IncidentError) as caught:
        incident.record(str(tmp_path), *args)
    assert words in str(caught.value)
    assert os.listdir(str(tmp_path)) == []


def test_times_without_microseconds_or_zone_are_read_as_utc():
    assert incident.parse_time('2026-11-24T03:00:00Z') == incident.parse_time('2026-11-24 03:00:00')
    assert incident.parse_time('2026-11-24T04:00:00+01:00') == incident.parse_time('2026-11-24T03:00:00.000000Z')


def test_recovery_window_logical_only(tmp_path):
    backups = [make_meta('modulo_full_20261123_020000', '2026-11-23T02:00:00Z'),
               make_meta('modulo_full_20261124_020000', '2026-11-24T02:00:00Z', '2026-11-24T02:05:00Z'),
               make_meta('modulo_full_20261124_030000', '2026-11-24T03:00:00Z', status='failed')]
    window = catalog.recovery_window(backups, str(tmp_path))
    assert window['logical'] == {'backup': 'modulo_full_20261124_020000', 'database': 'modulodb',
                                 'point': '2026-11-24T02:00:00Z'}
    assert window['pitr'] is None
    assert (window['newest_point'], window['newest_method']) == ('2026-11-24T02:00:00Z', 'logical')


def test_recovery_window_with_a_base_backup_and_archived_wal(tmp_path):
    repo = str(tmp_path)
    segment_dir = os.path.join(walarchive.wal_dir(repo), '20261124')
    os.makedirs(segment_dir)
    segment = os.path.join(segment_dir, '000000010000000000000003.zst')
    open(segment, 'wb').close()
    archived = datetime.datetime(2026, 11, 24, 14, 29, 51, tzinfo=UTC).timestamp()
    os.utime(segment, (archived, archived))
    backups = [make_meta('modulo_full_20261124_020000', '2026-11-24T02:00:00Z'),
               make_meta('modulo_base_20261124_020100', '2026-11-24T02:01:00Z', '2026-11-24T02:01:10Z', kind='physical')]
    window = catalog.recovery_window(backups, repo)
    assert window['pitr'] == {'from': '2026-11-24T02:01:10Z', 'to': '2026-11-24T14:29:51Z', 'base_backups': 1,
                              'newest_segment': '000000010000000000000003'}
    assert (window['newest_point'], window['newest_method']) == ('2026-11-24T14:29:51Z', 'pitr')
    # Without a base backup the archive alone recovers nothing.
    assert catalog.recovery_window(backups[:1], repo)['pitr'] is None


def test_recovery_window_says_when_the_archive_cannot_be_read(tmp_path):
    repo = str(tmp_path)
    wal = walarchive.wal_dir(repo)
    os.makedirs(os.path.join(wal, '20261124'))
    os.chmod(wal, 0)
    try:
        if os.access(wal, os.R_OK):
            pytest.skip('running as root: every directory is readable')
        backups = [make_meta('modulo_base_20261124_020100', '2026-11-24T02:01:00Z', kind='physical')]
        window = catalog.recovery_window(backups, repo)
    finally:
        os.chmod(wal, 0o700)
    assert window['pitr'] is None and 'cannot read the WAL archive' in window['archive_error']
