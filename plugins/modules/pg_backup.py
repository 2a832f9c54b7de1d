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
  checkpoint:
    description:
      - For O(type=physical), the checkpoint the base backup starts with (C(pg_basebackup --checkpoint)).
      - C(fast) starts at once and writes every dirty buffer as fast as the disks allow.
      - C(spread) waits for a checkpoint paced by the server's C(checkpoint_completion_target), so a busy
        server sees no burst of writes, at the price of a later start (up to C(checkpoint_timeout)).
      - Only for O(type=physical).
    type: str
    choices: [ fast, spread ]
    default: fast
  max_rate:
    description:
      - For O(type=physical), the most the server sends per second (C(pg_basebackup --max-rate)), so the
        backup's reads leave the disks to the application. Kilobytes per second, or a number with C(k) or
        C(M), from C(32k) to C(1024M), e.g. C(100M). Unset, the backup reads as fast as it can.
      - The limit counts what the server sends, after its own compression (the default C(zstd)), so the
        server reads the data directory faster than that by the compression ratio.
      - Only for O(type=physical).
    type: str
  backup_from:
    description:
      - For O(type=physical), which server the connection options name, so the read load of the base backup
        can go to a replica.
      - C(primary) backs up the primary; the task fails when the server is a standby (in recovery).
      - C(standby) backs up a streaming standby (C(pg_basebackup) needs the C(REPLICATION) attribute on the
        standby). The task fails when the server is not in recovery. The WAL comes from the primary's archive
        (M(modulo.pgbackup.wal_archive) on the primary, into the same O(backup_root)); archiving is checked on
        the primary, and after the backup the primary is asked to switch WAL (C(pg_switch_wal())) so the
        backup's last segment is archived at once instead of at the next C(archive_timeout).
      - The primary is O(primary_host) and O(primary_port), or else the server the standby streams from
        (C(pg_stat_wal_receiver)). It is reached with the same O(login_user), O(login_password) and
        O(ssl_mode), and must be reachable when the backup starts. That role should be allowed to run
        C(pg_switch_wal()) there (a superuser, or C(GRANT EXECUTE ON FUNCTION pg_switch_wal() TO ...));
        without it the last segment is archived at the primary's next C(archive_timeout), so keep
        O(wait_archive) above that.
      - A backup from a standby starts at the standby's last restartpoint (the primary's last checkpoint it
        replayed), so O(checkpoint=fast) does not force a new checkpoint and restores may replay more WAL.
      - The C(.meta) records C(backup_from) (and for a standby C(standby_host), C(standby_port),
        C(primary_host), C(primary_port), C(replay_lag_s)); point-in-time recovery uses it like any other.
    type: str
    choices: [ primary, standby ]
    default: primary
  primary_host:
    description:
      - With O(backup_from=standby), the host (or Unix socket directory) of the standby's primary.
      - Unset, the host the standby streams from (C(sender_host) of C(pg_stat_wal_receiver)).
    type: str
  primary_port:
    description:
      - With O(backup_from=standby), the port of the standby's primary.
      - Unset, the port the standby streams from when O(primary_host) is unset too, else O(port).
    type: int
  max_replay_lag:
    description:
      - With O(backup_from=standby), refuse to start when the standby's replay lag is more than this many
        seconds (the age of its last replayed commit while it has WAL left to replay, 0 while it has replayed
        all it received), since its backup would hold data that old. C(0) turns the check off.
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

- name: Base backup from a streaming standby, the WAL from the primary's archive
  modulo.pgbackup.pg_backup:
    backup_root: /var/backups/postgresql
    type: physical
    backup_from: standby
    login_host: replica1.example.com
    login_user: backup
    login_password: "{{ vault_backup_password }}"
    primary_host: db1.example.com
    max_replay_lag: 120

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

from ansible_collections.modulo.pgbackup.plugins.module_utils import common, encryption, repository
from ansible_collections.modulo.pgbackup.plugins.module_utils.module_base import PgBackupModule
from ansible_collections.modulo.pgbackup.plugins.module_utils.ops import backup as backups
from ansible_collections.modulo.pgbackup.plugins.module_utils.physical_backup import ArchivingNotConfigured
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import Connection


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
            checkpoint=dict(type='str', default='fast', choices=['fast', 'spread']),
            max_rate=dict(type='str'),
            backup_from=dict(type='str', default='primary', choices=['primary', 'standby']),
            primary_host=dict(type='str'),
            primary_port=dict(type='int'),
            max_replay_lag=dict(type='int', default=300),
        ),
        supports_check_mode=True,
    )
    p = module.params
    module.result.update(backup=None)
    physical = p['type'] == 'physical'
    module.audit(p['backup_root'], 'backup', 'cluster' if physical else p['db'], db_user=p['login_user'],
                 details={'type': p['type']})
    with module.errors_fail():
        request = backups.Request(kind=p['type'], db=p['db'], fmt=p['format'], compression=p['compression'],
                                  compression_level=p['compression_level'], jobs=p['jobs'],
                                  name_prefix=p['name_prefix'], lock_wait=p['lock_wait'], wait_archive=p['wait_archive'],
                                  checkpoint=p['checkpoint'], max_rate=p['max_rate'], backup_from=p['backup_from'],
                                  primary_host=p['primary_host'], primary_port=p['primary_port'],
                                  max_replay_lag=p['max_replay_lag'])
        run = backups.Backup(request, Connection.from_params(p, db='postgres' if physical else None),
                             repository.Repository(p['backup_root'], p['pg_os_user']),
                             encryption.Keys.from_params(p), s3=common.s3_store(p) if p['upload'] else None,
                             log=module.command_log)
        try:
            planned = run.prepare()
        except ArchivingNotConfigured as exc:
            if not p['only_if_archiving']:
                raise
            module.exit_json(skipped_reason=str(exc), msg='no base backup taken: WAL archiving is not configured',
                             **module.result)
    if module.check_mode:
        module.result.update(changed=True, backup=planned, msg=run.would())
        module.exit_json(**module.result)
    with module.errors_fail():
        try:
            outcome = run.run()
        except backups.BackupFailed as exc:
            module.fail(str(exc), changed=exc.backup is not None, backup=exc.backup,
                        **({'report_path': exc.report_path} if exc.report_path else {}))
    for warning in outcome.warnings:
        module.warn(warning)
    if outcome.breached:
        module.warn('backup %s breached the runbook threshold(s): %s'
                    % (outcome.backup['meta']['name'], ', '.join(outcome.breached)))
    module.result.update(changed=True, backup=outcome.backup, thresholds=outcome.thresholds,
                         report_path=outcome.report_path, msg=outcome.msg)
    module.exit_json(**module.result)


if __name__ == '__main__':
    main()
