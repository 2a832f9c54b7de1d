# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r'''
options:
  encryption_key_file:
    description:
      - An age identity file (C(age-keygen -o FILE), mode 0600). When set, new backups (and, with M(modulo.pgbackup.wal_archive),
        archived WAL segments) are encrypted on this host with its public key before they reach the disk or S3, and
        encrypted backups are decrypted with it.
      - The C(.meta) records the public key as C(encryption_key_id); the secret key never appears in an argument, a log
        or a report.
    type: path
  encryption_key_env:
    description:
      - Name of an environment variable holding the age secret key (C(AGE-SECRET-KEY-1...)), used when
        O(encryption_key_file) is not set and the variable exists in the task's environment.
      - Not usable for WAL archiving, which runs under PostgreSQL without the task's environment.
    type: str
    default: MODULO_PGBACKUP_ENCRYPTION_KEY
  encryption_old_key_files:
    description:
      - Earlier age identity files, for key rotation. Backups encrypted with them still restore; new backups use
        O(encryption_key_file) only.
    type: list
    elements: path
    default: []
requirements:
  - age (the Debian package C(age)), only when encryption is used
'''
