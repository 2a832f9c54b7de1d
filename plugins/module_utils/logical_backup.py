# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Logical backup of one database: pg_dump in an exported snapshot.

Order of events, each one there for a reason:
1. open a REPEATABLE READ transaction and export its snapshot;
2. start pg_dump on that snapshot (into a temporary name);
3. while it runs, count every table's rows in the same snapshot, so the
   ``table_rows`` in the ``.meta`` are exactly what the dump contains;
4. only when every pipeline stage exited 0: fsync, rename, then write the
   ``.meta`` last.  Until the ``.meta`` exists nothing uses the dump.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import re
import time

from ansible_collections.modulo.pgbackup.plugins.module_utils import compression, encryption, errors, fsutil, pipeline, repository
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import (
    PgError, PsqlSession, psql_query, quote_ident, server_facts)

FORMATS = ('plain', 'custom', 'directory')

TABLES_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
ORDER BY 1, 2
"""


class BackupError(errors.PgBackupError):
    pass


def native_compression(fmt, codec, pg_dump_major):
    """Does pg_dump compress by itself? (gzip always; zstd/lz4 from pg_dump 16)."""
    if fmt == 'plain' or codec == 'none':
        return False
    return codec == 'gzip' or pg_dump_major >= 16


def plan(repo, db, fmt, codec, level, prefix, pg_dump_major, now=None, encrypted=False):
    """Names and paths of the backup about to be taken (also what check mode reports)."""
    if fmt not in FORMATS:
        raise BackupError('format must be one of %s' % ', '.join(FORMATS))
    if codec not in compression.CODECS:
        raise BackupError('compression must be one of %s' % ', '.join(compression.CODECS))
    level = compression.check_level(codec, level)
    if fmt == 'directory' and codec not in ('gzip', 'none') and pg_dump_major < 16:
        raise BackupError('format directory with %s needs pg_dump 16 or newer (this host has %d): '
                          'use compression gzip, or format custom/plain with %s' % (codec, pg_dump_major, codec))
    if encrypted and fmt == 'directory':
        raise BackupError('format directory cannot be encrypted (it is many files written by pg_dump itself): '
                          'use format custom (parallel restore too) or plain with encryption')
    now = now or repository.utcnow()
    name = repository.backup_name(prefix, 'full', now)
    native = native_compression(fmt, codec, pg_dump_major)
    filename = name + repository.dump_suffix(fmt, codec, native) + (encryption.SUFFIX if encrypted else '')
    return {'name': name, 'file': filename, 'path': repo.path('full', filename),
            'meta_path': repo.meta_path('full', filename), 'database': db, 'format': fmt,
            'compression': codec, 'compression_level': level, 'native_compression': native,
            'started': now, 'prefix': prefix, 'pg_dump_major': pg_dump_major, 'encrypted': encrypted}


def unused_plan(repo, planned, attempts=3):
    """``planned`` again, timed now, under a name no backup in the repository has yet.

    Names have one-second resolution; a second run in the same second (two
    schedulers, or a retry right after a quick backup) would otherwise dump
    everything and then be refused at the rename.
    """
    for attempt in range(attempts):
        fresh = plan(repo, planned['database'], planned['format'], planned['compression'],
                     planned['compression_level'], planned['prefix'], planned['pg_dump_major'],
                     now=repository.utcnow(), encrypted=planned.get('encrypted', False))
        if not repo.name_in_use('full', fresh['name']):
            break
        if attempt < attempts - 1:
            time.sleep(max(0.05, 1.0 - (time.time() % 1.0)))
    return fresh


def pg_dump_major(conn):
    import subprocess
    try:
        out = subprocess.check_output([conn.bin('pg_dump'), '--version']).decode()
        # "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)": the first number is the version,
        # whatever a packager appends after it.
        return int(re.search(r'\)\s*(\d+)', out).group(1))
    except (OSError, subprocess.CalledProcessError, AttributeError, ValueError) as exc:
        raise PgError('cannot run %s --version (%s): check pg_bindir and the PostgreSQL client '
                      'installation' % (conn.bin('pg_dump'), exc))


def _dump_argv(conn, p, snapshot, jobs, out_path=None):
    argv = conn.command('pg_dump', '--snapshot=%s' % snapshot, '--no-password',
                        '--format=%s' % p['format'], '--dbname=%s' % p['database'])
    if p['format'] != 'plain':
        if p['native_compression']:
            if p['compression'] == 'gzip':
                argv.append('--compress=%d' % p['compression_level'])
            else:
                argv.append('--compress=%s:%d' % (p['compression'], p['compression_level']))
        else:
            argv.append('--compress=0')
    if p['format'] == 'directory':
        argv.append('--jobs=%d' % max(1, jobs or 1))
    if out_path:
        argv.append('--file=%s' % out_path)
    return argv


def count_rows(session, tables=None):
    """Exact row count of every ordinary table (or of ``tables``, (schema, name) pairs), in the session's
    snapshot."""
    if tables is None:
        tables = session.query(TABLES_SQL)
    if not tables:
        return {}
    parts = ["SELECT %s, count(*) FROM %s.%s" % (
        "'%s'" % ('%s.%s' % (s, t)).replace("'", "''"), quote_ident(s), quote_ident(t)) for s, t in tables]
    rows = []
    # A few hundred tables per statement keeps the query text small.
    for start in range(0, len(parts), 200):
        rows.extend(session.query(' UNION ALL '.join(parts[start:start + 200])))
    return dict((name, int(count)) for name, count in rows)


def dump_globals(conn, repo, name, log, keys=None):
    """Roles and tablespaces next to the dump: a database restored elsewhere needs its owners.

    They hold the roles' password hashes: encrypted like the dump when the dump is.
    """
    final = repo.path('full', name + '.globals.sql' + (encryption.SUFFIX if keys else ''))
    tmp = fsutil.tmp_path_for(final)
    env = conn.env()
    for extra in ([], ['--no-role-passwords']):
        argv = conn.command('pg_dumpall', '--globals-only', '--no-password', *extra)
        try:
            pipeline.run([argv] + ([keys.encrypt_argv()] if keys else []), env=env, stdout_path=tmp, log=log)
        except pipeline.PipelineError as exc:
            fsutil.remove_quietly(tmp)
            last_error = str(exc)
            continue
        except BaseException:
            fsutil.remove_quietly(tmp)
            raise
        try:
            fsutil.publish(tmp, final)
        except BaseException:
            fsutil.remove_quietly(tmp)
            raise
        return {'file': os.path.basename(final), 'role_passwords': not extra}
    return {'file': None, 'error': last_error}


def take(conn, repo, p, jobs=None, log=None, keys=None):
    """Run the backup planned by ``plan``; return its ``.meta`` dict.

    With ``keys`` (an encrypted plan), ``age`` is the last stage: the file on disk is never plaintext.
    """
    facts = server_facts(conn, db=p['database'], log=log)
    tmp = fsutil.tmp_path_for(p['path'])
    env = conn.env(p['database'])
    start = time.time()
    table_rows = {}
    try:
        with PsqlSession(conn, db=p['database'], log=log) as session:
            session.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
            snapshot = session.query('SELECT pg_export_snapshot()')[0][0]

            def count_while_dumping(_procs):
                table_rows.update(count_rows(session))

            try:
                if p['format'] == 'directory' or (p['native_compression'] and not p.get('encrypted')):
                    stages = [_dump_argv(conn, p, snapshot, jobs, out_path=tmp)]
                    pipeline.run(stages, env=env, log=log, started=count_while_dumping)
                else:
                    stages = [_dump_argv(conn, p, snapshot, jobs)]
                    if p['compression'] != 'none' and not p['native_compression']:
                        stages.append(compression.compress_argv(p['compression'], p['compression_level'],
                                                                threads=jobs))
                    if p.get('encrypted'):
                        stages.append(keys.encrypt_argv())
                    pipeline.run(stages, env=env, stdout_path=tmp, log=log, started=count_while_dumping)
            except pipeline.PipelineError as exc:
                raise BackupError('backup of database %s failed, nothing was kept: %s%s'
                                  % (p['database'], exc, _advice(exc, repo)))
            session.query('COMMIT')
        size, digest = fsutil.publish_backup(tmp, p['path'])
    except BaseException:
        fsutil.remove_quietly(tmp)
        raise
    finished = repository.utcnow()
    # The dump now has its final name; until its .meta exists it is an orphan
    # that readers ignore, but a failed run must not leave one behind either.
    globals_info = {}
    try:
        globals_info = dump_globals(conn, repo, p['name'], log, keys=keys if p.get('encrypted') else None)
        meta = _meta(p, facts, finished, start, size, digest, table_rows, globals_info)
        if p.get('encrypted'):
            meta.update(keys.meta_fields())
        fsutil.write_json_atomic(p['meta_path'], meta)
    except BaseException:
        fsutil.remove_quietly(p['path'])
        if globals_info.get('file'):
            fsutil.remove_quietly(repo.path('full', globals_info['file']))
        raise
    return meta


def _advice(exc, repo):
    if 'No space left on device' in str(exc):
        return (' -- the file system holding backup_root %s is full: free space there or point '
                'backup_root at a larger disk' % repo.root)
    return ''


def _meta(p, facts, finished, start, size, digest, table_rows, globals_info):
    return {
        'format_version': repository.FORMAT_VERSION,
        'name': p['name'], 'file': p['file'], 'type': 'logical', 'database': p['database'],
        'format': p['format'], 'compression': p['compression'],
        'compression_level': p['compression_level'],
        'started_at': repository.iso(p['started']), 'finished_at': repository.iso(finished),
        'duration_s': round(time.time() - start, 3), 'size_bytes': size, 'sha256': digest,
        'server_version': facts['server_version'], 'system_identifier': facts['system_identifier'],
        'table_rows': table_rows, 'row_total': sum(table_rows.values()),
        'globals': globals_info, 'tool': 'modulo.pgbackup', 'status': 'complete',
    }


def database_rows(conn, db, log=None):
    """Row counts of a live database (used to check a restore against the ``.meta``)."""
    with PsqlSession(conn, db=db, log=log) as session:
        session.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
        rows = count_rows(session)
        session.query('COMMIT')
    return rows


def check_database_reachable(conn, db, log=None):
    try:
        psql_query(conn, 'SELECT 1', db=db, log=log)
    except PgError as exc:
        raise BackupError(str(exc))
