# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Physical base backups for point-in-time recovery.

``pg_basebackup`` in tar format with server-side zstd, a fast checkpoint (or a
spread one and a rate limit, to spare a busy server) and a manifest, *without*
WAL: the WAL comes from the archive, like every other segment a PITR replays.
That is why a base backup is only marked complete once the archive holds every
segment from its start to its stop; until then it has no ``.meta`` and nothing
will ever try to restore from it.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from ansible_collections.modulo.pgbackup.plugins.module_utils import compression, encryption, errors, fsutil, pipeline, progress, repository
from ansible_collections.modulo.pgbackup.plugins.module_utils import standby

from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import archive as walarchive, names as walnames
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import psql_query, server_facts

START_RE = re.compile(r'write-ahead log start point: ([0-9A-F]+/[0-9A-F]+) on timeline (\d+)')
END_RE = re.compile(r'write-ahead log end point: ([0-9A-F]+/[0-9A-F]+)')


class PhysicalBackupError(errors.PgBackupError):
    pass


class ArchivingNotConfigured(PhysicalBackupError):
    pass


CHECKPOINTS = ('fast', 'spread')
# pg_basebackup --max-rate: kilobytes per second, or with a k or M suffix, from 32 kB/s to 1024 MB/s.
MAX_RATE_RE = re.compile(r'^([0-9]+)([kM]?)\Z')
MAX_RATE_RANGE_KB = (32, 1024 * 1024)


def max_rate_kb(text):
    """``max_rate`` as kilobytes per second (None: unlimited), or PhysicalBackupError saying what is accepted."""
    if text in (None, ''):
        return None
    match = MAX_RATE_RE.match(str(text).strip())
    rate = int(match.group(1)) * (1024 if match.group(2) == 'M' else 1) if match else None
    if rate is None or not MAX_RATE_RANGE_KB[0] <= rate <= MAX_RATE_RANGE_KB[1]:
        raise PhysicalBackupError('max_rate %r is not accepted: kilobytes per second, or a number with k or M '
                                  '(e.g. 50M), from 32k to 1024M' % (text,))
    return rate


def plan(repo, prefix, codec='zstd', level=None, now=None, workers=None, checkpoint='fast', max_rate=None):
    if codec not in ('zstd', 'gzip', 'lz4', 'none'):
        raise PhysicalBackupError('compression for physical backups must be zstd, gzip, lz4 or none')
    if checkpoint not in CHECKPOINTS:
        raise PhysicalBackupError('checkpoint must be fast or spread, not %r' % (checkpoint,))
    now = now or repository.utcnow()
    name = repository.backup_name(prefix, 'base', now)
    return {'name': name, 'file': name, 'path': repo.path('base', name),
            'meta_path': repo.meta_path('base', name), 'compression': codec,
            'compression_level': level, 'workers': workers, 'started': now,
            'checkpoint': checkpoint, 'max_rate_kb': max_rate_kb(max_rate)}


def _basebackup_argv(conn, p, pgdata):
    """pg_basebackup of the plan into ``pgdata`` (``-``: a tar on stdout), without WAL, with a manifest."""
    argv = conn.command('pg_basebackup', '--pgdata=%s' % pgdata, '--format=tar', '--wal-method=none',
                        '--checkpoint=%s' % p.get('checkpoint', 'fast'), '--manifest-checksums=SHA256',
                        '--label=%s' % p['name'], '--no-password', '--verbose')
    if p.get('max_rate_kb'):
        argv.append('--max-rate=%dk' % p['max_rate_kb'])
    return argv


def check_archiving(conn, log=None):
    """A base backup without archived WAL cannot be restored: refuse early, say what to do."""
    rows = psql_query(conn, "SELECT current_setting('archive_mode'), current_setting('archive_command'), "
                            "current_setting('wal_level')", db='postgres', log=log)
    mode, command, level = rows[0]
    if mode not in ('on', 'always') or not command or level == 'minimal':
        raise ArchivingNotConfigured(
            'WAL archiving is not configured on this server (archive_mode=%s, wal_level=%s, archive_command=%r): '
            'a physical backup needs it to be restorable; run playbooks/configure-pitr.yml first'
            % (mode, level, command))
    if archiver_failing(conn, log=log):
        raise PhysicalBackupError(
            'WAL archiving is failing right now (%s): a base backup would wait for it forever; fix the archive '
            '(permissions, disk space, S3) until pg_stat_archiver shows new successes, then retry'
            % archiver_failing(conn))


ARCHIVER_SQL = ("SELECT last_failed_wal, last_failed_time, last_archived_wal FROM pg_stat_archiver "
                "WHERE last_failed_time IS NOT NULL AND last_failed_time > coalesce(last_archived_time, '-infinity')")


