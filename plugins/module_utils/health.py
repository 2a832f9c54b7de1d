# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backup health: could we restore, right now, to a recent enough point?

The runbook's "Monitoring and Verification" thresholds plus what a DBA checks
before trusting an archive.  ``gather`` collects facts (repository, archive,
optionally the live server); ``evaluate`` turns facts into checks and is pure,
so each threshold is tested with plain dicts; ``metrics`` and ``summary``
render the result for node_exporter's textfile collector and for people.

Every check has ``check``, ``status`` (``ok``, ``breached``, ``unknown`` or
``skipped``), ``breached``, ``detail`` and ``advice``; only ``breached`` fails
the health.  ``unknown`` means a fact could not be read (e.g. a role without
pg_monitor); it is reported, not hidden, and does not fail on its own.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import datetime
import json
import os

from ansible_collections.modulo.pgbackup.plugins.module_utils import repository, walchain

from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import (
    archive as walarchive, errors as walerrors, names as walnames, s3 as wals3)
from ansible_collections.modulo.pgbackup.plugins.module_utils import report as reports
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import PgError, psql_query

DEFAULTS = {
    'rpo_target_s': 3600,                                # runbook RPO: 1 hour
    'max_duration_s': reports.MAX_BACKUP_DURATION_S,     # runbook: backup creation > 30 min
    'max_size_growth': reports.MAX_SIZE_GROWTH,          # runbook: size growth > 50 %
    'drill_max_age_days': 35,                            # monthly drill, with a few days of slack
    'min_free_percent': 10,
    'max_archive_backlog': 10,                           # .ready segments waiting in pg_wal
}
# Room for the next backup: the newest one may grow by the runbook's 50 % before it is flagged.
NEXT_BACKUP_FACTOR = 1.0 + reports.MAX_SIZE_GROWTH
BACKUP_REPORT_RE = repository.BACKUP_REPORT_RE
DRILL_REPORT_RE = repository.DRILL_REPORT_RE
HEALTH_FILE = repository.HEALTH_FILE


def thresholds(**given):
    """The effective thresholds; ``None`` values mean the default.  Raises ValueError on bad values."""
    out = dict(DEFAULTS)
    out.update((k, v) for k, v in given.items() if v is not None)
    for key in ('rpo_target_s', 'max_duration_s'):
        if out[key] <= 0:
            raise ValueError('%s must be 1 or more (seconds), got %s' % (key, out[key]))
    if out['max_size_growth'] <= 0:
        raise ValueError('max_size_growth must be above 0 (0.5 means +50 %%), got %s' % out['max_size_growth'])
    if out['drill_max_age_days'] < 0:
        raise ValueError('drill_max_age_days must be 0 (do not check drills) or more, got %s'
                         % out['drill_max_age_days'])
    if not 0 <= out['min_free_percent'] < 100:
        raise ValueError('min_free_percent must be from 0 to 99, got %s' % out['min_free_percent'])
    if out['max_archive_backlog'] < 0:
        raise ValueError('max_archive_backlog must be 0 or more, got %s' % out['max_archive_backlog'])
    return out


# --------------------------------------------------------------------------------------------
# Facts
# --------------------------------------------------------------------------------------------

def _newest_json(directory, pattern):
    """(path, document) of the newest report in ``directory`` by the stamp in its name, or (None, None)."""
    try:
        names = [n for n in os.listdir(directory) if pattern.match(n)]
    except OSError:
        return None, None
    for name in sorted(names, key=lambda n: (pattern.match(n).group(1), n), reverse=True):
        path = os.path.join(directory, name)
        try:
            with open(path) as handle:
                doc = json.load(handle)
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict):
            return path, doc
    return None, None


