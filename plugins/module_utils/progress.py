# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Progress of long work, in a file read while the task runs.

A 30-minute base backup or restore shows nothing in Ansible until it ends: an AWX job looks dead. The use
case (ops/backup.py, ops/restore.py) opens a report for its operation with ``reporting()``; the steps that
know how far they are (pg_basebackup's stream, the unpacking of a base backup, WAL replay) call ``report()``,
which does nothing when no report is open, as a log call does nothing without a handler. The file is
``<backup_root>/logs/progress-<kind>.json`` (repository.progress_path), rewritten atomically at most every
``INTERVAL_S`` and at each change of phase; its ``summary`` is one line for a person, and ``finished`` is
set once the operation ends, successfully or not. The playbooks run the long tasks with ``async`` and print
that summary while they wait (roles/progress); an operator can ``cat`` it.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import contextlib
import os
import time

from ansible_collections.modulo.pgbackup.plugins.module_utils import fsutil, repository

INTERVAL_S = 2.0
_ACTIVE = []


def human_bytes(size):
    size = float(size)
    for unit in ('B', 'kB', 'MB', 'GB', 'TB'):
        if size < 1024 or unit == 'TB':
            return ('%.0f %s' if unit == 'B' else '%.1f %s') % (size, unit)
        size /= 1024
    return '%.1f TB' % size


def _duration(seconds):
    seconds = int(round(seconds))
    if seconds < 120:
        return '%d s' % seconds
    if seconds < 7200:
        return '%d min' % round(seconds / 60.0)
    return '%.1f h' % (seconds / 3600.0)


def summary(doc):
    """One line: what runs, how far (bytes or WAL), for how long, and how long it may still take."""
    parts = ['%s: %s' % (doc['operation'], doc['phase'])]
    done, total = doc.get('done_bytes'), doc.get('total_bytes')
    if done is not None and total:
        parts.append('%s of %s (%d%%)' % (human_bytes(done), human_bytes(total), doc['percent']))
    elif done is not None:
        parts.append(human_bytes(done))
    if doc.get('replay_lsn'):
        parts.append('replayed to %s' % doc['replay_lsn'])
    if doc.get('replay_time'):
        parts.append('last transaction %s' % doc['replay_time'])
    if doc.get('target'):
        parts.append('target %s' % doc['target'])
    parts.append('%s elapsed' % _duration(doc['elapsed_s']))
    if doc.get('eta_s') is not None:
        parts.append('about %s left' % _duration(doc['eta_s']))
    if doc.get('finished'):
        parts.append(doc['status'])
    return ', '.join(parts)


class Reporter(object):
    """The progress file of one operation; writes are throttled to one per ``interval_s``."""

    def __init__(self, path, operation, interval_s=INTERVAL_S, clock=time.time):
        self.path, self.clock, self.interval_s = path, clock, interval_s
        self.started = clock()
        self.doc = {'operation': operation, 'phase': 'starting', 'status': 'running', 'finished': False,
                    'pid': os.getpid(), 'started_at': repository.iso(repository.utcnow())}
        self.written_at = None
        self.phase_started = (self.started, None)

    def update(self, phase, done=None, total=None, force=False, **details):
        now = self.clock()
        changed_phase = phase != self.doc['phase']
        if changed_phase:
            self.phase_started = (now, done)
            for key in ('done_bytes', 'total_bytes', 'percent', 'eta_s', 'replay_lsn', 'replay_time'):
                self.doc.pop(key, None)
        self.doc['phase'] = phase
        if done is not None:
            self.doc['done_bytes'] = int(done)
        if total:
            self.doc['total_bytes'] = int(total)
            self.doc['percent'] = min(100, int(100 * int(done or 0) / float(total)))
            self.doc['eta_s'] = self._eta(now, done, total)
        self.doc.update((k, v) for k, v in details.items() if v is not None)
        if force or changed_phase or self.written_at is None or now - self.written_at >= self.interval_s:
            self._write(now)

    def _eta(self, now, done, total):
        """Remaining time at this phase's own rate so far; None until it has a rate."""
        since, first = self.phase_started
        moved = int(done or 0) - int(first or 0)
        if now - since < 1 or moved <= 0:
            return None
        return round((int(total) - int(done or 0)) * (now - since) / moved)

    def finish(self, status):
        self.doc.update(status=status, finished=True)
        self.doc.pop('eta_s', None)
        self._write(self.clock())

    def _write(self, now):
        self.doc['elapsed_s'] = round(now - self.started, 1)
        self.doc['updated_at'] = repository.iso(repository.utcnow())
        self.doc['summary'] = summary(self.doc)
        try:
            fsutil.ensure_dir(os.path.dirname(self.path))
            fsutil.write_json_atomic(self.path, self.doc, overwrite=True)
            self.written_at = now
        except OSError:
            # Progress is for people watching; a full or read-only disk is the operation's own error to report.
            pass


@contextlib.contextmanager
def reporting(path, operation, interval_s=INTERVAL_S):
    """Open the report of ``operation`` for the steps below; it ends ``complete`` or ``failed``."""
    reporter = Reporter(path, operation, interval_s)
    reporter.update('starting', force=True)
    _ACTIVE.append(reporter)
    try:
        yield reporter
    except BaseException:
        reporter.finish('failed')
        raise
    else:
        reporter.finish('complete')
    finally:
        _ACTIVE.remove(reporter)


def reported(kind, what):
    """Decorates a use case's ``run``: the run is reported in its repository's progress file of ``kind``
    (``backup`` or ``restore``), named ``what(self)``."""
    def decorate(method):
        def run(self, *args, **kwargs):
            with reporting(repository.progress_path(self.repo.root, kind), what(self)):
                return method(self, *args, **kwargs)
        run.__doc__ = method.__doc__
        return run
    return decorate


def report(phase, done=None, total=None, **details):
    """Tell the open report (if any) where the work is."""
    if _ACTIVE:
        _ACTIVE[-1].update(phase, done=done, total=total, **details)


def counting(chunks, phase, total):
    """``chunks`` (bytes) passed through, reported as ``done`` of ``total`` under ``phase``."""
    done = 0
    for chunk in chunks:
        done += len(chunk)
        report(phase, done=done, total=total)
        yield chunk