def archiver_failing(conn, log=None):
    """A description of the archiver's current failure, or None when it is keeping up."""
    rows = psql_query(conn, ARCHIVER_SQL, db='postgres', log=log)
    if not rows:
        return None
    return 'last failed WAL %s at %s, last archived %s' % tuple(rows[0])


# The server's own account of a running base backup (PostgreSQL 13+): its phase and bytes streamed of the total
# it estimated from the data directory's size.
PROGRESS_SQL = 'SELECT phase, backup_streamed, coalesce(backup_total, 0) FROM pg_stat_progress_basebackup LIMIT 1'


def report_progress(conn):
    """Pass the server's progress of the base backup to the open progress report."""
    rows = psql_query(conn, PROGRESS_SQL, db='postgres')
    if rows:
        phase, streamed, total = rows[0]
        progress.report(phase, done=int(streamed), total=int(total) or None)


def _watch_archiver(conn, limit_s, backup_conn=None):
    """pg_basebackup waits for the archive without a limit: give up when archiving keeps failing (``conn``:
    the server that archives). The same loop reports the backup's progress, from the server that sends it
    (``backup_conn``, a standby; by default ``conn``)."""
    def watch(procs):
        failing_since = None
        while procs[0].poll() is None:
            try:
                failing = archiver_failing(conn)
                report_progress(backup_conn or conn)
            except Exception:  # noqa: BLE001  a monitoring query must not break the backup
                failing = None
            if failing and failing_since is None:
                failing_since = time.time()
            elif not failing:
                failing_since = None
            if failing_since is not None and time.time() - failing_since > limit_s:
                raise PhysicalBackupError('WAL archiving failed for more than %d s during the base backup (%s): '
                                          'the backup was stopped and discarded; fix the archive and retry'
                                          % (limit_s, failing))
            try:
                # Not sleep(): the backup's result waits for this loop, so it ends when pg_basebackup does.
                procs[0].wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
    return watch


def _compress_arg(codec, level, workers=None):
    if codec == 'none':
        return ['--compress=none']
    details = ['level=%d' % level] if level else []
    if codec == 'zstd' and workers and workers > 1:
        # One zstd thread compresses slower than pg_basebackup reads: the backup's pace.
        details.append('workers=%d' % workers)
    return ['--compress=server-%s%s' % (codec, ':' + ','.join(details) if details else '')]


def wait_for_wal(repo_root, names, timeout_s, poll_s=0.5):
    """Block until every segment in ``names`` is in the archive; return the missing ones on timeout."""
    deadline = time.time() + timeout_s
    missing = list(names)
    while True:
        missing = [n for n in missing if walarchive.find_segment(repo_root, n) is None]
        if not missing or time.time() >= deadline:
            return missing
        time.sleep(poll_s)


def manifest_points(text):
    """(start LSN, timeline, end LSN) from a backup manifest's WAL-Ranges; None when it has none.

    A backup spans several ranges when its server changed timeline during it (a standby whose primary was
    promoted): it starts in the first and ends in the last.
    """
    try:
        ranges = json.loads(text)['WAL-Ranges']
        first, last = ranges[0], ranges[-1]
        return first['Start-LSN'], int(last['Timeline']), last['End-LSN']
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def label_fields(text):
    """The ``backup_label`` a base backup starts with, as a dict (``START WAL LOCATION``, ``BACKUP FROM``...).

    The WAL location line also names the segment in parentheses; only the LSN is kept.
    """
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(': ')
        if sep:
            fields[key.strip()] = value.strip()
    if 'START WAL LOCATION' in fields:
        fields['START WAL LOCATION'] = fields['START WAL LOCATION'].split(' ', 1)[0]
    return fields


def wal_points(backup_dir, stderr_text=''):
    """(start LSN, timeline, end LSN) from the backup manifest's WAL-Ranges (or pg_basebackup's output)."""
    try:
        with open(os.path.join(backup_dir, 'backup_manifest')) as handle:
            points = manifest_points(handle.read())
        if points:
            return points
    except OSError:
        pass
    start_match, end_match = START_RE.search(stderr_text), END_RE.search(stderr_text)
    if not start_match or not end_match:
        raise PhysicalBackupError('the base backup has no readable manifest and pg_basebackup did not report its '
                                  'WAL start and end points: %s' % stderr_text.strip()[-800:])
    return start_match.group(1), int(start_match.group(2)), end_match.group(1)


