# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A PostgreSQL data directory restored from a base backup, run privately.

Used for PITR into a named database (a scratch cluster that is thrown away)
and for replacing a live data directory.  Scratch clusters listen only on a
Unix socket in their own 0700 directory, with ``archive_mode=off`` so that a
restored copy can never write into the production archive.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import re
import shutil
import socket
import tempfile
import time

from ansible_collections.modulo.pgbackup.plugins.module_utils import (
    archiving, compression, encryption, fsutil, liveserver, osuser, pipeline, progress, repository, untar, walcommand)
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import codec as walcodec, errors as walerrors, spool as walspool
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import Connection, psql_query

from ansible_collections.modulo.pgbackup.plugins.module_utils import errors


# Recovery replays one segment at a time and waits for each restore_command: the restores prefetch the next
# segments (restored from the repository or downloaded from S3) while it replays, at the cost of
# queue_max segments of disk in the restored pg_wal.
PREFETCH = {'workers': 4, 'queue_max': 8}


class ScratchError(errors.PgBackupError):
    pass


def install_wal_command(workdir, repo_root, s3_settings=None, os_user=None, keys=None):
    """A private copy of the archive command for restore_command (no host install needed), prefetching.

    With ``keys``, the fetch decrypts with the same identities (readable by the server's OS user).
    """
    encryption = None
    if keys is not None and (keys.enabled or keys.old_key_files):
        encryption = {'identities': keys.identities()}
        keys.grant(os_user)
    settings = archiving.command_settings(repo_root, s3=s3_settings, encryption=encryption, archive_async=PREFETCH)
    try:
        script = walcommand.install(os.path.join(workdir, 'pgbackup-wal'), settings)
    except walcommand.WalCommandError as exc:
        raise ScratchError(str(exc))
    return walcommand.command_lines(script)[1]


def base_archive(base_dir):
    """The path of the base backup's base.tar[.zst|.gz|.lz4][.age]; refuses backups with tablespaces."""
    return os.path.join(base_dir, archive_name(os.listdir(base_dir), base_dir))


def archive_name(names, where):
    """The base.tar* among the file ``names`` of the base backup at ``where``; refuses backups with tablespaces."""
    archives = [n for n in names if n.startswith('base.tar')]
    if not archives:
        raise ScratchError('%s holds no base.tar*: not a physical base backup' % where)
    others = [n for n in names if encryption.strip_suffix(n).endswith(('.tar', '.tar.zst', '.tar.gz', '.tar.lz4'))
              and not n.startswith(('base.', 'pg_wal.'))]
    if others:
        raise ScratchError('base backup %s contains tablespaces (%s): restoring tablespaces is not supported '
                           'by this release' % (where, ', '.join(others)))
    return archives[0]


def stream_archive(names, where):
    """The archive to unpack as it is read from S3 among a base backup's file ``names`` (archive_name), or None
    when it must be downloaded first (streams_in_process)."""
    name = archive_name(names, where)
    return name if streams_in_process(name) else None


IN_PROCESS_CODECS = ('zstd', 'gzip', 'none')


def streams_in_process(archive_name):
    """Whether the archive ``archive_name`` unpacks in this process from a stream (S3): a codec read here (zstd
    through libzstd), encrypted or not (age is fed from the stream); lz4 goes through programs reading a file."""
    codec = compression.codec_of_path(archive_name)
    if codec == 'zstd' and not walcodec.libzstd_available():
        return False
    return codec in IN_PROCESS_CODECS


