#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: backup_retention
short_description: Delete old backups, WAL and reports from a modulo.pgbackup repository and its S3 mirror
version_added: 0.1.0
description:
  - The runbook's automatic cleanup (C(backup-script.sh cleanup)); by default daily backups are kept
    7 days, archived WAL 14 days and reports 90 days.
  - Backups in C(full/) and C(base/) are aged by the C(finished_at) (else C(started_at)) of their C(.meta),
    WAL by its archive date (the C(wal/YYYYMMDD/) directory, taken as the end of that day), reports by the
    timestamp in their name; never by file modification times, which a copy may have reset.
  - Never deleted, whatever their age, are the newest O(min_full) complete backups of each database
    (logical) and of each cluster (physical); failed or incomplete backups do not count toward O(min_full)
    and are deleted once older than O(full_days).
  - Never deleted is WAL a retained complete base backup may need. A segment may go only when it is older
    than O(wal_days) and, for every retained base backup, numbered before that backup's C(wal_start) on the
    same or an earlier timeline; segments on later timelines are kept. C(.history) files of timelines at or
    after the lowest timeline of a retained base backup are always kept. C(.backup) and C(.partial) files
    follow their segment.
  - A deleted backup loses its C(.meta) first, then its data and its C(.globals.sql), so a half-deleted
    backup never looks complete.
  - Temporary files of interrupted runs (C(.tmp-*)) older than one day are removed (aged by their
    modification time, the only age they have).
  - Files it cannot classify are listed under RV(unclassified) and never deleted.
  - When an S3 bucket is configured, the same rules apply to the mirror under O(s3_prefix) with their own
    values (O(s3_full_days) and so on, defaulting to the local ones); objects are deleted in batches of
    up to 1000, C(.meta) objects first.
  - O(s3_bucket) set to an empty string means the local repository only, even when C(BACKUP_S3_BUCKET) is set
    (the nightly backup uploads nothing then either).
  - Writes C(logs/retention_report_YYYYMMDD_HHMMSS.json) with what was deleted and kept.
  - Takes the repository's backup lock, so it never runs while a backup writes.
author:
  - modulo.pgbackup contributors (@modulo)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - modulo.pgbackup.connection
  - modulo.pgbackup.repository
  - modulo.pgbackup.s3
options:
  full_days:
    description:
      - Backups (logical and physical) older than this many days are deleted, except the newest O(min_full).
      - Must be 1 or more.
    type: int
    default: 7
  wal_days:
    description:
      - Archived WAL older than this many days is deleted unless a retained base backup may need it.
      - Must be 1 or more.
    type: int
    default: 14
  report_days:
    description:
      - Backup, retention and restore-drill reports older than this many days are deleted.
      - Must be 1 or more.
    type: int
    default: 90
  min_full:
    description:
      - Number of newest complete backups kept per database (logical) and per cluster (physical),
        whatever their age.
      - C(0) is allowed but warned about, since all backups may then go.
    type: int
    default: 1
  s3_full_days:
    description:
      - O(full_days) for the S3 mirror. Defaults to O(full_days).
    type: int
  s3_wal_days:
    description:
      - O(wal_days) for the S3 mirror. Defaults to O(wal_days).
    type: int
  s3_report_days:
    description:
      - O(report_days) for the S3 mirror. Defaults to O(report_days).
    type: int
  s3_min_full:
    description:
      - O(min_full) for the S3 mirror. Defaults to O(min_full).
    type: int
  lock_wait:
    description:
      - Seconds to wait for a running backup of the same repository to finish before failing.
    type: int
    default: 600
attributes:
  check_mode:
    support: full
    details: A dry run that returns exactly what would be deleted and the bytes it would free.
  diff_mode:
    support: none
  platform:
    platforms: posix
notes:
  - Does not connect to PostgreSQL; the connection options are accepted so that the action group's
    module defaults apply.
seealso:
  - module: modulo.pgbackup.pg_backup
  - module: modulo.pgbackup.backup_info
