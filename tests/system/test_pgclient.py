# -*- coding: utf-8 -*-
"""pgclient.psql_query against a real server: a list of statements runs in one psql, each on its own."""

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import pgclient


def test_a_list_runs_each_statement_in_its_own_transaction_and_stops_at_the_first_error(pg):
    conn = pgclient.Connection(login_host='127.0.0.1', port=pg.port, login_user='postgres', bindir=pg.bindir)
    # ALTER SYSTEM refuses to run inside a transaction block: this passes only if each -c is separate.
    rows = pgclient.psql_query(conn, ["ALTER SYSTEM SET work_mem = '7MB'", 'SELECT pg_reload_conf()',
                                      "SELECT 1, 'a'", "SELECT 2, 'b'"], db='postgres')
    assert rows == [['t'], ['1', 'a'], ['2', 'b']]
    assert pgclient.psql_query(conn, "SELECT setting FROM pg_file_settings WHERE name = 'work_mem' "
                                     "AND applied", db='postgres') == [['7MB']]
    log = pgclient.CommandLog()
    with pytest.raises(pgclient.PgError, match='no_such_table'):
        pgclient.psql_query(conn, ['ALTER SYSTEM RESET work_mem', 'SELECT * FROM no_such_table',
                                   "ALTER SYSTEM SET work_mem = '9MB'"], db='postgres', log=log)
    assert len(log.commands) == 1
    # The reset ran, the statement after the error did not.
    assert pgclient.psql_query(conn, "SELECT count(*) FROM pg_file_settings WHERE name = 'work_mem'",
                               db='postgres') == [['0']]
    pgclient.psql_query(conn, 'SELECT pg_reload_conf()', db='postgres')
