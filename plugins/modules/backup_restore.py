#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: backup_restore
short_description: Restore a modulo.pgbackup backup into a named database, checked row for row
version_added: 0.1.0
description:
  - Restores a logical backup (C(latest), a backup name, or a path to a backup file) into O(target_db).
  - The backup's sha256 is checked against its C(.meta) first. The dump is then loaded into a fresh staging
    database (C(pg_restore -j) for the custom and directory formats, C(psql) for plain SQL), and every
    table's row count is compared with the C(.meta). Only then is the staging database renamed to
    O(target_db). A corrupt or failing backup therefore never changes O(target_db).
  - Replacing an existing non-empty database requires O(confirm) equal to O(target_db). The replaced
    database is kept, renamed to C(<target_db>_old_YYYYMMDD_HHMMSS), unless O(keep_old=false).
  - Fetches a logical backup from S3 into the local repository (checksum verified) when it is not present locally.
    A physical base backup that is only in S3 is unpacked as it is read, without a copy in the repository; a
    broken connection resumes where it stopped (from the same object only), and the whole backup is checked
    against the checksum of its C(.meta) before the recovered server is started (an encrypted one is decrypted
    as it is read too). It is downloaded whole first (and checked) when it is lz4-compressed, and for
    O(delta=true), which changes the data directory as it reads.
  - Point-in-time recovery (any of O(target_time), O(target_xid), O(target_lsn), O(target_name), O(target)) uses a
    physical base backup and the WAL archive. It picks the newest complete base backup that ends before the target,
    refuses targets that are malformed, in the future, before the oldest base backup or after the newest archived WAL,
    and recovers with C(recovery_target_action=promote).
  - With O(mode=database) (the default) the recovery runs in a scratch cluster (own directory and port,
    C(archive_mode=off), private socket, removed afterwards) and the database O(db) is copied from it into
    O(target_db) through the same checked staging-and-swap path as a logical restore.
  - With O(mode=cluster) the live data directory is replaced. The server says where its data directory and
    configuration are (O(pgdata) is needed only when it is down). Before anything is touched, the module checks
    what the swap needs, that is that it can stop and start the server (O(service_control)), that the directory above the
    data directory is writable and has room for the recovered copy, that the configuration is there; any problem
    fails the task with nothing changed (in check mode too). Then PostgreSQL is stopped, the directory is renamed to
    C(<data directory>.old-YYYYMMDD_HHMMSS) (never deleted), the base backup is unpacked, the configuration stays
    where it lives (Debian's C(/etc/postgresql) is not touched; files kept in the data directory are copied from the
    old one), and the server is started to recover and promote. This needs O(confirm) equal to the data directory.
  - When that fails before the recovered server is promoted, the module puts the old directory back and starts
    the server on it again by itself, keeps the failed copy as C(<data directory>.failed-YYYYMMDD_HHMMSS), and
    fails with the cause and RV(rollback) saying what state the server is in.
  - With O(mode=cluster) and O(delta=true) the data directory is brought to the base backup in place instead, for
    hosts without room for a second copy. See O(delta); there is no old directory to roll back to.
author:
  - modulo.pgbackup contributors (@modulo)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - modulo.pgbackup.connection
  - modulo.pgbackup.repository
  - modulo.pgbackup.s3
  - modulo.pgbackup.encryption
  - modulo.pgbackup.service
