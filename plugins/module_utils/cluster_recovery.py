# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Point-in-time recovery of the whole live cluster (backup_restore ``mode=cluster``).

The live data directory is replaced by one recovered from a base backup and the WAL archive; the old
directory is renamed beside it, never deleted. The configuration stays where it lives: Debian's
/etc/postgresql/<version>/<cluster> is not touched, and configuration files kept in the data directory
are copied from the old directory into the recovered one (today's ports, memory and archive_command,
not the backup's).

Everything the swap needs is checked first (``precheck``), while the server still runs, so that the
playbook can refuse before it stops the application. Once the server has been stopped, any failure
before the recovered server is promoted puts the old directory back and starts the server on it again,
by itself; the error then says what failed and in which state the server was left
(ClusterRecoveryError.state).

``run_delta`` (``delta=true``) is the in-place variant for hosts without room for a second copy: the
server must already be stopped, the directory is brought to the backup by delta.apply, and since there
is nothing to roll back to, a failure leaves the directory unstartable for the next run to resume.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import shutil

from ansible_collections.modulo.pgbackup.plugins.module_utils import (
    delta, encryption, fsutil, liveserver, osuser, pitr, progress, repository, scratch, untar)
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import errors as walerrors
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import PgError, psql_query

from ansible_collections.modulo.pgbackup.plugins.module_utils import errors

CONFIG_FILES = ('postgresql.conf', 'pg_hba.conf', 'pg_ident.conf', 'postgresql.auto.conf')
# Room beyond the unpacked base backup: WAL replayed into pg_wal, the new timeline's first segments.
ROOM_MARGIN = 1.1
ERRORS = (PgError, pitr.PitrError, scratch.ScratchError, liveserver.LiveServerError, encryption.EncryptionError,
          OSError)


class ClusterRecoveryError(errors.PgBackupError):
    """The recovery failed; ``state`` says what was touched and where things are now."""

    def __init__(self, message, state):
        super(ClusterRecoveryError, self).__init__(message)
        self.state = state


def restored_size(base):
    """Bytes the unpacked base backup takes: its manifest's file sizes (read from S3 for a backup there:
    ``restored_bytes``), else (no manifest) its stored size."""
    size = scratch.manifest_size(base.get('path') or '')
    if size is None:
        size = base.get('restored_bytes')
    if size is not None:
        return size, 'manifest'
    return int(base.get('size_bytes') or 0), 'compressed size (no readable manifest)'


class _Watch(object):
    """What scratch.wait_promoted needs of a server: is it running, and the end of its log."""

    def __init__(self, control, window):
        self.control, self.window = control, window

    def running(self):
        return self.control.running()

    def log_tail(self):
        return scratch.log_tail(self.window.text()) if self.window.path else '(log: see the service manager)'


class ClusterRecovery(object):
    def __init__(self, conn, pgdata, bindir, os_user, unit=None, method='auto', timeout_s=3600, log=None):
        self.conn, self.bindir, self.os_user, self.timeout_s, self.log = conn, bindir, os_user, timeout_s, log
        self.layout = self._layout(pgdata)
        # The recovered server logs where the live one did (liveserver.server_log_of), read from this run's offset.
        self.control = liveserver.choose(
            self.layout, method=method, unit=unit, bindir=bindir, os_user=os_user, timeout=timeout_s, log=log)

    def _layout(self, pgdata):
        try:
            layout = liveserver.read_layout(self.conn, log=self.log)
        except PgError as exc:
            if not str(exc).startswith('cannot reach PostgreSQL'):
                raise pitr.PitrError('cannot ask the server where its data directory is: %s' % exc)
            if not pgdata:
                raise pitr.PitrError('the server does not answer (%s), so it cannot say where its data directory is: '
                                     'set pgdata (pgbackup_pgdata)' % exc)
            return liveserver.layout_when_down(pgdata)
        if pgdata and os.path.realpath(pgdata) != os.path.realpath(layout['data_directory']):
            raise pitr.PitrError('pgdata %s is not the data directory of the server on port %s, which runs from %s: '
                                 'correct pgdata (pgbackup_pgdata) or the port' % (pgdata, self.conn.port,
                                                                                   layout['data_directory']))
        return layout

    @property
    def pgdata(self):
        return os.path.abspath(self.layout['data_directory'].rstrip('/'))

    def describe(self):
        where = 'configuration %s' % self.layout['config_file']
        return 'data directory %s (%s), controlled by %s' % (self.pgdata, where, self.control.describe())

    # -- before anything is touched ----------------------------------------------------------------
    def precheck(self, base):
        """Every reason the swap would fail, as sentences; empty when it can go ahead."""
        return precheck(self.layout, self.control, self.os_user, base)

    def plan(self):
        return {'data_directory': self.pgdata, 'config_file': self.layout['config_file'],
                'config_outside_data_directory': liveserver.config_outside(self.layout),
                'service_control': self.control.method, 'control': self.control.describe(),
                'server_running': self.layout['running']}

    # -- the swap -----------------------------------------------------------------------------------
    def run(self, base, repo_root, target_settings, s3_settings=None, keys=None):
        """Stop, swap, recover, promote; roll back by itself on failure. Returns what recovery reached."""
        stamp = repository.utcnow().strftime(repository.STAMP_FORMAT)
        aside = '%s.old-%s' % (self.pgdata, stamp)
        workdir = '%s.pitr-%s' % (self.pgdata, stamp)
        state = {'touched': False, 'promoted': False, 'rolled_back': False, 'server_running': None,
                 'data_directory': self.pgdata, 'old_pgdata': None, 'failed_copy': None}
        window = liveserver.LogWindow(None)
        try:
            self.control.stop()
            state['touched'] = True
            if os.path.lexists(self.pgdata):
                os.rename(self.pgdata, aside)
                state['old_pgdata'] = aside
            self._prepare(base, repo_root, target_settings, workdir, aside, s3_settings, keys)
            window = self._start_and_promote()
            state['promoted'] = True
        except Exception as exc:  # whatever failed once the server was stopped, the old directory goes back
            cause = _cause(exc, base, repo_root)
            if state['touched']:
                self._roll_back(state, stamp)
            raise ClusterRecoveryError(cause, state)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        reached = self._recovered(window, target_settings)
        reached['old_pgdata'] = state['old_pgdata']
        return reached

    def _recovered(self, window, target_settings):
        """What the promoted server reached; the recovery settings taken out of its configuration."""
        reached = scratch.recovery_outcome(window.text())
        reached['last_replayed_transaction'] = psql_query(self.conn, 'SELECT pg_last_xact_replay_timestamp()',
                                                          db='postgres')[0][0]
        reached['timeline'] = int(psql_query(self.conn, 'SELECT timeline_id FROM pg_control_checkpoint()',
                                             db='postgres')[0][0])
        # The recovery settings must not linger in the live configuration (they apply only in recovery,
        # so a failure here is a warning for the caller, not a reason to undo a finished recovery).
        names = ['restore_command', 'recovery_target_action', 'recovery_target_timeline'] + list(target_settings)
        try:
            psql_query(self.conn, ['ALTER SYSTEM RESET %s' % name for name in names] + ['SELECT pg_reload_conf()'],
                       db='postgres', log=self.log)
        except PgError as exc:
            reached['warning'] = ('the recovery settings (%s) are still in %s/postgresql.auto.conf: %s; remove them '
                                  'with ALTER SYSTEM RESET' % (', '.join(names), self.pgdata, exc))
        return reached

    # -- the delta restore, in place ------------------------------------------------------------------
    def run_delta(self, base, repo_root, target_settings, s3_settings=None, keys=None):
        """Bring the stopped data directory to the base backup in place (delta), recover, promote.

        No old directory is kept, so nothing can be rolled back: on failure the directory is left
        unstartable (delta.begin) and the same run resumes it.  Returns what recovery reached, with
        ``delta`` (the counts of delta.apply).
        """
        stamp = repository.utcnow().strftime(repository.STAMP_FORMAT)
        workdir = '%s.pitr-%s' % (self.pgdata, stamp)
        state = {'touched': False, 'delta': True, 'startable': True, 'promoted': False, 'rolled_back': False,
                 'server_running': False, 'data_directory': self.pgdata, 'old_pgdata': None, 'failed_copy': None,
                 'delta_counts': None}
        window = liveserver.LogWindow(None)
        uid, gid = osuser.ids(self.os_user)
        try:
            refusal = running_refusal(self.pgdata, self.control)
            if refusal:
                raise pitr.PitrError(refusal)
            archive = scratch.base_archive(base['path'])
            fsutil.ensure_dir(workdir)
            osuser.give_to(workdir, self.os_user)
            restore_command = scratch.install_wal_command(workdir, repo_root, s3_settings, self.os_user, keys=keys)
            state['touched'], state['startable'] = True, False
            delta.begin(self.pgdata, base['name'], uid, gid)
            try:
                chunks = progress.counting(delta.archive_chunks(archive, keys), 'comparing and patching the data directory',
                                           scratch.manifest_size(base['path']))
                counts = delta.apply(chunks, self.pgdata, keep=self._kept_config(), uid=uid, gid=gid)
            except (untar.UntarError, walerrors.WalArchiveError, delta.DeltaError) as exc:
                raise scratch.ScratchError('cannot apply %s to %s: %s' % (archive, self.pgdata, encryption.explain(str(exc))))
            state['delta_counts'] = counts
            for stale in ('postmaster.pid', 'standby.signal', 'recovery.signal'):
                fsutil.remove_quietly(os.path.join(self.pgdata, stale))
            auto_conf = os.path.join(self.pgdata, 'postgresql.auto.conf')
            strip_recovery_settings(auto_conf)
            scratch.write_auto_conf(self.pgdata, scratch.recovery_settings(target_settings, restore_command,
                                                                           scratch=False), self.os_user)
            signal = os.path.join(self.pgdata, 'recovery.signal')
            open(signal, 'w').close()
            for path in (auto_conf, signal):
                fsutil.fsync_file(path)
                if uid is not None:
                    os.lchown(path, uid, gid)
            os.chmod(self.pgdata, 0o700)
            delta.commit(self.pgdata)
            state['startable'] = True
            window = self._start_and_promote()
            state['promoted'] = True
        except Exception as exc:  # whatever failed, the directory is left unstartable for the next run to resume
            cause = _cause(exc, base, repo_root)
            if state['touched']:
                self._disarm(state, base, uid, gid)
            raise ClusterRecoveryError(cause, state)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        reached = self._recovered(window, target_settings)
        reached['delta'] = state['delta_counts']
        return reached

    def _kept_config(self):
        """Today's configuration in the data directory stays (a full restore copies it from the old one)."""
        names = ('postgresql.auto.conf',) if liveserver.config_outside(self.layout) else CONFIG_FILES
        return [name for name in names if os.path.isfile(os.path.join(self.pgdata, name))]

    def _disarm(self, state, base, uid, gid):
        """After a failure: the server down and the directory unstartable again, so the delta can resume."""
        try:
            if self.control.running():
                self.control.stop()
            state['server_running'] = False
            delta.begin(self.pgdata, base['name'], uid, gid)
            state['startable'] = False
        except ERRORS as exc:
            self._failed_back(state, exc)
            state['startable'] = os.path.exists(os.path.join(self.pgdata, delta.CONTROL))

    def _prepare(self, base, repo_root, target_settings, workdir, aside, s3_settings, keys):
        fsutil.ensure_dir(workdir)
        osuser.give_to(workdir, self.os_user)
        restore_command = scratch.install_wal_command(workdir, repo_root, s3_settings, self.os_user, keys=keys)
        scratch.extract_base(base['path'], self.pgdata, self.os_user, log=self.log, keys=keys,
                             stream=base.get('stream'))
        if not liveserver.config_outside(self.layout):
            for name in CONFIG_FILES:
                # Today's configuration, not the one at backup time (ports, archive_command, memory).
                if os.path.exists(os.path.join(aside, name)):
                    shutil.copy2(os.path.join(aside, name), os.path.join(self.pgdata, name))
        elif os.path.exists(os.path.join(aside, 'postgresql.auto.conf')):
            shutil.copy2(os.path.join(aside, 'postgresql.auto.conf'), os.path.join(self.pgdata, 'postgresql.auto.conf'))
        for stale in ('postmaster.pid', 'standby.signal'):
            fsutil.remove_quietly(os.path.join(self.pgdata, stale))
        scratch.write_auto_conf(self.pgdata, scratch.recovery_settings(target_settings, restore_command, scratch=False),
                                self.os_user)
        open(os.path.join(self.pgdata, 'recovery.signal'), 'w').close()
        osuser.give_to(self.pgdata, self.os_user)
        os.chmod(self.pgdata, 0o700)

    def _start_and_promote(self):
        """Start the server on the prepared data directory and wait until recovery has promoted it; returns the
        window on its log, where recovery says where it stopped."""
        window = liveserver.LogWindow(self.control.log_path())
        self._start(window)
        scratch.wait_promoted(lambda sql: psql_query(self.conn, sql, db='postgres'), self.timeout_s,
                              _Watch(self.control, window), self.pgdata)
        return window

    def _start(self, window):
        try:
            self.control.start()
        except liveserver.LiveServerError as exc:
            text = window.text() if window.path else ''
            last = text.strip().splitlines()[-1:] if text.strip() else []
            # pg_ctlcluster prints the log itself; pg_ctl only says "Examine the log output".
            tail = '' if not last or last[0].strip() in str(exc) else scratch.log_tail(text)
            raise scratch.ScratchError('the restored server did not come up: %s%s' % (
                exc, ('; server log (%s): %s' % (window.path, tail)) if tail else ''))

    def _roll_back(self, state, stamp):
        """Put the old data directory back and start the server on it; record what happened in ``state``."""
        try:
            self.control.stop()
            if os.path.lexists(self.pgdata):
                failed = '%s.failed-%s' % (self.pgdata, stamp)
                os.rename(self.pgdata, failed)
                state['failed_copy'] = failed
            if not state['old_pgdata']:
                state['server_running'] = False
                state['rollback_error'] = 'there was no data directory before the recovery, so nothing to put back'
                return
            os.rename(state['old_pgdata'], self.pgdata)
            state['old_pgdata'] = None
            self.control.start()
            liveserver.wait_accepting(self.conn, 60)
            state['rolled_back'] = True
            state['server_running'] = True
        except ERRORS as exc:
            self._failed_back(state, exc)

    def _failed_back(self, state, exc):
        """The way back failed too: say why, and whether the server runs (None when that cannot be told)."""
        state['rollback_error'] = str(exc)
        try:
            state['server_running'] = self.control.running()
        except ERRORS:
            state['server_running'] = None


def _cause(exc, base, repo_root):
    """What a failure of the swap or the delta says: a foreseen one explained, anything else named by its type,
    since it is a defect to report (it is rolled back all the same)."""
    if isinstance(exc, ERRORS):
        return pitr.explain_short_recovery(str(exc), base, repo_root)
    return 'unexpected %s: %s (a defect of modulo.pgbackup: please report it)' % (type(exc).__name__, exc)


def _service_problems(layout, control, os_user):
    """What any cluster restore needs of the host (the service control, the OS user); and the data directory."""
    problems = list(control.check())
    try:
        osuser.lookup(os_user)
    except osuser.OsUserError as exc:
        problems.append(str(exc))
    return problems, os.path.abspath(layout['data_directory'].rstrip('/'))


def precheck(layout, control, os_user, base):
    """What would make the swap of ``layout``'s data directory fail, checked while nothing is touched yet."""
    problems, pgdata = _service_problems(layout, control, os_user)
    parent = os.path.dirname(pgdata)
    if not os.path.isdir(parent):
        problems.append('the directory %s above the data directory does not exist' % parent)
        return problems
    if not os.access(parent, os.W_OK | os.X_OK) or _read_only(parent):
        problems.append('%s is not writable by %s: the data directory is renamed and the recovered one made '
                        'there (run the play with become: true)' % (parent, osuser.current_user()))
    if os.path.isdir(pgdata) and os.stat(pgdata).st_dev != os.stat(parent).st_dev:
        problems.append('%s is a mount point: it cannot be renamed aside. Mount the file system one level '
                        'higher, or restore with mode=database' % pgdata)
    needed, source = restored_size(base)
    free = _free_bytes(parent)
    if needed * ROOM_MARGIN > free:
        problems.append('%s has %s free, the recovered data directory needs about %s (%s, plus 10 %%); the old '
                        'directory is kept beside it: free space there, or restore with mode=database'
                        % (parent, _human(free), _human(needed), source))
    if liveserver.config_outside(layout):
        for key in ('config_file', 'hba_file'):
            if not os.path.isfile(layout[key]):
                problems.append('the server\'s %s %s is missing' % (key, layout[key]))
    return problems


def running_refusal(pgdata, control, answered=False):
    """Why a delta restore must not start now (the server runs: it ``answered``, or its pid lives), or None."""
    pid = liveserver.postmaster_alive(pgdata)
    if not answered and pid is None and not control.running():
        return None
    return ('delta=true rewrites the data directory %s in place and refuses while PostgreSQL runs on it%s: stop '
            'PostgreSQL first (%s), then run again. Nothing was changed' % (
                pgdata, ' (postmaster.pid names process %d; if that is not PostgreSQL, the file is stale: remove it)'
                % pid if pid else '', control.describe()))


def strip_recovery_settings(auto_conf):
    """Take out what an earlier, unfinished recovery appended (its target must not add to this one's)."""
    try:
        with open(auto_conf) as handle:
            text = handle.read()
    except FileNotFoundError:
        return
    mark = scratch.AUTO_CONF_MARK
    if mark in text:
        with open(auto_conf, 'w') as handle:
            handle.write(text[:text.index(mark)])


def precheck_delta(layout, control, os_user, base):
    """What would make a delta restore of ``layout``'s (stopped) data directory fail; nothing is touched."""
    problems, pgdata = _service_problems(layout, control, os_user)
    if not os.path.isdir(pgdata):
        problems.append('%s is not a directory: a delta restore works on the existing data directory (restore '
                        'without delta when there is none)' % pgdata)
        return problems
    if not os.access(pgdata, os.W_OK | os.X_OK) or _read_only(pgdata):
        problems.append('%s is not writable by %s (run the play with become: true)' % (pgdata, osuser.current_user()))
    needed, source = restored_size(base)
    grows = needed - _tree_bytes(pgdata)
    free = _free_bytes(pgdata)
    if grows * ROOM_MARGIN > free:
        problems.append('%s has %s free, the backup (%s, %s) is %s larger than the data directory now'
                        % (pgdata, _human(free), _human(needed), source, _human(grows)))
    if liveserver.config_outside(layout):
        for key in ('config_file', 'hba_file'):
            if not os.path.isfile(layout[key]):
                problems.append('the server\'s %s %s is missing' % (key, layout[key]))
    return problems


def failure_message(cause, state, control_description):
    """What failed, and the truth about the server's state afterwards."""
    pgdata = state['data_directory']
    if state.get('delta'):
        return _delta_failure_message(cause, state, control_description)
    if not state['touched']:
        return '%s. Nothing was changed: the server was not stopped and %s is as it was.' % (cause, pgdata)
    if state['rolled_back']:
        kept = (' The failed copy is kept at %s for inspection; remove it when done.' % state['failed_copy']
                if state['failed_copy'] else '')
        return ('%s. Rolled back: the previous data directory is back at %s and PostgreSQL runs on it again '
                '(through %s).%s' % (cause, pgdata, control_description, kept))
    steps = ('The previous data directory is intact at %s; to roll back by hand: stop PostgreSQL, move %s away, '
             'rename %s to %s, start PostgreSQL (%s).' % (state['old_pgdata'], pgdata, state['old_pgdata'], pgdata,
                                                          control_description)) if state['old_pgdata'] else ''
    running = {True: 'PostgreSQL runs', False: 'PostgreSQL is DOWN', None: 'PostgreSQL\'s state is unknown'}[
        state['server_running']]
    return '%s. The automatic rollback failed (%s); %s. %s' % (
        cause, state.get('rollback_error') or 'unknown error', running, steps)


def _delta_failure_message(cause, state, control_description):
    pgdata = state['data_directory']
    if not state['touched']:
        return '%s. Nothing was changed: %s is as it was.' % (cause, pgdata)
    running = {True: 'PostgreSQL runs', False: 'PostgreSQL is down', None: 'PostgreSQL\'s state is unknown'}[
        state['server_running']]
    if not state['startable']:
        return ('%s. The delta restore changed %s in place and did not finish; there is no old directory to roll '
                'back to. The directory is marked incomplete (%s, no global/pg_control) so that it cannot be started '
                'by mistake; %s. To resume, fix the cause and run the same delta restore again: what is already '
                'done is reused. Or restore without delta from another backup.' % (
                    cause, pgdata, delta.MARKER, running))
    return ('%s. The delta restore changed %s in place and could not make it unstartable again (%s); %s (%s). '
            'Do not start it: run the same delta restore again.' % (
                cause, pgdata, state.get('rollback_error') or 'unknown error', running, control_description))


def _tree_bytes(path):
    """Bytes of the files under ``path``, links not followed, unreadable entries not counted."""
    total = 0
    for base, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(base, name)).st_size
            except OSError:
                pass
    return total


def _free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _read_only(path):
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def _human(size):
    for unit in ('B', 'KB', 'MB', 'GB', 'TB'):
        if size < 1024 or unit == 'TB':
            return '%.1f %s' % (size, unit) if unit != 'B' else '%d B' % size
        size /= 1024.0
