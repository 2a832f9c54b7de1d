#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: pg_backup
short_description: Take a verified backup of a PostgreSQL database into a backup repository
version_added: 0.1.0
description:
  - Takes a logical backup of one database with C(pg_dump) into C(<backup_root>/full/), named
    C(<name_prefix>_full_YYYYMMDD_HHMMSS) (UTC), plus the cluster's roles and tablespaces
    (C(pg_dumpall --globals-only)) next to it.
  - The dump runs in an exported snapshot; the exact row count of every table is taken in that same
    snapshot and recorded in the backup's C(.meta), so a restore can be checked row for row.
  - Written under a temporary name, fsynced and renamed; the C(.meta) is written last. A backup without
    a C(.meta) is never used by restore, so a failed or killed run never leaves something that looks valid.
  - Writes a run report C(logs/backup_report_YYYYMMDD_HHMMSS.json), also for failed runs, with the
    runbook's thresholds evaluated (duration over 30 minutes, size growth over 50 percent).
  - Optionally uploads the backup to S3 (same layout under O(s3_prefix)), verified after upload.
  - Concurrent backups into one repository are serialized by a lock; a second run fails with a clear message.
author:
  - modulo.pgbackup contributors (@modulo)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - modulo.pgbackup.connection
  - modulo.pgbackup.repository
  - modulo.pgbackup.s3
  - modulo.pgbackup.encryption
