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
  - Fetches the backup from S3 into the local repository (checksum verified) when it is not present locally.
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
      type: dict
rollback:
  description:
    - With O(mode=cluster), after a failure, what was touched and where things are now.
    - C(touched) (the server was stopped), C(rolled_back) (the old directory is back and the server runs on it),
      C(server_running), C(data_directory), C(old_pgdata) (set when the previous directory is still aside),
      C(failed_copy) (the failed recovered directory, kept for inspection), C(rollback_error).
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

import os
import time


from ansible_collections.modulo.pgbackup.plugins.module_utils import (
    cluster_recovery, common, encryption, logical_restore, pitr, repository)
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import s3 as wals3
from ansible_collections.modulo.pgbackup.plugins.module_utils.module_base import EXPLAINED_ERRORS, PgBackupModule
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import Connection

PITR_OPTIONS = ('target_time', 'target_xid', 'target_lsn', 'target_name', 'target')
ERRORS = EXPLAINED_ERRORS


def logical(module, p, log, result):
    try:
        logical_restore.validate_dbname(p['target_db'])
        conn = Connection.from_params(p, db=p['target_db'])
        repo = repository.Repository(p['backup_root'], p['pg_os_user'])
        s3 = common.s3_store(p)
        meta = logical_restore.resolve_backup(repo, p['backup'], database=p['db'], s3=s3)
        result['backup'] = meta
        state = logical_restore.database_state(conn, p['target_db'], log=log)
    except ERRORS + (OSError, ValueError) as exc:
        module.fail_json(msg=str(exc), **result)

    if state and p['confirm'] != p['target_db']:
        module.fail_json(msg='database %s exists and is not empty (%d relations): to replace it, set confirm: %s '
                             '(the old one is kept renamed unless keep_old is false)'
                             % (p['target_db'], state, p['target_db']), **result)
    if module.check_mode:
        result.update(changed=True, restore=dict(
            backup=meta['name'], target_db=p['target_db'], replaced_existing=state is not None,
            fetch_from_s3=meta.get('location') == 's3'),
            msg='would restore %s into %s' % (meta['name'], p['target_db']))
        module.exit_json(**result)

    try:
        repo.ensure()
        with repo.lock('restore-%s' % p['target_db']):
            if meta.get('location') == 's3':
                meta['path'] = s3.download_backup(repo.root, meta)
                meta['location'] = 'both'
            outcome = logical_restore.restore(conn, meta, p['target_db'], confirm=p['confirm'],
                                              keep_old=p['keep_old'], jobs=p['jobs'], log=log,
                                              keys=encryption.Keys.from_params(p))
    except ERRORS as exc:
        module.fail_json(msg=str(exc), **result)
    except OSError as exc:
        module.fail_json(msg='restore failed: %s (is the repository readable and the disk not full?)' % exc, **result)
    result.update(changed=True, restore=outcome,
                  msg='restored %s into %s: %d rows in %d tables, matching the backup' % (
                      meta['name'], p['target_db'], outcome['row_total'], len(outcome['table_rows'])))
    module.exit_json(**result)