'''

EXAMPLES = r'''
- name: The runbook's cleanup (7 days of backups, 14 of WAL, 90 of reports)
  modulo.pgbackup.backup_retention:
    backup_root: /var/backups/postgresql

- name: What would go with a shorter policy, keeping 30 days in S3
  modulo.pgbackup.backup_retention:
    backup_root: /var/backups/postgresql
    full_days: 3
    min_full: 2
    s3_bucket: modulo-backups
    s3_full_days: 30
    s3_wal_days: 30
  check_mode: true
  register: cleanup

- name: Show it
  ansible.builtin.debug:
    msg: "{{ cleanup.deleted | map(attribute='path') | list }} ({{ cleanup.freed_bytes }} bytes)"
'''

RETURN = r'''
deleted:
  description:
    - What was deleted (in check mode, what would be), in deletion order, local first then S3.
    - Each has C(path) (local path or C(s3://) URI), C(relpath), C(location), C(kind) (C(meta),
      C(logical_backup), C(physical_backup), C(globals), C(wal_segment), C(wal_partial), C(wal_backup),
      C(wal_history), C(report), C(temporary)), C(reason), C(size_bytes) and, for backups, C(backup).
  returned: always
  type: list
  elements: dict
  sample: [{"path": "/var/backups/postgresql/full/modulo_full_20261101_020000.sql.gz.meta", "kind": "meta",
            "reason": "complete backup 23.0 days old (more than 7 days)", "size_bytes": 812,
            "backup": "modulo_full_20261101_020000", "location": "local"}]
kept:
  description:
    - What stays, with the reason. Kept WAL is summarised per date directory and reason
      (C(files), C(size_bytes), C(wal_kinds)).
  returned: always
  type: list
  elements: dict
freed_bytes:
  description: Bytes deleted (in check mode, that would be), local and S3 together.
  returned: always
  type: int
  sample: 1073741824
unclassified:
  description: Entries retention does not recognise, with the reason; they are never deleted.
  returned: always
  type: list
  elements: dict
retention_warnings:
  description:
    - Policy and state warnings, e.g. no base backup retained or O(min_full=0); each is also emitted as a
      task warning (Ansible reserves the C(warnings) key of a result for those).
  returned: always
  type: list
  elements: str
policy:
  description: The policy values applied, C(local) and (with S3) C(s3).
  returned: always
  type: dict
  sample: {"local": {"full_days": 7, "wal_days": 14, "report_days": 90, "min_full": 1}}
errors:
  description: Deletions that failed (the task then fails after writing the report).
  returned: always
  type: list
  elements: dict
report_path:
  description: The run's JSON report in C(logs/). Not written in check mode.
  returned: when not in check mode
  type: str
  sample: /var/backups/postgresql/logs/retention_report_20261125_021500.json
executed_commands:
  description:
    - External commands run (none; retention works on files and S3 objects).
    - Each is the argv list of one program, as it was run.
  returned: always
  type: list
  elements: list
'''

import os
import socket


from ansible_collections.modulo.pgbackup.plugins.module_utils import common, fsutil, repository, retention, retention_s3
from ansible_collections.modulo.pgbackup.plugins.module_utils.module_base import EXPLAINED_ERRORS, PgBackupModule

POLICY = ('full_days', 'wal_days', 'report_days', 'min_full')


def _policies(p):
    local = dict((k, p[k]) for k in POLICY)
    remote = dict((k, p['s3_' + k] if p['s3_' + k] is not None else p[k]) for k in POLICY)
    warnings = retention.check_policy(label='', **local)
    warnings += retention.check_policy(label='s3_', **remote) if remote != local else []
    return local, remote, warnings


def _write_report(repo, started, result):
    report = {
        'report': 'retention', 'host': socket.gethostname(), 'started_at': repository.iso(started),
        'finished_at': repository.iso(repository.utcnow()),
        'status': 'failed' if result['errors'] else 'success', 'policy': result['policy'],
    }
    for key in ('deleted', 'kept', 'unclassified', 'errors', 'freed_bytes'):
        report[key] = result[key]
    report['warnings'] = result['retention_warnings']
    fsutil.ensure_dir(repo.path('logs'))
    path = repo.path('logs', repository.report_name(repository.RETENTION_REPORT, started))
    if os.path.exists(path):
        path = path[:-5] + '_%d.json' % os.getpid()
    fsutil.write_json_atomic(path, report)
    return path


def main():
    module = PgBackupModule(
        argument_spec=common.full_argspec(
            full_days=dict(type='int', default=7),
            wal_days=dict(type='int', default=14),
            report_days=dict(type='int', default=90),
            min_full=dict(type='int', default=1),
            s3_full_days=dict(type='int'),
            s3_wal_days=dict(type='int'),
            s3_report_days=dict(type='int'),
            s3_min_full=dict(type='int'),
            lock_wait=dict(type='int', default=600),
        ),
        supports_check_mode=True,
    )
    p = module.params
    result = dict(changed=False, deleted=[], kept=[], unclassified=[], retention_warnings=[], errors=[], freed_bytes=0,
                  executed_commands=[])
    module.audit(p['backup_root'], 'retention', p['backup_root'],
                 details={'s3_bucket': p.get('s3_bucket') or None})
    try:
        local_policy, s3_policy, warnings = _policies(p)
    except retention.RetentionError as exc:
        module.fail_json(msg=str(exc), **result)
    result['policy'] = dict(local=local_policy)
    started = repository.utcnow()
    try:
        repo = repository.Repository(p['backup_root'], p['pg_os_user'])
        if not os.path.isdir(repo.root):
            raise repository.RepositoryError('backup_root %s does not exist: nothing to clean up, and a typo here '
                                             'should not pass silently' % repo.root)
        # An explicitly empty bucket means local only, as for the nightly backup's upload; only an
        # unset one falls back to BACKUP_S3_BUCKET.
        store = common.s3_store(p) if p['s3_bucket'] != '' else None
        if store:
            result['policy']['s3'] = s3_policy
        with repo.lock('backup', wait_s=p['lock_wait']):
            plans = [('local', retention.plan(repo, now=started, **local_policy))]
            if store:
                plans.append(('s3', retention_s3.plan(store, now=started, **s3_policy)))
            for location, planned in plans:
                done = planned['deleted']
                if not module.check_mode:
                    if location == 'local':
                        done, errors = retention.apply_local(repo, planned)
                    else:
                        done, errors = retention_s3.apply(store, planned)
                    result['errors'].extend(errors)
                result['deleted'].extend(retention_s3.strip_internal(done))
                result['kept'].extend(retention_s3.strip_internal(planned['kept']))
                result['unclassified'].extend(planned['unclassified'])
                warnings.extend(planned['warnings'])
    except EXPLAINED_ERRORS + (OSError,) as exc:
        module.fail_json(msg='retention failed, %d item(s) deleted before the error: %s' % (
            len(result['deleted']), exc), **result)
    result['retention_warnings'] = warnings
    result['freed_bytes'] = sum(i['size_bytes'] for i in result['deleted'])
    result['changed'] = bool(result['deleted'])
    for warning in warnings:
        module.warn(warning)
    if result['unclassified']:
        module.warn('%d unrecognised entr%s in the repository left alone (see unclassified)' % (
            len(result['unclassified']), 'y' if len(result['unclassified']) == 1 else 'ies'))
    verb = 'would delete' if module.check_mode else 'deleted'
    summary = '%s %d item(s), %d bytes; kept %d; %d unclassified' % (
        verb, len(result['deleted']), result['freed_bytes'], len(result['kept']), len(result['unclassified']))
    if not module.check_mode:
        try:
            result['report_path'] = _write_report(repo, started, result)
        except OSError as exc:
            module.fail_json(msg='%s, but the retention report could not be written to %s: %s' % (
                summary, repo.path('logs'), exc.strerror or exc), **result)
    if result['errors']:
        module.fail_json(msg='%s; %d deletion(s) failed: %s' % (summary, len(result['errors']), '; '.join(
            '%s: %s' % (e['path'], e['error']) for e in result['errors'][:5])), **result)
    module.exit_json(msg=summary, **result)


if __name__ == '__main__':
    main()
