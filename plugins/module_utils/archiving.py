# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host provisioning for continuous WAL archiving: the logic of the ``wal_archive`` module.

Three things must agree for point-in-time recovery to work, and this file
keeps them together:

* the archive command on the host: a launcher, the collection's ``wal`` package and its settings as a
  generated Python module (walcommand.py; no secrets: AWS credentials come from the host's environment or
  instance profile), all readable by the server's OS user;
* the repository's ``wal/``, owned by that same user (one owner for the whole
  repository), and ``wal/archive.json`` naming the one cluster allowed to
  archive there;
* the server settings (``wal_level``, ``archive_mode``, ``archive_command``,
  ``archive_timeout``), changed with ALTER SYSTEM only where they differ.

Everything is planned first (``plan_*``), then applied, so check mode reports
exactly what a real run would do.  Nothing here ever restarts PostgreSQL: it
says ``restart_required`` and the role's handler restarts.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno
import json
import os
import shlex
import subprocess
import time

from ansible_collections.modulo.pgbackup.plugins.module_utils import encryption, errors, liveserver, osuser, walcommand
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import (
    archive as walarchive, codec as walcodec, durable as waldurable, errors as walerrors, names as walnames, s3 as wals3,
    spool as walspool)
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import PgError, psql_query, quote_literal

DEFAULT_COMMAND_PATH = '/usr/local/lib/modulo-pgbackup/pgbackup-wal'
ASYNC_WORKERS = walspool.DEFAULT_WORKERS
ASYNC_QUEUE_MAX = walspool.DEFAULT_QUEUE_MAX
SYSTEM_PYTHON = walcommand.SYSTEM_PYTHON
PARENT_MODE = 0o755
REPO_DIR_MODE = 0o700
INFO_MODE = 0o600

RESTART_SETTINGS = ('wal_level', 'archive_mode')
SETTINGS = ('wal_level', 'archive_mode', 'archive_command', 'archive_timeout', 'archive_library')
AUTO_CONF = 'postgresql.auto.conf'
DISABLED = '(disabled)'
_TRUE = ('on', 'true', 'yes', '1')
_FALSE = ('off', 'false', 'no', '0')


class ArchivingError(errors.PgBackupError):
    """Configuration refused or verification failed; ``str()`` is meant for the operator."""


# --------------------------------------------------------------------------------------------
# The archive command and its settings
# --------------------------------------------------------------------------------------------

def commands(command_path):
    """(archive_command, restore_command) running the installed command with the system Python."""
    try:
        return walcommand.command_lines(command_path)
    except walcommand.WalCommandError as exc:
        raise ArchivingError(str(exc))


def command_settings(repo, compression='auto', level=None, s3=None, encryption=None, archive_async=None):
    """The command's settings (wal/cli.py SETTINGS_KEYS); ``s3`` is common.s3_settings() or None.

    ``archive_async`` (a dict with ``workers`` and ``queue_max``, or None) turns on the background pusher and
    the prefetcher (wal/spool.py).

    ``encryption`` ({'recipient', 'identities'}) names the public key segments are encrypted for and the
    key *files* that decrypt them; the keys themselves are never copied into the settings.
    """
    s3 = s3 or {}
    settings = {
        'repo': repo,
        'compression': compression or 'auto',
        'level': level,
        's3_bucket': s3.get('bucket') or None,
        's3_prefix': s3.get('prefix') if s3.get('bucket') else None,
        's3_endpoint_url': s3.get('endpoint_url') or None,
        'aws_region': s3.get('region') or None,
        's3_sse': (s3.get('sse') is not False) if s3.get('bucket') else None,
    }
    if encryption:
        settings['encryption_recipient'] = encryption.get('recipient')
        settings['encryption_key_files'] = list(encryption.get('identities') or [])
    if archive_async:
        settings.update(archive_async=True, async_workers=archive_async['workers'],
                        async_queue_max=archive_async['queue_max'])
    return settings


def legacy_files(command_path):
    """What earlier versions installed for the command and nothing uses any more: the single-file library
    (walarchive.py and its bytecode) and the JSON config the command line named (only when it says it is ours)."""
    lib = walcommand.lib_dir(command_path)
    found = [os.path.join(lib, 'walarchive.py')]
    cache = os.path.join(lib, '__pycache__')
    if os.path.isdir(cache):
        found += [os.path.join(cache, n) for n in sorted(os.listdir(cache)) if n.startswith('walarchive.')]
    config = command_path + '.json'
    try:
        with open(config) as handle:
            if '"_managed_by": "modulo.pgbackup wal_archive' in handle.read():
                found.append(config)
    except OSError:
        pass
    return [path for path in found if os.path.isfile(path)]


