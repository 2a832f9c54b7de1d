# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The incident report of an emergency recovery (``logs/incident_<id>.json``).

Each step of ``playbooks/emergency-recovery.yml`` adds itself to the report as
soon as it ends, failed steps included, so the report tells the truth even
when the play stops half way, and steps run one at a time (one AWX job per
tag) with the same incident id build one report.  The RTO is measured from
the moment the application was being stopped to the moment it answered again:
that is the outage users see.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import datetime
import json
import os
import re
import socket

from ansible_collections.modulo.pgbackup.plugins.module_utils import errors, fsutil, repository

STEPS = ('assess', 'stop', 'restore', 'verify', 'start')
STATUSES = ('ok', 'failed')
ID_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}\Z')
DEFAULT_RTO_S = 30 * 60
REPORT_PREFIX = repository.INCIDENT_PREFIX


class IncidentError(errors.PgBackupError):
    pass


def parse_time(text):
    """An ISO 8601 UTC time as written by Ansible's now() or this module (microseconds optional)."""
    raw = (text or '').strip().replace(' ', 'T')
    if raw.endswith('Z'):
        raw = raw[:-1] + '+00:00'
    try:
        parsed = datetime.datetime.fromisoformat(raw)
    except ValueError:
        raise IncidentError('%r is not an ISO 8601 time such as 2026-11-24T03:12:00.000000Z' % (text,))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.astimezone(datetime.timezone.utc)


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


def iso(ts):
    return ts.astimezone(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')


def report_path(logs_dir, incident_id):
    if not ID_RE.match(incident_id or ''):
        raise IncidentError('incident_id %r is not accepted: letters, digits, ".", "_" and "-" only' % (incident_id,))
    return os.path.join(logs_dir, '%s%s.json' % (REPORT_PREFIX, incident_id))


def load(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def new_report(incident_id, rto_target_s=DEFAULT_RTO_S):
    return {'report': 'emergency_recovery', 'incident_id': incident_id, 'host': socket.gethostname(),
            'operators': [], 'steps': [], 'backup': None, 'recovered_to': None, 'target': None,
            'rto': {'target_s': rto_target_s}}


def add_step(report, step, status, started_at, finished_at, details=None, error=None, operator=None,
             backup=None, recovered_to=None, target=None, rollback=None):
    """Append one step (a re-run is another entry) and recompute the summary fields."""
    if step not in STEPS:
        raise IncidentError('step %r is not one of %s' % (step, ', '.join(STEPS)))
    if status not in STATUSES:
        raise IncidentError('status %r is not one of %s' % (status, ', '.join(STATUSES)))
    started, finished = parse_time(started_at), parse_time(finished_at)
    if finished < started:
        raise IncidentError('step %s finished (%s) before it started (%s)' % (step, finished_at, started_at))
    report['steps'].append({'step': step, 'status': status, 'started_at': iso(started), 'finished_at': iso(finished),
                            'duration_s': round((finished - started).total_seconds(), 3),
                            'details': details or {}, 'error': error or None})
    if operator and operator not in report['operators']:
        report['operators'].append(operator)
    if backup:
        report['backup'] = backup
    if recovered_to:
        report['recovered_to'] = recovered_to
    if target:
        report['target'] = target
    if rollback:
        report['rollback'] = rollback
    return summarize(report)


def summarize(report, now=None):
    """Status, timings and RTO from the steps recorded so far."""
    steps = report['steps']
    now = now or utcnow()
    report['started_at'] = min(s['started_at'] for s in steps)
    report['finished_at'] = max(s['finished_at'] for s in steps)
    last = steps[-1]
    if last['status'] == 'failed':
        report['status'] = 'failed'
        report['error'] = '%s: %s' % (last['step'], last['error'] or 'failed')
    else:
        report['status'] = 'recovered' if last['step'] == 'start' else 'in_progress'
        report['error'] = None
    report['next_step'] = _next_step(last)
    timings = {}
    for name in STEPS:
        done = [s for s in steps if s['step'] == name]
        if done:
            timings['%s_s' % name] = round(sum(s['duration_s'] for s in done), 3)
    timings['total_s'] = round((parse_time(report['finished_at']) - parse_time(report['started_at'])).total_seconds(), 3)
    report['timings'] = timings
    stops = [s for s in steps if s['step'] == 'stop']
    starts = [s for s in steps if s['step'] == 'start' and s['status'] == 'ok']
    rto = report.setdefault('rto', {})
    rto['target_s'] = rto.get('target_s') or DEFAULT_RTO_S
    rto['basis'] = 'from the start of the stop step (application going down) to the end of the start step (answering again)'
    if not stops:
        rto.update(measured_s=None, passed=None, outage_open=False)
    else:
        down = parse_time(stops[0]['started_at'])
        up = parse_time(starts[-1]['finished_at']) if starts and starts[-1]['finished_at'] >= stops[0]['started_at'] else None
        measured = ((up or now) - down).total_seconds()
        rto.update(measured_s=round(measured, 3), outage_open=up is None,
                   passed=(measured <= rto['target_s']) if up else (False if measured > rto['target_s'] else None))
    return report


def _next_step(last):
    if last['status'] == 'failed':
        return 'fix the cause of the failed %s step (error above), then re-run it with the same incident_id' % last['step']
    if last['step'] == 'start':
        return None
    return STEPS[STEPS.index(last['step']) + 1]


def record(logs_dir, incident_id, step, status, started_at, finished_at, rto_target_s=DEFAULT_RTO_S, **fields):
    """Add a step to the report file (created when missing) atomically; returns (path, report)."""
    path = report_path(logs_dir, incident_id)
    report = load(path) or new_report(incident_id, rto_target_s)
    report.setdefault('rto', {})['target_s'] = rto_target_s
    add_step(report, step, status, started_at, finished_at, **fields)
    fsutil.ensure_dir(logs_dir)
    fsutil.write_json_atomic(path, report, overwrite=True)
    return path, report