def last_backup_runs(repo):
    """The newest run report of each (type, database): failed runs count even when no backup was written."""
    directory = repo.path('logs')
    try:
        names = sorted((n for n in os.listdir(directory) if BACKUP_REPORT_RE.match(n)),
                       key=lambda n: (BACKUP_REPORT_RE.match(n).group(1), n))
    except OSError:
        return []
    newest = {}
    for name in names:
        try:
            with open(os.path.join(directory, name)) as handle:
                doc = json.load(handle)
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict):
            continue
        backups = doc.get('backups') or [{}]
        kind = doc.get('type') or backups[0].get('type')
        # A base backup is of the whole cluster: one line of physical runs, whatever database was named.
        key = (kind, None if kind == 'physical' else doc.get('database') or backups[0].get('database'))
        newest[key] = dict(doc, report_path=os.path.join(directory, name))
    return [newest[k] for k in sorted(newest, key=lambda k: (str(k[0]), str(k[1])))]


def disk_usage(path):
    """Free space of the filesystem holding ``path``, as an unprivileged writer sees it."""
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    return {'path': path, 'total_bytes': total, 'free_bytes': free,
            'free_percent': round(100.0 * free / total, 2) if total else None}


def archive_facts(repo, s3archive=None):
    """Archived WAL, local and (when configured) S3 together: recovery fetches from either.

    Returns the merged entries, the segment size, the newest segment with when it was archived, and
    ``read_history(name)`` for the chain walk.
    """
    info = walarchive.read_archive_info(repo.root) or {}
    entries = walarchive.merged_archive(repo.root, s3archive)
    by_name = dict((e['name'], e) for e in entries)
    segments = [e for e in entries if e['kind'] == 'segment']
    newest = max(segments, key=lambda e: (e['name'][8:], e['name'][:8])) if segments else None
    # The segment is safe as soon as either copy is: merged_archive keeps the earlier time.
    newest_at = datetime.datetime.fromtimestamp(newest['mtime'], tz=datetime.timezone.utc) if newest else None

    def read_history(name):
        entry = by_name.get(name)
        if entry is None:
            return None
        if entry.get('location') == 's3':
            return s3archive.read_text(entry['path'])
        with open(entry['path']) as handle:
            return handle.read()

    return {'entries': entries, 'seg_size': int(info.get('wal_segment_size') or walnames.WAL_SEG_SIZE),
            'segments': len(segments), 'newest_segment': newest['name'] if newest else None,
            'newest_archived_at': newest_at, 'read_history': read_history,
            's3_only': sum(1 for e in entries if e.get('location') == 's3')}


def server_facts(conn, pgdata=None, log=None):
    """What the live server says about archiving and where its WAL lives; errors become ``error`` fields."""
    facts = {'reachable': False}
    try:
        rows = psql_query(conn, "SELECT name, setting FROM pg_settings WHERE name IN "
                                "('archive_mode', 'archive_timeout', 'data_directory', 'wal_level')",
                          db='postgres', log=log)
    except PgError as exc:
        facts['error'] = str(exc)
        return facts
    facts['reachable'] = True
    settings = dict((r[0], r[1]) for r in rows)
    facts['archive_mode'] = settings.get('archive_mode')
    facts['archive_timeout_s'] = int(settings['archive_timeout']) if settings.get('archive_timeout') else None
    facts['pgdata'] = pgdata or settings.get('data_directory')
    rows = psql_query(conn, 'SELECT row_to_json(a)::text, pg_is_in_recovery(), '
                            'extract(epoch FROM now())::float8 FROM pg_stat_archiver a',
                      db='postgres', log=log, check=False)
    if rows:
        facts['archiver'] = json.loads(rows[0][0])
        facts['in_recovery'] = rows[0][1] == 't'
    # pg_ls_archive_statusdir needs superuser or pg_monitor; without it the backlog is unknown, not zero.
    rows = psql_query(conn, "SELECT count(*), extract(epoch FROM min(modification))::float8 "
                            "FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'",
                      db='postgres', log=log, check=False)
    if rows is None:
        facts['ready_error'] = ('cannot list pg_wal/archive_status: grant pg_monitor to %s (or run as a '
                                'superuser) to see the archive backlog' % (conn.login_user or 'the login role'))
    else:
        facts['ready_count'] = int(rows[0][0])
        facts['oldest_ready_at'] = (datetime.datetime.fromtimestamp(float(rows[0][1]), tz=datetime.timezone.utc)
                                    if rows[0][1] else None)
    if facts['pgdata']:
        try:
            facts['pg_wal_disk'] = disk_usage(os.path.join(facts['pgdata'], 'pg_wal'))
        except OSError as exc:
            facts['pg_wal_error'] = 'cannot stat %s/pg_wal: %s' % (facts['pgdata'], exc.strerror or exc)
    return facts


