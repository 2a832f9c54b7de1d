# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention of a backup repository (runbook: "automatic cleanup of old backups").

Planning is separate from deleting: ``plan_units`` decides, from an inventory of
the repository (local files or S3 keys, see ``local_inventory`` and
retention_s3), what goes and what stays and why; ``apply_local`` (or
retention_s3.apply) then deletes exactly that list.  Check mode is the plan.

Rules (DESIGN.md section 5):

* Backups (``full/`` logical, ``base/`` physical) are aged by their ``.meta``
  (``finished_at``, else ``started_at``), never by file mtimes, which a copy
  may have reset.  A backup older than ``full_days`` goes (``.meta`` first, so
  a half-deleted backup never looks complete, then its data and its
  ``.globals.sql``), except the newest ``min_full`` *complete* backups of its
  group (logical: per database; physical: per cluster, by system identifier)
  whatever their age.  Failed or incomplete backups never count toward
  ``min_full`` and go once older than ``full_days``.
* WAL (``wal/YYYYMMDD/``) is aged by its archive date: a file archived on day D
  is taken to be as young as the end of D.  A segment (and its ``.partial`` or
  ``.backup`` file) may go only when it is older than ``wal_days`` *and* no
  retained complete base backup may need it.  A base backup B (``wal_start`` on
  timeline T_B, segment number S_B) may need segment (T, S) unless S < S_B and
  T <= T_B: recovery from B starts at S_B and only ever moves to later
  timelines.  Segments on a later timeline than B are kept even below S_B: a
  later timeline may have branched before B started, and telling that apart
  needs the history files, which is not worth the risk for a few segments
  that age out once a base backup on the new timeline is the oldest retained.
  ``.history`` files of timelines >= the lowest timeline of a retained base
  backup are always kept (recovery reads them to follow timelines); older ones
  go after ``wal_days``.  With no retained base backup, WAL is aged by
  ``wal_days`` alone and a warning says there is nothing to recover from.
* Reports (``logs/backup_report_*``, ``logs/retention_report_*``,
  ``logs/verify_*``, ``restore-tests/monthly_drill_*`` and its copy in
  ``logs/``) are aged by the timestamp in their name and go after
  ``report_days``; ``logs/health.json`` (the latest health check), ``logs/audit.log``
  and the emergency recovery records (``logs/incident_*.json``, ``logs/dr_simulation_*.md``) stay.
* Temporary files of interrupted runs (``.tmp-*``) have no ``.meta`` and no
  name-stamp: their mtime is the only age there is, and nothing copies them;
  they go once older than a day.
* Anything else is reported under ``unclassified`` and never deleted.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import datetime
import errno
import json
import os
import shutil

from ansible_collections.modulo.pgbackup.plugins.module_utils import errors, fsutil, repository
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import names as walnames

DAY = datetime.timedelta(days=1)
TMP_MAX_AGE = DAY
BACKUP_DIRS = ('full', 'base')
SCANNED_DIRS = ('full', 'base', 'wal', 'logs', 'restore-tests')
REPORT_RES = {'logs': repository.LOG_REPORT_RE, 'restore-tests': repository.DRILL_REPORT_RE}


class RetentionError(errors.PgBackupError):
    pass


def check_policy(full_days, wal_days, report_days, min_full, label=''):
    """Refuse ages below one day; return warnings (``min_full: 0`` is allowed, but said aloud)."""
    for option, value in (('full_days', full_days), ('wal_days', wal_days), ('report_days', report_days)):
        if value is None or int(value) < 1:
            raise RetentionError('%s%s must be 1 or more (got %r): retention counts in whole days, and 0 would '
                                 'delete the backups just taken' % (label, option, value))
    if min_full is None or int(min_full) < 0:
        raise RetentionError('%smin_full must be 0 or more (got %r)' % (label, min_full))
    if int(min_full) == 0:
        return ['%smin_full is 0: when no backup is younger than %d days, every backup will be deleted'
                % (label, int(full_days))]
    return []


def policy(full_days=7, wal_days=14, report_days=90, min_full=1):
    return {'full_days': int(full_days), 'wal_days': int(wal_days), 'report_days': int(report_days),
            'min_full': int(min_full)}


