#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: pg_sql
short_description: Run SQL with psql the way the collection's modules connect
version_added: 0.2.0
description:
  - Runs SQL statements (O(query)) or a psql script (O(script)) on the PostgreSQL server of the host, with the same
    connection handling as every module of the collection, so playbooks never call C(psql) themselves.
  - Run as root, it runs C(psql) as O(pg_os_user) over the Unix socket (peer authentication); the password is an
    option with C(no_log), handed to C(psql) in its environment only, never put in the task's C(environment) where
    verbose output would show it.
  - Used by C(playbooks/emergency-recovery.yml) (the server's state, the sessions left on a database) and by the role
    C(modulo.pgbackup.db_roles). A psql error fails the task with psql's own message and advice.
  - Takes the options of the action group C(modulo.pgbackup.pgbackup) (a play's C(module_defaults) apply), but
    uses neither the repository nor S3.
author:
  - modulo.pgbackup contributors (@modulo)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - modulo.pgbackup.connection
  - modulo.pgbackup.s3
options:
  db:
    description: Database to connect to.
    type: str
    default: postgres
    aliases: [ database ]
  query:
    description:
      - SQL statements, run in order by one C(psql), each in its own transaction; the first error stops the run.
      - The rows of all of them are returned in RV(rows).
    type: list
    elements: str
  script:
    description:
      - A psql script (SQL and meta-commands such as C(\getenv) and C(\if)) fed on standard input, in one C(psql)
        with C(ON_ERROR_STOP).
    type: str
  variables:
    description: psql variables (C(-v name=value)) the script reads as C(:name) or C(:'name'). Not secret.
    type: dict
    default: {}
  secret_env:
    description:
      - Environment variables for C(psql) only, read by the script with C(\getenv); for passwords.
      - Never logged; not part of RV(executed_commands).
    type: dict
    default: {}
  read_only:
    description:
      - Run in a read-only transaction (C(default_transaction_read_only)); such a run also happens in check mode.
    type: bool
    default: false
  changes:
    description:
      - Whether a successful run is reported as a change. Playbooks refine it with C(changed_when) from RV(rows).
    type: bool
    default: true
  backup_root:
    description: Accepted for C(module_defaults) of the action group; not used.
    type: path
attributes:
  check_mode:
    support: partial
    details: Runs only with O(read_only=true); otherwise reports what it would run and changes nothing.
  diff_mode:
    support: none
  platform:
    platforms: posix
seealso:
  - module: modulo.pgbackup.backup_info
'''

EXAMPLES = r'''
- name: Sessions connected to modulodb
  modulo.pgbackup.pg_sql:
    query:
      - SELECT pid, usename FROM pg_stat_activity WHERE datname = 'modulodb'
    read_only: true
  register: sessions

- name: A script that reads a password from its environment
  modulo.pgbackup.pg_sql:
    script: |
      \getenv password NEW_PASSWORD
      SELECT set_config('app.password', :'password', false) IS NOT NULL;
    secret_env:
      NEW_PASSWORD: "{{ vault_password }}"
'''

RETURN = r'''
rows:
  description: The rows the statements returned, each a list of column values as text (NULL is null).
  returned: success
  type: list
  elements: list
  sample: [["12345", "modulo_app"]]
executed_commands:
  description:
    - The C(psql) command line run (the SQL of O(query) included; O(script) and O(secret_env) are not).
    - Each is the argv list of one program, as it was run.
  returned: always
  type: list
  elements: list
'''


from ansible_collections.modulo.pgbackup.plugins.module_utils import common
from ansible_collections.modulo.pgbackup.plugins.module_utils.module_base import PgBackupModule
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import (
    Connection, PgError, ReadOnlyConnection, psql_query, psql_script)


def main():
    spec = common.connection_argspec()
    spec.update(common.s3_argspec())
    spec.update(
        db=dict(type='str', default='postgres', aliases=['database']),
        query=dict(type='list', elements='str'),
        script=dict(type='str'),
        variables=dict(type='dict', default={}),
        secret_env=dict(type='dict', default={}, no_log=True),
        read_only=dict(type='bool', default=False),
        changes=dict(type='bool', default=True),
        backup_root=dict(type='path'),
    )
    module = PgBackupModule(argument_spec=spec, required_one_of=[('query', 'script')],
                            mutually_exclusive=[('query', 'script')], supports_check_mode=True)
    p = module.params
    log = module.command_log
    result = module.result
    result.update(rows=[])
    if module.check_mode and not p['read_only']:
        result['changed'] = p['changes']
        module.exit_json(msg='check mode: nothing run (not read_only)', **result)
    try:
        conn = (ReadOnlyConnection if p['read_only'] else Connection).from_params(p, db=p['db'])
        if p['query']:
            rows = psql_query(conn, p['query'], db=p['db'], log=log)
        else:
            rows = psql_script(conn, p['script'], db=p['db'], variables=p['variables'],
                               secret_env=dict((k, str(v)) for k, v in p['secret_env'].items()), log=log)
    except PgError as exc:
        module.fail_json(msg=str(exc), **result)
    result.update(rows=rows, changed=p['changes'] and not p['read_only'])
    module.exit_json(**result)


if __name__ == '__main__':
    main()