class Request(object):
    """What wal_archive is asked to do, as typed values (the module's options)."""

    def __init__(self, backup_root, state='present', archive_timeout=60, compression='auto', compression_level=None,
                 verify=True, verify_timeout=60, pg_os_user='postgres', key_file=None, old_key_files=None,
                 key_env=None, archive_async=False, async_workers=ASYNC_WORKERS, async_queue_max=ASYNC_QUEUE_MAX):
        if state not in ('present', 'absent'):
            raise ArchivingError('state must be present or absent, not %r' % (state,))
        if archive_timeout < 0 or verify_timeout < 1:
            raise ArchivingError('archive_timeout must be 0 or more and verify_timeout 1 or more')
        if not (1 <= async_workers <= 32 and 1 <= async_queue_max <= 1024):
            raise ArchivingError('archive_async_workers must be 1 to 32 and archive_async_queue_max 1 to 1024 '
                                 '(got %s and %s)' % (async_workers, async_queue_max))
        self.archive_async = {'workers': async_workers, 'queue_max': async_queue_max} if archive_async else None
        self.backup_root, self.state, self.archive_timeout = os.path.abspath(backup_root), state, archive_timeout
        self.compression, self.compression_level = compression or 'auto', compression_level
        self.verify, self.verify_timeout, self.pg_os_user = verify, verify_timeout, pg_os_user or 'postgres'
        self.key_file, self.old_key_files, self.key_env = key_file, list(old_key_files or []), key_env


def wal_encryption(request):
    """The archive command's encryption settings from the request's key options, or None.

    The archiver runs under the postmaster, without the task's environment: a key given only in the
    environment cannot serve it, so WAL encryption needs ``encryption_key_file``, readable by the
    server's OS user (fetch decrypts with it during recovery).
    """
    keys = encryption.Keys(key_file=request.key_file, old_key_files=request.old_key_files)
    if not keys.enabled:
        if request.key_env and os.environ.get(request.key_env):
            raise ArchivingError('WAL encryption needs encryption_key_file: the archive command runs under '
                                 'PostgreSQL and cannot see %s' % request.key_env)
        return None
    try:
        recipient = keys.recipient()
        identities = keys.identities()
    except encryption.EncryptionError as exc:
        raise ArchivingError(str(exc))
    if os.geteuid() == 0 and request.pg_os_user != 'root':
        for path in identities:
            probe = subprocess.run(['runuser', '-u', request.pg_os_user, '--', 'test', '-r', path], check=False)
            if probe.returncode:
                user = request.pg_os_user
                raise ArchivingError('the encryption key file %s is not readable by %s, which runs the archive '
                                     'command: chown it to %s (mode 0600)' % (path, user, user))
    return {'recipient': recipient, 'identities': identities}


def check_compression(compression, level):
    """Fail now, not in the archiver, when the codec or level cannot work on this host."""
    try:
        codec = walcodec.resolve_codec(compression or 'auto')
        if compression in (None, 'auto') and level is not None:
            # 'auto' may pick either codec on a later day: the level must suit both.
            for candidate in ('zstd', 'gzip'):
                walcodec.check_level(candidate, level)
        else:
            walcodec.check_level(codec, level)
    except walerrors.WalArchiveError as exc:
        raise ArchivingError(str(exc))
    return codec


# --------------------------------------------------------------------------------------------
# Files: plan, then write
# --------------------------------------------------------------------------------------------