def extract_base(base_dir, pgdata, os_user=None, log=None, keys=None, stream=None):
    """Unpack base.tar[.zst|.gz|.lz4][.age] (and the manifest) into an empty ``pgdata``.

    ``stream`` (s3store.StreamedBackup, ``base_dir`` being its ``path``): the archive is read from S3 as it
    is unpacked, and the whole backup is checked against its checksum once it has been read.
    """
    archive = os.path.join(base_dir, stream.archive_name) if stream else base_archive(base_dir)
    fsutil.ensure_dir(pgdata)
    osuser.give_to(pgdata, os_user)
    codec = compression.codec_of_path(archive)
    if stream is not None:
        _unpack_in_process(archive, codec, pgdata, os_user, log, keys, stream=stream)
        try:
            stream.verify()
        except errors.PgBackupError as exc:
            raise ScratchError(str(exc))
        return
    if codec in IN_PROCESS_CODECS:
        _unpack_in_process(archive, codec, pgdata, os_user, log, keys)
        return
    tar = osuser.run_as(os_user) + ['tar', '-x', '-C', pgdata, '-f', '-']
    try:
        stages, stdin_path = compression.read_stages(archive, keys)
        pipeline.run(stages + [tar], stdin_path=stdin_path, log=log)
    except encryption.EncryptionError as exc:
        raise ScratchError('cannot unpack %s: %s' % (archive, exc))
    except pipeline.PipelineError as exc:
        detail = encryption.explain(exc.stderr) if exc.stage == 'age' else exc
        raise ScratchError('cannot unpack %s: %s' % (archive, detail))


def manifest_size(base_dir):
    """Bytes of the files a base backup's manifest lists (about what unpacking writes), or None without one."""
    try:
        with open(os.path.join(base_dir, repository.MANIFEST)) as handle:
            return repository.manifest_bytes(json.load(handle))
    except (OSError, ValueError):
        return None


def _unpack_in_process(archive, codec, pgdata, os_user, log, keys, stream=None):
    """Decrypt, decompress and unpack in this process (see untar: twice as fast as zstd | tar)."""
    encrypted = encryption.is_encrypted(archive)
    source = stream.reader if stream else archive
    what = stream.uri if stream else archive
    settings = None
    if encrypted:
        try:
            keys = encryption.require_keys(what, keys)
            settings = {'identities': keys.identities()}
        except encryption.EncryptionError as exc:
            raise ScratchError('cannot unpack %s: %s' % (what, exc))
        if log is not None:
            log.add(keys.decrypt_argv(None if stream else archive))
    uid, gid = osuser.ids(os_user)
    chunks = progress.counting(walcodec.content_chunks(source, codec, settings, encrypted),
                               'unpacking the base backup', manifest_size(os.path.dirname(archive)))
    try:
        untar.extract(chunks, pgdata, uid, gid)
    except walerrors.WalArchiveError as exc:
        raise ScratchError('cannot unpack %s: %s' % (what, encryption.explain(str(exc))))
    except (untar.UntarError, OSError) as exc:
        raise ScratchError('cannot unpack %s into %s: %s' % (what, pgdata, exc))
    except errors.PgBackupError as exc:  # the S3 stream broke off for good
        raise ScratchError('cannot unpack %s: %s' % (what, exc))


def private_settings(port, socket_dir):
    """What keeps a scratch cluster private: no TCP, own socket, never archiving into production."""
    return {'port': str(port), 'listen_addresses': '', 'unix_socket_directories': socket_dir,
            'archive_mode': 'off', 'archive_command': '', 'logging_collector': 'off',
            'max_wal_senders': '0', 'shared_preload_libraries': ''}


def recovery_settings(target, restore_command, port=None, socket_dir=None, scratch=True):
    """postgresql.auto.conf lines for a targeted recovery that promotes at the target."""
    settings = {'restore_command': restore_command, 'recovery_target_action': 'promote',
                'recovery_target_timeline': 'latest'}
    settings.update(target)
    if scratch:
        settings.update(private_settings(port, socket_dir))
        settings.update({'hot_standby': 'off', 'wal_level': 'replica'})
    return settings


AUTO_CONF_MARK = '# added by modulo.pgbackup for recovery\n'


def write_auto_conf(pgdata, settings, os_user=None):
    lines = [AUTO_CONF_MARK]
    for key, value in settings.items():
        lines.append("%s = '%s'\n" % (key, str(value).replace("'", "''")))
    path = os.path.join(pgdata, 'postgresql.auto.conf')
    with open(path, 'a') as handle:
        handle.writelines(lines)
    osuser.give_to(path, os_user)