# A pipeline stage between pg_basebackup and the compressor of an encrypted base backup: it passes the tar
# through unchanged and keeps a copy of the named members (backup_label, backup_manifest) in a directory, so
# the backup's WAL range is read from the backup itself, without decrypting it again. A standby archives no
# .backup history file to read it from. Tar members are 512-byte headers and 512-byte padded data;
# PostgreSQL's tar writer uses base-256 sizes past 8 GB.
TAP_SCRIPT = r"""
import os, sys
outdir, wanted = sys.argv[1], set(sys.argv[2:])
src, dst = sys.stdin.buffer, sys.stdout.buffer
def read(n):
    parts = []
    while n:
        chunk = src.read(min(n, 1 << 20))
        if not chunk:
            break
        parts.append(chunk)
        n -= len(chunk)
    return b''.join(parts)
def size_of(field):
    if field[0] & 0x80:
        return int.from_bytes(field[1:], 'big')
    return int(field.strip(b'\0 ') or b'0', 8)
while True:
    header = read(512)
    dst.write(header)
    if len(header) < 512 or header == bytes(512):
        break
    name = header[:100].split(b'\0', 1)[0].decode('utf-8', 'replace')
    size = size_of(header[124:136])
    keep = [] if name in wanted and header[156:157] in (b'0', b'\0') else None
    left = (size + 511) // 512 * 512
    while left:
        chunk = src.read(min(left, 1 << 20))
        if not chunk:
            sys.exit('tar stream truncated inside %s' % name)
        dst.write(chunk)
        left -= len(chunk)
        if keep is not None:
            keep.append(chunk)
    if keep is not None:
        with open(os.path.join(outdir, name), 'wb') as handle:
            handle.write(b''.join(keep)[:size])
while True:
    chunk = src.read(1 << 20)
    if not chunk:
        break
    dst.write(chunk)
"""
TAPPED = ('backup_label', 'backup_manifest')


def tap_argv(outdir, python=None):
    """The pipeline stage running TAP_SCRIPT, keeping backup_label and backup_manifest in ``outdir``."""
    return [python or sys.executable, '-c', TAP_SCRIPT, outdir] + list(TAPPED)


def tapped_points(outdir):
    """(start LSN, timeline, end LSN, backup_label fields) from what the tap kept; None without a manifest."""
    try:
        with open(os.path.join(outdir, 'backup_manifest')) as handle:
            points = manifest_points(handle.read())
    except OSError:
        return None
    try:
        with open(os.path.join(outdir, 'backup_label')) as handle:
            label = label_fields(handle.read())
    except OSError:
        label = {}
    return points + (label,) if points else None


def _encrypted_stream(conn, p, tmp, keys, log, watch, tapdir):
    """pg_basebackup to stdout | tap | compress | age: one encrypted tar, the manifest inside it.

    Server-side compression cannot be used here (pg_basebackup must add the manifest to the
    stream it writes), so the host compresses; nothing unencrypted reaches the disk but the
    backup's label and manifest, kept by the tap in ``tapdir`` (private, removed after the run).
    """
    fsutil.ensure_dir(tmp)
    suffix = repository.COMPRESSION_SUFFIX[p['compression']] + encryption.SUFFIX
    archive = os.path.join(tmp, 'base.tar' + suffix)
    stages = [_basebackup_argv(conn, p, '-'), tap_argv(tapdir)]
    if p['compression'] != 'none':
        stages.append(compression.compress_argv(p['compression'], p['compression_level'] or
                                                compression.DEFAULT_LEVEL[p['compression']], threads=2))
    stages.append(keys.encrypt_argv())
    pipeline.run(stages, env=conn.env('postgres'), stdout_path=archive, log=log, started=watch)


def backup_label_points(repo_root, label, timeout_s, poll_s=0.5):
    """(start LSN, timeline, stop LSN) from the archived ``.backup`` file of the backup labelled ``label``.

    pg_basebackup says nothing about its WAL range when it writes to stdout without WAL; the server
    archives a small backup history file with it, found here by its label.
    """
    deadline = time.time() + timeout_s
    while True:
        for entry in reversed(walarchive.list_archive(repo_root)):
            if entry['kind'] != 'backup':
                continue
            with open(entry['path']) as handle:
                text = handle.read()
            if re.search(r'^LABEL: %s$' % re.escape(label), text, re.M):
                start = re.search(r'^START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+)', text, re.M)
                stop = re.search(r'^STOP WAL LOCATION: ([0-9A-F]+/[0-9A-F]+)', text, re.M)
                tli = re.search(r'^STOP TIMELINE: (\d+)', text, re.M) or re.search(r'^START TIMELINE: (\d+)', text, re.M)
                if start and stop and tli:
                    return start.group(1), int(tli.group(1)), stop.group(1)
        if time.time() >= deadline:
            raise PhysicalBackupError('the backup history file of %s did not reach the archive within %d s: '
                                      'check pg_stat_archiver and the archive_command' % (label, timeout_s))
        time.sleep(poll_s)