def plan_file(path, content, mode):
    """None when ``path`` already has ``content`` and ``mode``, else 'create', 'update' or 'mode'."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return 'create'
        raise
    try:
        with open(path, 'rb') as handle:
            current = handle.read()
    except OSError as exc:
        raise ArchivingError('cannot read %s: %s' % (path, exc.strerror or exc))
    if current != content:
        return 'update'
    if st.st_mode & 0o7777 != mode:
        return 'mode'
    return None


def missing_dirs(path):
    """Directories above ``path`` that do not exist yet, outermost first."""
    missing = []
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.isdir(parent):
        missing.append(parent)
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    return list(reversed(missing))


def make_dirs(dirs, mode=PARENT_MODE):
    for directory in dirs:
        try:
            os.mkdir(directory, mode)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
            continue
        # mkdir is subject to the umask; the server's user must be able to traverse these.
        os.chmod(directory, mode)


def write_file(path, content, mode):
    """Replace ``path`` atomically with ``content``, already at ``mode`` when it appears."""
    make_dirs(missing_dirs(path))
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, '.%s.tmp.%d' % (os.path.basename(path), os.getpid()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        # The archiver may be running the old command right now: rename swaps
        # the file atomically, it never sees a half-written one.
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    waldurable.fsync_dir(directory)


# --------------------------------------------------------------------------------------------
# Who must be able to read and write what
# --------------------------------------------------------------------------------------------

def _has_acl(path):
    try:
        return bool(os.getxattr(path, 'system.posix_acl_access'))
    except (OSError, AttributeError):
        return False


def _allowed(st, uid, groups, bits):
    """Whether mode bits ``bits`` (r=4, w=2, x=1) are granted to uid/groups by ``st``."""
    if uid == 0:
        return True
    if st.st_uid == uid:
        return st.st_mode >> 6 & bits == bits
    if st.st_gid in groups:
        return st.st_mode >> 3 & bits == bits
    return st.st_mode & bits == bits


def first_blocking_dir(path, uid, groups):
    """The first existing directory above ``path`` that ``uid`` cannot traverse, or None.

    Mode bits only: a directory with an ACL is given the benefit of the doubt
    (the verification at the end is the real test).
    """
    parts = []
    current = os.path.dirname(os.path.abspath(path))
    while True:
        parts.append(current)
        up = os.path.dirname(current)
        if up == current:
            break
        current = up
    for directory in reversed(parts):
        try:
            st = os.stat(directory)
        except OSError:
            return None  # the rest does not exist yet: it will be created 0755
        if not _allowed(st, uid, groups, 1) and not _has_acl(directory):
            return directory
    return None


# --------------------------------------------------------------------------------------------
# The repository's wal/
# --------------------------------------------------------------------------------------------

def plan_repository(repo, owner=None):
    """Actions making ``repo`` and ``repo/wal`` exist, 0700, owned by ``owner`` ((uid, gid) or None).

    Each action is a dict (path, action in create|chown|chmod, mode, owner).  An
    existing backup_root keeps its mode (other tools may rely on it) but gets
    the one owner of the repository; ``wal/`` belongs to the archive command
    alone and is forced to 0700.
    """
    actions = []
    for path, force_mode in ((repo, False), (walarchive.wal_dir(repo), True)):
        try:
            st = os.stat(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            actions.append({'path': path, 'action': 'create', 'mode': REPO_DIR_MODE, 'owner': owner})
            continue
        if not os.path.isdir(path):
            raise ArchivingError('%s exists and is not a directory' % path)
        if owner and (st.st_uid, st.st_gid) != tuple(owner):
            actions.append({'path': path, 'action': 'chown', 'mode': None, 'owner': owner})
        if force_mode and st.st_mode & 0o7777 != REPO_DIR_MODE:
            actions.append({'path': path, 'action': 'chmod', 'mode': REPO_DIR_MODE, 'owner': None})
        elif not force_mode and st.st_mode & 0o700 != 0o700:
            # The owner needs rwx on backup_root to create wal/ and its date directories.
            actions.append({'path': path, 'action': 'chmod', 'mode': st.st_mode & 0o7777 | 0o700, 'owner': None})
    wal = walarchive.wal_dir(repo)
    if owner and os.path.isdir(wal):
        # Date directories or archive.json left by a push run as another user (root, by hand) would
        # make the server's own pushes fail: the archive has one owner, all the way down.
        for base, dirs, files in os.walk(wal):
            for name in sorted(dirs) + sorted(files):
                path = os.path.join(base, name)
                st = os.lstat(path)
                if (st.st_uid, st.st_gid) != tuple(owner):
                    actions.append({'path': path, 'action': 'chown', 'mode': None, 'owner': owner})
    return actions


def apply_repository(actions):
    for act in actions:
        path = act['path']
        if act['action'] == 'create':
            make_dirs(missing_dirs(path))
            os.mkdir(path, REPO_DIR_MODE)
            os.chmod(path, REPO_DIR_MODE)
            waldurable.fsync_dir(os.path.dirname(os.path.abspath(path)))
        if act['owner']:
            os.lchown(path, act['owner'][0], act['owner'][1])
        if act['action'] == 'chmod':
            os.chmod(path, act['mode'])


def archive_owner(repo, sysid):
    """'absent' or 'same' for ``wal/archive.json``; ArchivingError when another cluster owns the archive."""
    try:
        info = walarchive.read_archive_info(repo)
    except walerrors.WalArchiveError as exc:
        raise ArchivingError(str(exc))
    if info is None:
        return 'absent'
    recorded = str(info.get('system_identifier'))
    if recorded != str(sysid):
        raise ArchivingError(
            'the WAL archive %s belongs to another cluster: its archive.json records system identifier %s, '
            'this server is %s. Archiving here would mix two clusters\' WAL (or a restored copy\'s) in one '
            'archive. Give this server its own backup_root; if the old cluster is gone for good, move %s '
            'aside yourself (nothing is deleted for you).'
            % (walarchive.wal_dir(repo), recorded, sysid, walarchive.wal_dir(repo)))
    return 'same'


def seed_archive_info(repo, sysid, seg_size, owner=None):
    """Write ``wal/archive.json`` for this server, readable by the archive command's user."""
    path = walarchive.write_archive_info(repo, sysid, seg_size)
    if owner:
        os.chown(path, owner[0], owner[1])
    os.chmod(path, INFO_MODE)
    return path


