# -*- coding: utf-8 -*-
"""Restore drill pieces that need no server: smoke query verdicts, RTO/RPO arithmetic, the report."""

import datetime
import json
import os
import socket

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import drill, pgclient, repository
from ansible_collections.modulo.pgbackup.plugins.module_utils.drill import DrillError

UTC = datetime.timezone.utc


# --- smoke queries ------------------------------------------------------------------------------

@pytest.mark.parametrize('query, rows, passed, words', [
    ({'expect': 1000}, [['1000']], True, "'1000' as expected"),
    ({'expect': '1000'}, [['999']], False, "returned '999', expected '1000'"),
    ({'expect': True}, [['t']], True, 'as expected'),
    ({'expect': False}, [['t']], False, "expected 'f'"),
    ({'expect': 'x'}, [], False, 'returned None'),
    ({'min_rows': 1}, [['a'], ['b']], True, 'returned 2 row(s)'),
    ({'min_rows': 3}, [['a'], ['b']], False, 'expected at least 3'),
    ({'max_rows': 1}, [['a'], ['b']], False, 'expected at most 1'),
    ({'min_rows': 1, 'max_rows': 2}, [['a'], ['b']], True, '2 row(s)'),
    ({'min_rows': 3, 'max_rows': 1}, [['a'], ['b']], False, 'at least 3 and at most 1'),
    ({}, [], True, 'returned 0 row(s)'),
])
def test_evaluate_smoke(query, rows, passed, words):
    ok, detail = drill.evaluate_smoke(query, rows)
    assert ok is passed
    assert words in detail


def test_validate_smoke_query():
    with pytest.raises(DrillError) as info:
        drill.validate_smoke_query({'name': 'x'}, 0)
    assert 'has no sql' in str(info.value)
    with pytest.raises(DrillError) as info:
        drill.validate_smoke_query({'name': 'both', 'sql': 'SELECT 1', 'expect': 1, 'min_rows': 1})
    assert 'either expect or min_rows' in str(info.value)
    assert drill.validate_smoke_query({'sql': 'SELECT 1'})['sql'] == 'SELECT 1'


# --- RTO / RPO ----------------------------------------------------------------------------------

def test_rto_is_restore_plus_recovery():
    rto = drill.measure_rto(100.0, 50.5, 1800)
    assert rto == {'target_s': 1800, 'measured_s': 150.5, 'passed': True, 'restore_s': 100.0, 'recovery_s': 50.5}
    assert drill.measure_rto(1000, 801, 1800)['passed'] is False
    assert drill.measure_rto(1800, 0, 1800)['passed'] is True
    assert drill.measure_rto(None, None)['measured_s'] == 0.0


def test_rpo_is_the_age_of_the_newest_recoverable_point():
    now = datetime.datetime(2026, 12, 6, 4, 0, 0, tzinfo=UTC)
    rpo = drill.measure_rpo(now, now - datetime.timedelta(minutes=20), 3600, basis='b')
    assert rpo['measured_s'] == 1200.0 and rpo['passed'] and rpo['newest_recoverable_point'] == '2026-12-06T03:40:00Z'
    assert drill.measure_rpo(now, now - datetime.timedelta(hours=2), 3600)['passed'] is False
    # a point slightly in the future (clock skew) is not a negative age
    assert drill.measure_rpo(now, now + datetime.timedelta(seconds=5))['measured_s'] == 0.0
    nothing = drill.measure_rpo(now, None)
    assert nothing['measured_s'] is None and nothing['passed'] is False


@pytest.mark.parametrize('text, expected', [
    ('2026-11-25 09:12:33.123456+00', datetime.datetime(2026, 11, 25, 9, 12, 33, 123456, tzinfo=UTC)),
    ('2026-11-25 10:12:33+01', datetime.datetime(2026, 11, 25, 9, 12, 33, tzinfo=UTC)),
    ('2026-11-25 09:12:33 UTC', datetime.datetime(2026, 11, 25, 9, 12, 33, tzinfo=UTC)),
    (None, None), ('', None), ('not a time', None),
])
def test_parse_pg_time(text, expected):
    assert drill.parse_pg_time(text) == expected


# --- report -------------------------------------------------------------------------------------