def take(conn, repo, p, wait_archive_s=300, log=None, keys=None, source=None):
    """Run the base backup planned by ``plan``; return its ``.meta``.

    ``source`` (standby.Source) says whether ``conn`` is the primary or a standby, and which server
    archives the WAL; by default ``conn`` is the primary.
    """
    source = source or standby.Source(conn)
    facts = server_facts(conn, db='postgres', log=log)
    check_archiving(source.archive_conn, log=log)
    tmp = fsutil.tmp_path_for(p['path'])
    start = time.time()
    encrypted = keys is not None and keys.enabled
    argv = _basebackup_argv(conn, p, tmp) + _compress_arg(p['compression'], p['compression_level'], p.get('workers'))
    watch = _watch_archiver(source.archive_conn, wait_archive_s, backup_conn=conn)
    tapdir = tempfile.mkdtemp(prefix='modulo-pgbackup-label-') if encrypted else None
    try:
        try:
            if encrypted:
                _encrypted_stream(conn, p, tmp, keys, log, watch, tapdir)
            else:
                errs = pipeline.run([argv], env=conn.env('postgres'), log=log, started=watch)
        except pipeline.PipelineError as exc:
            raise PhysicalBackupError('pg_basebackup failed, nothing was kept: %s' % exc)
        if encrypted:
            tapped = tapped_points(tapdir)
            if tapped:
                start_lsn, timeline, stop_lsn = tapped[:3]
            elif source.standby:
                raise PhysicalBackupError('the base backup stream from the standby carried no backup manifest, so '
                                          'its WAL range is unknown (a standby archives no .backup file); nothing '
                                          'was kept')
            else:
                start_lsn, timeline, stop_lsn = backup_label_points(repo.root, p['name'], wait_archive_s)
        else:
            start_lsn, timeline, stop_lsn = wal_points(tmp, errs[0])
        wal_start = walnames.segment_name(timeline, walnames.parse_lsn(start_lsn))
        # The stop LSN points just past the last record: the last segment needed holds the byte before it.
        wal_stop = walnames.segment_name(timeline, walnames.parse_lsn(stop_lsn) - 1)
        needed = walnames.wal_range(wal_start, wal_stop)
        # A standby does not switch WAL at the backup's end as a primary does: the primary must leave the
        # stop segment before its archiver takes it.
        source.close_segment(stop_lsn, log=log)
        progress.report('waiting for the backup\'s WAL (%s) in the archive' % wal_stop)
        missing = wait_for_wal(repo.root, needed, wait_archive_s)
        if missing:
            raise PhysicalBackupError(
                'the base backup finished but the WAL it needs (%s) was not archived within %d s, so it '
                'could never be restored and was discarded: check pg_stat_archiver and the archive_command%s'
                % (', '.join(missing[:5]), wait_archive_s,
                   ' of the primary; %s' % source.switch_problem if source.switch_problem else
                   ' of the primary' if source.standby else ''))
        size, digest = fsutil.publish_backup(tmp, p['path'])
    except BaseException:
        fsutil.remove_quietly(tmp)
        raise
    finally:
        if tapdir:
            shutil.rmtree(tapdir, ignore_errors=True)
    meta = {
        'format_version': repository.FORMAT_VERSION, 'name': p['name'], 'file': p['name'],
        'type': 'physical', 'database': None, 'format': 'tar', 'compression': p['compression'],
        'compression_level': p['compression_level'],
        'checkpoint': p.get('checkpoint', 'fast'), 'max_rate_kb': p.get('max_rate_kb'),
        'started_at': repository.iso(p['started']), 'finished_at': repository.iso(repository.utcnow()),
        'duration_s': round(time.time() - start, 3), 'size_bytes': size, 'sha256': digest,
        'server_version': facts['server_version'], 'system_identifier': facts['system_identifier'],
        'start_lsn': start_lsn, 'stop_lsn': stop_lsn, 'timeline': timeline,
        'wal_start': wal_start, 'wal_stop': wal_stop, 'files': sorted(os.listdir(p['path'])),
        'tool': 'modulo.pgbackup', 'status': 'complete',
    }
    meta.update(source.meta_fields())
    if encrypted:
        meta.update(keys.meta_fields())
    fsutil.write_json_atomic(p['meta_path'], meta)
    return meta
