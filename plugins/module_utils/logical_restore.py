# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore a logical backup into a named database without risking the old one.

The dump is always restored into a fresh staging database first and its row
counts are compared with the ``.meta``.  Only a restore that passed is swapped
in under ``target_db``; the database it replaces is kept, renamed, unless the
caller says otherwise.  A corrupt backup therefore never touches the target.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import re
import time

from ansible_collections.modulo.pgbackup.plugins.module_utils import compression, encryption, errors, fsutil, pipeline, repository
from ansible_collections.modulo.pgbackup.plugins.module_utils.logical_backup import TABLES_SQL, count_rows
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import (
    PgError, PsqlSession, psql_query, quote_ident, quote_literal)

DBNAME_RE = re.compile(r'^[A-Za-z_][A-Za-z0-9_-]{0,62}\Z')
SYSTEM_DBS = ('postgres', 'template0', 'template1')


class RestoreError(errors.PgBackupError):
    pass


def validate_dbname(name, option='target_db'):
    if not name or not DBNAME_RE.match(name):
        raise RestoreError('%s %r is not accepted: use letters, digits, "_" and "-" only, starting with a '
                           'letter or "_", at most 63 characters (no quotes or spaces)' % (option, name))
    if name in SYSTEM_DBS:
        raise RestoreError('%s %r is a system database and cannot be a restore target' % (option, name))
    return name


def resolve_backup(repo, selector, database=None, s3=None):
    """Find the ``.meta`` for ``latest``, a backup name, or a path to a backup file."""
    entries, problems = repo.scan('full')
    damaged = [q for q in problems if q['problem'].startswith('unreadable .meta')]
    candidates = repository.with_s3(entries, s3, 'full')
    if database:
        candidates = [m for m in candidates if m.get('database') == database]
    if selector in (None, '', 'latest'):
        complete = sorted([m for m in candidates if repository.is_complete(m)],
                          key=lambda m: (m.get('started_at') or '', m.get('name')))
        if not complete:
            raise RestoreError('no complete logical backup found in %s%s%s: run playbooks/nightly-backup.yml '
                               'first or give backup: <name|path>' % (
                                   repo.path('full'), ' or %s' % s3.uri('full/') if s3 else '',
                                   ' for database %s' % database if database else ''))
        _refuse_past_damaged(damaged, complete[-1]['name'])
        return complete[-1]
    if os.sep in selector or selector.endswith(('.gz', '.zst', '.lz4', '.sql', '.dump', '.dir', '.age')):
        # A bare file name means a file of this repository, not of the current directory.
        path = selector if os.sep in selector else repo.path('full', selector)
        path = os.path.abspath(path)
        if not os.path.exists(path):
            raise RestoreError('backup file %s does not exist' % path)
        base = os.path.basename(path.rstrip('/'))
        stem = re.sub(r'(\.sql|\.dump|\.dir)(\.gz|\.zst|\.lz4)?(\.age)?$', '', base)
        meta_files = [os.path.join(os.path.dirname(path), repository.meta_name(n)) for n in (base, stem)]
        meta_file = next((f for f in meta_files if os.path.exists(f)), meta_files[0])
        if not os.path.exists(meta_file):
            raise RestoreError('backup file %s has no .meta next to it (%s): it is incomplete or was not '
                               'written by modulo.pgbackup, so it is not trusted for a restore' % (path, meta_file))
        with open(meta_file) as handle:
            meta = json.load(handle)
        meta['path'] = path
        meta['location'] = 'local'
        if not repository.is_complete(meta):
            raise RestoreError('backup %s is not complete (status %r)' % (meta.get('name'), meta.get('status')))
        return meta
    matches = [m for m in candidates if m.get('name') == selector]
    if not matches:
        _refuse_past_damaged([q for q in damaged if _stem(q['path']) == selector], selector)
        raise RestoreError('no backup named %s in %s: list them with playbooks/list-backups.yml' % (
            selector, repo.root))
    if not repository.is_complete(matches[0]):
        raise RestoreError('backup %s is not complete (status %r)' % (selector, matches[0].get('status')))
    return matches[0]