def _drill_order(name):
    return DRILL_REPORT_RE.match(name).group(1), name


def newest_drill(repo, store=None):
    """(path or s3:// URI, report) of the newest drill report, in ``restore-tests/`` here or in the S3 mirror.

    A drill host apart from production restores from S3 and leaves its report in the mirror only
    (pg_restore_drill uploads it): the database host's health check reads it there.
    """
    path, doc = _newest_json(repo.path('restore-tests'), DRILL_REPORT_RE)
    if store is None:
        return path, doc
    names = [item['relpath'][len('restore-tests/'):] for item in store.list('restore-tests/')]
    names = sorted((n for n in names if DRILL_REPORT_RE.match(n)), key=_drill_order, reverse=True)
    for name in names:
        if path and _drill_order(os.path.basename(path)) >= _drill_order(name):
            break
        remote = store.read_json('restore-tests/' + name)
        if isinstance(remote, dict):
            return store.uri('restore-tests/' + name), remote
    return path, doc


def gather(repo, backups, conn=None, pgdata=None, log=None, s3=None, store=None):
    """Every fact ``evaluate`` needs; ``conn`` None skips the live-server facts, ``s3`` (settings) the mirror's
    WAL and ``store`` (an S3Store) its drill reports."""
    facts = {'repository': repo.root, 'backups': backups, 'backup_runs': last_backup_runs(repo)}
    facts['drill_path'], facts['drill'] = newest_drill(repo, store)
    try:
        facts['archive'] = archive_facts(repo, wals3.s3_archive(s3))
        facts['read_history'] = facts['archive'].pop('read_history')
    except (OSError, walerrors.WalArchiveError) as exc:
        facts['archive_error'] = str(exc)
    try:
        facts['repository_disk'] = disk_usage(repo.root)
    except OSError as exc:
        facts['repository_disk_error'] = 'cannot stat %s: %s' % (repo.root, exc.strerror or exc)
    if conn is not None:
        facts['server'] = server_facts(conn, pgdata=pgdata, log=log)
    return facts


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------

def _check(name, status, detail, advice=None, **extra):
    item = {'check': name, 'status': status, 'breached': status == 'breached', 'detail': detail,
            'advice': advice if status in ('breached', 'unknown') else None}
    item.update(extra)
    return item


# Clocks of the database and backup hosts may differ by this much before a date "from the future" is an error.
CLOCK_TOLERANCE_S = 300


def _age(now, then):
    return int((now - then).total_seconds())


