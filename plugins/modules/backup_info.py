#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: backup_info
short_description: List, verify and assess the backups of a modulo.pgbackup repository
version_added: 0.1.0
description:
  - Lists the backups of the local repository and of its S3 mirror, oldest first, each with its C(.meta).
  - Only backups whose C(.meta) says C(status=complete) count as restorable; files without a C(.meta) and
    temporary files of interrupted runs are reported under RV(problems) and never used.
  - With O(verify=true), recomputes each selected backup's sha256 and reads it completely (C(gzip -t),
    C(zstd -t), C(pg_restore) of the archive to C(/dev/null)).
  - Evaluates the backup health (RV(health)) - the newest recoverable point against the RPO (for PITR the newest
    archived WAL counts, once the WAL chain from a base backup is continuous), the runbook's thresholds (backup
    duration over 30 minutes, size growth over 50 %), the last backup run, the last restore drill (result and age),
    free space in the repository, and the continuity of the archived WAL from the oldest base backup.
  - With O(server_checks=true) it also asks the live server for C(pg_stat_archiver) (failing archive_command), the
    C(.ready) backlog in C(pg_wal) (needs superuser or C(pg_monitor)), and free space where C(pg_wal) lives.
  - The module only reads; C(playbooks/health-check.yml) writes RV(health) as JSON and as a Prometheus textfile.
author:
  - modulo.pgbackup contributors (@modulo)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - modulo.pgbackup.connection
  - modulo.pgbackup.repository
  - modulo.pgbackup.s3
  - modulo.pgbackup.encryption
options:
  select:
    description:
      - C(all), C(latest) (the newest complete backup) or the name of one backup.
    type: str
    default: all
  type:
    description:
      - Which backups to list.
    type: str
    choices: [ logical, physical, all ]
    default: all
  db:
    description:
      - Only backups of this database. Empty means every database.
    type: str
  verify:
    description:
      - Recompute checksums and test-decompress the selected local backups.
      - Fails the task when one of them is damaged.
    type: bool
    default: false
  rpo_target_s:
    description:
      - Recovery point objective in seconds; a newest recoverable point older than this breaches RV(health).
    type: int
    default: 3600
  max_duration_s:
    description:
      - A newest complete backup that took longer than this breaches RV(health) (runbook, 30 minutes).
    type: int
    default: 1800
  max_size_growth:
    description:
      - Growth of the newest complete backup over the previous one that breaches RV(health); C(0.5) is +50 %.
    type: float
    default: 0.5
  drill_max_age_days:
    description:
      - The newest restore drill must have passed and be at most this many days old. C(0) skips the drill check.
    type: int
    default: 35
  min_free_percent:
    description:
      - Free space below this percentage of the repository's (or C(pg_wal)'s) filesystem breaches RV(health).
        The repository must also have room for the newest backup of each kind plus 50 %.
    type: int
    default: 10
  max_archive_backlog:
    description:
      - More C(.ready) segments than this waiting in C(pg_wal) breaches RV(health). Only with O(server_checks).
    type: int
    default: 10
  server_checks:
    description:
      - Also connect to the server (connection options) for archiver status, the C(.ready) backlog and free space
        in C(pg_wal). An unreachable server then breaches RV(health).
    type: bool
    default: false
  pgdata:
    description:
      - Data directory, for the free space of C(pg_wal). Default is the server's C(data_directory).
    type: path
attributes:
  check_mode:
    support: full
    details: Read-only; runs the same in check mode.
  diff_mode:
    support: none
    details: Nothing to diff.
  platform:
    platforms: posix
seealso:
  - module: modulo.pgbackup.pg_backup
  - module: modulo.pgbackup.backup_restore
'''

EXAMPLES = r'''
- name: What can we restore from?
  modulo.pgbackup.backup_info:
    backup_root: /var/backups/postgresql
  register: info

- name: Check the newest backup end to end
  modulo.pgbackup.backup_info:
    backup_root: /var/backups/postgresql
    select: latest
    verify: true
'''

RETURN = r'''
backups:
  description: Selected backups, oldest first; each is its C(.meta) plus C(path), C(location) and C(s3_uri).
  returned: always
  type: list
  elements: dict
  sample: [{"name": "modulo_full_20261124_020000", "status": "complete", "location": "both",
            "path": "/var/backups/postgresql/full/modulo_full_20261124_020000.sql.gz"}]
latest:
  description: The newest complete backup (its C(.meta) plus location), or null.
  returned: always
  type: dict
problems:
  description: Files in the repository that are not usable backups, with the reason.
  returned: always
  type: list
  elements: dict
verification:
  description: Per selected backup, C(checksum_ok), C(decompress_ok), C(ok) and C(errors). Only with O(verify=true).
  returned: when verify is true
  type: list
  elements: dict
recovery_window:
  description:
    - The points a restore can reach now. C(logical) is the newest complete logical backup (of O(db) when set) with
      C(point), the time of its dump snapshot. C(pitr) is the range of point-in-time recovery, from the end of the
      oldest complete base backup (C(from)) to the newest file of the local WAL archive (C(to)), or null without a
      base backup or archive. C(newest_point) and C(newest_method) name the newest of them.
  returned: always
  type: dict
  sample: {"logical": {"backup": "modulo_full_20261124_020000", "database": "modulodb", "point": "2026-11-24T02:00:01Z"},
           "pitr": {"from": "2026-11-24T02:01:10Z", "to": "2026-11-24T14:29:51Z", "base_backups": 1},
           "newest_point": "2026-11-24T14:29:51Z", "newest_method": "pitr"}