class Server(liveserver.PgCtl):
    """pg_ctl around a restored data directory, as the server's OS user (liveserver.PgCtl's commands)."""

    def __init__(self, bindir, pgdata, logfile, os_user=None):
        super(Server, self).__init__(bindir, pgdata, os_user, logfile)

    def start(self, timeout_s, log=None):
        self.timeout, self.log = timeout_s, log
        try:
            rc, out = self._run('start')
        finally:
            self.log = None
        if rc != 0:
            raise ScratchError('the restored server did not come up: %s; server log: %s' % (out[-300:], self.log_tail()))

    def stop(self, mode='fast'):
        if os.path.exists(os.path.join(self.pgdata, 'postmaster.pid')):
            self.timeout, self.stop_mode = 120, mode
            self._run('stop')

    def _log_text(self):
        try:
            with open(self.logfile, 'rb') as handle:
                return handle.read().decode('utf-8', 'replace')
        except OSError:
            return None

    def log_tail(self, lines=12):
        text = self._log_text()
        return '(no log)' if text is None else log_tail(text, lines)

    def recovery_outcome(self):
        return recovery_outcome(self._log_text() or '')


def log_tail(text, lines=12):
    """The last lines of a server log, on one line."""
    return ' | '.join(text.strip().splitlines()[-lines:]) or '(empty log)'


def recovery_outcome(text):
    """What the server said in its log about where recovery stopped."""
    outcome = {}
    match = re.findall(r'recovery stopping .*', text)
    if match:
        outcome['stop'] = match[-1].strip()
    match = re.findall(r'last completed transaction was at log time (.+)', text)
    if match:
        outcome['last_transaction_time'] = match[-1].strip()
    match = re.findall(r'selected new timeline ID: (\d+)', text)
    if match:
        outcome['new_timeline'] = int(match[-1])
    match = re.findall(r'redo done at ([0-9A-F]+/[0-9A-F]+)', text)
    if match:
        outcome['redo_done_at'] = match[-1]
    outcome['reached_target'] = 'recovery stopping' in text
    return outcome


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class PrivateCluster(object):
    """A cluster of the module's own in ``workdir``, reachable only through a private socket.

    Shared by PITR scratch recoveries and restore drills; ``close`` always
    stops it and removes its directories.
    """

    def __init__(self, bindir, workdir, os_user, port=None):
        self.bindir = bindir
        self.workdir = workdir
        self.os_user = os_user
        self.pgdata = os.path.join(workdir, 'data')
        # Unix socket paths are limited to 107 bytes: the socket gets a short private directory.
        self.socket_dir = tempfile.mkdtemp(prefix='pgbackup-', dir='/tmp')
        self.port = port or free_port()
        self.server = Server(bindir, self.pgdata, os.path.join(workdir, 'server.log'), os_user)

    def conn(self, db='postgres'):
        return Connection(login_user='postgres', login_unix_socket=self.socket_dir, port=self.port,
                          db=db, bindir=self.bindir, os_user=self.os_user)

    def query(self, sql, db='postgres', log=None):
        return psql_query(self.conn(db), sql, db=db, log=log)

    def close(self):
        try:
            self.server.stop('immediate')
            walspool.finish_prefetch(os.path.join(self.pgdata, 'pg_wal'))
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
            shutil.rmtree(self.socket_dir, ignore_errors=True)


REPLAY_SQL = 'SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn(), pg_last_xact_replay_timestamp()'


def wait_promoted(query, timeout_s, server, pgdata=None):
    """Poll ``pg_is_in_recovery()`` until false; fail early if the server died. Once promoted, the prefetcher
    of ``pgdata``'s restore_command is stopped and what it fetched ahead removed."""
    deadline = time.time() + timeout_s
    pause = 0.05    # a short recovery ends within a few polls; a long one is not polled 5 times a second
    while time.time() < deadline:
        try:
            in_recovery, replayed, replay_time = query(REPLAY_SQL)[0]
            if in_recovery == 'f':
                if pgdata:
                    walspool.finish_prefetch(os.path.join(pgdata, 'pg_wal'))
                return
            progress.report('replaying WAL', replay_lsn=replayed or None, replay_time=replay_time or None)
        except Exception:  # noqa: BLE001  the server may still be starting
            pass
        if not server.running():
            raise ScratchError('the restored server stopped during recovery: %s' % server.log_tail())
        time.sleep(pause)
        pause = min(1.0, pause * 1.5)
    raise ScratchError('recovery did not finish within %d s: %s' % (timeout_s, server.log_tail()))


def write_json(path, data):
    with open(path, 'w') as handle:
        json.dump(data, handle)