def human_duration(seconds):
    if seconds is None:
        return 'n/a'
    seconds = int(seconds)
    if seconds < 120:
        return '%d s' % seconds
    if seconds < 7200:
        return '%d min' % (seconds // 60)
    if seconds < 172800:
        return '%.1f h' % (seconds / 3600.0)
    return '%.1f days' % (seconds / 86400.0)


def _complete(backups, kind=None):
    return [b for b in backups if repository.is_complete(b) and (kind is None or b.get('type') == kind)]


def check_wal_chain(facts):
    """From the oldest retained complete base backup to the newest archived segment."""
    archive = facts.get('archive')
    if archive is None:
        return _check('wal_chain', 'unknown', facts.get('archive_error', 'archive unreadable'),
                      'make the wal/ directory readable by the user running the check'), None
    bases = _complete(facts['backups'], 'physical')
    local_bases = [b for b in bases if b.get('wal_start')]
    if not archive['segments']:
        if bases:
            return _check('wal_chain', 'breached', 'base backups exist but the archive has no WAL',
                          'base backups cannot be restored without their WAL: check archive_command '
                          '(playbooks/configure-pitr.yml) and the wal/ directory'), None
        return _check('wal_chain', 'skipped', 'no WAL archive (logical backups only: no PITR)'), None
    if not local_bases:
        return _check('wal_chain', 'breached', 'WAL is archived but there is no complete base backup to '
                      'replay it from', 'take one: pg_backup type=physical (playbooks/nightly-backup.yml does '
                      'once archiving is configured)'), None
    # Recovery starts from one base backup: the window reaches back to the oldest one whose WAL is continuous
    # up to the newest segment. A gap before it only shortens the window; a gap after the newest base backup
    # (or no usable base backup at all) is a failure.
    broken = None
    for base in local_bases:
        try:
            chain = walchain.check_chain(archive['entries'], base['wal_start'], facts['read_history'],
                                         seg_size=archive['seg_size'])
        except ValueError as exc:
            return _check('wal_chain', 'unknown', 'cannot read the archive: %s' % exc,
                          'inspect wal/ by hand'), None
        chain['base_backup'], chain['base_finished_at'] = base['name'], base.get('finished_at')
        if not chain['problem']:
            break
        broken = broken or (base, chain)
    if chain['problem']:
        newest = local_bases[-1]
        return _check('wal_chain', 'breached', chain['problem'],
                      'recovery from %s, the newest base backup, stops at the first gap: take a new base backup '
                      'now, then look for the missing files (S3 mirror, pg_wal, the server log of archive_command)'
                      % newest['name'], base_backup=newest['name'], missing=chain['missing'],
                      missing_count=chain['missing_count']), chain
    detail = 'continuous from %s (base backup %s) to %s, %s segment(s), timeline %s' % (
        chain['from'], chain['base_backup'], chain['to'], chain['segments'], chain['timeline'])
    if broken is None:
        return _check('wal_chain', 'ok', detail, base_backup=chain['base_backup'], missing_count=0), chain
    older = [b['name'] for b in local_bases if b['name'] != chain['base_backup']
             and (b.get('finished_at') or '') < (chain['base_finished_at'] or '')]
    warning = ('WAL gap before base backup %s (%s): the older base backup(s) %s cannot be recovered past it, so '
               'point-in-time recovery reaches back only to %s. Nothing to do at once (retention removes them in '
               'time); find out why archiving missed WAL (the S3 mirror, the server log of archive_command)'
               % (chain['base_backup'], broken[1]['problem'], ', '.join(older), chain['base_finished_at']))
    return _check('wal_chain', 'ok', '%s; %s' % (detail, warning), base_backup=chain['base_backup'],
                  warning=warning, gap=broken[1]['missing'], missing=broken[1]['missing'],
                  missing_count=broken[1]['missing_count'], unusable_base_backups=older), chain


def _server_archiving_healthy(server):
    if not server or not server.get('reachable') or server.get('archive_mode') in (None, 'off'):
        return False
    arch = server.get('archiver') or {}
    failing = bool(arch.get('last_failed_time')) and (arch.get('last_failed_time') or '') > (arch.get('last_archived_time') or '')
    return not failing and server.get('ready_count') == 0


def check_recovery_point(facts, limits, now, chain):
    """Newest point we can restore to: the newest complete backup or, with a sound chain, the newest WAL."""
    complete = _complete(facts['backups'])
    points = []
    if complete:
        newest = max(complete, key=lambda b: b.get('finished_at') or '')
        points.append((repository.parse_iso(newest['finished_at']), 'backup %s' % newest['name']))
    archive = facts.get('archive') or {}
    server = facts.get('server')
    if chain and chain['ok'] and archive.get('newest_archived_at'):
        points.append((archive['newest_archived_at'], 'archived WAL %s' % archive['newest_segment']))
        # archive_timeout bounds how long written WAL may wait: with nothing waiting and nothing failing,
        # every commit older than that is already in the archive, even on an idle server.
        if _server_archiving_healthy(server) and server.get('archive_timeout_s'):
            points.append((now - datetime.timedelta(seconds=server['archive_timeout_s']),
                           'live archiving (nothing waiting, archive_timeout %d s)' % server['archive_timeout_s']))
    if not points:
        return _check('backup_age', 'breached', 'no complete backup at all', 'run playbooks/nightly-backup.yml',
                      value_s=None, limit_s=limits['rpo_target_s'])
    when, basis = max(points, key=lambda p: p[0])
    if _age(when, now) > CLOCK_TOLERANCE_S:
        # Age 0 here would hide a stale repository for as long as the skew lasts.
        return _check('backup_age', 'breached', 'newest recoverable point %s (%s) is %s in the future of this '
                      "host's clock (%s)" % (repository.iso(when), basis, human_duration(_age(when, now)),
                                             repository.iso(now)),
                      'a clock was wrong when it was taken or is wrong now: check NTP on the database and backup '
                      'hosts; until then the backup age cannot be trusted', value_s=_age(now, when),
                      limit_s=limits['rpo_target_s'], basis=basis, recovery_point=repository.iso(when))
    age = max(0, _age(now, when))
    status = 'breached' if age > limits['rpo_target_s'] else 'ok'
    detail = 'newest recoverable point %s ago (%s), RPO %s' % (
        human_duration(age), basis, human_duration(limits['rpo_target_s']))
    advice = ('newest recoverable point is older than the RPO: check the schedule, the last backup report and '
              'WAL archiving (runbook: "Old Backup Age (RPO Issues)")')
    return _check('backup_age', status, detail, advice, value_s=age, limit_s=limits['rpo_target_s'],
                  basis=basis, recovery_point=repository.iso(when))


def check_backup_runs(facts):
    runs = facts['backup_runs']
    if not runs:
        return _check('last_backup_run', 'skipped', 'no backup run report in logs/')
    failed = [r for r in runs if r.get('status') not in ('success', 'complete', 'ok')]
    if failed:
        detail = '; '.join('the last %s backup of %s failed at %s: %s' % (
            r.get('type') or 'a', r.get('database') or 'the cluster', r.get('started_at'), r.get('error'))
            for r in failed)
        advice = 'read %s and fix the cause, then run playbooks/nightly-backup.yml' % failed[-1]['report_path']
        return _check('last_backup_run', 'breached', detail, advice, reports=[r['report_path'] for r in failed])
    return _check('last_backup_run', 'ok', 'the last run of each backup succeeded (%d kind(s))' % len(runs))


def check_thresholds(facts, limits):
    """The runbook's duration and growth thresholds on the newest complete backup of each kind."""
    checks = []
    for kind in ('logical', 'physical'):
        complete = _complete(facts['backups'], kind)
        if not complete:
            continue
        latest = complete[-1]
        for item in reports.thresholds(latest, reports.previous_backup(complete, latest),
                                       max_duration_s=limits['max_duration_s'], max_growth=limits['max_size_growth']):
            item['check'] = '%s_%s' % (kind, item['check'])
            item['status'] = 'breached' if item['breached'] else 'ok'
            item['backup'] = latest['name']
            if 'value_s' in item:
                item['detail'] = '%s took %s (limit %s)' % (latest['name'], human_duration(item['value_s']),
                                                            human_duration(item['limit_s']))
            else:
                item['detail'] = '%s is %+.0f %% against %s (limit +%.0f %%)' % (
                    latest['name'], 100 * item['value'], item['previous_backup'], 100 * item['limit'])
            checks.append(item)
    return checks


def check_drill(facts, limits, now):
    if not limits['drill_max_age_days']:
        return _check('restore_drill', 'skipped', 'drill checks turned off (drill_max_age_days: 0)')
    drill = facts.get('drill')
    if not drill:
        return _check('restore_drill', 'breached', 'no restore drill report in restore-tests/',
                      'an untested backup is a hope, not a backup: run playbooks/restore-drill.yml and schedule it '
                      '(playbooks/schedule.yml)')
    started = repository.parse_iso(drill['started_at'])
    age = _age(now, started)
    limit = limits['drill_max_age_days'] * 86400
    extra = dict(value_s=age, limit_s=limit, report=facts['drill_path'], result=drill.get('status'))
    if drill.get('status') != 'passed':
        failed = [c.get('name') for c in drill.get('checks', []) if not c.get('passed')]
        return _check('restore_drill', 'breached', 'the last restore drill (%s, %s ago) %s: %s' % (
            drill.get('kind'), human_duration(age), drill.get('status'), drill.get('error') or ', '.join(failed)),
            'read %s, fix the cause and run playbooks/restore-drill.yml again' % facts['drill_path'], **extra)
    if age > limit:
        return _check('restore_drill', 'breached', 'the last restore drill passed, but %s ago (limit %s)' % (
            human_duration(age), human_duration(limit)), 'run playbooks/restore-drill.yml; check the drill '
            'schedule (first Sunday 04:00 UTC)', **extra)
    return _check('restore_drill', 'ok', 'the last %s drill passed %s ago' % (drill.get('kind'), human_duration(age)),
                  **extra)


def check_archiver(facts, limits, now):
    server = facts.get('server')
    if server is None:
        return []
    if not server.get('reachable'):
        return [_check('archiver', 'breached', server.get('error', 'server unreachable'),
                       'the server is down or unreachable: runbook "Emergency Recovery", step 1 (assess)')]
    archive = facts.get('archive') or {}
    if server.get('archive_mode') in (None, 'off'):
        if archive.get('segments') or _complete(facts['backups'], 'physical'):
            return [_check('archiver', 'breached', 'archive_mode is off but the repository holds WAL/base backups: '
                           'the PITR window ends at the last archived segment',
                           'run playbooks/configure-pitr.yml (and restart PostgreSQL if it says so)')]
        return [_check('archiver', 'skipped', 'WAL archiving is not configured (archive_mode off)')]
    arch = server.get('archiver') or {}
    checks = []
    last_ok, last_failed = arch.get('last_archived_time') or '', arch.get('last_failed_time') or ''
    extra = dict(archived_count=arch.get('archived_count'), failed_count=arch.get('failed_count'),
                 last_archived_wal=arch.get('last_archived_wal'), last_failed_wal=arch.get('last_failed_wal'))
    if last_failed and last_failed > last_ok:
        checks.append(_check('archiver', 'breached', 'archive_command is failing: last failure on %s at %s, last '
                             'success %s' % (arch.get('last_failed_wal'), last_failed, last_ok or 'never'),
                             'read the PostgreSQL log for archive_command errors (disk full? permissions? S3?); '
                             'WAL piles up in pg_wal until it works', **extra))
    else:
        checks.append(_check('archiver', 'ok', 'archiving works: %s archived, last %s at %s' % (
            arch.get('archived_count'), arch.get('last_archived_wal'), last_ok or 'never'), **extra))
    if 'ready_count' in server:
        ready, oldest = server['ready_count'], server.get('oldest_ready_at')
        lag = _age(now, oldest) if oldest else 0
        status = 'breached' if ready > limits['max_archive_backlog'] else 'ok'
        checks.append(_check('archive_backlog', status, '%d segment(s) waiting in pg_wal (oldest %s), limit %d' % (
            ready, human_duration(lag) if oldest else 'none', limits['max_archive_backlog']),
            'archiving is falling behind: check archive_command speed and errors, the repository disk and S3',
            value=ready, limit=limits['max_archive_backlog'], lag_s=lag))
    else:
        checks.append(_check('archive_backlog', 'unknown', server.get('ready_error'),
                             server.get('ready_error')))
    return checks


def _free_space_check(name, disk, limits, need_bytes=None, what=''):
    percent = disk['free_percent']
    low = percent is not None and percent < limits['min_free_percent']
    short = need_bytes is not None and disk['free_bytes'] < need_bytes
    detail = '%s: %.1f GiB free (%.1f %%)' % (disk['path'], disk['free_bytes'] / 1073741824.0, percent or 0)
    if need_bytes is not None:
        detail += ', next backup needs about %.1f GiB' % (need_bytes / 1073741824.0)
    advice = 'free space on %s%s before it fills: %s' % (disk['path'], what, 'the next backup will not fit'
                                                         if short else 'below %d %%' % limits['min_free_percent'])
    return _check(name, 'breached' if low or short else 'ok', detail, advice, free_bytes=disk['free_bytes'],
                  total_bytes=disk['total_bytes'], free_percent=percent, need_bytes=need_bytes)


def check_disks(facts, limits):
    checks = []
    if 'repository_disk' in facts:
        complete = _complete(facts['backups'])
        sizes = {}
        for b in complete:  # the newest backup of each kind and database must fit again
            sizes[(b.get('type'), b.get('database'))] = b.get('size_bytes') or 0
        need = int(sum(sizes.values()) * NEXT_BACKUP_FACTOR) if sizes else None
        checks.append(_free_space_check('repository_free_space', facts['repository_disk'], limits, need,
                                        ' (retention: playbooks/cleanup.yml)'))
    else:
        checks.append(_check('repository_free_space', 'unknown', facts.get('repository_disk_error'),
                             'make the repository readable by the user running the check'))
    server = facts.get('server') or {}
    if server.get('pg_wal_disk'):
        checks.append(_free_space_check('pg_wal_free_space', server['pg_wal_disk'], limits,
                                        what=' (a full pg_wal stops PostgreSQL)'))
    elif server.get('pg_wal_error'):
        checks.append(_check('pg_wal_free_space', 'unknown', server['pg_wal_error'],
                             'run the check on the database host as root or postgres, or set pgdata'))
    return checks


def evaluate(facts, limits=None, now=None):
    """Every check over ``facts``; ``ok`` is False when any check is breached."""
    limits = limits or thresholds()
    now = now or repository.utcnow()
    chain_check, chain = check_wal_chain(facts)
    checks = [check_recovery_point(facts, limits, now, chain), check_backup_runs(facts)]
    checks.extend(check_thresholds(facts, limits))
    checks.append(check_drill(facts, limits, now))
    checks.extend(check_archiver(facts, limits, now))
    checks.extend(check_disks(facts, limits))
    checks.append(chain_check)
    complete = _complete(facts['backups'])
    breached = [c['check'] for c in checks if c['breached']]
    return {
        'ok': not breached, 'checked_at': repository.iso(now), 'repository': facts['repository'],
        'thresholds': limits, 'breached': breached,
        'unknown': [c['check'] for c in checks if c['status'] == 'unknown'],
        'checks': checks, 'latest': complete[-1]['name'] if complete else None,
        'wal_chain': chain, 'backups': {
            'complete': len(complete), 'total': len(facts['backups']),
            'logical': len(_complete(facts['backups'], 'logical')),
            'physical': len(_complete(facts['backups'], 'physical'))},
    }


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

def _label(value):
    return str(value).replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n')


def _by_name(health, name):
    for check in health['checks']:
        if check['check'] == name:
            return check
    return None


def metrics(health):
    """Prometheus text exposition (node_exporter textfile collector), ``modulo_pgbackup_*`` metrics."""
    repo = 'repository="%s"' % _label(health['repository'])
    lines = []

    def family(kind, name, help_text, samples):
        samples = [(labels, value) for labels, value in samples if value is not None]
        if not samples:
            return
        lines.append('# HELP modulo_pgbackup_%s %s' % (name, help_text))
        lines.append('# TYPE modulo_pgbackup_%s %s' % (name, kind))
        for labels, value in samples:
            lines.append('modulo_pgbackup_%s{%s} %s' % (name, ','.join([repo] + labels), _number(value)))

    def gauge(name, help_text, samples):
        family('gauge', name, help_text, samples)

    gauge('health_ok', '1 when no health check is breached.', [([], 1 if health['ok'] else 0)])
    gauge('check_breached', '1 when the check is breached, 0 when it passes (unknown/skipped: absent).',
          [(['check="%s"' % c['check']], 1 if c['breached'] else 0)
           for c in health['checks'] if c['status'] in ('ok', 'breached')])
    gauge('check_unknown', '1 when the check could not be evaluated.',
          [(['check="%s"' % c['check']], 1) for c in health['checks'] if c['status'] == 'unknown'])
    age = _by_name(health, 'backup_age')
    gauge('recovery_point_age_seconds', 'Age of the newest point a restore can reach.', [([], age.get('value_s'))])
    gauge('rpo_target_seconds', 'Recovery point objective.', [([], health['thresholds']['rpo_target_s'])])
    gauge('backups_complete', 'Complete backups in the repository, by type.',
          [(['type="logical"'], health['backups']['logical']), (['type="physical"'], health['backups']['physical'])])
    for kind in ('logical', 'physical'):
        duration = _by_name(health, '%s_backup_duration' % kind)
        if duration:
            gauge('last_backup_duration_seconds', 'Duration of the newest complete backup.',
                  [(['type="%s"' % kind], duration['value_s'])])
        growth = _by_name(health, '%s_size_growth' % kind)
        if growth:
            gauge('last_backup_size_growth_ratio', 'Size growth of the newest complete backup over the previous one.',
                  [(['type="%s"' % kind], growth['value'])])
    drill = _by_name(health, 'restore_drill')
    if drill and drill['status'] != 'skipped' and drill.get('value_s') is not None:
        gauge('last_drill_passed', '1 when the newest restore drill passed.', [([], 1 if drill['result'] == 'passed' else 0)])
        gauge('last_drill_age_seconds', 'Age of the newest restore drill.', [([], drill['value_s'])])
    archiver = _by_name(health, 'archiver')
    if archiver and 'failed_count' in archiver:
        # pg_stat_archiver's counts only grow (until a stats reset): counters, named _total as Prometheus wants.
        family('counter', 'archiver_failed_total', 'pg_stat_archiver.failed_count.', [([], archiver['failed_count'])])
        family('counter', 'archiver_archived_total', 'pg_stat_archiver.archived_count.',
               [([], archiver['archived_count'])])
    backlog = _by_name(health, 'archive_backlog')
    if backlog and backlog['status'] in ('ok', 'breached'):
        gauge('archive_ready_segments', 'WAL segments waiting for archive_command (.ready).', [([], backlog['value'])])
        gauge('archive_lag_seconds', 'Age of the oldest segment waiting for archive_command.', [([], backlog['lag_s'])])
    for name, what in (('repository_free_space', 'repository'), ('pg_wal_free_space', 'pg_wal')):
        disk = _by_name(health, name)
        if disk and disk['status'] in ('ok', 'breached'):
            gauge('free_bytes', 'Free bytes on the filesystem.', [(['volume="%s"' % what], disk['free_bytes'])])
            gauge('free_ratio', 'Free fraction of the filesystem.',
                  [(['volume="%s"' % what], round(disk['free_percent'] / 100.0, 4))])
    chain = _by_name(health, 'wal_chain')
    if chain['status'] in ('ok', 'breached') and 'missing_count' in chain:
        gauge('wal_chain_missing_segments', 'Segments missing between the oldest base backup and the newest WAL.',
              [([], chain['missing_count'])])
    gauge('health_check_timestamp_seconds', 'When this health check ran (Unix time).',
          [([], int((repository.parse_iso(health['checked_at'])
                     - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)).total_seconds()))])
    return '\n'.join(_merge_families(lines)) + '\n'


