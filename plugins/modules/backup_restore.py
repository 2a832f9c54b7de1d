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
  - Point-in-time recovery options are reserved for physical backups, which this release does not provide;
    setting them fails with a message saying so.
author:
  - modulo.pgbackup contributors
extends_documentation_fragment:
  - modulo.pgbackup.connection
  - modulo.pgbackup.repository
  - modulo.pgbackup.s3
options:
  backup:
    description:
      - C(latest) (the newest complete logical backup, of O(db) when set), a backup name such as
        C(modulo_full_20261124_020000), or a path to a backup file that has its C(.meta) beside it.
    type: str
    default: latest
  db:
    description:
      - With O(backup=latest), only consider backups of this source database.
    type: str
  target_db:
    description:
      - Database to restore into. Letters, digits, C(_) and C(-) only.
    type: str
    required: true
  confirm:
    description:
      - Must equal O(target_db) to replace a database that exists and is not empty.
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
      - C(database) restores into O(target_db) on the live server. C(cluster) is for physical backups (not in this release).
    type: str
    choices: [ database, cluster ]
    default: database
  target_time:
    description: Point-in-time recovery target (physical backups only; not in this release).
    type: str
  target_xid:
    description: Point-in-time recovery target transaction id (not in this release).
    type: str
  target_lsn:
    description: Point-in-time recovery target LSN (not in this release).
    type: str
  target_name:
    description: Point-in-time recovery target restore point (not in this release).
    type: str
  target:
    description: Point-in-time recovery end point, C(latest) or C(immediate) (not in this release).
    type: str
    choices: [ latest, immediate ]
  pgdata:
    description: Data directory replaced by O(mode=cluster) (not in this release).
    type: path
attributes:
  check_mode:
    support: full
    details: Resolves the backup and checks the target, then reports what it would do without changing anything.
  diff_mode:
    support: none
seealso:
  - module: modulo.pgbackup.pg_backup
  - module: modulo.pgbackup.backup_info
'''

EXAMPLES = r'''
- name: Restore the latest backup to the staging database (runbook "restore")
  modulo.pgbackup.backup_restore:
    backup_root: /var/backups/postgresql
    target_db: modulodb_test

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
      description: True when every table's row count equals the C(.meta).
      type: bool
backup:
  description: The C(.meta) of the backup used, with C(path) and C(location).
  returned: always
  type: dict
executed_commands:
  description: External commands run; passwords are never part of them.
  returned: always
  type: list
  elements: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.modulo.pgbackup.plugins.module_utils import common, logical_restore, repository
from ansible_collections.modulo.pgbackup.plugins.module_utils.fsutil import LockBusy
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import CommandLog, Connection, PgError
from ansible_collections.modulo.pgbackup.plugins.module_utils.s3store import S3Error

PITR_OPTIONS = ('target_time', 'target_xid', 'target_lsn', 'target_name', 'target')


def main():
    module = AnsibleModule(
        argument_spec=common.full_argspec(
            backup=dict(type='str', default='latest'),
            db=dict(type='str'),
            target_db=dict(type='str', required=True),
            confirm=dict(type='str'),
            keep_old=dict(type='bool', default=True),
            jobs=dict(type='int', default=2),
            mode=dict(type='str', default='database', choices=['database', 'cluster']),
            target_time=dict(type='str'),
            target_xid=dict(type='str'),
            target_lsn=dict(type='str'),
            target_name=dict(type='str'),
            target=dict(type='str', choices=['latest', 'immediate']),
            pgdata=dict(type='path'),
        ),
        mutually_exclusive=[PITR_OPTIONS],
        supports_check_mode=True,
    )
    p = module.params
    log = CommandLog()
    result = dict(changed=False, backup=None, executed_commands=log.commands)
    given = [name for name in PITR_OPTIONS if p[name]]
    if given or p['mode'] == 'cluster':
        module.fail_json(msg='point-in-time recovery and mode=cluster need physical backups and WAL archiving, '
                             'which this release of modulo.pgbackup does not provide (got %s); restore a logical '
                             'backup with backup: latest|<name>|<path>' % ', '.join(given or ['mode=cluster']),
                         **result)
    try:
        logical_restore.validate_dbname(p['target_db'])
        conn = Connection.from_params(p, db=p['target_db'])
        repo = repository.Repository(p['backup_root'])
        s3 = common.s3_store(p)
        meta = logical_restore.resolve_backup(repo, p['backup'], database=p['db'], s3=s3)
        result['backup'] = meta
        state = logical_restore.database_state(conn, p['target_db'], log=log)
    except (logical_restore.RestoreError, repository.RepositoryError, PgError, S3Error, OSError, ValueError) as exc:
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
                                              keep_old=p['keep_old'], jobs=p['jobs'], log=log)
    except (logical_restore.RestoreError, repository.RepositoryError, PgError, S3Error, LockBusy) as exc:
        module.fail_json(msg=str(exc), **result)
    except OSError as exc:
        module.fail_json(msg='restore failed: %s (is the repository readable and the disk not full?)' % exc, **result)
    result.update(changed=True, restore=outcome,
                  msg='restored %s into %s: %d rows in %d tables, matching the backup' % (
                      meta['name'], p['target_db'], outcome['row_total'], len(outcome['table_rows'])))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
