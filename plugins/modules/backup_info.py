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
  - Evaluates the runbook's health thresholds (backup age against the RPO, backup duration, size growth).
author:
  - modulo.pgbackup contributors (@modulo)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - modulo.pgbackup.connection
  - modulo.pgbackup.repository
  - modulo.pgbackup.s3
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
      - Recovery point objective in seconds; a newest complete backup older than this breaches RV(health).
    type: int
    default: 3600
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
  description: The runbook's thresholds (C(backup_age), C(backup_duration), C(size_growth)) and C(ok).
  returned: always
  type: dict
executed_commands:
  description: External commands run.
  returned: always
  type: list
  elements: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.modulo.pgbackup.plugins.module_utils import catalog, common, repository
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import CommandLog, PgError, find_bindir
from ansible_collections.modulo.pgbackup.plugins.module_utils.s3store import S3Error


def main():
    module = AnsibleModule(
        argument_spec=common.full_argspec(
            select=dict(type='str', default='all'),
            type=dict(type='str', default='all', choices=['logical', 'physical', 'all']),
            db=dict(type='str'),
            verify=dict(type='bool', default=False),
            rpo_target_s=dict(type='int', default=3600),
        ),
        supports_check_mode=True,
    )
    p = module.params
    log = CommandLog()
    result = dict(changed=False, backups=[], latest=None, problems=[], recovery_window=None, executed_commands=log.commands)
    kinds = ('logical', 'physical') if p['type'] == 'all' else (p['type'],)
    try:
        repo = repository.Repository(p['backup_root'])
        s3 = common.s3_store(p)
        backups, problems = catalog.list_backups(repo, kinds=kinds, s3=s3)
    except (repository.RepositoryError, S3Error, OSError) as exc:
        module.fail_json(msg='cannot list backups: %s' % exc, **result)
    # Base backups hold every database of the cluster: they count for any db.
    result['recovery_window'] = catalog.recovery_window(
        [b for b in backups if b.get('type') == 'physical' or not p['db'] or b.get('database') == p['db']], repo.root)
    if p['db']:
        backups = [b for b in backups if b.get('database') == p['db']]
    result['problems'] = problems
    result['health'] = catalog.health(backups, rpo_target_s=p['rpo_target_s'])
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
        result['verification'] = [catalog.verify(b, pg_restore=pg_restore) for b in selected]
        bad = [v for v in result['verification'] if not v['ok']]
        if bad:
            module.fail_json(msg='%d backup(s) failed verification: %s' % (
                len(bad), '; '.join('%s: %s' % (v['name'], ', '.join(v['errors'])) for v in bad)), **result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