# --------------------------------------------------------------------------------------------
# Server settings
# --------------------------------------------------------------------------------------------

def normalize(name, value):
    """Compare settings the way PostgreSQL reads them: booleans and enums by meaning."""
    if value is None:
        return None
    text = str(value).strip()
    if name == 'archive_mode':
        low = text.lower()
        if low in _TRUE:
            return 'on'
        if low in _FALSE:
            return 'off'
        return low
    if name == 'wal_level':
        low = text.lower()
        # Names from before 9.6, still accepted by the server.
        return {'archive': 'replica', 'hot_standby': 'replica'}.get(low, low)
    return text


def read_settings(conn, log=None):
    """What the server runs with and what its configuration files say, for SETTINGS.

    Returns ``{name: {setting, context, pending_restart, configured, in_auto_conf,
    configured_elsewhere}}``: ``configured`` is the value the files give (the
    last valid line wins, postgresql.auto.conf being read last) or None when
    no file sets it; ``configured_elsewhere`` is that value ignoring
    postgresql.auto.conf.
    """
    names = ', '.join(quote_literal(n) for n in SETTINGS)
    rows = psql_query(conn, 'SELECT name, setting, context, pending_restart FROM pg_settings '
                            'WHERE name IN (%s)' % names, db='postgres', log=log)
    settings = {}
    for name, setting, context, pending in rows:
        settings[name] = {'setting': setting if setting is not None else '', 'context': context,
                          'pending_restart': pending == 't', 'configured': None, 'in_auto_conf': False,
                          'configured_elsewhere': None}
    missing = [n for n in SETTINGS if n not in settings and n != 'archive_library']
    if missing:
        raise ArchivingError('the server does not know %s: PostgreSQL 15 or newer is needed' % ', '.join(missing))
    try:
        rows = psql_query(conn, 'SELECT name, setting, sourcefile, error IS NOT NULL FROM pg_file_settings '
                                'WHERE name IN (%s) ORDER BY seqno' % names, db='postgres', log=log)
    except PgError as exc:
        if 'permission denied' not in str(exc):
            raise
        # A backup role (roles/db_roles) lands here: name the real requirement, not the first denied function.
        raise ArchivingError('%s: configuring WAL archiving reads pg_file_settings and runs ALTER SYSTEM, which '
                             'needs a superuser; connect as one (login_user), not as %s'
                             % (exc, conn.login_user or 'this role'))
    for name, setting, sourcefile, has_error in rows:
        entry = settings.get(name)
        if entry is None:
            continue
        # A valid value waiting for a restart is listed with an error too ("setting could not be
        # applied", in the server's language): only pending_restart tells it from an invalid value.
        if has_error == 't' and not entry['pending_restart']:
            continue
        entry['configured'] = setting if setting is not None else ''
        if os.path.basename(sourcefile or '') == AUTO_CONF:
            entry['in_auto_conf'] = True
        else:
            entry['configured_elsewhere'] = entry['configured']
    command = settings['archive_command']
    if command['setting'] == DISABLED:
        # While archive_mode is off the server shows this placeholder instead of the value; a
        # reload has applied what the files say, so that is the value it runs with.
        command['setting'] = command['configured'] or ''
    return settings


def _configured(entry):
    return entry['configured'] if entry['configured'] is not None else entry['setting']