def parse_time(text):
    """A ``.meta`` timestamp (ISO 8601 UTC) as an aware datetime, or None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return repository.parse_iso(text)
    except ValueError:
        pass
    try:
        value = datetime.datetime.fromisoformat(text.replace('Z', '+00:00'))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value


def _stamp_time(stamp):
    return datetime.datetime.strptime(stamp, repository.STAMP_FORMAT).replace(tzinfo=datetime.timezone.utc)


def _days(delta):
    return round(delta.total_seconds() / 86400.0, 1)


# --------------------------------------------------------------------------------------------
# Inventory of the local repository
# --------------------------------------------------------------------------------------------

def _listdir(path):
    try:
        return sorted(os.listdir(path))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return []
        raise


def _local_unit(relpath, path):
    st = os.lstat(path)
    is_dir = os.path.isdir(path) and not os.path.islink(path)
    size = fsutil.size_of(path) if is_dir else st.st_size
    return {'relpath': relpath, 'size': size, 'mtime': st.st_mtime, 'is_dir': is_dir}


def local_inventory(repo):
    """One unit per backup file or directory, WAL file, report or stray entry of the scanned dirs."""
    units = []
    for sub in SCANNED_DIRS:
        for name in _listdir(repo.path(sub)):
            path = repo.path(sub, name)
            if sub == 'wal' and walnames.is_date_dir(name) and os.path.isdir(path) and not os.path.islink(path):
                for filename in _listdir(path):
                    units.append(_local_unit('wal/%s/%s' % (name, filename), os.path.join(path, filename)))
            else:
                units.append(_local_unit('%s/%s' % (sub, name), path))
    return units


def local_meta_loader(repo):
    def load(relpath):
        with open(repo.path(relpath)) as handle:
            return json.load(handle)
    return load


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------

class _Plan(object):
    def __init__(self, now):
        self.now = now
        self.deleted, self.kept, self.unclassified, self.warnings = [], [], [], []

    @staticmethod
    def _item(unit, kind, reason, **extra):
        item = {'relpath': unit['relpath'], 'kind': kind, 'reason': reason, 'size_bytes': unit['size']}
        item.update(extra)
        if '_keys' in unit:
            item['_keys'] = unit['_keys']
        return item

    def delete(self, unit, kind, reason, **extra):
        self.deleted.append(self._item(unit, kind, reason, **extra))

    def keep(self, unit, kind, reason, **extra):
        self.kept.append(self._item(unit, kind, reason, **extra))

    def unknown(self, unit, reason):
        self.unclassified.append({'relpath': unit['relpath'], 'size_bytes': unit['size'], 'reason': reason})

    def result(self):
        return {'deleted': self.deleted, 'kept': self.kept, 'unclassified': self.unclassified,
                'warnings': self.warnings, 'freed_bytes': sum(i['size_bytes'] for i in self.deleted)}


def _temp(out, unit, now):
    if unit.get('mtime') is None:
        out.keep(unit, 'temporary', 'temporary file of unknown age: may belong to a run in progress')
        return
    age = now - datetime.datetime.fromtimestamp(unit['mtime'], datetime.timezone.utc)
    if age > TMP_MAX_AGE:
        out.delete(unit, 'temporary', 'temporary file of an interrupted run, %s days old (more than 1 day)' % _days(age))
    else:
        out.keep(unit, 'temporary', 'temporary file younger than a day: may belong to a run in progress')


def _collect_backups(out, units, load_meta, sub):
    """Backups of ``full/`` or ``base/``: dicts with meta, time, the .meta unit and data units."""
    kind = 'logical' if sub == 'full' else 'physical'
    others = []
    meta_units = {}
    for unit in units:
        name = unit['relpath'].split('/', 1)[1]
        if name.startswith(fsutil.TMP_PREFIX):
            others.append(('tmp', unit))
        elif repository.backup_of_meta(name) is not None:
            meta_units[name] = unit
        else:
            others.append(('data', unit))
    names = {}
    for name, files in repository.meta_files_by_backup(meta_units).items():
        # A backup with both .meta names is read from the runbook's; the other goes (or stays) with it.
        names[name] = {'meta_unit': meta_units[files[0]], 'parts': [(meta_units[f], 'meta') for f in files[1:]]}
    backups = {}
    for name, entry in sorted(names.items()):
        try:
            meta = load_meta(entry['meta_unit']['relpath'])
        except (OSError, ValueError) as exc:
            out.unknown(entry['meta_unit'], 'unreadable .meta (%s): the backup is left alone, fix or remove it by hand' % exc)
            continue
        if not isinstance(meta, dict):
            out.unknown(entry['meta_unit'], 'unreadable .meta (not a JSON object): left alone')
            continue
        data_file = meta.get('file') or name
        when = parse_time(meta.get('finished_at')) or parse_time(meta.get('started_at'))
        if '/' in data_file or data_file in ('.', '..') or when is None:
            out.unknown(entry['meta_unit'], '.meta without a usable date or file name: the backup is left alone')
            continue
        entry.update(name=name, meta=meta, time=when, data_file=data_file, type=kind,
                     group=(kind, meta.get('database') if kind == 'logical' else meta.get('system_identifier')))
        backups[name] = entry
    by_file = {}
    for entry in backups.values():
        by_file[entry['data_file']] = (entry, '%s_backup' % kind)
        globals_file = (entry['meta'].get('globals') or {}).get('file') or entry['name'] + '.globals.sql'
        by_file[globals_file] = (entry, 'globals')
    for what, unit in others:
        name = unit['relpath'].split('/', 1)[1]
        if what == 'tmp':
            _temp(out, unit, out.now)
        elif name in by_file:
            entry, part_kind = by_file[name]
            entry['parts'].append((unit, part_kind))
        elif repository.NAME_RE.match(name.split('.', 1)[0]):
            out.unknown(unit, 'looks like a backup but has no readable .meta: never used for restore, left alone')
        else:
            out.unknown(unit, 'not a file this collection writes')
    return backups


def _decide_backups(out, backups, pol, now):
    """Delete or keep each backup; return the retained complete physical ones."""
    groups = {}
    for entry in backups.values():
        if repository.is_complete(entry['meta']):
            groups.setdefault(entry['group'], []).append(entry)
    protected = set()
    for members in groups.values():
        members.sort(key=lambda e: (e['time'], e['name']), reverse=True)
        protected.update(e['name'] for e in members[:pol['min_full']])
    limit = datetime.timedelta(days=pol['full_days'])
    retained_bases = []
    for entry in sorted(backups.values(), key=lambda e: (e['time'], e['name'])):
        age = now - entry['time']
        complete = repository.is_complete(entry['meta'])
        status = entry['meta'].get('status')
        if age <= limit:
            why = '%s days old (keep %d days)' % (_days(age), pol['full_days'])
            if not complete:
                why = 'status %s, %s; does not count toward min_full' % (status, why)
        elif complete and entry['name'] in protected:
            why = ('%s days old, but one of the newest %d complete backup(s) of %s %s (min_full)'
                   % (_days(age), pol['min_full'], 'database' if entry['type'] == 'logical' else 'cluster',
                      entry['group'][1]))
        else:
            why = '%s backup %s days old (more than %d days)' % (
                'complete' if complete else 'status %s' % status, _days(age), pol['full_days'])
            # .meta first: a backup whose data is half gone must never look complete.
            out.delete(entry['meta_unit'], 'meta', why, backup=entry['name'])
            for unit, part_kind in sorted(entry['parts'], key=lambda p: p[1] == 'globals'):
                out.delete(unit, part_kind, why, backup=entry['name'])
            continue
        out.keep(entry['meta_unit'], 'meta', why, backup=entry['name'])
        for unit, part_kind in entry['parts']:
            out.keep(unit, part_kind, why, backup=entry['name'])
        if complete and entry['type'] == 'physical':
            retained_bases.append(entry)
    return retained_bases


def _needed_from(out, bases):
    """(timeline, segment number, name) of each retained base's wal_start; None when one is unreadable."""
    needed = []
    for entry in bases:
        try:
            tli, segno = walnames.parse_segment_name(entry['meta'].get('wal_start') or '')
        except ValueError:
            out.warnings.append('base backup %s has no valid wal_start in its .meta: every WAL file is kept'
                                % entry['name'])
            return None
        needed.append((tli, segno, entry['name'], entry['meta'].get('wal_start')))
    return needed


