# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r'''
options:
  backup_root:
    description:
      - Root directory of the backup repository.
      - Holds C(full/), C(base/), C(wal/), C(logs/) and C(restore-tests/); created with mode 0700 when missing.
    type: path
    required: true
'''