def _merge_families(lines):
    """One HELP/TYPE per metric family, its samples together (the exposition format requires it)."""
    order, families = [], {}
    current = None
    for line in lines:
        if line.startswith('# HELP '):
            current = line.split()[2]
            if current not in families:
                order.append(current)
                families[current] = [line]
        elif line.startswith('# TYPE '):
            if len(families[current]) == 1:
                families[current].append(line)
        else:
            families[current].append(line)
    return [line for name in order for line in families[name]]


def _number(value):
    if isinstance(value, bool):
        return '1' if value else '0'
    if isinstance(value, float):
        return repr(value)
    return str(int(value))


def summary(health):
    """Readable lines: verdict first, then one line per check with its advice."""
    marks = {'ok': 'OK     ', 'breached': 'FAILED ', 'unknown': 'UNKNOWN', 'skipped': 'skipped'}
    lines = ['backup health of %s at %s: %s' % (
        health['repository'], health['checked_at'],
        'OK' if health['ok'] else 'NOT OK (%s)' % ', '.join(health['breached']))]
    for check in health['checks']:
        lines.append('%s %-24s %s' % (marks[check['status']], check['check'], check['detail']))
        if check.get('advice'):
            lines.append('        %-24s -> %s' % ('', check['advice']))
    return lines