options:
  backup:
    description:
      - C(latest) (the newest complete logical backup, of O(db) when set), a backup name such as
        C(modulo_full_20261124_020000), or a path to a backup file that has its C(.meta) beside it.
    type: str
    default: latest
  db:
    description:
      - With O(backup=latest), only consider logical backups of this source database.
      - For point-in-time recovery with O(mode=database), the database copied out of the recovered cluster
        (default C(modulodb)).
    type: str
  target_db:
    description:
      - Database to restore into. Letters, digits, C(_) and C(-) only.
      - Required unless O(mode=cluster).
    type: str
  confirm:
    description:
      - Must equal O(target_db) to replace a database that exists and is not empty.
      - With O(mode=cluster), must equal the data directory (the server's C(data_directory), or O(pgdata)).
      - A safety catch against restoring over production by mistake.
    type: str
  keep_old:
    description:
      - Keep the replaced database, renamed, for rollback. With C(false) it is dropped after a successful restore.
    type: bool
    default: true
  jobs:
    description:
      - Parallel jobs of C(pg_restore) for custom and directory formats.
    type: int
    default: 2
  mode:
    description:
      - C(database) restores into O(target_db) on the live server (for PITR through a scratch cluster).
      - C(cluster) replaces the live data directory with a point-in-time recovery.
    type: str
    choices: [ database, cluster ]
    default: database
  target_time:
    description:
      - Recover up to this time, e.g. C(2026-11-24 14:30:00) (read as UTC when no offset is given) or
        C(2026-11-24T14:30:00+01:00).
    type: str
  target_xid:
    description: Recover up to and including this transaction id.
    type: str
  target_lsn:
    description: Recover up to this WAL location, e.g. C(0/3000060).
    type: str
  target_name:
    description: Recover up to this named restore point (C(pg_create_restore_point)).
    type: str
  target:
    description:
      - C(latest) replays all archived WAL; C(immediate) stops as soon as the base backup is consistent.
    type: str
    choices: [ latest, immediate ]
  scratch_dir:
    description:
      - Where the scratch cluster of a PITR with O(mode=database) is built. Default C(<backup_root>/restore-tests/).
    type: path
  scratch_port:
    description: Port of the scratch cluster (it listens only on its private socket). Default a free port.
    type: int
  recovery_timeout:
    description: Seconds to wait for recovery to reach the target and promote.
    type: int
    default: 3600
  delta:
    description:
      - Only with O(mode=cluster). Restore the base backup into the existing data directory in place, writing only
        what differs, for a cluster whose host has no room for a second copy of the data directory.
      - The base backup is still read from end to end, but every file is compared with the one in the data
        directory, page by page; only the pages that differ are written (and flushed), files the backup does not
        have are removed (the old WAL in C(pg_wal) too, as in a full restore). The configuration files kept in the
        data directory and the server's C(log) directory stay as they are, as a full restore keeps today's
        configuration.
      - Refuses while PostgreSQL runs on the data directory (it answers, or the process of its C(postmaster.pid)
        exists), so stop it first; O(pgdata) is then required. The server is started by the module to recover
        and promote, as with a full cluster restore. Needs O(confirm) equal to the data directory.
      - The data directory is changed in place, so there is no old directory to roll back to. Before the first
        change the module writes C(modulo_delta_restore.json) into it and removes C(global/pg_control); the
        backup's C(pg_control) is put back only once everything else is written and flushed. A delta restore that
        fails or is interrupted therefore leaves a directory PostgreSQL refuses to start, and running the same
        task again resumes it (what is already done is compared and reused).
      - A base backup that is only in S3 is downloaded into the repository and checked before the first change
        (room for the compressed backup is needed there), since a damaged copy found half way could not be undone.
      - Tablespaces are not supported, as with a full restore.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    details: Resolves the backup and checks the target, then reports what it would do without changing anything.
  diff_mode:
    support: none
    details: Nothing to diff.
  platform:
    platforms: posix
seealso:
  - module: modulo.pgbackup.pg_backup
  - module: modulo.pgbackup.backup_info
'''

EXAMPLES = r'''
- name: Restore the latest backup to the staging database (runbook "restore")
  modulo.pgbackup.backup_restore:
    backup_root: /var/backups/postgresql
    target_db: modulodb_test

- name: Recover modulodb as it was at 14:29 UTC into a new database (runbook "pitr")
  modulo.pgbackup.backup_restore:
    backup_root: /var/backups/postgresql
    target_time: "2026-11-24 14:29:00"
    db: modulodb
    target_db: modulodb_recovery

- name: Restore a specific backup file over production (old database kept aside)
  modulo.pgbackup.backup_restore:
    backup_root: /var/backups/postgresql
    backup: /var/backups/postgresql/full/modulo_full_20261124_020000.sql.gz
    target_db: modulodb
    confirm: modulodb

- name: Recover the whole cluster in place, where there is no room for a second copy (PostgreSQL stopped first)
  modulo.pgbackup.backup_restore:
    backup_root: /var/backups/postgresql
    mode: cluster
    delta: true
    pgdata: /var/lib/postgresql/15/main
    confirm: /var/lib/postgresql/15/main
    target: latest
'''

RETURN = r'''
restore:
  description: What was restored (or, in check mode, would be).
  returned: success
  type: dict
  contains:
    backup:
      description: Name of the backup restored.
      type: str
    target_db:
      description: The database restored into.
      type: str
    replaced_existing:
      description: Whether a database of that name existed before.
      type: bool
    old_db:
      description: Name under which the replaced database was kept, or null.
      type: str
    duration_s:
      description: Seconds from checksum to swap.
      type: float
    table_rows:
      description: Row counts of the restored database, equal to the backup's C(.meta).
      type: dict
    rows_match:
      description: True when every table's row count equals the C(.meta) (or the recovered copy for PITR).
      type: bool
    rows_recounted:
      description:
        - Logical restore, the tables counted again with C(count(*)). The others were checked with the rows
          the server counted while loading them (C(pg_stat_user_tables), PostgreSQL 15 and later), which
          spares reading the whole database a second time; a table whose count differs from the C(.meta)
          is always counted again, so a reported difference is a real one.
      type: list
      elements: str
    load_settings:
      description:
        - Logical restore, the session settings the load ran with. C(maintenance_work_mem) for the index
          builds is an eighth of the host's memory shared by the load's sessions (O(jobs) for custom and
          directory dumps), at most 2 GB each, set only when that is more than the server's own setting and
          the server runs on this host (Unix socket or loopback).
      type: dict
    recovery:
      description:
        - For point-in-time recovery, the target, the base backup used, where recovery stopped (C(stop),
          C(last_transaction_time), C(timeline)) and C(recovery_s).
      type: dict
    old_pgdata:
      description: With O(mode=cluster), where the replaced data directory was kept.
      type: str
    cluster:
      description:
        - With O(mode=cluster), the layout and control used (C(data_directory), C(config_file),
          C(config_outside_data_directory), C(service_control), C(control), C(server_running)); in check mode too.
        - C(delta) (O(delta)), and with it C(delta_in_progress), the marker of an earlier delta restore that did
          not finish (null when there is none).
      type: dict
    delta:
      description:
        - With O(delta=true), what the in-place restore did. C(reused_files) and C(reused_bytes), files left
          untouched because they already held the backup's content; C(written_files), files created or changed,
          and C(written_bytes), the bytes actually written to them; C(removed_files), files the backup does not
          have; C(kept_files), configuration and log files left as they are; C(total_bytes), the size of the
          backup's files.
      returned: success with O(delta=true)
      type: dict
rollback:
  description:
    - With O(mode=cluster), after a failure, what was touched and where things are now.
    - C(touched) (the server was stopped), C(rolled_back) (the old directory is back and the server runs on it),
      C(server_running), C(data_directory), C(old_pgdata) (set when the previous directory is still aside),
      C(failed_copy) (the failed recovered directory, kept for inspection), C(rollback_error).
    - With O(delta=true) also C(delta) (true), C(startable) (false while the directory is marked incomplete;
      run the task again to resume) and C(delta_counts) (the counts so far, when the files were all applied).
  returned: failure of O(mode=cluster)
  type: dict
backup:
  description: The C(.meta) of the backup used, with C(path) and C(location).
  returned: always
  type: dict
executed_commands:
  description:
    - External commands run; passwords are never part of them.
    - Each is the argv list of one program, as it was run.
  returned: always
  type: list
  elements: list
'''

from ansible_collections.modulo.pgbackup.plugins.module_utils import common, encryption, repository
from ansible_collections.modulo.pgbackup.plugins.module_utils.module_base import EXPLAINED_ERRORS, PgBackupModule
from ansible_collections.modulo.pgbackup.plugins.module_utils.ops import restore as restores
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import Connection


def main():
    module = PgBackupModule(
        argument_spec=common.full_argspec(
            with_encryption=True,
            backup=dict(type='str', default='latest'),
            db=dict(type='str'),
            target_db=dict(type='str'),
            confirm=dict(type='str'),
            keep_old=dict(type='bool', default=True),
            jobs=dict(type='int', default=2),
            mode=dict(type='str', default='database', choices=['database', 'cluster']),
            target_time=dict(type='str'),
            target_xid=dict(type='str'),
            target_lsn=dict(type='str'),
            target_name=dict(type='str'),
            target=dict(type='str', choices=['latest', 'immediate']),
            scratch_dir=dict(type='path'),
            scratch_port=dict(type='int'),
            recovery_timeout=dict(type='int', default=3600),
            delta=dict(type='bool', default=False),
            **common.service_argspec()
        ),
        mutually_exclusive=[restores.PITR_TARGETS],
        required_if=[('mode', 'database', ('target_db',))],
        supports_check_mode=True,
    )
    p = module.params
    module.result.update(backup=None)
    if p['delta'] and p['mode'] != 'cluster':
        module.fail(restores.DELTA_NEEDS_CLUSTER)
    request = restores.Request(
        backup=p['backup'], db=p['db'], target_db=p['target_db'], confirm=p['confirm'], keep_old=p['keep_old'],
        jobs=p['jobs'], mode=p['mode'], target_time=p['target_time'], target_xid=p['target_xid'],
        target_lsn=p['target_lsn'], target_name=p['target_name'], target=p['target'], scratch_dir=p['scratch_dir'],
        scratch_port=p['scratch_port'], recovery_timeout=p['recovery_timeout'], pgdata=p['pgdata'],
        pg_service=p['pg_service'], service_control=p['service_control'], pg_os_user=p['pg_os_user'],
        delta=p['delta'])
    module.audit(p['backup_root'], 'pitr' if request.pitr else 'restore',
                 (p['pgdata'] or 'cluster') if p['mode'] == 'cluster' else p['target_db'], db_user=p['login_user'],
                 details={'requested_backup': p['backup'], 'mode': p['mode'], 'delta': p['delta']})
    repo = repository.Repository(p['backup_root'], p['pg_os_user'])
    keys, log = encryption.Keys.from_params(p), module.command_log
    if request.pitr:
        run = restores.PointInTimeRecovery(request, lambda db: Connection.from_params(p, db=db),
                                           Connection.from_params(p).bindir, repo, keys, s3=common.s3_store(p),
                                           s3_settings=common.s3_settings(p), log=log)
    else:
        run = restores.LogicalRestore(request, Connection.from_params(p, db=p['target_db']), repo, keys,
                                      s3=common.s3_store(p), log=log)
    try:
        run.prepare()
    except EXPLAINED_ERRORS + (OSError, ValueError) as exc:
        module.fail(str(exc), backup=run.backup)
    module.result['backup'] = run.backup
    if module.check_mode:
        module.result.update(changed=True, restore=run.plan(), msg=run.would())
        module.exit_json(**module.result)
    try:
        outcome = run.run()
    except restores.RestoreFailed as exc:
        module.fail(str(exc), **({'rollback': exc.rollback} if exc.rollback is not None else {}))
    except EXPLAINED_ERRORS as exc:
        module.fail(str(exc))
    for warning in outcome.warnings:
        module.warn(warning)
    if outcome.restore.get('old_pgdata'):
        module.result['old_pgdata'] = outcome.restore['old_pgdata']
    module.result.update(changed=True, restore=outcome.restore, msg=outcome.msg)
    module.exit_json(**module.result)


if __name__ == '__main__':
    main()
