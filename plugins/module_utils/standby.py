# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a base backup reads from: the primary, or a streaming standby (``backup_from``).

A standby takes the read load of ``pg_basebackup`` off a busy primary, but it archives nothing: its WAL
is the primary's, in the primary's archive. Three things differ from a backup of the primary, and all of
them are here:

- the server must be what ``backup_from`` says it is (a standby is in recovery, a primary is not), and a
  standby far behind its primary gives a backup of the past, so it is refused past ``max_replay_lag``;
- archiving is checked on the primary (the standby's own archive settings are copies that do nothing);
- the standby writes no ``.backup`` history file and does not switch WAL when the backup stops, so the
  segment holding the stop point reaches the archive only when the primary leaves it: the primary is
  asked to switch (``pg_switch_wal()``) once the backup is done. Which primary: ``primary_host`` and
  ``primary_port``, or the server the standby streams from (``pg_stat_wal_receiver``), reached with the
  same login as the standby.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible_collections.modulo.pgbackup.plugins.module_utils import errors
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import Connection, PgError, psql_query
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import names as walnames

PRIMARY, STANDBY = 'primary', 'standby'
SOURCES = (PRIMARY, STANDBY)

# Replay lag as DBAs measure it: none while the standby has replayed all it received (an idle primary sends
# nothing, so the last replayed commit may be old without any lag), else the age of the last replayed commit.
STANDBY_SQL = ("SELECT pg_is_in_recovery(), "
               "CASE WHEN NOT pg_is_in_recovery() THEN NULL "
               "WHEN pg_last_wal_receive_lsn() IS NOT NULL AND pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() "
               "THEN 0 ELSE round(extract(epoch FROM now() - pg_last_xact_replay_timestamp())::numeric, 1) END, "
               "(SELECT status FROM pg_stat_wal_receiver), (SELECT sender_host FROM pg_stat_wal_receiver), "
               "(SELECT sender_port FROM pg_stat_wal_receiver)")
PRIMARY_SQL = "SELECT pg_is_in_recovery(), (SELECT system_identifier FROM pg_control_system())::text"


class SourceError(errors.PgBackupError):
    pass


def where(conn):
    return '%s:%s' % (conn.login_host or conn.login_unix_socket or 'local socket', conn.port)


def segment_end(stop_lsn, seg_size=walnames.WAL_SEG_SIZE):
    """The first LSN after the segment that holds the record just before ``stop_lsn`` (the backup's last
    needed segment): the primary has left that segment once it writes at or past this point."""
    last_byte = walnames.parse_lsn(stop_lsn) - 1
    return walnames.format_lsn((last_byte // seg_size + 1) * seg_size)


class Source(object):
    """The server a base backup reads from and, for a standby, the primary whose archive holds its WAL.

    ``archive_conn`` is where archiving is checked and watched; ``meta_fields()`` goes into the ``.meta``.
    """

    def __init__(self, conn, kind=PRIMARY, primary_conn=None, replay_lag_s=None):
        self.conn, self.kind, self.replay_lag_s = conn, kind, replay_lag_s
        self.primary_conn = primary_conn if kind == STANDBY else conn
        self.switch_problem = None

    @property
    def standby(self):
        return self.kind == STANDBY

    @property
    def archive_conn(self):
        return self.primary_conn

    def meta_fields(self):
        fields = {'backup_from': self.kind}
        if self.standby:
            fields.update(standby_host=self.conn.login_host or self.conn.login_unix_socket, standby_port=self.conn.port,
                          primary_host=self.primary_conn.login_host or self.primary_conn.login_unix_socket,
                          primary_port=self.primary_conn.port, replay_lag_s=self.replay_lag_s)
        return fields

    def close_segment(self, stop_lsn, log=None):
        """Have the primary leave the segment holding the backup's stop point, so it is archived now rather
        than at the next ``archive_timeout``. Returns the segment the switch closed, or None (no switch was
        needed, or the primary could not be asked: then ``switch_problem`` says why, and the wait for the
        archive may still end by ``archive_timeout``)."""
        if not self.standby:
            return None
        try:
            rows = psql_query(self.primary_conn, "SELECT pg_walfile_name(pg_switch_wal()) WHERE pg_current_wal_lsn() < "
                                                 "'%s'::pg_lsn" % segment_end(stop_lsn), db='postgres', log=log)
        except PgError as exc:
            self.switch_problem = 'the primary could not be asked to switch WAL (%s)' % exc
            return None
        return rows[0][0] if rows else None


def check_standby(conn, backup_from, max_replay_lag=None, log=None):
    """Refuse a server that is not what ``backup_from`` says; return (replay lag s or None, sender host, port)."""
    if backup_from not in SOURCES:
        raise SourceError('backup_from must be primary or standby, not %r' % (backup_from,))
    recovery, lag, status, sender_host, sender_port = psql_query(conn, STANDBY_SQL, db='postgres', log=log)[0]
    in_recovery = recovery == 't'
    if backup_from == PRIMARY and in_recovery:
        raise SourceError('the server at %s is a standby (in recovery): it archives no WAL and a base backup from it '
                          'would never be complete this way; set backup_from: standby to back up from it with the '
                          'WAL of its primary, or connect to the primary' % where(conn))
    if backup_from == STANDBY and not in_recovery:
        raise SourceError('backup_from: standby, but the server at %s is not a standby (pg_is_in_recovery() is '
                          'false): connect to the standby, or set backup_from: primary to back up this server'
                          % where(conn))
    lag_s = float(lag) if lag is not None else None
    if backup_from == STANDBY and max_replay_lag and lag_s is not None and lag_s > max_replay_lag:
        raise SourceError('the standby at %s is %.0f s behind its primary (replay lag; wal receiver %s), more than '
                          'max_replay_lag (%d s): its backup would hold data that old; let it catch up, check '
                          'replication, or raise max_replay_lag' % (where(conn), lag_s, status or 'not running',
                                                                    max_replay_lag))
    return lag_s, sender_host, int(sender_port) if sender_port else None


def primary_of(conn, primary_host=None, primary_port=None, sender_host=None, sender_port=None):
    """Connection to the standby's primary: ``primary_host``/``primary_port`` when given, else the server the
    standby streams from, with the standby's login."""
    host = primary_host or sender_host
    if not host:
        raise SourceError('cannot tell which server is the primary of the standby at %s: it is not streaming (no '
                          'wal receiver); set primary_host (and primary_port) so the primary can be asked to '
                          'archive the backup\'s last WAL segment' % where(conn))
    port = primary_port or (sender_port if not primary_host else None) or conn.port
    return Connection(login_user=conn.login_user, login_password=conn.login_password,
                      login_host=host, port=port, ssl_mode=conn.ssl_mode, db='postgres', bindir=conn.bindir,
                      os_user=conn.os_user)


def check_primary(primary, system_identifier, log=None):
    """The primary must be reachable now, be a primary, and be the same cluster as the standby."""
    try:
        recovery, sysid = psql_query(primary, PRIMARY_SQL, db='postgres', log=log)[0]
    except PgError as exc:
        raise SourceError('the primary of the standby cannot be reached (%s); its archive must receive the '
                          'backup\'s WAL: set primary_host/primary_port, and a login_user allowed to connect '
                          'there and to run pg_switch_wal()' % exc)
    if recovery == 't':
        raise SourceError('the server at %s is in recovery itself: primary_host must name the primary, whose '
                          'archive holds the WAL (a cascading standby\'s upstream is not it)' % where(primary))
    if sysid != system_identifier:
        raise SourceError('the server at %s is another cluster (system identifier %s, the standby\'s is %s): '
                          'primary_host must name the standby\'s own primary'
                          % (where(primary), sysid, system_identifier))


def resolve(conn, backup_from=PRIMARY, primary_host=None, primary_port=None, max_replay_lag=None,
            system_identifier=None, log=None):
    """The checked ``Source`` of a base backup through ``conn``."""
    lag_s, sender_host, sender_port = check_standby(conn, backup_from, max_replay_lag, log=log)
    if backup_from == PRIMARY:
        return Source(conn)
    primary = primary_of(conn, primary_host, primary_port, sender_host, sender_port)
    if system_identifier is None:
        system_identifier = psql_query(conn, PRIMARY_SQL, db='postgres', log=log)[0][1]
    check_primary(primary, system_identifier, log=log)
    return Source(conn, STANDBY, primary, replay_lag_s=lag_s)
