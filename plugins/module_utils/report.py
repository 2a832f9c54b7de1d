# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backup run reports (``logs/backup_report_*.json``) and the runbook's thresholds."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import socket

from ansible_collections.modulo.pgbackup.plugins.module_utils import fsutil, repository

# The runbook's "Monitoring Thresholds".
MAX_BACKUP_DURATION_S = 30 * 60
MAX_SIZE_GROWTH = 0.5


def previous_backup(entries, meta):
    """The newest complete backup of the same database and type taken before ``meta``."""
    older = [e for e in entries
             if repository.is_complete(e) and e.get('database') == meta.get('database')
             and e.get('type') == meta.get('type') and e.get('name') != meta.get('name')
             and (e.get('started_at') or '') < (meta.get('started_at') or '')]
    return older[-1] if older else None


def thresholds(meta, previous, max_duration_s=MAX_BACKUP_DURATION_S, max_growth=MAX_SIZE_GROWTH):
    """Evaluate duration and size growth; each check says its value, limit and verdict."""
    checks = []
    duration = meta.get('duration_s')
    if duration is not None:
        checks.append({'check': 'backup_duration', 'value_s': duration, 'limit_s': max_duration_s,
                       'breached': duration > max_duration_s,
                       'advice': 'investigation required (runbook: backup creation time > 30 minutes)'
                       if duration > max_duration_s else None})
    if previous and previous.get('size_bytes'):
        growth = (meta['size_bytes'] - previous['size_bytes']) / float(previous['size_bytes'])
        checks.append({'check': 'size_growth', 'value': round(growth, 4), 'limit': max_growth,
                       'previous_backup': previous.get('name'), 'previous_size_bytes': previous['size_bytes'],
                       'breached': growth > max_growth,
                       'advice': 'capacity planning review (runbook: backup size growth > 50%)'
                       if growth > max_growth else None})
    return checks


def write_backup_report(repo, started, status, backups=None, error=None, checks=None, extra=None):
    """One JSON report per run, also for failed runs (cron and AWX read these)."""
    checks = checks or []
    report = {
        'report': 'backup', 'status': status, 'host': socket.gethostname(),
        'started_at': repository.iso(started), 'finished_at': repository.iso(repository.utcnow()),
        'backups': backups or [], 'error': error, 'thresholds': checks,
        'thresholds_breached': [c['check'] for c in checks if c.get('breached')],
    }
    if extra:
        report.update(extra)
    path = repo.path('logs', repository.report_name(repository.BACKUP_REPORT, started))
    if os.path.exists(path):
        path = path[:-5] + '_%d.json' % os.getpid()
    fsutil.write_json_atomic(path, report)
    return path, report