def _decide_wal(out, units, needed, pol, now):
    limit = datetime.timedelta(days=pol['wal_days'])
    kept_groups = {}
    lowest_tli = min(n[0] for n in needed) if needed else None

    def keep_wal(unit, kind, reason):
        # Kept WAL is summarised per date directory and reason: a busy cluster archives thousands a day.
        date = unit['relpath'].split('/')[1]
        key = (date, reason)
        group = kept_groups.setdefault(key, {
            'relpath': 'wal/%s/' % date, 'kind': 'wal', 'reason': reason, 'files': 0, 'size_bytes': 0, 'wal_kinds': []})
        group['files'] += 1
        group['size_bytes'] += unit['size']
        if kind not in group['wal_kinds']:
            group['wal_kinds'].append(kind)

    for unit in units:
        parts = unit['relpath'].split('/')
        if len(parts) == 2:
            if parts[1] == walnames.INFO_FILE:
                out.keep(unit, 'archive_info', 'identifies the cluster allowed to archive here')
            elif parts[1].startswith(fsutil.TMP_PREFIX):
                _temp(out, unit, now)
            else:
                out.unknown(unit, 'not a WAL date directory or file this collection writes')
            continue
        if len(parts) != 3 or not walnames.is_date_dir(parts[1]):
            out.unknown(unit, 'not a WAL date directory or file this collection writes')
            continue
        if parts[2].startswith(fsutil.TMP_PREFIX):
            _temp(out, unit, now)
            continue
        try:
            kind = walnames.wal_kind(walnames.name_of_stored(parts[2]))
            archived = datetime.datetime.strptime(parts[1], '%Y%m%d').replace(tzinfo=datetime.timezone.utc) + DAY
        except ValueError:
            out.unknown(unit, 'not a WAL file name PostgreSQL archives')
            continue
        age = now - archived
        old = age > limit
        name = walnames.name_of_stored(parts[2])
        if needed is None:
            keep_wal(unit, kind, 'kept: a retained base backup has no valid wal_start')
            continue
        if kind == 'history':
            tli = int(name[:8], 16)
            if lowest_tli is not None and tli >= lowest_tli:
                keep_wal(unit, kind, 'history of a timeline a retained base backup may follow (timeline >= %d)' % lowest_tli)
            elif not old:
                keep_wal(unit, kind, 'archived less than %d days ago' % pol['wal_days'])
            else:
                out.delete(unit, 'wal_history', 'history of timeline %d, archived %s, more than %d days ago, older '
                           'than every retained base backup' % (tli, parts[1], pol['wal_days']))
            continue
        tli, segno = walnames.parse_segment_name(name[:24])
        users = [n for n in needed if not (segno < n[1] and tli <= n[0])]
        if users:
            keep_wal(unit, kind, 'needed by base backup %s (from %s)' % (users[0][2], users[0][3]))
        elif not old:
            keep_wal(unit, kind, 'archived less than %d days ago' % pol['wal_days'])
        else:
            reason = 'archived %s, more than %d days ago, and before the wal_start of every retained base backup' % (
                parts[1], pol['wal_days'])
            if not needed:
                reason = 'archived %s, more than %d days ago (no retained base backup)' % (parts[1], pol['wal_days'])
            out.delete(unit, 'wal_' + kind, reason)
    out.kept.extend(kept_groups[k] for k in sorted(kept_groups))


