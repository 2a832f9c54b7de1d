# -*- coding: utf-8 -*-
"""A base backup in S3 is unpacked as it is read (no local copy first), against the loopback S3.

The connection is broken in the middle of the base backup's download by a TCP proxy between the restore and
the endpoint: the read resumes where it stopped, and only from the same object. A damaged S3 copy is found
by the checksum once it has been read, and a cluster restore then puts the old data directory back.
"""

import hashlib
import os
import socket
import subprocess
import threading

import pytest

from test_pitr import args_for, count, insert_batch, make_repo, s3_shop_with_base, wait_archived
from ansible_collections.modulo.pgbackup.plugins.module_utils import fsutil, s3store

ENV = {'AWS_ACCESS_KEY_ID': 'testing', 'AWS_SECRET_ACCESS_KEY': 'testing'}


class CuttingProxy(object):
    """A TCP proxy on loopback in front of the S3 endpoint. It breaks off the response to a GET whose request
    line names ``marker`` after its headers and ``after`` bytes of its body, ``times`` times; ``on_cut`` runs
    just before each cut."""

    def __init__(self, upstream_url, marker, after, on_cut=None, times=1):
        self.upstream = ('127.0.0.1', int(upstream_url.rsplit(':', 1)[1]))
        self.marker, self.after, self.on_cut, self.times = marker, after, on_cut, times
        self.cuts = 0
        self.listener = socket.socket()
        self.listener.bind(('127.0.0.1', 0))
        self.listener.listen(16)
        self.url = 'http://127.0.0.1:%d' % self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client = self.listener.accept()[0]
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        upstream = socket.create_connection(self.upstream)
        armed = threading.Event()

        def requests():
            try:
                for data in iter(lambda: client.recv(65536), b''):
                    if self.cuts < self.times and data.startswith(b'GET ') and \
                            self.marker in data.split(b'\r\n', 1)[0]:
                        armed.set()
                    upstream.sendall(data)
            except OSError:
                pass
            finally:
                _close(upstream)

        threading.Thread(target=requests, daemon=True).start()
        head, body = b'', None  # the armed response's headers, then how many bytes of its body went through
        try:
            for data in iter(lambda: upstream.recv(65536), b''):
                if armed.is_set() and self.cuts < self.times:
                    if body is None:
                        head += data
                        end = head.find(b'\r\n\r\n')
                        if end < 0:
                            client.sendall(data)
                            continue
                        in_head = end + 4 - (len(head) - len(data))
                        client.sendall(data[:in_head])
                        data, body = data[in_head:], 0
                    if body + len(data) >= self.after:
                        client.sendall(data[:self.after - body])
                        self.cuts += 1
                        if self.on_cut:
                            self.on_cut()
                        break
                    body += len(data)
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client)
            _close(upstream)

    def close(self):
        _close(self.listener)