def _stem(path):
    return repository.backup_of_meta(os.path.basename(path))


def _refuse_past_damaged(damaged, chosen):
    """A damaged ``.meta`` as new as the chosen backup: never fall back to an older backup silently."""
    stamp = re.compile(r'(\d{8}_\d{6})$')
    chosen_at = stamp.search(chosen)
    for problem in damaged:
        if _stem(problem['path']) == chosen:
            raise RestoreError('backup %s cannot be used: its .meta %s is damaged (%s); repair it (e.g. from the S3 '
                               'copy) or choose another backup' % (chosen, problem['path'], problem['problem']))
        at = stamp.search(_stem(problem['path']))
        if at and chosen_at and at.group(1) < chosen_at.group(1):
            continue
        raise RestoreError('the .meta %s of a newer backup is damaged (%s): that backup is not trusted, and "latest" '
                           'would silently go back to the older %s; repair or remove that .meta, or name the backup '
                           '(backup: %s) to go back deliberately' % (problem['path'], problem['problem'], chosen, chosen))


def verify_checksum(meta):
    digest = fsutil.sha256_path(meta['path'])
    if meta.get('sha256') and digest != meta['sha256']:
        raise RestoreError('backup %s is corrupt: its sha256 %s does not match the .meta (%s); '
                           'nothing was restored, choose another backup' % (meta['name'], digest, meta['sha256']))
    return digest


def database_state(conn, name, log=None):
    """None when absent, else the number of user relations in it."""
    rows = psql_query(conn, 'SELECT 1 FROM pg_database WHERE datname = %s' % quote_literal(name),
                      db='postgres', log=log)
    if not rows:
        return None
    rows = psql_query(conn, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
                            "AND n.nspname NOT LIKE 'pg_toast%%' AND c.relkind IN ('r','p','v','m','S','f')",
                      db=name, log=log)
    return int(rows[0][0])


def _restore_argv(conn, meta, path, staging, jobs):
    fmt = meta.get('format', 'plain')
    if fmt == 'plain':
        return None
    argv = conn.command('pg_restore', '--no-password', '--exit-on-error', '--dbname=%s' % staging)
    if jobs and jobs > 1:
        argv.append('--jobs=%d' % jobs)
    else:
        argv.append('--single-transaction')
    return argv + [path]


# The load's index builds (the dump's CREATE INDEX, pg_restore's post-data) sort in maintenance_work_mem;
# the server's default (64 MB) spills a large table's sort to disk. The load's sessions share an eighth of
# the host's memory, at most 2 GB each (an index build gains little beyond that).
MAINTENANCE_SHARE = 8
MAINTENANCE_CAP = 2 * 1024 ** 3
LOOPBACK = ('localhost', '127.0.0.1', '::1')


