# -*- coding: utf-8 -*-
"""s3store key layout and the S3 option fallbacks (no S3 endpoint is contacted)."""

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import common, s3store


@pytest.mark.parametrize('prefix, expected', [
    (None, 'database-backups/'),
    ('database-backups/', 'database-backups/'),
    ('database-backups', 'database-backups/'),
    ('/prod/pg/', 'prod/pg/'),
    ('//x//', 'x/'),
    ('', ''),
    ('/', ''),
])
def test_normalize_prefix(prefix, expected):
    assert s3store.normalize_prefix(prefix) == expected


@pytest.mark.parametrize('prefix, host, per_host, expected', [
    ('', 'db1', True, 'database-backups/db1/'),
    (None, 'db1.example.com', True, 'database-backups/db1.example.com/'),
    ('/prod/pg', 'db2', True, 'prod/pg/db2/'),
    ('prod/', 'db2', False, 'prod/'),
    ('', 'db2', False, 'database-backups/'),
])
def test_cluster_prefix_gives_each_inventory_host_its_own_prefix(prefix, host, per_host, expected):
    assert s3store.cluster_prefix(prefix, host, per_host) == expected


@pytest.mark.parametrize('host', ['', None, 'a/b', '..'])
def test_cluster_prefix_refuses_a_host_name_that_is_no_key_part(host):
    with pytest.raises(ValueError) as info:
        s3store.cluster_prefix('database-backups/', host)
    assert 'pgbackup_s3_prefix_per_host: false' in str(info.value)


@pytest.mark.skipif(not s3store.HAS_BOTO3, reason='boto3 is not installed in this Python')
def test_s3store_keys_mirror_the_local_layout():
    store = s3store.S3Store('modulo-backups', prefix='/prod/', region='eu-west-1',
                            endpoint_url='http://127.0.0.1:9')
    assert store.key('full/modulo_full_20261124_020000.meta') == 'prod/full/modulo_full_20261124_020000.meta'
    assert store.uri('wal/20261124/000000010000000000000001.gz') == \
        's3://modulo-backups/prod/wal/20261124/000000010000000000000001.gz'
    assert s3store.S3Store('b', prefix='').uri('full/') == 's3://b/full/'
    assert s3store.S3Store('b').key('logs/x.json') == 'database-backups/logs/x.json'


def test_s3_settings_fall_back_to_the_environment(monkeypatch):
    for name in ('BACKUP_S3_BUCKET', 'AWS_REGION', 'AWS_ENDPOINT_URL'):
        monkeypatch.delenv(name, raising=False)
    assert common.s3_settings({'s3_bucket': None, 's3_prefix': 'p/'}) is None
    monkeypatch.setenv('BACKUP_S3_BUCKET', 'env-bucket')
    monkeypatch.setenv('AWS_REGION', 'eu-central-1')
    monkeypatch.setenv('AWS_ENDPOINT_URL', 'http://127.0.0.1:9000')
    settings = common.s3_settings({'s3_bucket': None, 's3_prefix': 'p/'})
    assert settings == {'bucket': 'env-bucket', 'prefix': 'p/', 'region': 'eu-central-1',
                        'endpoint_url': 'http://127.0.0.1:9000', 'sse': True}
    explicit = common.s3_settings({'s3_bucket': 'b', 's3_prefix': None, 'aws_region': 'us-east-2',
                                   's3_endpoint_url': 'http://s3.local', 's3_server_side_encryption': False})
    assert explicit == {'bucket': 'b', 'prefix': None, 'region': 'us-east-2',
                        'endpoint_url': 'http://s3.local', 'sse': False}


def test_full_argspec_has_the_contract_options():
    spec = common.full_argspec(db=dict(type='str', default='modulodb'))
    for option in ('login_user', 'login_password', 'login_host', 'login_unix_socket', 'port', 'ssl_mode',
                   'backup_root', 's3_bucket', 's3_prefix', 'aws_region', 's3_endpoint_url', 'db'):
        assert option in spec, option
    assert spec['login_password']['no_log'] is True
    assert spec['backup_root']['required'] is True
    assert spec['s3_prefix']['default'] == 'database-backups/'
