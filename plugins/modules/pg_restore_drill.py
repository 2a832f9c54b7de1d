#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: pg_restore_drill
short_description: Restore a backup into a throwaway cluster, check it, and write the monthly drill report
version_added: 0.1.0
description:
  - The runbook's monthly restore drill (C(restore-script.sh drill)). Picks a backup (the newest complete one by
    default), checks its sha256 against its C(.meta) (fetching it from S3 when it is only there), and restores it
    into a scratch cluster created on the drill host. Production is never connected to.
  - The scratch cluster has its own directory under O(scratch_dir), its own port, a private Unix socket,
    C(listen_addresses=''), and C(archive_mode=off), so a restored copy never writes into the production archive.
    It is stopped and removed at the end, also when the drill fails.
  - O(kind=logical) creates an empty cluster with C(initdb), loads the dump and compares every table's row count
    with the C(.meta). O(kind=physical) unpacks a base backup, runs C(pg_verifybackup) on the untouched copy and
    starts it with C(recovery_target=immediate). O(kind=pitr) replays the whole WAL archive onto a base backup and
    reports the point reached.
  - Every kind then runs C(pg_amcheck --heapallindexed) (heap and btree indexes; the C(amcheck) extension is
    installed in the scratch copy only) and the O(smoke_queries).
  - RTO measured is restore time plus recovery time, against O(rto_target_s). RPO measured is the age, at drill
    start, of the newest point the drill proved recoverable (the last replayed transaction for C(pitr), the end
    of the base backup for C(physical), the dump's snapshot for C(logical)), against O(rpo_target_s). Only
    C(pitr) drills fail on the RPO, because only the WAL archive can meet an RPO shorter than the backup
    interval; the other kinds report it.
  - The report C(monthly_drill_YYYYMMDD_HHMMSS.json) is written to O(report_dir) and copied to C(<backup_root>/logs/),
    passed or failed. The task fails after writing it when any check failed, so AWX and cron see the failure.
  - O(mode=verify) is the runbook's step 4 "Verify Restore" (C(restore-script.sh verify modulodb)). It checks the
    live database O(db) with the connection options and never changes it (its sessions are read only). The checks are
    connectivity (C(SELECT 1) and the server version), C(pg_amcheck --heapallindexed) only when the C(amcheck)
    extension is already installed in O(db) (otherwise the check is reported as skipped, and C(CREATE EXTENSION amcheck)
    enables it; nothing is installed), row counts compared with the C(.meta) of O(backup), and the O(smoke_queries).
    The report C(verify_<db>_YYYYMMDD_HHMMSS.json) is written to C(<backup_root>/logs/).
author:
  - modulo.pgbackup contributors (@modulo)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - modulo.pgbackup.connection
  - modulo.pgbackup.repository
  - modulo.pgbackup.s3
  - modulo.pgbackup.encryption
options:
  mode:
    description:
      - C(drill) restores a backup into a scratch cluster and checks it; C(verify) checks the live database O(db).
    type: str
    choices: [ drill, verify ]
    default: drill
  expect_exact_rows:
    description:
      - With O(mode=verify), a row count that differs from the backup's C(.meta) fails the verification (use it right
        after a restore). By default a difference is a warning, since a live database moves on after its backup.
    type: bool
    default: false
  backup:
    description:
      - With O(mode=verify), the logical backup whose C(.meta) row counts the live database is compared with, a name
        or path, or C(latest) for the newest complete logical backup of O(db); when O(db) has none, the row count
        check is skipped with a note.
      - C(latest) (the newest complete backup of the O(kind)), or a backup name such as
        C(modulo_full_20261124_020000) or C(modulo_base_20261124_020000); for O(kind=logical) also a path to
        a backup file that has its C(.meta) beside it.
    type: str
    default: latest
  kind:
    description:
      - C(logical) restores a logical dump; C(physical) a base backup to its end; C(pitr) a base backup plus
        the whole WAL archive.
    type: str
    choices: [ logical, physical, pitr ]
    default: logical
  db:
    description:
      - With O(kind=logical) and O(backup=latest), only consider backups of this source database.
      - With O(kind=physical) or O(kind=pitr), the database checked in the restored cluster (default C(modulodb)).
      - With O(mode=verify), the live database checked (default C(modulodb)).
    type: str
  scratch_dir:
    description:
      - Directory in which the scratch cluster is built (a C(.pitr-*) subdirectory, removed afterwards).
        Default C(<backup_root>/restore-tests/). It must be reachable by O(pg_os_user).
    type: path
  scratch_port:
    description:
      - Port of the scratch cluster (it listens only on its private Unix socket). Default a free port.
      - A given port that is in use (a listener on 127.0.0.1 or a PostgreSQL socket C(.s.PGSQL.<port>) in
        C(/var/run/postgresql), C(/run/postgresql) or C(/tmp)) fails the drill with a report saying so.
    type: int
  smoke_queries:
    description:
      - Queries run on the restored database after the built-in checks; each is a check of its own.
      - A query that errors fails its check.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Name of the check in the report.
        type: str
      sql:
        description: The SQL to run.
        type: str
        required: true
      db:
        description: Database to run it in. Default the database checked by the drill.
        type: str
      expect:
        description:
          - Expected text of the first column of the first row, as psql prints it (C(true) is C(t)).
        type: raw
      min_rows:
        description: Least number of rows the query must return.
        type: int
      max_rows:
        description: Most rows the query may return.
        type: int
  rto_target_s:
    description: Recovery time objective in seconds (restore plus recovery time).
    type: int
    default: 1800
  rpo_target_s:
    description: Recovery point objective in seconds (age of the newest recoverable point at drill time).
    type: int
    default: 3600
  report_dir:
    description: Where the report is written. Default C(<backup_root>/restore-tests). A copy goes to C(<backup_root>/logs).
    type: path
  jobs:
    description: Parallel jobs of C(pg_restore) and C(pg_amcheck).
    type: int
    default: 2
  recovery_timeout:
    description: Seconds to wait for the scratch cluster to recover and promote.
    type: int
    default: 3600