health:
  description:
    - C(ok) (false when any check is breached), C(breached) and C(unknown) (check names), C(checks) (each with
      C(check), C(status) C(ok)/C(breached)/C(unknown)/C(skipped), C(detail) and C(advice)), C(thresholds),
      C(wal_chain), C(summary) (readable lines) and C(metrics) (Prometheus text, C(modulo_pgbackup_*) gauges).
    - Checks are C(backup_age), C(last_backup_run), C(logical_backup_duration), C(logical_size_growth),
      C(physical_backup_duration), C(physical_size_growth), C(restore_drill), C(archiver), C(archive_backlog),
      C(repository_free_space), C(pg_wal_free_space) and C(wal_chain).
  returned: always
  type: dict
  sample: {"ok": false, "breached": ["restore_drill"], "unknown": [],
           "checks": [{"check": "backup_age", "status": "ok", "breached": false, "value_s": 95, "limit_s": 3600,
                       "detail": "newest recoverable point 95 s ago (archived WAL 000000010000000000000042), RPO 60 min"}]}
executed_commands:
  description:
    - External commands run.
    - Each is the argv list of one program, as it was run.
  returned: always
  type: list
  elements: list
'''


from ansible_collections.modulo.pgbackup.plugins.module_utils import catalog, common, encryption, health, repository
from ansible_collections.modulo.pgbackup.plugins.module_utils.module_base import EXPLAINED_ERRORS, PgBackupModule
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import Connection, PgError, find_bindir


def main():
    module = PgBackupModule(
        argument_spec=common.full_argspec(
            with_encryption=True,
            select=dict(type='str', default='all'),
            type=dict(type='str', default='all', choices=['logical', 'physical', 'all']),
            db=dict(type='str'),
            verify=dict(type='bool', default=False),
            rpo_target_s=dict(type='int', default=3600),
            max_duration_s=dict(type='int', default=1800),
            max_size_growth=dict(type='float', default=0.5),
            drill_max_age_days=dict(type='int', default=35),
            min_free_percent=dict(type='int', default=10),
            max_archive_backlog=dict(type='int', default=10),
            server_checks=dict(type='bool', default=False),
            pgdata=dict(type='path'),
        ),
        supports_check_mode=True,
    )
    p = module.params
    log = module.command_log
    result = module.result
    result.update(backups=[], latest=None, problems=[], recovery_window=None)
    try:
        limits = health.thresholds(**dict((k, p[k]) for k in health.DEFAULTS))
    except ValueError as exc:
        module.fail_json(msg=str(exc), **result)
    try:
        repo = repository.Repository(p['backup_root'], p['pg_os_user'])
        s3 = common.s3_store(p)
        everything, problems = catalog.list_backups(repo, kinds=('logical', 'physical'), s3=s3)
    except EXPLAINED_ERRORS + (OSError,) as exc:
        module.fail_json(msg='cannot list backups: %s' % exc, **result)
    if p['db']:
        # A base backup holds every database of its cluster: it stays whatever db is asked for.
        everything = [b for b in everything if b.get('type') == 'physical' or b.get('database') == p['db']]
    backups = [b for b in everything if p['type'] == 'all' or b.get('type') == p['type']]
    result['problems'] = problems
    try:
        conn = Connection.from_params(p, db='postgres') if p['server_checks'] else None
    except PgError as exc:
        module.fail_json(msg=str(exc), **result)
    # Health looks at every kind: a logical-only listing must not hide the base backups PITR relies on.
    try:
        facts = health.gather(repo, everything, conn=conn, pgdata=p['pgdata'], log=log, s3=common.s3_settings(p),
                              store=s3)
    except EXPLAINED_ERRORS + (ValueError,) as exc:
        module.fail_json(msg='cannot read the restore drill reports in S3: %s' % exc, **result)
    result['health'] = health.evaluate(facts, limits)
    result['recovery_window'] = catalog.recovery_window(everything, repo.root, chain=result['health']['wal_chain'])
    result['health']['summary'] = health.summary(result['health'])
    result['health']['metrics'] = health.metrics(result['health'])
    complete = [b for b in backups if repository.is_complete(b)]
    result['latest'] = complete[-1] if complete else None
    selected = repository.select(backups, p['select'])
    if p['select'] not in ('all', 'latest') and not selected:
        module.fail_json(msg='no backup named %s in %s%s' % (
            p['select'], repo.root, ' or %s' % s3.uri('') if s3 else ''), **result)
    result['backups'] = selected
    if p['verify']:
        try:
            pg_restore = '%s/pg_restore' % find_bindir(p.get('pg_bindir'))
        except PgError:
            pg_restore = None
        keys = encryption.Keys.from_params(p)
        result['verification'] = [catalog.verify(b, pg_restore=pg_restore, keys=keys) for b in selected]
        bad = [v for v in result['verification'] if not v['ok']]
        if bad:
            module.fail_json(msg='%d backup(s) failed verification: %s' % (
                len(bad), '; '.join('%s: %s' % (v['name'], ', '.join(v['errors'])) for v in bad)), **result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
