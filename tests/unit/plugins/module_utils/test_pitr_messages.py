# -*- coding: utf-8 -*-
"""pitr.explain_short_recovery: a recovery that stopped short says where the archive has a gap."""

from ansible_collections.modulo.pgbackup.plugins.module_utils import pitr

LOG = ('the restored server stopped during recovery: LOG:  last completed transaction was at log time '
       '2026-11-26 05:37:10.12983+00 | FATAL:  recovery ended before configured recovery target was reached')


def archive(tmp_path, *names):
    day = tmp_path / 'wal' / '20261126'
    day.mkdir(parents=True)
    for name in names:
        (day / (name + '.zst')).write_bytes(b'x')
    return str(tmp_path)


def test_a_gap_is_named_with_the_base_backup_and_what_to_do(tmp_path):
    repo = archive(tmp_path, '000000010000000000000002', '000000010000000000000004')
    msg = pitr.explain_short_recovery(LOG, {'name': 'modulo_base_x', 'wal_start': '000000010000000000000002'}, repo)
    assert msg.startswith('recovery ended before reaching the target: the WAL archive has a gap after base backup '
                          'modulo_base_x, 1 segment(s) missing, first 000000010000000000000003 (the last '
                          'transaction replayed is from 2026-11-26 05:37:10.12983+00); nothing was promoted'), msg
    assert msg.endswith('Server log: ' + LOG)


def test_without_a_visible_gap_the_cause_is_still_said(tmp_path):
    repo = archive(tmp_path, '000000010000000000000002')
    msg = pitr.explain_short_recovery(LOG, {'name': 'b', 'wal_start': '000000010000000000000002'}, repo)
    assert msg.startswith('recovery ended before reaching the target: a WAL segment it needs is missing')


def test_other_failures_are_left_as_they_are():
    other = 'the restored server stopped during recovery: FATAL:  could not restore file'
    assert pitr.explain_short_recovery(other, {'wal_start': '000000010000000000000002'}, '/nonexistent') == other


def test_a_server_that_stopped_before_pg_ctl_stopped_waiting_is_explained_the_same(tmp_path):
    # Recovery can end short before pg_ctl's wait ends: then start() fails, and its text carries the same log.
    started = ('the restored server did not come up: waiting for server to start.... stopped waiting\n'
               'pg_ctl: could not start server\nExamine the log output.; server log: ' + LOG.split(': ', 1)[1])
    repo = archive(tmp_path, '000000010000000000000002', '000000010000000000000004')
    msg = pitr.explain_short_recovery(started, {'name': 'b', 'wal_start': '000000010000000000000002'}, repo)
    assert msg.startswith('recovery ended before reaching the target: the WAL archive has a gap after base backup b, '
                          '1 segment(s) missing, first 000000010000000000000003'), msg
