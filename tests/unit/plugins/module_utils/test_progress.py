# -*- coding: utf-8 -*-
"""progress.py: the progress file of a long operation, as the playbooks and an operator read it."""

import json
import os

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import progress


class Clock(object):
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def read(path):
    with open(path) as handle:
        return json.load(handle)


def test_reports_are_throttled_but_a_new_phase_is_written_at_once(tmp_path):
    path = str(tmp_path / 'logs' / 'progress-backup.json')
    clock = Clock()
    reporter = progress.Reporter(path, 'base backup', interval_s=2.0, clock=clock)
    reporter.update('streaming database files', done=0, total=4 * 1024 ** 3)
    first = read(path)
    assert first['phase'] == 'streaming database files' and first['percent'] == 0
    assert first['finished'] is False and first['status'] == 'running'

    clock.now += 1.0
    reporter.update('streaming database files', done=1024 ** 3, total=4 * 1024 ** 3)
    assert read(path)['done_bytes'] == 0, 'written at most every interval'
    clock.now += 1.5
    reporter.update('streaming database files', done=2 * 1024 ** 3, total=4 * 1024 ** 3)
    doc = read(path)
    assert doc['done_bytes'] == 2 * 1024 ** 3 and doc['percent'] == 50
    # 2 GiB in 2.5 s: the other 2 GiB take as long again.
    assert doc['eta_s'] == 2 or doc['eta_s'] == 3
    assert doc['summary'].startswith('base backup: streaming database files, 2.0 GB of 4.0 GB (50%)')
    assert 'about 2 s left' in doc['summary'] or 'about 3 s left' in doc['summary']

    clock.now += 0.1
    reporter.update('waiting for the backup\'s WAL', force=False)
    doc = read(path)
    assert doc['phase'] == 'waiting for the backup\'s WAL' and 'done_bytes' not in doc and 'eta_s' not in doc

    reporter.finish('complete')
    doc = read(path)
    assert doc['finished'] is True and doc['status'] == 'complete' and doc['summary'].endswith('complete')


def test_reporting_ends_failed_when_the_operation_raises_and_reports_go_nowhere_outside(tmp_path):
    path = str(tmp_path / 'progress-restore.json')
    progress.report('nobody listens')          # no report open: nothing written, nothing raised
    assert not os.path.exists(path)
    with pytest.raises(RuntimeError):
        with progress.reporting(path, 'point-in-time recovery from b1'):
            progress.report('replaying WAL', replay_lsn='0/5000028', replay_time='2026-12-04 02:00:00+00')
            doc = read(path)
            assert doc['replay_lsn'] == '0/5000028' and 'replayed to 0/5000028' in doc['summary']
            raise RuntimeError('boom')
    doc = read(path)
    assert doc['finished'] is True and doc['status'] == 'failed'
    progress.report('after the end')
    assert read(path)['status'] == 'failed'


def test_counting_passes_chunks_through_and_reports_bytes(tmp_path):
    path = str(tmp_path / 'progress-restore.json')
    with progress.reporting(path, 'restore', interval_s=0):
        chunks = list(progress.counting(iter([b'a' * 10, b'b' * 30]), 'unpacking the base backup', 80))
        doc = read(path)
    assert chunks == [b'a' * 10, b'b' * 30]
    assert doc['done_bytes'] == 40 and doc['total_bytes'] == 80 and doc['percent'] == 50


def test_the_decorator_names_the_operation_and_uses_the_repository_file(tmp_path):
    class Repo(object):
        root = str(tmp_path)

    class Run(object):
        repo = Repo()

        @progress.reported('backup', lambda run: 'backup of database shop')
        def run(self):
            """Takes the backup."""
            progress.report('pg_dump of shop')
            return 'done'

    assert Run().run() == 'done' and Run.run.__doc__ == 'Takes the backup.'
    doc = read(str(tmp_path / 'logs' / 'progress-backup.json'))
    assert doc['operation'] == 'backup of database shop' and doc['status'] == 'complete'
    assert doc['phase'] == 'pg_dump of shop'


def test_an_unwritable_directory_does_not_break_the_operation(tmp_path):
    blocked = tmp_path / 'file'
    blocked.write_text('')
    with progress.reporting(str(blocked / 'logs' / 'progress-backup.json'), 'base backup'):
        progress.report('streaming')


def test_sizes_and_durations_read_like_a_person_wrote_them():
    assert progress.human_bytes(512) == '512 B' and progress.human_bytes(1536) == '1.5 kB'
    assert progress.human_bytes(15 * 1024 ** 3) == '15.0 GB'
    doc = {'operation': 'base backup', 'phase': 'streaming', 'elapsed_s': 3725, 'eta_s': 90,
           'done_bytes': 1024 ** 2, 'total_bytes': None, 'finished': False}
    assert progress.summary(doc) == 'base backup: streaming, 1.0 MB, 62 min elapsed, about 90 s left'