attributes:
  check_mode:
    support: full
    details: Picks the backup and reports what the drill would do; nothing is restored and no report is written.
      O(mode=verify) only reads, so it runs its checks in check mode too, without writing the report.
  diff_mode:
    support: none
    details: Nothing to diff.
  platform:
    platforms: posix
notes:
  - Needs the PostgreSQL server programs (C(initdb), C(pg_ctl), C(pg_verifybackup), C(pg_amcheck)) on the drill
    host, and disk space for one restored copy under O(scratch_dir).
seealso:
  - module: modulo.pgbackup.pg_backup
  - module: modulo.pgbackup.backup_restore
  - module: modulo.pgbackup.backup_info
'''

EXAMPLES = r'''
- name: Monthly restore drill of the latest logical backup (runbook "restore-script.sh drill")
  modulo.pgbackup.pg_restore_drill:
    backup_root: /var/backups/postgresql
    smoke_queries:
      - name: customers exist
        sql: SELECT count(*) > 0 FROM customers
        expect: true
      - name: recent orders
        sql: SELECT id FROM orders ORDER BY created_at DESC LIMIT 10
        min_rows: 1

- name: Verify the live database (runbook step 4, "restore-script.sh verify modulodb")
  modulo.pgbackup.pg_restore_drill:
    backup_root: /var/backups/postgresql
    mode: verify
    db: modulodb

- name: Drill a point-in-time recovery to the newest archived WAL
  modulo.pgbackup.pg_restore_drill:
    backup_root: /var/backups/postgresql
    kind: pitr
    db: modulodb
    rpo_target_s: 3600

- name: Drill one physical base backup on a fixed port
  modulo.pgbackup.pg_restore_drill:
    backup_root: /var/backups/postgresql
    kind: physical
    backup: modulo_base_20261124_020000
    scratch_port: 55432