def plan_settings(state, current, archive_command=None, archive_timeout=60):
    """Pure: the ALTER SYSTEM statements for ``state`` and whether a restart is then needed.

    ``current`` is read_settings()'s result.  Returns a dict: ``statements``
    (list of (name, sql)), ``changed`` (names), ``restart_required``, ``before``
    and ``after`` (configured values, for diff mode), ``warnings``.
    """
    statements, warnings = [], []
    before, after = {}, {}
    for name in ('wal_level', 'archive_mode', 'archive_command', 'archive_timeout'):
        before[name] = after[name] = _configured(current[name])

    def set_value(name, value):
        statements.append((name, 'ALTER SYSTEM SET %s = %s' % (name, quote_literal(value))))
        after[name] = str(value)

    def reset(name, value_after):
        statements.append((name, 'ALTER SYSTEM RESET %s' % name))
        after[name] = value_after

    library = (current.get('archive_library') or {}).get('setting') or ''
    if state == 'present':
        if library:
            raise ArchivingError(
                'archive_library is set to %r: PostgreSQL then ignores archive_command. Another archiving '
                'tool is configured on this server; remove it (ALTER SYSTEM RESET archive_library) before '
                'handing archiving to modulo.pgbackup' % library)
        level = normalize('wal_level', _configured(current['wal_level']))
        if level == 'minimal':
            set_value('wal_level', 'replica')
        mode = normalize('archive_mode', _configured(current['archive_mode']))
        if mode not in ('on', 'always'):
            set_value('archive_mode', 'on')
        if current['archive_command']['setting'] != archive_command or \
                _configured(current['archive_command']) != archive_command:
            set_value('archive_command', archive_command)
        if normalize('archive_timeout', current['archive_timeout']['setting']) != str(int(archive_timeout)):
            set_value('archive_timeout', int(archive_timeout))
    else:
        mode = normalize('archive_mode', _configured(current['archive_mode']))
        if mode != 'off':
            set_value('archive_mode', 'off')
        command = current['archive_command']
        remaining = command['configured_elsewhere'] or ''
        if remaining:
            # postgresql.conf sets it: RESET would fall back to that, so write the empty value instead.
            set_value('archive_command', '')
        elif command['in_auto_conf']:
            reset('archive_command', '')
        if current['archive_timeout']['in_auto_conf']:
            reset('archive_timeout', current['archive_timeout']['configured_elsewhere'] or '0')

    changed = [name for name, _sql in statements]
    restart = []
    for name in RESTART_SETTINGS:
        running = normalize(name, current[name]['setting'])
        wanted = normalize(name, after[name])
        if running != wanted or (name not in changed and current[name]['pending_restart']):
            restart.append(name)
    if state == 'absent' and 'archive_mode' in restart:
        warnings.append('archive_mode stays on until PostgreSQL restarts; meanwhile archive_command is empty, '
                        'so the server keeps its WAL in pg_wal (nothing is lost, nothing is archived): '
                        'restart it soon')
    return {'statements': statements, 'changed': changed, 'restart_required': bool(restart),
            'restart_settings': restart, 'before': before, 'after': after, 'warnings': warnings}


def apply_settings(conn, statements, log=None, applied=None):
    """Run the ALTER SYSTEM statements (each on its own: they cannot share a transaction), then reload.

    ``applied(name)`` is called after each statement that succeeded.
    """
    for name, sql in statements:
        try:
            psql_query(conn, sql, db='postgres', log=log)
        except PgError as exc:
            raise ArchivingError('%s failed: %s (ALTER SYSTEM needs a superuser, or a role granted '
                                 'ALTER SYSTEM on these parameters)' % (sql.split(' = ')[0], exc))
        if applied is not None:
            applied(name)
    if statements:
        psql_query(conn, 'SELECT pg_reload_conf()', db='postgres', log=log)


def wait_for_setting(conn, name, value, timeout=10, log=None, sleep=time.sleep):
    """After pg_reload_conf(), until new backends (and so the archiver) see ``value``."""
    deadline = time.time() + timeout
    while True:
        # Compared in SQL: psql prints an empty value as an empty line, which reads as no row.
        rows = psql_query(conn, 'SELECT setting = %s FROM pg_settings WHERE name = %s'
                          % (quote_literal(value), quote_literal(name)), db='postgres', log=log)
        if rows and rows[0][0] == 't':
            return True
        if time.time() >= deadline:
            return False
        sleep(0.2)


# --------------------------------------------------------------------------------------------
# The server's identity and the archiver
# --------------------------------------------------------------------------------------------

def server_identity(conn, log=None):
    """(system identifier as text, WAL segment size in bytes, in recovery?)."""
    rows = psql_query(conn, "SELECT (SELECT system_identifier FROM pg_control_system())::text, "
                            "(SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'), "
                            "pg_is_in_recovery()", db='postgres', log=log)
    sysid, seg_size, recovery = rows[0]
    return sysid, int(seg_size), recovery == 't'


def archiver_stats(conn, log=None):
    """The pg_stat_archiver row as a dict (counts as ints, times as text)."""
    rows = psql_query(conn, 'SELECT row_to_json(a)::text FROM pg_stat_archiver a', db='postgres', log=log)
    return json.loads(rows[0][0]) if rows else {}


