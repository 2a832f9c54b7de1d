# -*- coding: utf-8 -*-
"""pg_backup's S3 mirror against a real (loopback) S3 endpoint.

Every check reads the objects back from S3 itself: sizes and sha256 of the
downloaded bytes, server-side encryption, and the .meta that goes last.
"""

import gzip
import hashlib
import json
import os
import socket
import subprocess
import time
import uuid

import pytest

import pgsandbox
from ansible_collections.modulo.pgbackup.plugins.module_utils import s3store

from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import errors as walerrors, s3 as wals3
MODULE = 'modulo.pgbackup.pg_backup'
PREFIX = 'database-backups/'


def _sha256_file(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_object(client, bucket, key):
    body = client.get_object(Bucket=bucket, Key=key)['Body']
    digest = hashlib.sha256()
    for chunk in iter(lambda: body.read(1 << 20), b''):
        digest.update(chunk)
    return digest.hexdigest()


def _keys(client, bucket, prefix=''):
    keys = []
    for page in client.get_paginator('list_objects_v2').paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj['Key'] for obj in page.get('Contents', []))
    return sorted(keys)


def _local_files(backup_root, res):
    """Every local file the backup consists of: data, globals, .meta."""
    meta = res['backup']['meta']
    path = res['backup']['path']
    files = []
    if os.path.isdir(path):
        for base, _dirs, names in os.walk(path):
            files.extend(os.path.join(base, n) for n in names)
    else:
        files.append(path)
    if (meta.get('globals') or {}).get('file'):
        files.append(os.path.join(backup_root, 'full', meta['globals']['file']))
    files.append(os.path.join(backup_root, 'full', meta['file'] + '.meta'))
    return files


def assert_mirrored(bucket, backup_root, res):
    """The bucket holds exactly the backup's files under database-backups/full/, intact and encrypted."""
    client, name = bucket['client'], bucket['name']
    meta = res['backup']['meta']
    local = _local_files(backup_root, res)
    expected = dict((PREFIX + os.path.relpath(p, backup_root), p) for p in local)
    assert _keys(client, name) == sorted(expected)
    assert all(k.startswith(PREFIX + 'full/') for k in expected)
    for key, path in expected.items():
        head = client.head_object(Bucket=name, Key=key)
        assert head['ContentLength'] == os.path.getsize(path), key
        assert head['ServerSideEncryption'] == 'AES256', key
        local_sha = _sha256_file(path)
        assert head['Metadata']['sha256'] == local_sha, key
        assert _sha256_object(client, name, key) == local_sha, key
    meta_key = PREFIX + 'full/%s.meta' % meta['file']
    remote_meta = json.loads(client.get_object(Bucket=name, Key=meta_key)['Body'].read())
    assert remote_meta['status'] == 'complete'
    assert remote_meta['sha256'] == meta['sha256'] and remote_meta['name'] == meta['name']
    assert res['backup']['s3_uri'] == 's3://%s/%sfull/%s' % (name, PREFIX, os.path.basename(res['backup']['path']))
    with open(res['report_path']) as handle:
        report = json.load(handle)
    assert report['status'] == 'success'
    assert report['backups'][0]['s3_uri'] == res['backup']['s3_uri']


def assert_local_backup_complete(res):
    meta = res['backup']['meta']
    path = res['backup']['path']
    meta_file = os.path.join(os.path.dirname(path), meta['file'] + '.meta')
    with open(meta_file) as handle:
        on_disk = json.load(handle)
    assert on_disk['status'] == 'complete'
    assert on_disk['sha256'] == _sha256_file(path)
    assert on_disk['size_bytes'] == os.path.getsize(path)
    subprocess.run(['gzip', '-t', path], check=True)


def _task(ansible, conn_args, backup_root, db, env=None, **extra):
    args = dict(conn_args, backup_root=backup_root, db=db)
    args.update(extra)
    return ansible.task(MODULE, args, env=env)