'''

RETURN = r'''
report:
  description:
    - The drill report, as written to O(report_dir).
    - With O(mode=verify), the verification report (C(database), C(server_version), C(backup), C(checks) each with a
      C(level) of C(error), C(warning) or C(skipped), C(warnings), C(timings), C(status), C(error)).
  returned: always, when a report was written
  type: dict
  contains:
    status:
      description: C(passed) or C(failed). Warnings and skipped checks do not fail a verification.
      type: str
    kind:
      description: The O(kind) drilled.
      type: str
    backup:
      description: The backup tested (name, type, finished_at, size_bytes, sha256, location) or null when none was found.
      type: dict
    host:
      description: Host the drill ran on.
      type: str
    started_at:
      description: Start of the drill (ISO 8601 UTC).
      type: str
    finished_at:
      description: End of the drill (ISO 8601 UTC).
      type: str
    checks:
      description: Every check with C(name), C(passed) and C(detail), in the order they ran.
      type: list
      elements: dict
    timings:
      description: Seconds spent in C(checksum_s), C(fetch_s), C(restore_s), C(recovery_s), C(checks_s) and C(total_s).
      type: dict
    rto:
      description: C(target_s), C(measured_s) (restore plus recovery), C(passed).
      type: dict
    rpo:
      description: C(target_s), C(measured_s), C(passed), C(enforced), C(basis) and C(newest_recoverable_point).
      type: dict
    reached:
      description: For physical and pitr drills, where recovery stopped (C(timeline), C(redo_done_at),
        C(last_replayed_transaction), C(stop)).
      type: dict
    error:
      description: Why the drill stopped early, or null.
      type: str
report_path:
  description: Path of the report under O(report_dir).
  returned: when a report was written
  type: str
report_copies:
  description: Every path the report was written to (O(report_dir) and C(logs/)).
  returned: when a report was written
  type: list
  elements: str
report_s3_uri:
  description:
    - With S3 configured, where the report was copied in the mirror (C(restore-tests/) under O(s3_prefix)), so that
      the health check of the database host finds a drill run on another machine; null without S3 or when the
      copy failed (a warning says so).
  returned: when a report was written
  type: str
  sample: s3://modulo-backups/database-backups/db1/restore-tests/monthly_drill_20261206_040000.json
plan:
  description: In check mode, what the drill would do.
  returned: check mode
  type: dict
executed_commands:
  description:
    - External commands run; passwords are never part of them.
    - Each is the argv list of one program, as it was run.
  returned: always
  type: list
  elements: list