def _decide_reports(out, sub, units, pol, now):
    limit = datetime.timedelta(days=pol['report_days'])
    for unit in units:
        name = unit['relpath'].split('/', 1)[1]
        match = REPORT_RES[sub].match(name)
        if name.startswith(fsutil.TMP_PREFIX):
            _temp(out, unit, now)
        elif match:
            age = now - _stamp_time(match.group('stamp'))
            if age > limit:
                out.delete(unit, 'report', 'report %s days old (more than %d days)' % (_days(age), pol['report_days']))
            else:
                out.keep(unit, 'report', 'report %s days old (keep %d days)' % (_days(age), pol['report_days']))
        elif sub == 'logs' and name in repository.KEPT_LOGS:
            out.keep(unit, 'report', repository.KEPT_LOGS[name])
        elif sub == 'logs' and repository.KEPT_LOG_RE.match(name):
            out.keep(unit, 'report', 'incident record of an emergency recovery: kept until deleted by hand')
        elif sub == 'restore-tests' and name.startswith('.'):
            out.keep(unit, 'scratch', 'working directory of a restore or drill: removed by its own run')
        else:
            out.unknown(unit, 'not a report this collection writes')


def plan_units(units, load_meta, now=None, pol=None):
    """Decide every unit of an inventory; see the module docstring for the rules."""
    pol = pol or policy()
    now = now or repository.utcnow()
    out = _Plan(now)
    by_dir = dict((sub, []) for sub in SCANNED_DIRS)
    for unit in units:
        sub = unit['relpath'].split('/', 1)[0]
        if sub in by_dir:
            by_dir[sub].append(unit)
        else:
            out.unknown(unit, 'outside the directories retention manages')
    bases = []
    for sub in BACKUP_DIRS:
        backups = _collect_backups(out, by_dir[sub], load_meta, sub)
        retained = _decide_backups(out, backups, pol, now)
        if sub == 'base':
            bases = retained
    wal_files = by_dir['wal']
    needed = _needed_from(out, bases)
    if needed == [] and any(len(u['relpath'].split('/')) == 3 for u in wal_files):
        out.warnings.append('no complete base backup is retained: the archived WAL is aged by wal_days alone and '
                            'there is no base backup to recover from (run pg_backup type=physical)')
    _decide_wal(out, wal_files, needed, pol, now)
    for sub in ('logs', 'restore-tests'):
        _decide_reports(out, sub, by_dir[sub], pol, now)
    return out.result()