def switch_wal(conn, log=None):
    """Close the current segment and return its name.

    pg_switch_wal() does nothing when no WAL was written since the last
    switch, so first commit a transaction that has an xid (its commit record
    is WAL) in a session of its own; in one session both would be a single
    transaction and the commit would come after the switch.
    """
    psql_query(conn, 'SELECT txid_current()', db='postgres', log=log)
    rows = psql_query(conn, 'SELECT pg_walfile_name(pg_switch_wal())', db='postgres', log=log)
    return rows[0][0]


def verify_archiving(conn, repo, store=None, timeout=60, log=None, sleep=time.sleep, clock=time.time,
                     hint=''):
    """Switch WAL and wait until the segment is in the archive; returns (segment, archiver stats).

    Fails as soon as pg_stat_archiver counts a new failure: the archiver
    retries a failing segment forever, so waiting for the timeout would only
    delay the bad news.
    """
    before = archiver_stats(conn, log=log)
    failed_before = int(before.get('failed_count') or 0)
    segment = switch_wal(conn, log=log)
    deadline = clock() + timeout
    stats = before
    where = walarchive.wal_dir(repo) + (' and %s' % store.uri(store.key('wal/')) if store else '')
    while True:
        try:
            local = walarchive.find_segment(repo, segment)
        except OSError as exc:
            raise ArchivingError('cannot look into %s to verify archiving: %s (run the module as root or as '
                                 'the repository owner)' % (walarchive.wal_dir(repo), exc.strerror or exc))
        remote = True
        if local and store:
            try:
                remote = store.find(segment)
            except walerrors.WalArchiveError as exc:
                raise ArchivingError('cannot check the S3 archive: %s' % exc)
        stats = archiver_stats(conn, log=log)
        failed = int(stats.get('failed_count') or 0)
        if failed > failed_before:
            raise ArchivingError(
                'the archiver failed to archive %s (pg_stat_archiver: failed_count %d -> %d, last_failed_wal '
                '%s at %s). The server log has the command\'s message (lines starting with "pgbackup-wal:"). %s'
                % (stats.get('last_failed_wal') or segment, failed_before, failed, stats.get('last_failed_wal'),
                   stats.get('last_failed_time'), hint))
        # The archiver records its success just after the command returns: wait for pg_stat_archiver to
        # say so too, so the stats returned describe this segment (the file alone is already durable).
        recorded = (stats.get('last_archived_wal') or '') >= segment
        if local and remote and (recorded or clock() >= deadline):
            return segment, stats
        if clock() >= deadline:
            raise ArchivingError(
                'segment %s was not archived into %s within %d s (pg_stat_archiver: last_archived_wal %s, '
                'failed_count %d). Is archive_mode on (restart done?) and is the archiver running? %s'
                % (segment, where, timeout, stats.get('last_archived_wal'), failed, hint))
        sleep(0.5)


def restart(conn, control, plan, current, log=None):
    """Restart through ``control`` so archive_mode/wal_level apply; on failure say what the server runs with."""
    try:
        control.restart()
        liveserver.wait_accepting(conn, 60)
        pending = [r[0] for r in psql_query(conn, 'SELECT name FROM pg_settings WHERE pending_restart', db='postgres',
                                            log=log) if r[0] in RESTART_SETTINGS]
    except (liveserver.LiveServerError, PgError) as exc:
        raise ArchivingError(restart_failure(exc, control, plan, current))
    if pending:
        raise ArchivingError('PostgreSQL restarted through %s, but still reports %s as waiting for a restart: was '
                             'the right server restarted (pg_service, pgdata)?' % (control.describe(), ', '.join(pending)))


def restart_failure(cause, control, plan, current):
    """The truth after a failed restart: what is written, what the server runs with, how to finish."""
    try:
        running = control.running()
    except liveserver.LiveServerError:
        running = None
    written = ', '.join('%s=%r' % (name, plan['after'][name]) for name in plan['changed'])
    if running:
        now = ('PostgreSQL still runs with archive_mode=%s and wal_level=%s until it restarts'
               % (current['archive_mode']['setting'], current['wal_level']['setting']))
        if plan['after'].get('archive_command') == '' and 'archive_command' in plan['changed']:
            now += ('; archive_command is already empty, so nothing is archived and WAL accumulates in pg_wal '
                    'meanwhile (nothing is lost)')
    elif running is False:
        now = 'PostgreSQL is DOWN: start it and read its log before anything else'
    else:
        now = 'whether PostgreSQL runs is unknown'
    return ('the settings are written (%s, in postgresql.auto.conf) and the configuration reloaded, but the restart '
            'through %s failed: %s. %s. Finish the change with: %s'
            % (written or 'none changed now; a change was pending', control.describe(), cause, now,
               ' '.join(control.argv('restart'))))


