# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Talking to PostgreSQL through its own client programs.

The modules use psql, pg_dump and friends rather than a Python driver: they
are on every PostgreSQL host already, they are the tools a DBA would run by
hand, and the host needs nothing else installed.  Credentials travel only in
the environment (PGPASSWORD), never in argv, so ``ps`` and ``executed_commands``
never show them.

Run as root, the programs that connect over the Unix socket run as the server's
OS user (``pg_os_user``): peer authentication, the default for local connections
on Debian and RHEL, maps that OS user to the database role, and root maps to
nothing.  Over TCP (``login_host``) they run as the module does.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import re
import subprocess

from ansible_collections.modulo.pgbackup.plugins.module_utils import errors, osuser

DEFAULT_BINDIRS = ('/usr/lib/postgresql/15/bin', '/usr/pgsql-15/bin', '/usr/local/pgsql/bin')
FIELD_SEP = '\x1f'


class PgError(errors.PgBackupError):
    """A PostgreSQL client program failed; ``str()`` is safe to show to users."""


def find_bindir(preferred=None):
    """Directory holding pg_dump & co: explicit, then pg_config, then well-known paths."""
    if preferred:
        # An explicit pg_bindir is a promise about which PostgreSQL to use: never swap it silently.
        if os.path.isfile(os.path.join(preferred, 'pg_dump')):
            return preferred
        raise PgError('pg_bindir %s does not contain pg_dump: set it to the directory of the PostgreSQL client '
                      'programs (e.g. /usr/lib/postgresql/15/bin) or leave it empty to find them' % preferred)
    candidates = []
    try:
        out = subprocess.check_output(['pg_config', '--bindir'], stderr=subprocess.DEVNULL)
        candidates.append(out.decode().strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    candidates.extend(DEFAULT_BINDIRS)
    for path in candidates:
        if path and os.path.isfile(os.path.join(path, 'pg_dump')):
            return path
    raise PgError('PostgreSQL client programs (pg_dump, psql) not found; install postgresql-client '
                  'or set pg_bindir to the directory that holds them (tried: %s)' % ', '.join(candidates))


class Connection(object):
    """Connection parameters of community.postgresql's shape, rendered as libpq env."""

    def __init__(self, login_user=None, login_password=None, login_host=None,
                 login_unix_socket=None, port=5432, ssl_mode=None, db=None, bindir=None, os_user=None):
        self.login_user = login_user
        self.login_password = login_password
        self.login_host = login_host
        self.login_unix_socket = login_unix_socket
        self.port = port
        self.ssl_mode = ssl_mode
        self.db = db
        self.bindir = find_bindir(bindir)
        self.os_user = os_user

    @classmethod
    def from_params(cls, params, db=None):
        return cls(login_user=params.get('login_user'), login_password=params.get('login_password'),
                   login_host=params.get('login_host'), login_unix_socket=params.get('login_unix_socket'),
                   port=params.get('port'), ssl_mode=params.get('ssl_mode'),
                   db=db if db is not None else params.get('db'), bindir=params.get('pg_bindir'),
                   os_user=params.get('pg_os_user'))

    def over_socket(self):
        """Whether libpq connects over a Unix socket: no host, or a host that is a directory."""
        host = self.login_host or self.login_unix_socket or ''
        return not host or host.startswith('/')

    def command(self, program, *args):
        """argv of a client program: run as the server's OS user when root connects over the socket."""
        prefix = osuser.run_as(self.os_user) if self.over_socket() else []
        return prefix + [self.bin(program)] + list(args)

    def env(self, db=None):
        env = dict(os.environ)
        for key in ('PGSERVICE', 'PGOPTIONS'):
            env.pop(key, None)
        host = self.login_host or self.login_unix_socket
        if host:
            env['PGHOST'] = host
        if self.port:
            env['PGPORT'] = str(self.port)
        if self.login_user:
            env['PGUSER'] = self.login_user
        if self.login_password:
            env['PGPASSWORD'] = self.login_password
        if self.ssl_mode:
            env['PGSSLMODE'] = self.ssl_mode
        dbname = db or self.db
        if dbname:
            env['PGDATABASE'] = dbname
        env['PGAPPNAME'] = 'modulo.pgbackup'
        env['PGCONNECT_TIMEOUT'] = env.get('PGCONNECT_TIMEOUT', '10')
        env['LC_ALL'] = 'C'
        return env

    def bin(self, program):
        return os.path.join(self.bindir, program)

    def describe(self, db=None):
        """Where we connect, for error messages (no secrets)."""
        host = self.login_host or self.login_unix_socket or 'default socket'
        where = '%s@%s:%s/%s' % (self.login_user or os.environ.get('USER', ''), host, self.port, db or self.db)
        if self.over_socket() and osuser.switches_to(self.os_user):
            where += ' (as OS user %s)' % self.os_user
        return where


class ReadOnlyConnection(Connection):
    """A connection whose sessions cannot write, whatever a smoke query says."""

    def env(self, db=None):
        env = super(ReadOnlyConnection, self).env(db)
        env['PGOPTIONS'] = '-c default_transaction_read_only=on'
        return env


class CommandLog(object):
    """Collects the external commands a module ran, for its ``executed_commands``: each an argv list, as it was
    run (no shell quoting to undo; the YAML callback shows one argument a line)."""

    def __init__(self):
        self.commands = []

    def add(self, argv):
        self.commands.append([str(a) for a in argv])


def clean_stderr(text, limit=2000):
    text = (text or '').strip()
    if isinstance(text, bytes):
        text = text.decode('utf-8', 'replace')
    return text[-limit:]


def explain_connection_error(stderr, conn, db=None):
    """Turn libpq's error text into advice an on-call engineer can act on."""
    msg = clean_stderr(stderr)
    where = conn.describe(db)
    if 'password authentication failed' in msg or 'no password supplied' in msg:
        return 'authentication failed for %s: check login_user/login_password (%s)' % (where, msg)
    if 'Peer authentication failed' in msg:
        return ('peer authentication failed for %s: over the Unix socket the OS user must match the database role. '
                'Run the play with become: true (the module then connects as pg_os_user, %s), or connect as that OS '
                'user, or give login_host and login_password (%s)' % (where, conn.os_user or 'postgres', msg))
    if re.search(r'database "[^"]*" does not exist', msg):
        return 'database does not exist on %s: check db/target_db (%s)' % (where, msg)
    if 'Connection refused' in msg or 'could not connect' in msg or 'No such file or directory' in msg:
        return ('cannot reach PostgreSQL at %s: is the server running and are login_host/port/'
                'login_unix_socket right? (%s)' % (where, msg))
    return 'PostgreSQL error on %s: %s' % (where, msg)


def psql_query(conn, sql, db=None, log=None, check=True):
    """Run one SQL statement with psql; return rows as lists of strings (NULL -> None).

    ``sql`` may be a list: one psql runs them in order, each in its own transaction (as
    ALTER SYSTEM needs), and stops at the first error; the rows of all of them are returned.
    """
    argv = conn.command('psql', '-X', '-q', '-A', '-t', '-F', FIELD_SEP, '-P', 'null=\\N', '-v', 'ON_ERROR_STOP=1')
    for statement in ([sql] if isinstance(sql, str) else sql):
        argv += ['-c', statement]
    if log is not None:
        log.add(argv)
    proc = subprocess.run(argv, env=conn.env(db), stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False,
                          cwd='/')
    if proc.returncode != 0:
        if not check:
            return None
        raise PgError(explain_connection_error(proc.stderr.decode('utf-8', 'replace'), conn, db))
    return parse_rows(proc.stdout.decode('utf-8'))


def psql_script(conn, script, db=None, variables=None, secret_env=None, log=None):
    """Feed ``script`` (SQL and psql meta-commands) to psql on stdin; returns its output rows.

    ``variables`` become ``-v name=value`` (visible in argv: nothing secret); ``secret_env`` goes only
    into psql's environment, where the script reads it with ``\\getenv`` (passwords).
    """
    argv = conn.command('psql', '-X', '-q', '-A', '-t', '-F', FIELD_SEP, '-P', 'null=\\N', '-v', 'ON_ERROR_STOP=1')
    for name, value in sorted((variables or {}).items()):
        argv += ['-v', '%s=%s' % (name, value)]
    if log is not None:
        log.add(argv)
    env = conn.env(db)
    env.update(secret_env or {})
    proc = subprocess.run(argv, env=env, input=script.encode('utf-8'), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, check=False, cwd='/')
    if proc.returncode != 0:
        raise PgError(explain_connection_error(proc.stderr.decode('utf-8', 'replace'), conn, db))
    return parse_rows(proc.stdout.decode('utf-8'))


def parse_rows(text):
    rows = []
    for line in text.splitlines():
        if line == '':
            continue
        rows.append([None if f == '\\N' else f for f in line.split(FIELD_SEP)])
    return rows


def quote_ident(name):
    return '"%s"' % name.replace('"', '""')


def quote_literal(value):
    return "'%s'" % str(value).replace("'", "''")


class PsqlSession(object):
    """A psql process kept open, so several statements share one transaction.

    Used to export a snapshot for pg_dump and count rows inside that same
    snapshot, which is the only way ``table_rows`` can match the dump exactly.
    """

    _MARK = '__modulo_pgbackup_done__'

    def __init__(self, conn, db=None, log=None):
        argv = conn.command('psql', '-X', '-q', '-A', '-t', '-F', FIELD_SEP, '-P', 'null=\\N',
                            '-v', 'ON_ERROR_STOP=1')
        if log is not None:
            log.add(argv)
        self.conn = conn
        self.db = db
        self.proc = subprocess.Popen(argv, env=conn.env(db), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     universal_newlines=True, bufsize=1, cwd='/')

    def query(self, sql):
        try:
            self.proc.stdin.write(sql.rstrip().rstrip(';') + ';\n\\echo %s\n' % self._MARK)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._fail()
        lines = []
        while True:
            line = self.proc.stdout.readline()
            if line == '':
                self._fail()
            line = line.rstrip('\n')
            if line == self._MARK:
                break
            lines.append(line)
        return parse_rows('\n'.join(lines))

    def _fail(self):
        self.proc.wait()
        raise PgError(explain_connection_error(self.proc.stderr.read(), self.conn, self.db))

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('\\q\n')
                self.proc.stdin.flush()
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def server_facts(conn, db=None, log=None):
    """server_version and system_identifier, recorded in every .meta."""
    rows = psql_query(conn, "SELECT current_setting('server_version'), "
                            "(SELECT system_identifier FROM pg_control_system())::text, "
                            "current_setting('server_version_num')", db=db, log=log)
    return {'server_version': rows[0][0], 'system_identifier': rows[0][1],
            'server_version_num': int(rows[0][2])}


def database_exists(conn, name, log=None):
    rows = psql_query(conn, 'SELECT 1 FROM pg_database WHERE datname = %s' % quote_literal(name),
                      db='postgres', log=log)
    return bool(rows)
