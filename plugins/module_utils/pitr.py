# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Point-in-time recovery from a physical base backup and the WAL archive.

``mode=database``: recover a scratch cluster to the target, then copy one
database from it into ``target_db`` on the live server through the same
staging-and-swap path as a logical restore (row counts checked, old database
kept).  ``mode=cluster``: replace the live data directory (the old one is
renamed, never deleted) and let the live server recover and promote.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import datetime
import os
import re
import shutil
import subprocess
import time

from ansible_collections.modulo.pgbackup.plugins.module_utils import (
    fsutil, logical_restore, osuser, pipeline, repository, scratch, walchain)
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import archive as walarchive, names as walnames
from ansible_collections.modulo.pgbackup.plugins.module_utils.logical_backup import database_rows

from ansible_collections.modulo.pgbackup.plugins.module_utils import errors

LSN_RE = re.compile(r'^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}\Z')


class PitrError(errors.PgBackupError):
    pass


def parse_target_time(text, now=None):
    """Parse a target time; naive times are UTC (returned flag says so)."""
    raw = (text or '').strip()
    if re.match(r'^\d{4}-\d{2}-\d{2}\Z', raw):
        # `-e target_time="2026-11-24 14:30:00"` reaches Ansible as two key=value words and
        # arrives here as the date alone: recovering to midnight by accident is not an option.
        raise PitrError('target_time %r has no time of day: give one (e.g. %sT14:30:00, or quote the whole '
                        'assignment: -e \'target_time="%s 14:30:00"\', because ansible-playbook splits '
                        '-e key=value at spaces); for midnight write %s 00:00:00' % (raw, raw, raw, raw))
    value = raw.replace(' UTC', '+00:00').replace('Z', '+00:00')
    if re.search(r'[+-]\d{2}$', value):
        value += ':00'
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise PitrError('target_time %r is not a time: use "YYYY-MM-DD HH:MM:SS" (UTC) or ISO 8601 with an offset, '
                        'e.g. "2026-11-24 14:30:00+01:00"' % raw)
    naive = parsed.tzinfo is None
    if naive:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if parsed > now:
        raise PitrError('target_time %s is in the future (now %s): nothing to recover there; use target: latest '
                        'for the newest archived point' % (parsed.isoformat(), now.replace(microsecond=0).isoformat()))
    return parsed, naive


