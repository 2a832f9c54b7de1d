# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Argument specs shared by every module, matching the doc fragments."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os

from ansible_collections.modulo.pgbackup.plugins.module_utils.s3store import DEFAULT_PREFIX, S3Store


def connection_argspec():
    return dict(
        login_user=dict(type='str', default='postgres', aliases=['login']),
        login_password=dict(type='str', no_log=True),
        login_host=dict(type='str', aliases=['host']),
        login_unix_socket=dict(type='str', aliases=['unix_socket']),
        port=dict(type='int', default=5432, aliases=['login_port']),
        ssl_mode=dict(type='str', default='prefer',
                      choices=['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full']),
        pg_bindir=dict(type='path'),
        pg_os_user=dict(type='str', default='postgres'),
    )


def repository_argspec():
    return dict(backup_root=dict(type='path', required=True))


def s3_argspec():
    return dict(
        s3_bucket=dict(type='str'),
        s3_prefix=dict(type='str', default=DEFAULT_PREFIX),
        aws_region=dict(type='str'),
        s3_endpoint_url=dict(type='str'),
        s3_server_side_encryption=dict(type='bool', default=True),
    )


def encryption_argspec():
    return dict(
        encryption_key_file=dict(type='path', no_log=False),
        encryption_key_env=dict(type='str', default='MODULO_PGBACKUP_ENCRYPTION_KEY', no_log=False),
        encryption_old_key_files=dict(type='list', elements='path', default=[], no_log=False),
    )


def service_argspec():
    return dict(
        pgdata=dict(type='path'),
        pg_service=dict(type='str'),
        service_control=dict(type='str', default='auto', choices=['auto', 'systemd', 'pg_ctlcluster', 'pg_ctl']),
    )


def full_argspec(with_encryption=False, **module_options):
    spec = connection_argspec()
    spec.update(repository_argspec())
    spec.update(s3_argspec())
    if with_encryption:
        spec.update(encryption_argspec())
    spec.update(module_options)
    return spec


def s3_settings(params):
    """S3 options with the runbook's environment fallbacks; None when S3 is not configured."""
    bucket = params.get('s3_bucket') or os.environ.get('BACKUP_S3_BUCKET')
    if not bucket:
        return None
    return dict(bucket=bucket, prefix=params.get('s3_prefix'),
                region=params.get('aws_region') or os.environ.get('AWS_REGION'),
                endpoint_url=params.get('s3_endpoint_url') or os.environ.get('AWS_ENDPOINT_URL'),
                sse=params.get('s3_server_side_encryption', True))


def s3_store(params):
    settings = s3_settings(params)
    return S3Store(**settings) if settings else None
