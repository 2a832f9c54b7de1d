# -*- coding: utf-8 -*-
"""pgclient pieces that need no server: parsing, quoting, error advice, finding the binaries."""

import os
import stat

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import pgclient
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import FIELD_SEP, PgError

PG15_BIN = '/usr/lib/postgresql/15/bin'


# --- parse_rows / quoting -----------------------------------------------------------------------

def test_parse_rows_fields_nulls_and_blank_lines():
    text = 'public' + FIELD_SEP + 'orders' + FIELD_SEP + '42\n' \
           + '\\N' + FIELD_SEP + '' + FIELD_SEP + 'a,b|c\n' \
           + '\n' \
           + 'single\n'
    assert pgclient.parse_rows(text) == [
        ['public', 'orders', '42'],
        [None, '', 'a,b|c'],
        ['single'],
    ]
    assert pgclient.parse_rows('') == []
    # only the exact marker is NULL; a backslash inside a value is data
    assert pgclient.parse_rows('\\\\N' + FIELD_SEP + 'C:\\N\n') == [['\\\\N', 'C:\\N']]


def test_quote_ident():
    assert pgclient.quote_ident('modulodb') == '"modulodb"'
    assert pgclient.quote_ident('My DB') == '"My DB"'
    assert pgclient.quote_ident('we"ird') == '"we""ird"'
    assert pgclient.quote_ident('""') == '""""""'


def test_quote_literal():
    assert pgclient.quote_literal('modulodb') == "'modulodb'"
    assert pgclient.quote_literal("o'clock") == "'o''clock'"
    assert pgclient.quote_literal("'; DROP DATABASE x; --") == "'''; DROP DATABASE x; --'"
    assert pgclient.quote_literal(42) == "'42'"


# --- CommandLog ---------------------------------------------------------------------------------

def test_command_log_quotes_so_a_shell_reads_back_the_same_argv():
    argv = [PG15_BIN + '/psql', '-X', '-F', FIELD_SEP, '-P', 'null=\\N', '-c',
            "SELECT 'it''s' FROM \"My Table\"", '', 'a b', '$HOME', 'x;rm -rf /', '`id`', 'caf\u00e9',
            '--dbname=modulodb', 'user@host:5432/db,x+y%z', "it's"]
    log = pgclient.CommandLog()
    log.add(argv)
    log.add(['true'])
    # argv lists as they were run: nothing to unquote, every character as it is
    assert log.commands == [argv, ['true']]


def test_command_log_stringifies_numbers():
    log = pgclient.CommandLog()
    log.add(['pg_dump', '--jobs', 4])
    assert log.commands == [['pg_dump', '--jobs', '4']]


# --- Connection / error advice ------------------------------------------------------------------

@pytest.fixture
def conn():
    return pgclient.Connection(login_user='backup', login_password='s3cret!', login_host='db1.example',
                               port=5433, ssl_mode='require', db='modulodb', bindir=PG15_BIN)


def test_connection_env_carries_credentials_not_argv(conn, monkeypatch):
    monkeypatch.setenv('PGSERVICE', 'other')
    monkeypatch.setenv('PGOPTIONS', '-c statement_timeout=1')
    env = conn.env()
    assert env['PGHOST'] == 'db1.example' and env['PGPORT'] == '5433'
    assert env['PGUSER'] == 'backup' and env['PGPASSWORD'] == 's3cret!'
    assert env['PGSSLMODE'] == 'require' and env['PGDATABASE'] == 'modulodb'
    assert 'PGSERVICE' not in env and 'PGOPTIONS' not in env
    assert conn.env('otherdb')['PGDATABASE'] == 'otherdb'
    assert conn.bin('pg_dump') == PG15_BIN + '/pg_dump'
    assert conn.describe() == 'backup@db1.example:5433/modulodb'
    assert 's3cret' not in conn.describe('x')


def test_connection_from_params_unix_socket():
    conn = pgclient.Connection.from_params({'login_user': 'postgres', 'login_unix_socket': '/var/run/postgresql',
                                            'port': 5432, 'db': 'modulodb', 'pg_bindir': PG15_BIN})
    assert conn.env()['PGHOST'] == '/var/run/postgresql'
    assert 'PGPASSWORD' not in conn.env() or conn.env()['PGPASSWORD'] == os.environ.get('PGPASSWORD')
    assert conn.describe('x') == 'postgres@/var/run/postgresql:5432/x'


