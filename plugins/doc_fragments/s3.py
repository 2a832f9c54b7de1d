# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r'''
options:
  s3_bucket:
    description:
      - S3 bucket that mirrors the repository. Empty means local only.
      - Falls back to the environment variable C(BACKUP_S3_BUCKET).
    type: str
  s3_prefix:
    description:
      - Key prefix in O(s3_bucket) under which the repository layout is mirrored.
    type: str
    default: database-backups/
  aws_region:
    description:
      - AWS region of the bucket. Falls back to C(AWS_REGION), then C(us-east-1).
    type: str
  s3_endpoint_url:
    description:
      - Endpoint URL of an S3-compatible store (MinIO, Ceph, a test server).
      - Falls back to C(AWS_ENDPOINT_URL).
    type: str
  s3_server_side_encryption:
    description:
      - Ask S3 to encrypt the objects at rest (C(AES256)).
    type: bool
    default: true
requirements:
  - boto3 (only when O(s3_bucket) is set)
notes:
  - AWS credentials come from the usual boto3 sources (environment, shared credentials file, instance profile);
    they are never module options, so they never appear in task output.
'''
