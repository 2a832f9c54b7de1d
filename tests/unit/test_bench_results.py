# -*- coding: utf-8 -*-
"""bench/bench.py: the memory sampler on real processes, and the checks make bench-smoke relies on."""

import copy
import importlib.util
import json
import os
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location('bench', os.path.join(ROOT, 'bench', 'bench.py'))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_merged_usage_of_several_runs_keeps_every_peak_and_adds_cpu_of_the_parts():
    first = {'peak_rss_mb': 20.0, 'peak_rss_controller_mb': 90.0, 'peak_rss_by_program_mb': {'python3': 20.0},
             'cpu_s_by_program': {'python3': 1.5, 'zstd': 0.5}}
    second = {'peak_rss_mb': 30.0, 'peak_rss_controller_mb': 80.0,
              'peak_rss_by_program_mb': {'python3': 25.0, 'zstd': 5.0},
              'cpu_s_by_program': {'python3': 1.0, 'zstd': 2.25}}
    parts = bench.merge_usage([first, second], add_cpu=True)
    assert (parts['peak_rss_mb'], parts['peak_rss_controller_mb']) == (30.0, 90.0)
    assert parts['peak_rss_by_program_mb'] == {'python3': 25.0, 'zstd': 5.0}
    assert parts['cpu_s_by_program'] == {'zstd': 2.75, 'python3': 2.5}
    assert list(parts['cpu_s_by_program']) == ['zstd', 'python3']          # most CPU first, as Sampler does
    # Repeats of one measurement: the chosen run's CPU, everyone's peaks.
    chosen = bench.merge_usage([first, first, second])
    assert chosen['cpu_s_by_program'] == first['cpu_s_by_program'] and chosen['peak_rss_mb'] == 30.0


def test_sampler_sees_a_child_process_memory_and_cpu():
    code = 'import time\nb = bytearray(80 * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1\n' \
           'while time.process_time() < 0.6: pass\n'
    with bench.Sampler(interval=0.05) as sampler:
        subprocess.run([sys.executable, '-c', code], check=True)
    summary = sampler.summary()
    assert summary['peak_rss_mb'] >= 80
    label = os.path.basename(sys.executable)[:15]
    assert summary['peak_rss_by_program_mb'][label] >= 80
    assert summary['cpu_s_by_program'][label] >= 0.3


def complete_results():
    measurements = {}
    for key in bench.REQUIRED:
        entry = {'method': 'm | n', 'time_s': 1.5, 'size_bytes': 1000, 'peak_rss_mb': 12.0}
        if key.startswith(('archive_load.', 'archive_async_load.')):
            entry = {'method': 'load', 'segments_archived': 3, 'ready_backlog_peak': 1, 'ready_backlog_at_end': 0,
                     'failures': 0}
        measurements[key] = entry
    measurements['pitr.backup_restore']['rows_match_pgbackrest'] = True
    measurements['emergency_recovery'].update(ok=True, rows_ok=True, app_writes_again=True, outage_s=20.5,
                                              step_s={'restore': 9.1}, pgbench_accounts=500000,
                                              orders_recovered=3040, orders_expected=3040,
                                              orders_written_before_stop=40, orders_written_during_outage=0,
                                              app_orders_after_restart=3)
    return {'scale': 5, 'started_at': '2026-11-26T05:00:00.000+00:00', 'host': {'cpus': 2},
            'database': {'size_bytes': 80 * 1024 * 1024}, 'measurements': measurements}


def test_complete_results_pass_the_check(tmp_path):
    json_path, md_path = bench.write_results(complete_results(), str(tmp_path))
    assert bench.check(json_path) == []
    text = open(md_path).read()
    assert '| m \\| n |' in text  # a pipe in a method is escaped, the table keeps its columns
    assert 'Emergency recovery: recovered; outage 20.50 s' in text and 'orders 3040 of 3040 expected (the 40 ' in text
    assert json.load(open(json_path))['targets']


@pytest.mark.parametrize('damage,expected', [
    (lambda r: r['measurements'].pop('pitr.pgbackrest'), 'pitr.pgbackrest missing'),
    (lambda r: r['measurements']['logical_backup.pg_backup_default'].update(time_s=0),
     'logical_backup.pg_backup_default has no positive time_s'),
    (lambda r: r['measurements']['physical_backup.pg_backup'].update(size_bytes=0),
     'physical_backup.pg_backup has no size'),
    (lambda r: r['measurements']['logical_restore.backup_restore_default'].update(rows_ok=False),
     'restored the wrong number of rows'),
    (lambda r: r['measurements']['archive_load.project'].update(segments_archived=0), 'archived no segment'),
    (lambda r: r['measurements']['pitr.backup_restore'].update(rows_match_pgbackrest=False),
     'different pgbench_history rows'),
    (lambda r: r['measurements']['physical_restore.backup_restore'].pop('peak_rss_mb'), 'has no peak RSS'),
    (lambda r: r['measurements'].update(emergency_recovery={'skipped': 'no playbook'}),
     'emergency_recovery was skipped'),
    (lambda r: r['measurements']['emergency_recovery'].update(ok=False), 'emergency_recovery: the playbook did not'),
    (lambda r: r['measurements']['emergency_recovery'].pop('rows_ok'), 'emergency_recovery: the data after'),
    (lambda r: r['measurements']['emergency_recovery'].update(app_writes_again=False),
     'the application does not write again'),
    (lambda r: r['measurements']['emergency_recovery'].pop('peak_rss_mb'), 'emergency_recovery has no peak RSS'),
], ids=['missing', 'no-time', 'no-size', 'rows', 'no-segment', 'pitr-mismatch', 'no-rss', 'emergency-skipped',
        'emergency-failed', 'emergency-rows-unchecked', 'emergency-app-silent', 'emergency-no-rss'])