@pytest.mark.parametrize('stderr, start', [
    ('psql: error: connection to server at "db1.example" (10.0.0.5), port 5433 failed: FATAL:  '
     'password authentication failed for user "backup"', 'authentication failed for backup@db1.example:5433/modulodb'),
    ('psql: error: connection to server at "db1.example", port 5433 failed: fe_sendauth: no password supplied',
     'authentication failed for'),
    ('psql: error: connection to server at "db1.example", port 5433 failed: FATAL:  database "nope" does not exist',
     'database does not exist on backup@db1.example:5433/modulodb'),
    ('psql: error: connection to server at "db1.example" (10.0.0.5), port 5433 failed: Connection refused\n'
     '\tIs the server running on that host and accepting TCP/IP connections?', 'cannot reach PostgreSQL at'),
    ('psql: error: connection to server on socket "/var/run/postgresql/.s.PGSQL.5432" failed: '
     'No such file or directory', 'cannot reach PostgreSQL at'),
    ('ERROR:  syntax error at or near "SELEC"', 'PostgreSQL error on backup@db1.example:5433/modulodb: ERROR'),
])
def test_explain_connection_error(conn, stderr, start):
    advice = pgclient.explain_connection_error(stderr, conn)
    assert advice.startswith(start)
    assert stderr.strip() in advice  # the original message is kept for the engineer
    assert 's3cret' not in advice


def test_explain_connection_error_missing_relation_is_not_a_missing_database(conn):
    advice = pgclient.explain_connection_error('ERROR:  relation "public.database_events" does not exist', conn)
    assert not advice.startswith('database does not exist')


def test_clean_stderr():
    assert pgclient.clean_stderr(None) == ''
    assert pgclient.clean_stderr('  x\n') == 'x'
    assert pgclient.clean_stderr(b'  caf\xc3\xa9 \n') == 'caf\u00e9'
    assert pgclient.clean_stderr('a' * 10 + 'b' * 5, limit=5) == 'bbbbb'


# --- find_bindir --------------------------------------------------------------------------------

def make_bindir(path):
    path.mkdir(parents=True)
    tool = path / 'pg_dump'
    tool.write_text('#!/bin/sh\necho "pg_dump (PostgreSQL) 15.99"\n')
    os.chmod(str(tool), 0o755)
    return str(path)


def path_without_pg_config(tmp_path):
    empty = tmp_path / 'empty-path'
    empty.mkdir()
    return str(empty)


def test_find_bindir_without_pg_config_uses_the_debian_path(tmp_path, monkeypatch):
    monkeypatch.setenv('PATH', path_without_pg_config(tmp_path))
    assert pgclient.find_bindir() == PG15_BIN
    assert os.access(os.path.join(pgclient.find_bindir(), 'pg_dump'), os.X_OK)


def test_find_bindir_asks_pg_config(tmp_path, monkeypatch):
    fake_bin = make_bindir(tmp_path / 'pg' / 'bin')
    path_dir = tmp_path / 'path'
    path_dir.mkdir()
    pg_config = path_dir / 'pg_config'
    pg_config.write_text('#!/bin/sh\n[ "$1" = --bindir ] && echo %s\n' % fake_bin)
    os.chmod(str(pg_config), stat.S_IRWXU)
    monkeypatch.setenv('PATH', str(path_dir) + os.pathsep + '/usr/bin:/bin')
    assert pgclient.find_bindir() == fake_bin


def test_find_bindir_prefers_an_explicit_dir(tmp_path, monkeypatch):
    preferred = make_bindir(tmp_path / 'pg16' / 'bin')
    monkeypatch.setenv('PATH', '/usr/bin:/bin')  # the real pg_config is there
    assert pgclient.find_bindir(preferred) == preferred
    assert pgclient.find_bindir(None) == PG15_BIN


def test_find_bindir_reports_a_bogus_explicit_dir(tmp_path, monkeypatch):
    monkeypatch.setenv('PATH', path_without_pg_config(tmp_path))
    bogus = str(tmp_path / 'opt' / 'pg16' / 'bin')
    with pytest.raises(PgError) as info:
        pgclient.find_bindir(bogus)
    assert bogus in str(info.value)


def test_find_bindir_error_when_nothing_is_found(tmp_path, monkeypatch):
    monkeypatch.setenv('PATH', path_without_pg_config(tmp_path))
    nowhere = str(tmp_path / 'nowhere')
    monkeypatch.setattr(pgclient, 'DEFAULT_BINDIRS', (nowhere,))
    with pytest.raises(PgError) as info:
        pgclient.find_bindir(None)
    message = str(info.value)
    assert 'PostgreSQL client programs (pg_dump, psql) not found' in message
    assert 'set pg_bindir' in message
    assert 'tried: %s' % nowhere in message
    with pytest.raises(PgError):
        pgclient.Connection(bindir=None)