def test_upload_with_module_options(ansible, modulo_db, backup_root, conn_args, s3_bucket):
    # The environment points elsewhere: the module options must win over it.
    decoy = {'AWS_ENDPOINT_URL': 'http://127.0.0.1:%d' % pgsandbox.free_port(),
             'BACKUP_S3_BUCKET': 'modulo-decoy-%s' % uuid.uuid4().hex[:8], 'AWS_REGION': 'eu-north-1'}
    res = _task(ansible, conn_args, backup_root, modulo_db, env=decoy, s3_bucket=s3_bucket['name'],
                s3_endpoint_url=s3_bucket['url'], aws_region='us-east-1')
    assert not res.get('failed'), res.get('msg')
    assert_mirrored(s3_bucket, backup_root, res)
    with gzip.open(res['backup']['path'], 'rt') as handle:
        assert 'CREATE TABLE public.orders' in handle.read()


def test_upload_with_environment_settings(ansible, modulo_db, backup_root, conn_args, s3_bucket):
    env = {'BACKUP_S3_BUCKET': s3_bucket['name'], 'AWS_ENDPOINT_URL': s3_bucket['url'],
           'AWS_REGION': 'us-east-1'}
    res = _task(ansible, conn_args, backup_root, modulo_db, env=env, format='custom')
    assert not res.get('failed'), res.get('msg')
    assert res['backup']['path'].endswith('.dump')
    assert_mirrored(s3_bucket, backup_root, res)


def test_directory_backup_uploads_every_file(ansible, modulo_db, backup_root, conn_args, s3_bucket):
    res = _task(ansible, conn_args, backup_root, modulo_db, format='directory', jobs=2,
                s3_bucket=s3_bucket['name'], s3_endpoint_url=s3_bucket['url'])
    assert not res.get('failed'), res.get('msg')
    path = res['backup']['path']
    names = os.listdir(path)
    assert 'toc.dat' in names and len(names) > 3  # one data file per table
    assert_mirrored(s3_bucket, backup_root, res)
    dir_keys = _keys(s3_bucket['client'], s3_bucket['name'], PREFIX + 'full/%s/' % os.path.basename(path))
    assert sorted(k.rsplit('/', 1)[1] for k in dir_keys) == sorted(names)


def test_missing_bucket_fails_and_keeps_local_backup(ansible, modulo_db, backup_root, conn_args, s3_bucket):
    missing = 'modulo-missing-%s' % uuid.uuid4().hex[:8]
    res = _task(ansible, conn_args, backup_root, modulo_db, s3_bucket=missing, s3_endpoint_url=s3_bucket['url'])
    assert res.get('failed') is True
    msg = res['msg']
    assert missing in msg and 'does not exist' in msg, msg
    assert 'the local backup %s is complete' % res['backup']['meta']['name'] in msg, msg
    assert 'create it or fix s3_bucket' in msg
    assert 'Traceback' not in res.get('module_stderr', '') + res.get('_output', '')
    assert res['changed'] is True
    assert_local_backup_complete(res)
    assert _keys(s3_bucket['client'], s3_bucket['name']) == []
    with open(res['report_path']) as handle:
        report = json.load(handle)
    assert report['status'] == 'failed' and report['error'] == msg
    assert report['backups'][0]['name'] == res['backup']['meta']['name']


def test_endpoint_down_fails_and_keeps_local_backup(ansible, modulo_db, backup_root, conn_args, s3_bucket):
    down = 'http://127.0.0.1:%d' % pgsandbox.free_port()
    res = _task(ansible, conn_args, backup_root, modulo_db, s3_bucket=s3_bucket['name'], s3_endpoint_url=down)
    assert res.get('failed') is True
    msg = res['msg']
    assert 'S3 endpoint unreachable' in msg and 'check s3_endpoint_url' in msg, msg
    assert down in msg
    assert 'the local backup %s is complete' % res['backup']['meta']['name'] in msg, msg
    assert_local_backup_complete(res)
    assert _keys(s3_bucket['client'], s3_bucket['name']) == []