def point_in_time(module, p, log, result):
    try:
        target_settings, description, when = pitr.build_target(p)
        repo = repository.Repository(p['backup_root'], p['pg_os_user'])
        s3_settings = common.s3_settings(p)
        s3 = common.s3_store(p)
        bases = repository.with_s3(repo.scan('base')[0], s3, 'base')
        base = pitr.choose_base(bases, p, when)
        result['backup'] = base
        if when is not None:
            pitr.check_archive_reaches(repo.root, when, wals3.s3_archive(s3_settings))
        if p['mode'] == 'database':
            logical_restore.validate_dbname(p['target_db'])
            conn = Connection.from_params(p, db=p['target_db'])
            state = logical_restore.database_state(conn, p['target_db'], log=log)
            if state and p['confirm'] != p['target_db']:
                raise pitr.PitrError('database %s exists and is not empty (%d relations): to replace it, set '
                                     'confirm: %s (the old one is kept renamed unless keep_old is false)'
                                     % (p['target_db'], state, p['target_db']))
        else:
            cluster = cluster_recovery.ClusterRecovery(
                Connection.from_params(p, db='postgres'), p['pgdata'], Connection.from_params(p).bindir,
                p['pg_os_user'], unit=p['pg_service'], method=p['service_control'],
                timeout_s=p['recovery_timeout'], log=log)
            if os.path.abspath((p['confirm'] or '').rstrip('/') or '.') != cluster.pgdata:
                raise pitr.PitrError('mode=cluster replaces the live data directory %s (it is kept renamed, never '
                                     'deleted): to go ahead, set confirm: %s' % (cluster.pgdata, cluster.pgdata))
            problems = cluster.precheck(base)
            if problems:
                raise pitr.PitrError('cannot replace the data directory %s: %s. Nothing was changed: the server was '
                                     'not stopped' % (cluster.pgdata, '; '.join(problems)))
    except ERRORS + (OSError, ValueError) as exc:
        module.fail_json(msg=str(exc), **result)

    planned = dict(base_backup=base['name'], target=description, mode=p['mode'])
    if module.check_mode:
        restore = dict(recovery=planned, target_db=p['target_db'])
        if p['mode'] == 'cluster':
            restore['cluster'] = cluster.plan()
        result.update(changed=True, restore=restore,
                      msg='would recover to %s from %s (%s mode%s)' % (
                          description, base['name'], p['mode'],
                          (', ' + cluster.describe()) if p['mode'] == 'cluster' else ''))
        module.exit_json(**result)

    started = time.time()
    keys = encryption.Keys.from_params(p)
    try:
        repo.ensure()
        if base.get('location') == 's3':
            base['path'] = s3.download_backup(repo.root, base, kind_dir='base')
        if p['mode'] == 'database':
            with repo.lock('restore-%s' % p['target_db']):
                workdir = pitr.scratch_workdir(p['scratch_dir'] or repo.path('restore-tests'), p['pg_os_user'])
                recovery = pitr.ScratchRecovery(Connection.from_params(p).bindir, workdir, p['pg_os_user'],
                                                port=p['scratch_port'])
                try:
                    reached = recovery.recover(base, repo.root, target_settings, s3_settings=s3_settings,
                                               timeout_s=p['recovery_timeout'], log=log, keys=keys)
                    reached['last_replayed_transaction'] = recovery.query(
                        'SELECT pg_last_xact_replay_timestamp()')[0][0]
                    outcome = pitr.copy_database(recovery, p['db'] or 'modulodb', conn, p['target_db'],
                                                 p['confirm'], p['keep_old'], p['jobs'], workdir, log=log)
                finally:
                    recovery.close()
        else:
            try:
                reached = cluster.run(base, repo.root, target_settings, s3_settings=s3_settings, keys=keys)
            except cluster_recovery.ClusterRecoveryError as exc:
                result['rollback'] = exc.state
                module.fail_json(msg=cluster_recovery.failure_message(str(exc), exc.state, cluster.control.describe()),
                                 **result)
            if reached.get('warning'):
                module.warn(reached.pop('warning'))
            result['old_pgdata'] = reached['old_pgdata']
            outcome = {'target_db': None, 'old_pgdata': reached.pop('old_pgdata'), 'cluster': cluster.plan()}
    except ERRORS as exc:
        module.fail_json(msg=str(exc), **result)
    except OSError as exc:
        module.fail_json(msg='point-in-time recovery failed: %s' % exc, **result)
    reached.update(planned)
    outcome['recovery'] = reached
    outcome['duration_s'] = round(time.time() - started, 3)
    where = (' into database %s' % p['target_db']) if p['mode'] == 'database' else (' as the live cluster %s' % cluster.pgdata)
    result.update(changed=True, restore=outcome, msg='recovered to %s from %s%s' % (description, base['name'], where))
    module.exit_json(**result)


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
            **common.service_argspec()
        ),
        mutually_exclusive=[PITR_OPTIONS],
        required_if=[('mode', 'database', ('target_db',))],
        supports_check_mode=True,
    )
    p = module.params
    log = module.command_log
    result = module.result
    result.update(backup=None)
    pitr_requested = any(p[name] for name in PITR_OPTIONS) or p['mode'] == 'cluster'
    module.audit(p['backup_root'], 'pitr' if pitr_requested else 'restore',
                 (p['pgdata'] or 'cluster') if p['mode'] == 'cluster' else p['target_db'], db_user=p['login_user'],
                 details={'requested_backup': p['backup'], 'mode': p['mode']})
    if pitr_requested:
        point_in_time(module, p, log, result)
    else:
        logical(module, p, log, result)


if __name__ == '__main__':
    main()