def build_target(params, now=None):
    """(recovery settings, description, parsed time or None) from the module's target options."""
    if params.get('target_time'):
        when, naive = parse_target_time(params['target_time'], now=now)
        pg_time = when.astimezone(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S.%f+00')
        return ({'recovery_target_time': pg_time},
                'time %s%s' % (when.isoformat(), ' (no zone given: read as UTC)' if naive else ''), when)
    if params.get('target_xid'):
        if not str(params['target_xid']).isdigit():
            raise PitrError('target_xid %r must be a transaction id (digits)' % params['target_xid'])
        return {'recovery_target_xid': str(params['target_xid'])}, 'xid %s' % params['target_xid'], None
    if params.get('target_lsn'):
        if not LSN_RE.match(params['target_lsn']):
            raise PitrError('target_lsn %r is not an LSN like 0/3000060' % params['target_lsn'])
        return {'recovery_target_lsn': params['target_lsn']}, 'LSN %s' % params['target_lsn'], None
    if params.get('target_name'):
        return {'recovery_target_name': params['target_name']}, 'restore point %s' % params['target_name'], None
    if params.get('target') == 'immediate':
        return {'recovery_target': 'immediate'}, 'end of the base backup (immediate)', None
    return {}, 'end of the archived WAL (latest)', None


def choose_base(bases, backup=None, when=None, target_lsn=None):
    """The base backup named ``backup``, else the newest complete one that ends before the target (``when``,
    a datetime, and/or ``target_lsn``)."""
    complete = [b for b in bases if repository.is_complete(b)]
    if backup not in (None, '', 'latest'):
        chosen = [b for b in complete if b['name'] == backup]
        if not chosen:
            raise PitrError('no complete base backup named %s' % backup)
        return chosen[0]
    if not complete:
        raise PitrError('no complete physical base backup in the repository: point-in-time recovery needs one '
                        '(pg_backup type=physical, taken by playbooks/nightly-backup.yml once PITR is configured)')
    usable = complete
    if when is not None:
        usable = [b for b in complete if repository.parse_iso(b['finished_at']) <= when]
        if not usable:
            raise PitrError('target %s is before the end of the oldest usable base backup %s (%s): the archive '
                            'cannot go back that far' % (when.isoformat(), complete[0]['name'],
                                                         complete[0]['finished_at']))
    if target_lsn:
        target = walnames.parse_lsn(target_lsn)
        usable = [b for b in usable if walnames.parse_lsn(b['stop_lsn']) <= target]
        if not usable:
            raise PitrError('target_lsn %s is before the end of the oldest base backup' % target_lsn)
    return usable[-1]


def check_archive_reaches(repo_root, when, s3archive=None):
    """Refuse a target after the newest archived WAL, local or in S3: recovery would stop short silently."""
    entries = walarchive.merged_archive(repo_root, s3archive)
    if not entries:
        raise PitrError('the WAL archive in %s%s is empty: run playbooks/configure-pitr.yml'
                        % (repo_root, ' and %s' % s3archive.uri(s3archive.key('wal/')) if s3archive else ''))
    newest = max(e['mtime'] for e in entries)
    newest_dt = datetime.datetime.fromtimestamp(newest, datetime.timezone.utc)
    if when is not None and when > newest_dt:
        raise PitrError('target %s is after the newest archived WAL (archived %s): the data after that point '
                        'is not in the archive yet; wait for archive_timeout or use target: latest'
                        % (when.isoformat(), newest_dt.replace(microsecond=0).isoformat()))
    return newest_dt


SHORT_RECOVERY = 'recovery ended before configured recovery target was reached'
LAST_TX_RE = re.compile(r'last completed transaction was at log time ([0-9-]+ [0-9:.]+[+-][0-9]+)')


def explain_short_recovery(error, base, repo_root):
    """Say why recovery stopped short of its target, when the server's words alone do not.

    The usual cause is a gap in the archive: the restore_command found no next
    segment, so PostgreSQL stopped there and refused to promote.  Name the gap,
    the newest point it allows, and what to do.
    """
    if SHORT_RECOVERY not in error:
        return error
    reached = LAST_TX_RE.search(error)
    point = ' (the last transaction replayed is from %s)' % reached.group(1) if reached else ''
    gap = ''
    if repo_root and base.get('wal_start'):
        def read_history(name):
            path = walarchive.find_segment(repo_root, name)
            if not path:
                return None
            with open(path) as handle:
                return handle.read()
        try:
            chain = walchain.check_chain(walarchive.list_archive(repo_root), base['wal_start'], read_history)
        except (OSError, ValueError):
            chain = None
        if chain and chain['missing_count']:
            gap = ': the WAL archive has a gap after base backup %s, %d segment(s) missing, first %s' % (
                base.get('name'), chain['missing_count'], chain['missing'][0])
    return ('recovery ended before reaching the target%s%s; nothing was promoted or copied. Put the missing WAL '
            'back into the archive (e.g. from the S3 copy) or choose a target before that point. Server log: %s'
            % (gap or ': a WAL segment it needs is missing from the archive', point, error))


class ScratchRecovery(scratch.PrivateCluster):
    """A recovered copy of the cluster in ``workdir``; always removed by ``close``."""

    def recover(self, base, repo_root, target_settings, s3_settings=None, timeout_s=3600, log=None,
                after_extract=None, keys=None):
        """Recover to the target; ``after_extract(pgdata)`` runs on the untouched copy (restore drills verify it)."""
        fsutil.ensure_dir(self.workdir)
        osuser.give_to(self.workdir, self.os_user)
        osuser.give_to(self.socket_dir, self.os_user)
        restore_command = scratch.install_wal_command(self.workdir, repo_root, s3_settings, self.os_user, keys=keys)
        scratch.extract_base(base['path'], self.pgdata, self.os_user, log=log, keys=keys, stream=base.get('stream'))
        if after_extract is not None:
            after_extract(self.pgdata)
        if not os.path.exists(os.path.join(self.pgdata, 'postgresql.conf')):
            # Debian keeps the configuration outside the data directory.
            with open(os.path.join(self.pgdata, 'postgresql.conf'), 'w') as handle:
                handle.write('# minimal configuration for a restored copy (modulo.pgbackup)\n')
        with open(os.path.join(self.pgdata, 'pg_hba.conf'), 'w') as handle:
            handle.write('# restored copy: private socket only\nlocal all all trust\n')
        for stale in ('postmaster.pid', 'standby.signal'):
            fsutil.remove_quietly(os.path.join(self.pgdata, stale))
        scratch.write_auto_conf(self.pgdata, scratch.recovery_settings(
            target_settings, restore_command, port=self.port, socket_dir=self.socket_dir), self.os_user)
        open(os.path.join(self.pgdata, 'recovery.signal'), 'w').close()
        osuser.give_to(self.workdir, self.os_user)
        os.chmod(self.pgdata, 0o700)
        started = time.time()
        try:
            # A recovery that stops short may end before pg_ctl's wait does (start fails) or after it (the wait
            # sees the server stop): which one is a matter of timing, the explanation must not depend on it.
            self.server.start(timeout_s)
            scratch.wait_promoted(self.query, timeout_s, self.server, self.pgdata)
        except scratch.ScratchError as exc:
            raise scratch.ScratchError(explain_short_recovery(str(exc), base, repo_root))
        outcome = self.server.recovery_outcome()
        outcome['recovery_s'] = round(time.time() - started, 3)
        outcome['timeline'] = int(self.query('SELECT timeline_id FROM pg_control_checkpoint()')[0][0])
        return outcome


def copy_database(recovery, source_db, live_conn, target_db, confirm, keep_old, jobs, workdir, log=None):
    """Dump ``source_db`` from the recovered copy and restore it into ``target_db`` (checked, swapped)."""
    names = [r[0] for r in recovery.query('SELECT datname FROM pg_database WHERE NOT datistemplate')]
    if source_db not in names:
        raise PitrError('database %s does not exist at the recovery target (databases there: %s)'
                        % (source_db, ', '.join(sorted(names))))
    dump_dir = os.path.join(workdir, 'dump')
    src = recovery.conn(source_db)
    argv = src.command('pg_dump', '--format=directory', '--jobs=%d' % max(1, jobs), '--compress=0',
                       '--no-password', '--file=%s' % dump_dir, '--dbname=%s' % source_db)
    try:
        pipeline.run([argv], env=src.env(source_db), log=log)
    except pipeline.PipelineError as exc:
        raise PitrError('copying %s out of the recovered cluster failed: %s' % (source_db, exc))
    rows = database_rows(src, source_db, log=log)
    meta = {'name': 'pitr:%s' % source_db, 'path': dump_dir, 'format': 'directory', 'table_rows': rows}
    return logical_restore.restore(live_conn, meta, target_db, confirm=confirm, keep_old=keep_old,
                                   jobs=jobs, log=log)


def scratch_workdir(base_dir, os_user):
    """A fresh directory for a scratch cluster that the server's OS user can use.

    Restored clusters can be as big as production, so they are built next to
    the repository (not in /tmp); the directory is handed to the server's OS
    user because PostgreSQL refuses to run as root.
    """
    fsutil.ensure_dir(base_dir)
    stamp = repository.utcnow().strftime(repository.STAMP_FORMAT)
    workdir = os.path.join(base_dir, '.pitr-%s-%d' % (stamp, os.getpid()))
    fsutil.ensure_dir(workdir)
    uid, gid = osuser.ids(os_user)
    if uid is not None:
        if os.stat(base_dir).st_uid == 0:
            os.chown(base_dir, uid, gid)
        osuser.give_to(workdir, os_user)
        probe = subprocess.run(osuser.run_as(os_user) + ['test', '-w', workdir], check=False)
        if probe.returncode != 0:
            shutil.rmtree(workdir, ignore_errors=True)
            raise PitrError('the scratch directory %s is not reachable by the OS user %s (PostgreSQL runs as that '
                            'user): set scratch_dir to a directory it can write, or hand %s to it'
                            % (workdir, os_user, base_dir))
    return workdir