def test_large_file_goes_multipart_and_verifies(s3_bucket, tmp_path):
    size = 70 * 1024 * 1024
    path = str(tmp_path / 'big.dump')
    block = os.urandom(1024 * 1024)
    with open(path, 'wb') as handle:
        for index in range(size // len(block)):
            handle.write(bytes([index % 256]) + block[1:])  # every MiB differs
    local_sha = _sha256_file(path)
    store = s3store.S3Store(s3_bucket['name'], endpoint_url=s3_bucket['url'], region='us-east-1')
    uri = store.upload_file(path, 'full/big.dump', sha256=local_sha)
    key = PREFIX + 'full/big.dump'
    assert uri == 's3://%s/%s' % (s3_bucket['name'], key)
    head = s3_bucket['client'].head_object(Bucket=s3_bucket['name'], Key=key)
    assert head['ContentLength'] == size
    assert head['ETag'].strip('"').endswith('-2'), head['ETag']  # 64 MiB + 6 MiB parts
    assert head['ServerSideEncryption'] == 'AES256'
    assert _sha256_object(s3_bucket['client'], s3_bucket['name'], key) == local_sha


def test_direct_upload_errors_are_s3_errors(s3_bucket, tmp_path):
    """boto3 wraps some failures in its own exceptions; the store must still say what is wrong."""
    path = str(tmp_path / 'small')
    with open(path, 'wb') as handle:
        handle.write(b'x' * 100)
    store = s3store.S3Store('modulo-absent-%s' % uuid.uuid4().hex[:8], endpoint_url=s3_bucket['url'])
    try:
        store.upload_file(path, 'full/small')
    except s3store.S3Error as exc:
        assert 'does not exist' in str(exc) and store.bucket in str(exc)
    else:
        raise AssertionError('upload into a missing bucket did not fail')


def test_an_unreachable_endpoint_is_reported_after_one_layer_of_retries(monkeypatch):
    """botocore retries each request ATTEMPTS times and the store does not retry around it (it used to: up to
    20 requests and about 11 s before an unreachable endpoint was reported)."""
    monkeypatch.setenv('AWS_ACCESS_KEY_ID', 'testing')
    monkeypatch.setenv('AWS_SECRET_ACCESS_KEY', 'testing')
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]     # closed again below: nothing listens there
    store = s3store.S3Store('modulo-nowhere', endpoint_url='http://127.0.0.1:%d' % port, region='us-east-1')
    sent = []
    store.client.meta.events.register('before-send.s3', lambda **kwargs: sent.append(1))
    begin = time.time()
    with pytest.raises(s3store.S3Error, match='S3 endpoint unreachable'):
        store.list_keys('full/')
    assert len(sent) == s3store.ATTEMPTS
    assert time.time() - begin < 12


def test_a_host_without_s3_credentials_is_told_where_they_belong(s3_bucket, tmp_path, monkeypatch):
    """Over ssh the modules and the archive command see only the host's credentials, never the
    controller's: the store and the archive command both say so, not just botocore's "Unable to locate"."""
    for name in ('AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_PROFILE'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('AWS_SHARED_CREDENTIALS_FILE', str(tmp_path / 'none'))
    monkeypatch.setenv('AWS_CONFIG_FILE', str(tmp_path / 'none'))
    monkeypatch.setenv('AWS_EC2_METADATA_DISABLED', 'true')
    import boto3
    monkeypatch.setattr(boto3, 'DEFAULT_SESSION', None)   # an earlier test's session holds credentials
    store = s3store.S3Store(s3_bucket['name'], endpoint_url=s3_bucket['url'])
    with pytest.raises(s3store.S3Error) as caught:
        store.list_keys('full/')
    assert 'Unable to locate credentials' in str(caught.value)
    assert 'instance profile' in str(caught.value) and 'not to the Ansible controller' in str(caught.value)
    archive = wals3.S3Archive(s3_bucket['name'], endpoint_url=s3_bucket['url'])
    with pytest.raises(walerrors.S3Failure) as caught:
        archive.find('000000010000000000000001')
    assert 'instance profile' in str(caught.value) and "the server's OS user" in str(caught.value)
