#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: incident_report
short_description: Record a step of an emergency recovery in the incident report
version_added: 0.1.0
description:
  - Adds one step (C(assess), C(stop), C(restore), C(verify), C(start)) of C(playbooks/emergency-recovery.yml) to
    C(<backup_root>/logs/incident_<incident_id>.json), creating the report when it does not exist yet.
  - Steps are appended, failed ones included, so the report stays true when a play stops half way, and steps
    run one at a time (one AWX job per tag) with the same O(incident_id) build one report.
  - Recomputes the summary each time. C(status) is C(failed) when the last step failed, C(recovered) after a
    successful C(start), else C(in_progress). C(timings) holds each step's seconds and the total. C(rto) compares
    the outage (from the start of the first C(stop) step to the end of the last successful C(start) step) with
    O(rto_target_s).
  - The file is written atomically (temporary name, fsync, rename) and handed to the repository's owner when the
    module runs as root.
  - It takes the collection's connection and S3 options like every module of the action group
    C(modulo.pgbackup.pgbackup), so a play's C(module_defaults) apply to it, but it neither connects to
    PostgreSQL nor uses S3.
author:
  - modulo.pgbackup contributors (@modulo)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - modulo.pgbackup.connection
  - modulo.pgbackup.repository
  - modulo.pgbackup.s3
options:
  incident_id:
    description: Names the report. Letters, digits, C(.), C(_) and C(-).
    type: str
    required: true
  step:
    description: The step that ended.
    type: str
    required: true
    choices: [ assess, stop, restore, verify, start ]
  status:
    description: How it ended.
    type: str
    required: true
    choices: [ ok, failed ]
  started_at:
    description: When the step started, ISO 8601 UTC (e.g. Ansible's C(now(utc=true, fmt='%Y-%m-%dT%H:%M:%S.%fZ'))).
    type: str
    required: true
  finished_at:
    description: When the step ended. Default now.
    type: str
  details:
    description: What the step found or did, kept in the step's entry.
    type: dict
    default: {}
  error:
    description: Why the step failed.
    type: str
  operator:
    description: Who ran the step (added to the report's C(operators) list).
    type: str
  backup:
    description: The backup restored from (name, type, finished_at, location, path), kept at the top of the report.
    type: dict
  recovered_to:
    description: The point the database was recovered to, kept at the top of the report.
    type: str
  target:
    description: What was restored (database or cluster), kept at the top of the report.
    type: dict
  rollback:
    description: How to go back to the state before the restore, kept at the top of the report.
    type: str
  rto_target_s:
    description: The recovery time objective in seconds (the runbook's 30 minutes).
    type: int
    default: 1800
attributes:
  check_mode:
    support: full
    details: Returns the report as it would be, writes nothing.
  diff_mode:
    support: none
    details: Nothing to diff.
  platform:
    platforms: posix
seealso:
  - module: modulo.pgbackup.backup_restore
  - module: modulo.pgbackup.pg_restore_drill
'''

EXAMPLES = r'''
- name: Record the restore step
  modulo.pgbackup.incident_report:
    backup_root: /var/backups/postgresql
    incident_id: "20261124_031200"
    step: restore
    status: ok
    started_at: "2026-11-24T03:14:02.120000Z"
    backup: {name: modulo_full_20261124_020000, type: logical}
    recovered_to: "2026-11-24T02:00:03Z (snapshot of modulo_full_20261124_020000)"
    operator: oncall
'''

RETURN = r'''
report:
  description:
    - The whole report after this step; C(status), C(steps) (C(step), C(status), C(started_at), C(finished_at),
      C(duration_s), C(details), C(error)), C(timings), C(rto) (C(target_s), C(measured_s), C(passed),
      C(outage_open)), C(backup), C(recovered_to), C(target), C(operators), C(next_step), C(rollback).
  returned: always
  type: dict
report_path:
  description: Where the report is.
  returned: always
  type: str
executed_commands:
  description:
    - External commands run (none).
    - Each is the argv list of one program, as it was run.
  returned: always
  type: list
  elements: list
'''

import copy


from ansible_collections.modulo.pgbackup.plugins.module_utils import common, incident, repository
from ansible_collections.modulo.pgbackup.plugins.module_utils.module_base import EXPLAINED_ERRORS, PgBackupModule


def main():
    argument_spec = common.full_argspec(
        incident_id=dict(type='str', required=True),
        step=dict(type='str', required=True, choices=list(incident.STEPS)),
        status=dict(type='str', required=True, choices=list(incident.STATUSES)),
        started_at=dict(type='str', required=True),
        finished_at=dict(type='str'),
        details=dict(type='dict', default={}),
        error=dict(type='str'),
        operator=dict(type='str'),
        backup=dict(type='dict'),
        recovered_to=dict(type='str'),
        target=dict(type='dict'),
        rollback=dict(type='str'),
        rto_target_s=dict(type='int', default=incident.DEFAULT_RTO_S),
    )
    module = PgBackupModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    module.audit(p['backup_root'], 'emergency_recovery', p['incident_id'],
                 details={'step': p['step'], 'step_status': p['status'], 'operator': p['operator']})
    finished = p['finished_at'] or incident.iso(incident.utcnow())
    fields = dict(details=p['details'], error=p['error'], operator=p['operator'], backup=p['backup'],
                  recovered_to=p['recovered_to'], target=p['target'], rollback=p['rollback'])
    try:
        repo = repository.Repository(p['backup_root'], p['pg_os_user'])
        path = incident.report_path(repo.path('logs'), p['incident_id'])
        if module.check_mode:
            report = copy.deepcopy(incident.load(path) or incident.new_report(p['incident_id'], p['rto_target_s']))
            incident.add_step(report, p['step'], p['status'], p['started_at'], finished, **fields)
        else:
            repo.ensure()
            path, report = incident.record(repo.path('logs'), p['incident_id'], p['step'], p['status'],
                                           p['started_at'], finished, rto_target_s=p['rto_target_s'], **fields)
    except EXPLAINED_ERRORS as exc:
        module.fail_json(msg=str(exc), changed=False, executed_commands=[])
    except OSError as exc:
        module.fail_json(msg='cannot write the incident report under %s: %s (is the repository writable?)'
                             % (p['backup_root'], exc), changed=False, executed_commands=[])
    module.exit_json(changed=True, report=report, report_path=path, executed_commands=[],
                     msg='incident %s: %s %s, report %s' % (p['incident_id'], p['step'], p['status'], path))


if __name__ == '__main__':
    main()