'''


from ansible_collections.modulo.pgbackup.plugins.module_utils import common, drill, encryption, repository, verify
from ansible_collections.modulo.pgbackup.plugins.module_utils.module_base import EXPLAINED_ERRORS, PgBackupModule
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import ReadOnlyConnection


def main():
    module = PgBackupModule(
        argument_spec=common.full_argspec(
            with_encryption=True,
            mode=dict(type='str', default='drill', choices=['drill', 'verify']),
            expect_exact_rows=dict(type='bool', default=False),
            backup=dict(type='str', default='latest'),
            kind=dict(type='str', default='logical', choices=list(drill.KINDS)),
            db=dict(type='str'),
            scratch_dir=dict(type='path'),
            scratch_port=dict(type='int'),
            smoke_queries=dict(type='list', elements='dict', default=[], options=dict(
                name=dict(type='str'),
                sql=dict(type='str', required=True),
                db=dict(type='str'),
                expect=dict(type='raw'),
                min_rows=dict(type='int'),
                max_rows=dict(type='int'),
            ), mutually_exclusive=[('expect', 'min_rows'), ('expect', 'max_rows')]),
            rto_target_s=dict(type='int', default=drill.DEFAULT_RTO_S),
            rpo_target_s=dict(type='int', default=drill.DEFAULT_RPO_S),
            report_dir=dict(type='path'),
            jobs=dict(type='int', default=2),
            recovery_timeout=dict(type='int', default=3600),
        ),
        supports_check_mode=True,
    )
    p = module.params
    log = module.command_log
    result = module.result
    module.audit(p['backup_root'], p['mode'], p['db'] if p['mode'] == 'verify' else p['backup'],
                 db_user=p['login_user'], details={'kind': p['kind']} if p['mode'] == 'drill' else None)
    if p['mode'] == 'verify':
        run_verify(module, log, result)
    try:
        repo = repository.Repository(p['backup_root'], p['pg_os_user'])
        request = drill.Request(
            kind=p['kind'], backup=p['backup'], db=p['db'], scratch_dir=p['scratch_dir'], scratch_port=p['scratch_port'],
            smoke_queries=p['smoke_queries'], rto_target_s=p['rto_target_s'], rpo_target_s=p['rpo_target_s'],
            jobs=p['jobs'], recovery_timeout=p['recovery_timeout'], pg_bindir=p['pg_bindir'], pg_os_user=p['pg_os_user'])
        runner = drill.Drill(request, repo, keys=encryption.Keys.from_params(p), s3=common.s3_store(p),
                             s3_settings=common.s3_settings(p), log=log)
    except EXPLAINED_ERRORS as exc:
        module.fail_json(msg=str(exc), **result)

    if module.check_mode:
        try:
            result['plan'] = runner.plan()
        except EXPLAINED_ERRORS + (OSError,) as exc:
            module.fail_json(msg='the drill would fail: %s' % exc, **result)
        module.exit_json(msg='would restore %s (%s) into a scratch cluster and check it'
                         % (result['plan']['backup'], p['kind']), **result)

    try:
        repo.ensure()
        with repo.lock('restore-drill'):
            report = runner.run()
            paths, s3_uri, warning = drill.publish_report(repo, report, s3=runner.s3, report_dir=p['report_dir'])
    except EXPLAINED_ERRORS + (OSError,) as exc:
        module.fail_json(msg='restore drill could not run or write its report: %s' % exc, **result)
    result.update(changed=True, report=report, report_path=paths[0], report_copies=paths, report_s3_uri=s3_uri)
    if warning:
        module.warn(warning)
    if report['status'] != 'passed':
        failed = drill.failed_checks(report) or ['drill']
        module.fail_json(msg='restore drill FAILED (%s): %s; report %s' % (
            ', '.join(failed), report.get('error') or '; '.join(
                c['detail'] for c in report['checks'] if not c['passed']), paths[0]), **result)
    rto = report['rto']
    module.exit_json(msg='restore drill passed: %s restored and checked (%d checks), RTO %.1f s of %d s; report %s'
                     % (report['backup']['name'], len(report['checks']), rto['measured_s'], rto['target_s'], paths[0]),
                     **result)


def run_verify(module, log, result):
    """Mode verify: read-only checks of the live database; the report is its only output."""
    p = module.params
    try:
        repo = repository.Repository(p['backup_root'], p['pg_os_user'])
        db = p['db'] or verify.DEFAULT_DB
        runner = verify.Verify(ReadOnlyConnection.from_params(p, db=db), repo, db=db, backup=p['backup'],
                               expect_exact_rows=p['expect_exact_rows'], smoke_queries=p['smoke_queries'],
                               jobs=p['jobs'], s3=common.s3_store(p), log=log)
    except EXPLAINED_ERRORS as exc:
        module.fail_json(msg=str(exc), **result)
    report = runner.run()
    result['report'] = report
    if not module.check_mode:
        try:
            repo.ensure()
            path = verify.write_report(repo, report)
        except EXPLAINED_ERRORS + (OSError,) as exc:
            module.fail_json(msg='verify could not write its report: %s' % exc, **result)
        result.update(report_path=path, report_copies=[path])
    where = result.get('report_path', 'not written in check mode')
    if report['status'] != 'passed':
        failed = verify.failed_checks(report) or ['verify']
        module.fail_json(msg='verify of %s FAILED (%s): %s; report %s' % (
            report['database'], ', '.join(failed), '; '.join(
                c['detail'] for c in report['checks'] if c['name'] in failed and not c['passed']), where), **result)
    module.exit_json(msg='verify of %s passed: %d checks, %d warning(s), %d skipped; report %s' % (
        report['database'], len(report['checks']), len(report['warnings']),
        len([c for c in report['checks'] if c.get('level') == 'skipped']), where), **result)


if __name__ == '__main__':
    main()