def plan(repo, now=None, full_days=7, wal_days=14, report_days=90, min_full=1):
    """The retention plan of a local repository; paths are added to every item."""
    result = plan_units(local_inventory(repo), local_meta_loader(repo), now=now,
                        pol=policy(full_days, wal_days, report_days, min_full))
    for key in ('deleted', 'kept', 'unclassified'):
        for item in result[key]:
            item['path'] = repo.path(item['relpath'])
            item['location'] = 'local'
    return result


# --------------------------------------------------------------------------------------------
# Deleting
# --------------------------------------------------------------------------------------------

def apply_local(repo, result, today=None):
    """Delete the plan's items in order; returns (deleted items, errors).

    When a backup's ``.meta`` cannot be removed, its data is left alone too,
    so the backup stays whole rather than a ``.meta`` pointing at nothing.
    """
    done, errors, failed_backups, touched = [], [], set(), set()
    for item in result['deleted']:
        if item.get('backup') in failed_backups:
            errors.append({'path': item['path'], 'error': 'skipped: its .meta could not be removed'})
            continue
        path = item['path']
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                errors.append({'path': path, 'error': str(exc)})
                if item.get('kind') == 'meta':
                    failed_backups.add(item.get('backup'))
                continue
        done.append(item)
        touched.add(os.path.dirname(path))
    today = today or repository.utcnow().strftime('%Y%m%d')
    for directory in sorted(touched):
        parent, date = os.path.split(directory)
        # Today's directory may be about to receive the next segment from the archive command.
        if parent == repo.path('wal') and walnames.is_date_dir(date) and date != today:
            try:
                os.rmdir(directory)
                continue
            except OSError:
                pass
        if os.path.isdir(directory):
            fsutil.fsync_dir(directory)
    if any(os.path.dirname(d) == repo.path('wal') for d in touched) and os.path.isdir(repo.path('wal')):
        fsutil.fsync_dir(repo.path('wal'))
    return done, errors