def test_report_status():
    started = datetime.datetime(2026, 12, 6, 4, 0, 0, tzinfo=UTC)
    report = drill.new_report('logical', started, host='db1')
    assert drill.finish_report(report)['status'] == 'failed'  # no check ran: never a pass
    drill.add_check(report, 'checksum', True, 'ok')
    drill.add_check(report, 'amcheck', True, 'ok')
    assert drill.finish_report(report)['status'] == 'passed'
    drill.add_check(report, 'smoke: x', False, 'boom', sql='SELECT 1')
    assert drill.finish_report(report)['status'] == 'failed'
    assert drill.failed_checks(report) == ['smoke: x']
    assert report['checks'][-1]['sql'] == 'SELECT 1'
    report2 = drill.new_report('pitr', started, host='db1')
    drill.add_check(report2, 'checksum', True, 'ok')
    report2['error'] = 'something broke'
    assert drill.finish_report(report2)['status'] == 'failed'


def test_backup_summary():
    meta = {'name': 'modulo_full_20261124_020000', 'type': 'logical', 'finished_at': '2026-11-24T02:01:00Z',
            'size_bytes': 42, 'table_rows': {'public.t': 1}, 'sha256': 'ab'}
    summary = drill.backup_summary(meta)
    assert summary['name'] == meta['name'] and summary['size_bytes'] == 42 and 'table_rows' not in summary
    assert drill.backup_summary(None) is None


def test_write_report_in_both_places(repo):
    started = datetime.datetime(2026, 12, 6, 4, 0, 0, tzinfo=UTC)
    report = drill.finish_report(drill.new_report('logical', started, host='db1'))
    paths = drill.write_report(repo, report)
    assert paths == [repo.path('restore-tests', 'monthly_drill_20261206_040000.json'),
                     repo.path('logs', 'monthly_drill_20261206_040000.json')]
    for path in paths:
        with open(path) as handle:
            assert json.load(handle)['status'] == 'failed'
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)
    # a second drill in the same second does not overwrite the first report
    again = drill.write_report(repo, report)
    assert again[0] != paths[0] and os.path.exists(paths[0])
    # a report_dir equal to logs/ gets one file, not two
    assert len(drill.write_report(repo, report, repo.path('logs'))) == 1


def test_report_name():
    assert drill.report_name(repository.parse_iso('2026-12-06T04:00:07Z')) == 'monthly_drill_20261206_040007.json'


# --- ports --------------------------------------------------------------------------------------

def test_port_in_use(tmp_path):
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        assert drill.port_in_use(port, socket_dirs=())
    free = drill.free_port(socket_dirs=())
    assert not drill.port_in_use(free, socket_dirs=())
    (tmp_path / ('.s.PGSQL.%d' % free)).write_text('')
    assert drill.port_in_use(free, socket_dirs=(str(tmp_path),))


# -- mode verify: warnings and skipped checks never fail a live database's verification --------------


def test_verify_report_levels_decide_the_status(tmp_path):
    from ansible_collections.modulo.pgbackup.plugins.module_utils import verify
    report = {'checks': [], 'error': None, 'database': 'modulodb',
              'started_at': repository.iso(datetime.datetime(2027, 1, 3, 4, 0, 0, tzinfo=datetime.timezone.utc))}
    verify.add_check(report, 'connectivity', True, 'connected')
    verify.add_check(report, 'amcheck', False, 'skipped: CREATE EXTENSION amcheck enables it', level='skipped')
    verify.add_check(report, 'table_rows', False, 'public.orders backup 3 live 4', level='warning')
    verify.finish_report(report)
    assert report['status'] == 'passed' and report['warnings'] == ['table_rows']
    assert verify.failed_checks(report) == []
    verify.add_check(report, 'smoke: orders', False, 'returned 0 row(s)')
    verify.finish_report(report)
    assert report['status'] == 'failed' and verify.failed_checks(report) == ['smoke: orders']
    assert verify.report_name('modulodb', repository.parse_iso(report['started_at'])) == \
        'verify_modulodb_20270103_040000.json'
    # whatever a smoke query says, its session cannot write
    assert 'default_transaction_read_only=on' in pgclient.ReadOnlyConnection(bindir='/usr/bin').env()['PGOPTIONS']


def test_a_drill_request_holds_typed_values_with_the_runbook_targets():
    request = drill.Request()
    assert (request.kind, request.backup, request.rto_target_s, request.rpo_target_s) == (
        'logical', 'latest', drill.DEFAULT_RTO_S, drill.DEFAULT_RPO_S)
    assert drill.Request(jobs=0).jobs == 1 and drill.Request(backup='').backup == 'latest'
    with pytest.raises(drill.DrillError, match='kind must be one of'):
        drill.Request(kind='snapshot')
