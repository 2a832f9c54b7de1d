# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: s3_prefix
short_description: The S3 key prefix of one cluster of a fleet
version_added: 0.1.0
description:
  - Gives the key prefix under which one cluster's backups, WAL and C(archive.json) live in a bucket that
    several clusters share, the base prefix followed by the inventory host name.
  - The playbooks and roles compute their default S3 prefix with it, so a fleet backed up with one set of
    variables keeps each cluster apart.
options:
  _input:
    description: The base prefix (C(pgbackup_s3_prefix)); empty means C(database-backups/).
    type: str
    required: true
  host:
    description: The cluster's inventory host name.
    type: str
    required: true
  per_host:
    description: False gives the base prefix alone (the runbook's single-host layout).
    type: bool
    default: true
'''

EXAMPLES = r'''
- name: Where db1's backups go
  ansible.builtin.debug:
    msg: "{{ 'database-backups/' | modulo.pgbackup.s3_prefix('db1') }}"   # database-backups/db1/
'''

RETURN = r'''
_value:
  description: The prefix, ending with C(/).
  type: str
'''

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.modulo.pgbackup.plugins.module_utils.s3store import cluster_prefix


def s3_prefix(prefix, host, per_host=True):
    try:
        return cluster_prefix(prefix, host, per_host=boolean(per_host, strict=True))
    except (TypeError, ValueError) as exc:
        raise AnsibleFilterError('modulo.pgbackup.s3_prefix: %s' % exc)


class FilterModule(object):
    def filters(self):
        return {'s3_prefix': s3_prefix}