def _close(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def store_through(proxy, bucket):
    return s3store.S3Store(bucket, prefix='', endpoint_url=proxy.url, region='us-east-1')


def test_a_read_broken_off_resumes_where_it_stopped_with_the_same_bytes(s3_bucket):
    data = os.urandom(3 * 1024 * 1024 + 17)
    s3_bucket['client'].put_object(Bucket=s3_bucket['name'], Key='base/b1/base.tar.zst', Body=data)
    proxy = CuttingProxy(s3_bucket['url'], b'base.tar', after=700 * 1024)
    try:
        reader = s3store.ObjectReader(store_through(proxy, s3_bucket['name']), 'base/b1/base.tar.zst')
        got = bytearray()
        buffer = bytearray(256 * 1024)
        for count_ in iter(lambda: reader.readinto(buffer), 0):
            got += buffer[:count_]
    finally:
        proxy.close()
    assert proxy.cuts == 1
    assert reader.resumed == 1
    assert bytes(got) == data
    assert reader.complete and reader.hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_read_is_not_resumed_from_an_object_replaced_meanwhile(s3_bucket):
    client, bucket, key = s3_bucket['client'], s3_bucket['name'], 'base/b1/base.tar.zst'
    client.put_object(Bucket=bucket, Key=key, Body=b'a' * (2 * 1024 * 1024))
    proxy = CuttingProxy(s3_bucket['url'], b'base.tar', after=300 * 1024,
                         on_cut=lambda: client.put_object(Bucket=bucket, Key=key, Body=b'b' * (2 * 1024 * 1024)))
    try:
        reader = s3store.ObjectReader(store_through(proxy, bucket), key)
        buffer = bytearray(64 * 1024)
        with pytest.raises(s3store.S3Error) as raised:
            while reader.readinto(buffer):
                assert bytes(buffer[:1]) == b'a'
    finally:
        proxy.close()
    assert 'resuming it failed' in str(raised.value)
    assert 'object changed meanwhile' in str(raised.value)


def test_a_read_that_keeps_breaking_off_without_progress_fails_with_where_it_stopped(s3_bucket):
    key = 'base/b1/base.tar.zst'
    s3_bucket['client'].put_object(Bucket=s3_bucket['name'], Key=key, Body=os.urandom(1024 * 1024))
    proxy = CuttingProxy(s3_bucket['url'], b'base.tar', after=0, times=99)
    try:
        reader = s3store.ObjectReader(store_through(proxy, s3_bucket['name']), key)
        buffer = bytearray(64 * 1024)
        with pytest.raises(s3store.S3Error) as raised:
            while reader.readinto(buffer):
                pass
    finally:
        proxy.close()
    # The first response and one per resume (s3store.RESUME_DELAYS_S), each cut off before its first byte:
    # resumes that bring nothing are given up after three in a row (those that bring bytes go on).
    assert proxy.cuts == 1 + len(s3store.RESUME_DELAYS_S)
    assert 'broke off at byte 0 of %d and could not be resumed 3 times' % (1024 * 1024) in str(raised.value)
    assert not reader.complete


@pytest.fixture
def s3_history(ansible, new_cluster, backup_root, s3_bucket):
    """A cluster archiving into S3, a base backup there, 80 rows up to the restore point before_delete, then 70
    deleted; the local repository emptied."""
    repo = make_repo(backup_root)
    cluster, backup, s3_args = s3_shop_with_base(ansible, new_cluster, repo, s3_bucket, wait_archive=60)
    insert_batch(cluster, 'shop', 51, 80)
    cluster.psql("SELECT pg_create_restore_point('before_delete')")
    wait_archived(cluster, repo)
    cluster.psql('DELETE FROM events WHERE id > 10', db='shop')
    subprocess.run(['rm', '-rf', os.path.join(repo, 'base'), os.path.join(repo, 'wal')], check=True)
    return {'cluster': cluster, 'repo': repo, 'base': backup['meta'], 's3_args': s3_args}


def cluster_restore(ansible, h, **s3_args):
    cluster = h['cluster']
    return ansible.task('modulo.pgbackup.backup_restore', args_for(
        cluster, h['repo'], db='shop', mode='cluster', pgdata=cluster.pgdata, confirm=cluster.pgdata,
        service_control='pg_ctl', target_name='before_delete', **dict(s3_args, aws_region='us-east-1')), env=ENV)


def temporary_files(repo):
    return sorted(os.path.relpath(os.path.join(base, name), repo) for base, dirs, files in os.walk(repo)
                  for name in dirs + files if name.startswith(fsutil.TMP_PREFIX))


def test_a_cluster_restore_unpacks_the_s3_base_as_it_reads_it_through_a_broken_connection(
        ansible, s3_history, s3_bucket):
    h = s3_history
    # The free-space check reads the unpacked size from the manifest in S3, not the compressed size.
    store = s3store.S3Store(s3_bucket['name'], endpoint_url=s3_bucket['url'], region='us-east-1')
    assert store.manifest_size(h['base']) > 4 * h['base']['size_bytes']
    proxy = CuttingProxy(s3_bucket['url'], b'base.tar', after=256 * 1024)
    try:
        res = cluster_restore(ansible, h, s3_bucket=s3_bucket['name'], s3_endpoint_url=proxy.url)
    finally:
        proxy.close()
    assert not res.get('failed'), res.get('msg')
    assert proxy.cuts == 1
    assert count(h['cluster'], 'shop') == 80
    assert h['cluster'].psql('SELECT min(id), max(id) FROM events', db='shop') == '1|80'
    assert res['restore']['recovery']['base_backup'] == h['base']['name']
    # Nothing of the base backup was stored in the repository on the way, and nothing temporary is left.
    assert not os.path.exists(os.path.join(h['repo'], 'base', h['base']['name']))
    assert temporary_files(h['repo']) == []
    subprocess.run(['rm', '-rf', res['restore']['old_pgdata']], check=True)


def test_a_damaged_s3_base_is_found_by_its_checksum_and_the_old_data_directory_comes_back(
        ansible, s3_history, s3_bucket):
    h = s3_history
    # The manifest is not unpacked: only the checksum of the whole backup can tell it was changed.
    key = 'database-backups/base/%s/backup_manifest' % h['base']['name']
    client = s3_bucket['client']
    manifest = client.get_object(Bucket=s3_bucket['name'], Key=key)['Body'].read()
    client.put_object(Bucket=s3_bucket['name'], Key=key, Body=manifest.replace(b'"Size"', b'"Size" ', 1))
    res = cluster_restore(ansible, h, **h['s3_args'])
    assert res.get('failed')
    assert 'read from S3 does not match its .meta checksum' in res['msg'] and 'damaged' in res['msg']
    assert res['rollback']['rolled_back'] is True
    # The server runs on its own data again, with what it had before the attempt.
    assert count(h['cluster'], 'shop') == 10
    assert temporary_files(h['repo']) == []


def test_a_delta_restore_downloads_and_checks_the_s3_base_before_its_first_change(ansible, s3_history):
    h, cluster = s3_history, s3_history['cluster']
    cluster.stop()
    res = ansible.task('modulo.pgbackup.backup_restore', args_for(
        cluster, h['repo'], mode='cluster', delta=True, pgdata=cluster.pgdata, confirm=cluster.pgdata,
        service_control='pg_ctl', target_name='before_delete', **h['s3_args']), env=ENV)
    assert not res.get('failed'), res.get('msg')
    assert count(cluster, 'shop') == 80
    assert res['restore']['delta']['reused_files'] > 0
    # The delta started from a downloaded, checked copy, which stays in the repository.
    assert os.path.exists(os.path.join(h['repo'], 'base', h['base']['name'], 'base.tar.zst'))
    assert temporary_files(h['repo']) == []


@pytest.mark.skipif(not os.path.exists('/usr/bin/age'), reason='the age package is not installed')
def test_an_encrypted_s3_base_is_decrypted_as_it_is_read(ansible, new_cluster, backup_root, s3_bucket, sandbox_base):
    from test_encryption import keygen
    from test_pitr import archiving_cluster
    keydir = os.path.join(sandbox_base, 'keys-%s' % os.urandom(3).hex())
    os.makedirs(keydir)
    key, other = keygen(keydir, 'backup.key'), keygen(keydir, 'other.key')
    repo = make_repo(backup_root)
    cluster = archiving_cluster(new_cluster, repo)
    cluster.psql('CREATE DATABASE shop')
    cluster.psql('CREATE TABLE events (id int PRIMARY KEY, note text)', db='shop')
    insert_batch(cluster, 'shop', 1, 60)
    s3_args = {'s3_bucket': s3_bucket['name'], 's3_endpoint_url': s3_bucket['url'], 'aws_region': 'us-east-1'}
    res = ansible.task('modulo.pgbackup.pg_backup', args_for(cluster, repo, type='physical', wait_archive=60,
                                                             encryption_key_file=key, **s3_args))
    assert not res.get('failed'), res.get('msg')
    name = res['backup']['meta']['name']
    assert res['backup']['meta']['files'] == ['base.tar.zst.age']
    wait_archived(cluster, repo)
    # The base backup is in S3 only; the WAL stays in the local archive.
    subprocess.run(['rm', '-rf', os.path.join(repo, 'base')], check=True)

    res = ansible.task('modulo.pgbackup.backup_restore', args_for(
        cluster, repo, db='shop', target='latest', target_db='shop_other_key', encryption_key_file=other,
        **s3_args), env=ENV)
    assert res.get('failed') and 'cannot unpack s3://' in res['msg'], res.get('msg')
    assert 'encryption_old_key_files' in res['msg'], res['msg']

    res = ansible.task('modulo.pgbackup.backup_restore', args_for(
        cluster, repo, db='shop', target='latest', target_db='shop_pitr', encryption_key_file=key, **s3_args), env=ENV)
    assert not res.get('failed'), res.get('msg')
    assert count(cluster, 'shop_pitr') == 60
    assert not os.path.exists(os.path.join(repo, 'base', name))
    assert temporary_files(repo) == []