def host_memory(meminfo='/proc/meminfo'):
    """MemTotal of this host in bytes, or None where /proc/meminfo cannot be read."""
    try:
        with open(meminfo) as handle:
            for line in handle:
                if line.startswith('MemTotal:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def maintenance_work_mem(memory, sessions, server_setting):
    """Bytes of maintenance_work_mem for each of the load's ``sessions``, or None to keep the server's
    ``server_setting`` (bytes): never less than what the DBA configured."""
    if not memory:
        return None
    share = min(memory // MAINTENANCE_SHARE // max(1, sessions), MAINTENANCE_CAP)
    share -= share % (1024 * 1024)
    return share if share > server_setting else None


def load_options(conn, staging, jobs, log=None, meminfo='/proc/meminfo'):
    """Settings for the load's sessions (``{name: value}``, sent as PGOPTIONS). Only when the server runs on
    this host (socket or loopback), whose memory is the one measured: elsewhere the server's own settings."""
    if not (conn.over_socket() or conn.login_host in LOOPBACK):
        return {}
    rows = psql_query(conn, "SELECT setting::bigint * 1024 FROM pg_settings WHERE name = 'maintenance_work_mem'",
                      db=staging, log=log)
    share = maintenance_work_mem(host_memory(meminfo), jobs or 1, int(rows[0][0]))
    return {'maintenance_work_mem': '%dMB' % (share // (1024 * 1024))} if share else {}


def load(conn, meta, staging, jobs=None, log=None, workdir=None, keys=None):
    """Load the dump into the (empty, existing) staging database; ``keys`` decrypt an encrypted one.
    Returns the session settings the load ran with (``load_options``)."""
    path = meta['path']
    fmt = meta.get('format', 'plain')
    env = conn.env(staging)
    options = load_options(conn, staging, jobs if fmt != 'plain' else 1, log=log)
    if options:
        env['PGOPTIONS'] = ' '.join('-c %s=%s' % item for item in sorted(options.items()))
    tmp_plain = None
    try:
        stages, stdin_path = compression.read_stages(path, keys) if fmt != 'directory' else ([], None)
        if fmt == 'plain':
            psql = conn.command('psql', '-X', '-q', '--no-password', '-v', 'ON_ERROR_STOP=1',
                                '--single-transaction', '-o', '/dev/null', '-d', staging)
            pipeline.run(stages + [psql], env=env, stdin_path=stdin_path, log=log)
            return options
        if stages:
            # pg_restore -j needs a seekable file: decrypt/decompress next to the backup first.
            tmp_plain = fsutil.tmp_path_for(os.path.join(workdir or os.path.dirname(path),
                                                         os.path.basename(path) + '.restore'))
            pipeline.run(stages, env=env, stdout_path=tmp_plain, log=log)
            path = tmp_plain
        pipeline.run([_restore_argv(conn, meta, path, staging, jobs)], env=env, log=log)
        return options
    except encryption.EncryptionError as exc:
        raise RestoreError('restore of %s failed, the target database was not touched: %s' % (meta['name'], exc))
    except pipeline.PipelineError as exc:
        detail = '%s (%s)' % (encryption.explain(exc.stderr, meta), exc) if exc.stage == 'age' else exc
        raise RestoreError('restore of %s failed, the target database was not touched: %s' % (meta['name'], detail))
    finally:
        if tmp_plain:
            fsutil.remove_quietly(tmp_plain)


# What each table of a database just loaded received, as the server counted it during the load: a fresh
# database (template0) had no rows, and a restore deletes none, so inserted minus deleted is its row count.
LOADED_ROWS_SQL = """
SELECT n.nspname, c.relname, s.n_tup_ins - s.n_tup_del
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
"""
# PostgreSQL 15 keeps statistics in shared memory, flushed by a backend before it acknowledges the commit
# that ends an idle transaction; older servers sent them to a collector, possibly late or lost.
STATS_TRUSTED_SQL = ("SELECT current_setting('server_version_num')::int >= 150000 "
                     "AND current_setting('track_counts')::bool")
LOAD_SESSIONS_SQL = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                     "AND pid <> pg_backend_pid()")
LOAD_SESSIONS_WAIT_S = 5


def loaded_rows(conn, db, expected, log=None):
    """Row counts of a database the restore just loaded, checked against the ``.meta`` without reading every
    table again: the server's own count of the rows the load inserted (pg_stat_user_tables), and an exact
    ``count(*)`` only for the tables where that differs from ``expected`` (or on a server whose statistics
    cannot be trusted), so a difference reported is always a real one.

    Returns ``(rows, recounted)``: the counts by table, and the tables counted with ``count(*)``."""
    with PsqlSession(conn, db=db, log=log) as session:
        trusted = session.query(STATS_TRUSTED_SQL)[0][0] == 't'
        if trusted:
            # pg_restore --jobs workers flush their last statistics when they exit: wait for them to go.
            deadline = time.time() + LOAD_SESSIONS_WAIT_S
            while int(session.query(LOAD_SESSIONS_SQL)[0][0]) and time.time() < deadline:
                time.sleep(0.1)
        session.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
        tables = dict(('%s.%s' % (s, t), (s, t)) for s, t in session.query(TABLES_SQL))
        loaded = dict(('%s.%s' % (s, t), int(n)) for s, t, n in session.query(LOADED_ROWS_SQL)) if trusted else {}
        rows = dict((name, loaded.get(name)) for name in tables)
        recount = sorted(name for name in tables if rows[name] != expected.get(name))
        rows.update(count_rows(session, [tables[name] for name in recount]))
        session.query('COMMIT')
    return rows, recount


def compare_rows(expected, actual):
    """Differences between the ``.meta``'s table_rows and the restored database."""
    diffs = []
    for table in sorted(set(expected) | set(actual)):
        if expected.get(table) != actual.get(table):
            diffs.append({'table': table, 'expected': expected.get(table), 'restored': actual.get(table)})
    return diffs


def _terminate(conn, name, log):
    psql_query(conn, 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s '
                     'AND pid <> pg_backend_pid()' % quote_literal(name), db='postgres', log=log)


def _drop(conn, name, log):
    _terminate(conn, name, log)
    psql_query(conn, 'DROP DATABASE IF EXISTS %s' % quote_ident(name), db='postgres', log=log)


def aside_name(target, stamp):
    suffix = '_old_%s' % stamp
    return target[:63 - len(suffix)] + suffix


def restore(conn, meta, target_db, confirm=None, keep_old=True, jobs=None, log=None, keys=None):
    """Restore ``meta`` into ``target_db``; return a result dict for the module."""
    validate_dbname(target_db)
    state = database_state(conn, target_db, log=log)
    if state and confirm != target_db:
        raise RestoreError('database %s exists and is not empty (%d relations): to replace it, set '
                           'confirm: %s (the old one is kept as %s unless keep_old is false)'
                           % (target_db, state, target_db, aside_name(target_db, 'YYYYMMDD_HHMMSS')))
    started = time.time()
    verify_checksum(meta)
    stamp = repository.utcnow().strftime(repository.STAMP_FORMAT)
    staging = '%s_restoring_%s' % (target_db[:63 - 30], stamp)
    try:
        psql_query(conn, 'CREATE DATABASE %s TEMPLATE template0' % quote_ident(staging), db='postgres', log=log)
    except PgError as exc:
        raise RestoreError('cannot create the staging database %s: %s' % (staging, exc))
    try:
        options = load(conn, meta, staging, jobs=jobs, log=log, keys=keys)
        restored_rows, recounted = loaded_rows(conn, staging, meta.get('table_rows') or {}, log=log)
        diffs = compare_rows(meta.get('table_rows') or {}, restored_rows)
        if diffs:
            raise RestoreError('restored row counts differ from the backup\'s .meta in %d table(s): %s; '
                               'the target database was not touched' % (len(diffs), json.dumps(diffs[:10])))
    except BaseException:
        try:
            _drop(conn, staging, log)
        except PgError:
            pass
        raise
    old_name = None
    if state is not None:
        old_name = aside_name(target_db, stamp)
        _terminate(conn, target_db, log)
        psql_query(conn, 'ALTER DATABASE %s RENAME TO %s' % (quote_ident(target_db), quote_ident(old_name)),
                   db='postgres', log=log)
    try:
        psql_query(conn, 'ALTER DATABASE %s RENAME TO %s' % (quote_ident(staging), quote_ident(target_db)),
                   db='postgres', log=log)
    except PgError:
        if old_name:
            psql_query(conn, 'ALTER DATABASE %s RENAME TO %s' % (quote_ident(old_name), quote_ident(target_db)),
                       db='postgres', log=log)
        raise
    dropped_old = False
    if old_name and not keep_old:
        _drop(conn, old_name, log)
        dropped_old = True
    return {
        'backup': meta['name'], 'target_db': target_db, 'replaced_existing': state is not None,
        'old_db': None if dropped_old else old_name, 'old_db_dropped': dropped_old,
        'duration_s': round(time.time() - started, 3), 'table_rows': restored_rows,
        'rows_match': True, 'row_total': sum(restored_rows.values()),
        'rows_recounted': recounted, 'load_settings': options,
    }