def _bytecode(command_path, write, log=None):
    try:
        return walcommand.bytecode(command_path, write=write, log=log)
    except walcommand.WalCommandError as exc:
        raise ArchivingError(str(exc))


def check_system_python(need_boto3, log=None):
    """The archive command runs with /usr/bin/python3: it must exist, and import boto3 when S3 is used."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        raise ArchivingError('%s is missing: the archive command runs with the system Python 3 '
                             '(apt-get install python3)' % SYSTEM_PYTHON)
    if not need_boto3:
        return
    argv = [SYSTEM_PYTHON, '-c', 'import boto3']
    if log is not None:
        log.add(argv)
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False,
                          cwd='/', env={'PATH': '/usr/bin:/bin', 'LC_ALL': 'C'})
    if proc.returncode:
        raise ArchivingError('S3 is configured but %s cannot import boto3, so every push would fail: install '
                             'python3-boto3 (Debian) or remove the S3 settings (%s)'
                             % (SYSTEM_PYTHON, proc.stdout.decode('utf-8', 'replace').strip()[-300:]))


def hint(pg_user, command_path, repo):
    run = '%s %s status' % (SYSTEM_PYTHON, shlex.quote(command_path))
    return ('Check that %s can read %s and %s and write %s; try: runuser -u %s -- %s'
            % (pg_user, command_path, walcommand.lib_dir(command_path), walarchive.wal_dir(repo), pg_user, run))


# --------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------

def new_result(command_path, log=None):
    archive_command, restore_command = commands(command_path)
    return {'changed': False, 'restart_required': False, 'archive_command': archive_command,
            'restore_command': restore_command, 'command_path': command_path,
            'settings_path': walcommand.settings_path(command_path),
            'settings_changed': [], 'files_changed': [], 'archiver': {}, 'system_identifier': None,
            'verified': False, 'segment': None, 'os_user': osuser.current_user(), 'restarted': False,
            'executed_commands': log.commands if log is not None else []}


def run(conn, request, result, s3=None, check_mode=False, log=None, warn=None, control=None):
    """Configure (state=present) or switch off (state=absent) archiving; fills ``result`` as it goes.

    ``control`` (liveserver.Control), when given, restarts the server if the change needs it; it is
    checked before anything is written, so a restart that cannot work changes nothing.

    ``request``: a Request (the absolute command_path is already in ``result``).  ``s3``: common.s3_settings()
    or None.  Raises
    ArchivingError, PgError or OSError; ``result`` then says what was done.
    """
    warn = warn or (lambda message: None)
    repo = request.backup_root
    command_path = result['command_path']
    sysid, seg_size, in_recovery = server_identity(conn, log=log)
    result['system_identifier'] = sysid
    current = read_settings(conn, log=log)
    present = request.state == 'present'

    file_plans, repo_plan, seed, stale_bytecode, legacy = [], [], False, False, []
    owner = None
    if present:
        check_compression(request.compression, request.compression_level)
        check_system_python(bool(s3), log=log)
        if os.geteuid() == 0:
            try:
                uid, gid, groups = osuser.lookup(request.pg_os_user)
            except osuser.OsUserError as exc:
                raise ArchivingError(str(exc))
            owner = (uid, gid)
            for path in (repo, command_path):
                blocked = first_blocking_dir(path, uid, groups)
                if blocked:
                    raise ArchivingError(
                        'the server\'s OS user %s cannot reach %s: %s is not searchable by it (mode %o). '
                        'Choose a place %s can traverse (e.g. under /var/lib/postgresql or /var/backups), '
                        'or open that directory (chmod o+x)'
                        % (request.pg_os_user, path, blocked, os.stat(blocked).st_mode & 0o7777,
                           request.pg_os_user))
        elif osuser.current_user() != request.pg_os_user:
            warn('the module runs as %s, not as root or %s: the repository is owned by %s, and the server '
                 'can archive into it only if it runs as that user'
                 % (osuser.current_user(), request.pg_os_user, osuser.current_user()))
        settings = command_settings(repo, request.compression, request.compression_level, s3,
                                    wal_encryption(request), request.archive_async)
        # The installed command is the very code the collection tests and imports (walcommand).
        try:
            command_files = walcommand.files(command_path, settings)
        except walcommand.WalCommandError as exc:
            raise ArchivingError(str(exc))
        for path, content, mode in command_files:
            action = plan_file(path, content, mode)
            if action:
                file_plans.append((path, content, mode, action))
        legacy = legacy_files(command_path)
        # A new or changed source is compiled once written; otherwise: is its bytecode current?
        stale_bytecode = any(plan[0] != command_path for plan in file_plans) or \
            bool(_bytecode(command_path, write=False, log=log))
        repo_plan = plan_repository(repo, owner)
        seed = not os.path.isdir(walarchive.wal_dir(repo)) or archive_owner(repo, sysid) == 'absent'
        store = wals3.s3_archive(s3) if s3 else None
        if store:
            try:
                info = store.read_info()
            except walerrors.WalArchiveError as exc:
                raise ArchivingError('cannot read the S3 archive\'s archive.json: %s' % exc)
            if info and str(info.get('system_identifier')) != sysid:
                raise ArchivingError(
                    'the S3 WAL archive %s belongs to another cluster (system identifier %s, this server is %s): '
                    'give this server its own s3_prefix'
                    % (store.uri(store.key('wal/')), info.get('system_identifier'), sysid))
    else:
        store = None
    plan = plan_settings(request.state, current, result['archive_command'], request.archive_timeout)
    # Refused before the result lists any change: nothing is written when the restart cannot work.
    if plan['restart_required'] and control is not None:
        result['service_control'] = control.describe()
        problems = control.check()
        if problems:
            raise ArchivingError('the change needs a restart of PostgreSQL (%s), which cannot work: %s. Nothing was '
                                 'changed' % (' and '.join(plan['restart_settings']), '; '.join(problems)))
    # The warnings are about the restart still to come: none when this run makes it.
    for message in plan['warnings'] if control is None else []:
        warn(message)
    planned_files = [p[0] for p in file_plans] + \
        (walcommand.bytecode_dirs(command_path) if stale_bytecode else []) + [a['path'] for a in repo_plan] + \
        ([os.path.join(walarchive.wal_dir(repo), walnames.INFO_FILE)] if seed else []) + legacy
    result['restart_required'] = plan['restart_required']
    result['diff'] = {'before': dict(plan['before']), 'after': dict(plan['after'])}
    if check_mode:
        result['files_changed'], result['settings_changed'] = planned_files, plan['changed']
        result['changed'] = bool(planned_files or plan['changed'])
    else:
        # What was done, as it is done: a run that fails half way reports only what it really changed.
        def did(files=(), settings=()):
            result['files_changed'].extend(files)
            result['settings_changed'].extend(settings)
            result['changed'] = bool(result['files_changed'] or result['settings_changed'])

        # Files first: archive_command must never name a command, its settings or wal/ that is not there yet.
        # The library (walcommand.files() lists it first) and its bytecode come before the launcher
        # that imports them, since the archiver may start the command at any moment.
        for path, content, mode, _action in file_plans:
            if path == command_path and stale_bytecode:
                _bytecode(command_path, write=True, log=log)
                did(walcommand.bytecode_dirs(command_path))
                stale_bytecode = False
            write_file(path, content, mode)
            did([path])
        if stale_bytecode:
            _bytecode(command_path, write=True, log=log)
            did(walcommand.bytecode_dirs(command_path))
        for action in repo_plan:
            apply_repository([action])
            did([action['path']])
        if seed:
            did([seed_archive_info(repo, sysid, seg_size, owner)])
        apply_settings(conn, plan['statements'], log=log, applied=lambda name: did(settings=[name]))
        if present and 'archive_command' in plan['changed'] and \
                normalize('archive_mode', current['archive_mode']['setting']) != 'off':
            wait_for_setting(conn, 'archive_command', plan['after']['archive_command'], log=log)
        # Only once the server runs the new command line: the old one named these files.
        for path in legacy:
            os.unlink(path)
            did([path])
        if plan['restart_required'] and control is not None:
            restart(conn, control, plan, current, log=log)
            result['restarted'] = result['changed'] = True

    if present and request.verify:
        if check_mode:
            pass  # a WAL switch is a change on the server: check mode does not make one
        elif plan['restart_required'] and not result['restarted']:
            warn('verification skipped: PostgreSQL must restart first for %s to take effect; run again with '
                 'verify: true after the restart' % ' and '.join(plan['restart_settings']))
        elif in_recovery:
            warn('verification skipped: the server is in recovery (a standby) and cannot switch WAL')
        else:
            result['segment'], result['archiver'] = verify_archiving(
                conn, repo, store=store, timeout=request.verify_timeout, log=log,
                hint=hint(request.pg_os_user, command_path, repo))
            result['verified'] = True
    if not result['archiver']:
        result['archiver'] = archiver_stats(conn, log=log)
    return result