def test_check_names_what_is_missing_or_wrong(tmp_path, damage, expected):
    results = copy.deepcopy(complete_results())
    damage(results)
    json_path, _md = bench.write_results(results, str(tmp_path))
    problems = bench.check(json_path)
    assert any(expected in problem for problem in problems), problems


def test_check_needs_the_markdown(tmp_path):
    json_path, md_path = bench.write_results(complete_results(), str(tmp_path))
    os.unlink(md_path)
    assert any('.md missing' in problem for problem in bench.check(json_path))


def test_targets_are_judged_in_their_direction():
    results = complete_results()
    results['measurements']['archive_push.project']['rate_ratio'] = 1.3
    results['measurements']['physical_backup.pg_backup']['time_ratio'] = 1.3
    results['measurements']['emergency_recovery']['time_s'] = 75.0
    results['measurements'].pop('pitr.backup_restore')
    verdicts = dict(((v['measurement'], v['field']), v['met']) for v in bench.evaluate_targets(results))
    assert verdicts[('archive_push.project', 'rate_ratio')] is True
    assert verdicts[('physical_backup.pg_backup', 'time_ratio')] is False
    assert verdicts[('emergency_recovery', 'time_s')] is False
    assert verdicts[('pitr.backup_restore', 'time_ratio')] is None


def test_only_runs_the_phases_asked_for_after_their_setup():
    assert bench.phases_to_run() == ['setup', 'logical_backup', 'logical_restore', 'configure_archiving', 'physical',
                                     'delta_restore', 'pitr', 'pitr_s3', 'archive_under_load', 'archive_push_cost',
                                     'archive_async', 'emergency_recovery']
    assert bench.phases_to_run(['logical_restore']) == ['setup', 'logical_backup', 'logical_restore']
    assert bench.phases_to_run(['pitr', 'physical']) == ['setup', 'configure_archiving', 'physical', 'pitr']
    assert all(hasattr(bench.Bench, name) for name in bench.phases_to_run())
    with pytest.raises(SystemExit) as exc:
        bench.main(['--only', 'physical,restore'])
    assert exc.value.code == 2


def test_project_command_keeps_the_installed_shape_with_its_own_repo(tmp_path):
    """The push/fetch loops run the installed line itself; only the repository in its settings differs."""
    from ansible_collections.modulo.pgbackup.plugins.module_utils import walcommand
    command = walcommand.install(str(tmp_path / 'my bin' / 'pgbackup-wal'),
                                 {'repo': '/var/lib/pgbackup', 'compression': 'gzip', 'level': 2})
    installed = walcommand.command_lines(command)[0]
    fake = type('FakeBench', (), {'base': str(tmp_path)})()
    line = bench.Bench.project_command_for(fake, installed, '/tmp/push-project')
    words, original = shlex.split(line), shlex.split(installed)
    assert words[:2] == original[:2] and words[3:] == original[3:] == ['push', '%p', '%f'] and words[2] != command
    copy = walcommand.installed_settings(words[2])
    assert copy['repo'] == '/tmp/push-project' and (copy['compression'], copy['level']) == ('gzip', 2)
    assert walcommand.installed_settings(command)['repo'] == '/var/lib/pgbackup'      # the original is untouched


def test_pairs_run_in_turns_each_after_a_cold_cache_when_asked(monkeypatch):
    """--drop-caches: the page cache is written back and dropped before every run of a pair, in the order the
    runs alternate; without it nothing is touched."""
    calls = []

    class Args(object):
        repeats = 2
        drop_caches = True

    class Fake(object):
        args = Args()

        def cold_cache(self):
            bench.Bench.cold_cache(self)

    written = []

    class Proc(object):
        def __init__(self, path, mode):
            assert path == '/proc/sys/vm/drop_caches' and mode == 'w'

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, text):
            written.append(text)
            calls.append('drop')

    monkeypatch.setattr(bench, 'open', Proc, raising=False)
    monkeypatch.setattr(bench.os, 'sync', lambda: calls.append('sync'))

    def run(label, seconds):
        def func():
            calls.append(label)
            return label, seconds, {'peak_rss_mb': 1.0}
        return func

    chosen = bench.Bench.interleaved(Fake(), run('ref', 2.0), run('ours', 1.0))
    assert calls == ['sync', 'drop', 'ref', 'sync', 'drop', 'ours'] * 2 and written == ['3\n'] * 4
    assert [c[0] for c in chosen] == ['ref', 'ours'] and chosen[1][2]['times_s'] == [1.0, 1.0]

    Fake.args.drop_caches = False
    del calls[:]
    bench.Bench.interleaved(Fake(), run('ref', 2.0), run('ours', 1.0))
    assert calls == ['ref', 'ours'] * 2