options:
  db:
    description:
      - Database to back up.
    type: str
    default: modulodb
    aliases: [ database ]
  type:
    description:
      - C(logical) runs C(pg_dump) of O(db) into C(full/).
      - C(physical) runs C(pg_basebackup) of the whole cluster into C(base/<name_prefix>_base_YYYYMMDD_HHMMSS/)
        (tar format, server-side compression, fast checkpoint, SHA-256 backup manifest, no WAL inside) for
        point-in-time recovery. It needs WAL archiving into the same repository (M(modulo.pgbackup.wal_archive)),
        and the backup is marked complete only once the archive holds every WAL segment from its start to its stop.
    type: str
    choices: [ logical, physical ]
    default: logical
  format:
    description:
      - C(plain) is the runbook's SQL script (C(.sql.gz)), restorable with C(gunzip | psql).
      - C(custom) (C(.dump)) and C(directory) (C(.dir)) restore in parallel with C(pg_restore -j).
      - With pg_dump 15, C(directory) supports only C(gzip) or C(none) compression.
    type: str
    choices: [ plain, custom, directory ]
    default: plain
  compression:
    description:
      - Compression codec. C(gzip) uses C(pigz) when installed.
      - C(zstd) and C(lz4) need the programs of the same name on the host.
      - Defaults to C(gzip) for logical backups (the runbook's C(.sql.gz)) and C(zstd) (done by the server)
        for physical ones.
    type: str
    choices: [ gzip, zstd, lz4, none ]
  compression_level:
    description:
      - Codec level (gzip 1-9, zstd 1-19, lz4 1-12). Defaults to the codec's usual level.
    type: int
  jobs:
    description:
      - Parallel workers of C(pg_dump -j) for O(format=directory), and threads of the compressor.
      - With O(type=physical) and zstd, the server's compression threads (C(pg_basebackup --compress=server-zstd:workers=N)).
    type: int
    default: 2
  name_prefix:
    description:
      - First part of the backup's name. Letters, digits and dashes.
    type: str
    default: modulo
  upload:
    description:
      - Upload the backup to S3 when a bucket is configured (O(s3_bucket) or C(BACKUP_S3_BUCKET)).
      - The task fails when the upload fails; the local backup is kept and complete.
    type: bool
    default: true
  lock_wait:
    description:
      - Seconds to wait for another backup of the same repository to finish before failing.
    type: int
    default: 0
  only_if_archiving:
    description:
      - For O(type=physical), skip (without failing) when WAL archiving is not configured on the server,
        instead of failing. The nightly backup uses this to add a base backup only once PITR is set up.
    type: bool
    default: false
  wait_archive:
    description:
      - For O(type=physical), seconds to wait for the WAL the base backup needs to reach the archive.
        A base backup whose WAL is not archived by then is discarded and the task fails.
    type: int
    default: 300
attributes:
  check_mode:
    support: full
    details: Reports the backup it would take (name, path) without connecting for the dump or writing.
  diff_mode:
    support: none
  platform:
    platforms: posix
notes:
  - The password of O(login_user) reaches C(pg_dump) through the environment only.
  - Backup files are mode 0600 and directories 0700, owned by the user that runs the module.
seealso:
  - module: modulo.pgbackup.backup_info
  - module: modulo.pgbackup.backup_restore
'''

EXAMPLES = r'''
- name: Nightly backup of modulodb, the runbook's compressed SQL dump
  modulo.pgbackup.pg_backup:
    backup_root: /var/backups/postgresql
    db: modulodb
    login_unix_socket: /var/run/postgresql

- name: Parallel-restorable backup with zstd, uploaded to S3
  modulo.pgbackup.pg_backup:
    backup_root: /var/backups/postgresql
    db: modulodb
    format: custom
    compression: zstd
    s3_bucket: modulo-backups
    aws_region: eu-west-1
  register: nightly

- name: Show where it went
  ansible.builtin.debug:
    msg: "{{ nightly.backup.path }} ({{ nightly.backup.meta.size_bytes }} bytes) {{ nightly.backup.s3_uri }}"
'''

RETURN = r'''
backup:
  description: The backup taken (or, in check mode, planned).
  returned: always
  type: dict
  contains:
    path:
      description: Local path of the backup file or directory.
      type: str
      sample: /var/backups/postgresql/full/modulo_full_20261124_020000.sql.gz
    meta:
      description: The backup's C(.meta) (see the repository layout in the README).
      type: dict
      sample: {"name": "modulo_full_20261124_020000", "type": "logical", "status": "complete",
               "table_rows": {"public.orders": 5000}}
    s3_uri:
      description: Where the backup was uploaded, or null.
      type: str
      sample: s3://modulo-backups/database-backups/full/modulo_full_20261124_020000.sql.gz
skipped_reason:
  description: Why no base backup was taken with O(only_if_archiving=true).
  returned: when skipped
  type: str
report_path:
  description: Path of the run's JSON report in C(logs/).
  returned: unless check mode
  type: str
  sample: /var/backups/postgresql/logs/backup_report_20261124_020000.json
thresholds:
  description: The runbook's thresholds evaluated for this backup (duration, size growth).
  returned: success
  type: list
  elements: dict
executed_commands:
  description:
    - External commands run, in order; passwords are never part of them.
    - Each is the argv list of one program, as it was run.
  returned: always
  type: list
  elements: list
  sample: [["/usr/lib/postgresql/15/bin/pg_dump", "--snapshot=00000003-00000002-1", "--format=plain", "--dbname=modulodb"]]
'''

import os
import time


from ansible_collections.modulo.pgbackup.plugins.module_utils import common, encryption, logical_backup, physical_backup, repository
from ansible_collections.modulo.pgbackup.plugins.module_utils.module_base import EXPLAINED_ERRORS, PgBackupModule
from ansible_collections.modulo.pgbackup.plugins.module_utils import report as reports
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import Connection
from ansible_collections.modulo.pgbackup.plugins.module_utils.s3store import S3Error


def _run_fields(p):
    """What a run report says it was about, also when it failed before writing any backup (health reads it)."""
    return {'type': p['type'], 'database': p['db'] if p['type'] == 'logical' else None}


def _fail_with_report(module, repo, started, result, exc, name):
    message = str(exc)
    if isinstance(exc, OSError):
        message = 'backup failed writing to %s: %s (is the disk full or read-only?)' % (
            exc.filename or repo.root, exc.strerror or exc)
    if isinstance(exc, S3Error) and result.get('backup'):
        message = 'the local backup %s is complete, but the S3 upload failed: %s' % (name, message)
    try:
        result['report_path'], _report = reports.write_backup_report(
            repo, started, 'failed', backups=[result['backup']['meta']] if result.get('backup') else [],
            error=message, extra=_run_fields(module.params))
    except OSError:
        pass
    module.fail_json(msg=message, **result)


def physical(module, p, log, result):
    """A pg_basebackup into base/, complete only once its WAL is archived."""
    codec = p['compression'] or 'zstd'
    try:
        keys = encryption.Keys.from_params(p)
        if keys.enabled:
            keys.recipient()  # a bad key fails now, not after the backup
        conn = Connection.from_params(p, db='postgres')
        repo = repository.Repository(p['backup_root'], p['pg_os_user'])
        plan = physical_backup.plan(repo, p['name_prefix'], codec, p['compression_level'], workers=p['jobs'])
        s3 = common.s3_store(p) if p['upload'] else None
        physical_backup.check_archiving(conn, log=log)
    except physical_backup.ArchivingNotConfigured as exc:
        if p['only_if_archiving']:
            result.update(skipped_reason=str(exc), msg='no base backup taken: WAL archiving is not configured')
            module.exit_json(**result)
        module.fail_json(msg=str(exc), **result)
    except EXPLAINED_ERRORS as exc:
        module.fail_json(msg=str(exc), **result)
    if module.check_mode:
        result.update(changed=True, backup=dict(path=plan['path'], meta=None,
                                                s3_uri=s3.uri('base/' + plan['name']) if s3 else None),
                      msg='would take a base backup of the cluster into %s' % plan['path'])
        module.exit_json(**result)
    try:
        repo.ensure()
    except repository.RepositoryError as exc:
        module.fail_json(msg=str(exc), **result)
    started = plan['started']
    try:
        with repo.lock('backup', wait_s=p['lock_wait']):
            plan = physical_backup.plan(repo, p['name_prefix'], codec, p['compression_level'], workers=p['jobs'])
            if os.path.lexists(plan['path']) or os.path.lexists(plan['meta_path']):
                time.sleep(1.0)
                plan = physical_backup.plan(repo, p['name_prefix'], codec, p['compression_level'], workers=p['jobs'])
            started = plan['started']
            meta = physical_backup.take(conn, repo, plan, wait_archive_s=p['wait_archive'], log=log, keys=keys)
            result['changed'] = True
            entries, _problems = repo.scan('base')
            checks = reports.thresholds(meta, reports.previous_backup(entries, meta))
            backup = dict(path=plan['path'], meta=meta, s3_uri=None)
            result['backup'] = backup
            if s3:
                backup['s3_uri'], _objects = s3.upload_backup(repo.root, plan['path'], plan['meta_path'])
    except EXPLAINED_ERRORS + (OSError,) as exc:
        _fail_with_report(module, repo, started, result, exc, plan['name'])
    result['thresholds'] = checks
    result['report_path'], _report = reports.write_backup_report(
        repo, started, 'success', backups=[dict(meta, s3_uri=backup['s3_uri'])], checks=checks,
        extra=_run_fields(p))
    result['msg'] = 'base backup %s (%d bytes, %.1f s, WAL %s..%s archived)' % (
        meta['name'], meta['size_bytes'], meta['duration_s'], meta['wal_start'], meta['wal_stop'])
    module.exit_json(**result)


def main():
    module = PgBackupModule(
        argument_spec=common.full_argspec(
            with_encryption=True,
            db=dict(type='str', default='modulodb', aliases=['database']),
            type=dict(type='str', default='logical', choices=['logical', 'physical']),
            format=dict(type='str', default='plain', choices=['plain', 'custom', 'directory']),
            compression=dict(type='str', choices=['gzip', 'zstd', 'lz4', 'none']),
            compression_level=dict(type='int'),
            jobs=dict(type='int', default=2),
            name_prefix=dict(type='str', default='modulo'),
            upload=dict(type='bool', default=True),
            lock_wait=dict(type='int', default=0),
            only_if_archiving=dict(type='bool', default=False),
            wait_archive=dict(type='int', default=300),
        ),
        supports_check_mode=True,
    )
    p = module.params
    log = module.command_log
    result = module.result
    result.update(backup=None)
    module.audit(p['backup_root'], 'backup', p['db'] if p['type'] == 'logical' else 'cluster',
                 db_user=p['login_user'], details={'type': p['type']})
    if p['type'] == 'physical':
        physical(module, p, log, result)
    if p['compression'] is None:
        p['compression'] = 'gzip'
    if p['jobs'] < 1:
        module.fail_json(msg='jobs must be 1 or more', **result)
    try:
        keys = encryption.Keys.from_params(p)
        if keys.enabled:
            keys.recipient()  # a bad key fails now, not after the dump
        conn = Connection.from_params(p)
        repo = repository.Repository(p['backup_root'], p['pg_os_user'])
        plan = logical_backup.plan(repo, p['db'], p['format'], p['compression'], p['compression_level'],
                                   p['name_prefix'], logical_backup.pg_dump_major(conn), encrypted=keys.enabled)
        s3 = common.s3_store(p) if p['upload'] else None
    except EXPLAINED_ERRORS as exc:
        module.fail_json(msg=str(exc), **result)

    planned = dict(path=plan['path'], meta=None, s3_uri=s3.uri('full/' + plan['file']) if s3 else None)
    if module.check_mode:
        result.update(changed=True, backup=planned,
                      msg='would back up database %s to %s' % (p['db'], plan['path']))
        module.exit_json(**result)

    try:
        repo.ensure()
    except repository.RepositoryError as exc:
        module.fail_json(msg=str(exc), **result)

    started = plan['started']
    try:
        with repo.lock('backup', wait_s=p['lock_wait']):
            # Named after the moment the lock was ours: a run that waited for another
            # one must neither pretend to have started earlier nor take its name.
            plan = logical_backup.unused_plan(repo, plan)
            started = plan['started']
            logical_backup.check_database_reachable(conn, p['db'], log=log)
            meta = logical_backup.take(conn, repo, plan, jobs=p['jobs'], log=log, keys=keys)
            result['changed'] = True
            entries, _problems = repo.scan('full')
            checks = reports.thresholds(meta, reports.previous_backup(entries, meta))
            backup = dict(path=plan['path'], meta=meta, s3_uri=None)
            result['backup'] = backup
            if s3:
                globals_file = (meta.get('globals') or {}).get('file')
                backup['s3_uri'], _objects = s3.upload_backup(
                    repo.root, plan['path'], plan['meta_path'],
                    extra_paths=[repo.path('full', globals_file)] if globals_file else [])
    except EXPLAINED_ERRORS + (OSError,) as exc:
        _fail_with_report(module, repo, started, result, exc, plan['name'])

    result['thresholds'] = checks
    try:
        result['report_path'], _report = reports.write_backup_report(
            repo, started, 'success', backups=[dict(meta, s3_uri=backup['s3_uri'])], checks=checks,
            extra=_run_fields(p))
    except OSError as exc:
        # The backup itself is complete; monitoring reads the reports, so say so plainly.
        module.fail_json(msg='the backup %s is complete, but its run report could not be written to %s: %s '
                             '(is the disk full or read-only?)' % (meta['name'], repo.path('logs'),
                                                                   exc.strerror or exc), **result)
    breached = [c['check'] for c in checks if c.get('breached')]
    if breached:
        module.warn('backup %s breached the runbook threshold(s): %s' % (meta['name'], ', '.join(breached)))
    result['msg'] = 'backed up database %s to %s (%d bytes, %.1f s)' % (
        p['db'], plan['path'], meta['size_bytes'], meta['duration_s'])
    module.exit_json(**result)


if __name__ == '__main__':
    main()
