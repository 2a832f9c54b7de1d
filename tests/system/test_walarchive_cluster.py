# -*- coding: utf-8 -*-
"""walarchive as a real archive_command: a PostgreSQL 15 cluster archiving, failing and catching up.

The server runs as the ``postgres`` OS user when the tests run as root, so the
repository is handed to that user, exactly as on a production host.
"""

import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time

from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import (
    archive as walarchive, errors as walerrors, names as walnames)

from test_pitr import archiving_cluster, make_repo

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, 'tools', 'pgbackup_wal.py')


def today():
    return time.strftime('%Y%m%d', time.gmtime())


def sha(path):
    with open(path, 'rb') as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def archiver(cluster):
    row = cluster.psql("SELECT archived_count, failed_count, coalesce(last_archived_wal, ''), "
                       "coalesce(last_failed_wal, '') FROM pg_stat_archiver").split('|')
    return {'archived_count': int(row[0]), 'failed_count': int(row[1]),
            'last_archived_wal': row[2], 'last_failed_wal': row[3]}


def switch_wal(cluster):
    """Write something, then close the segment; returns the name of the segment just completed."""
    cluster.psql('CREATE TABLE IF NOT EXISTS walgen (id serial, payload text); '
                 "INSERT INTO walgen (payload) SELECT md5(i::text) FROM generate_series(1, 2000) i")
    return cluster.psql('SELECT pg_walfile_name(pg_switch_wal())')


def wait_for(predicate, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError('timed out waiting for %s' % what)


def segments(repo):
    return [e for e in walarchive.list_archive(repo) if e['kind'] == 'segment']


def test_real_cluster_archives_fails_loudly_and_catches_up(new_cluster, backup_root, tmp_path):
    repo = make_repo(backup_root)
    cluster = archiving_cluster(new_cluster, repo)
    sysid = int(cluster.psql('SELECT system_identifier FROM pg_control_system()'))

    completed = [switch_wal(cluster) for dummy in range(3)]
    wait_for(lambda: archiver(cluster)['last_archived_wal'] == completed[-1], 'the first segments to be archived')
    stats = archiver(cluster)
    assert stats['failed_count'] == 0 and stats['archived_count'] >= 3

    archived = segments(repo)
    names = [e['name'] for e in archived]
    assert set(completed) <= set(names)
    for entry in archived:
        assert entry['date'] == today() and entry['file'] == entry['name'] + '.zst'
        assert entry['path'] == os.path.join(repo, 'wal', today(), entry['file'])
    info = walarchive.read_archive_info(repo)
    assert info['system_identifier'] == str(sysid)

    # Fetched copies are byte-identical to pg_wal (no checkpoint ran, so the
    # originals are still there) and are real WAL for pg_waldump; the header
    # parser agrees with pg_control_system().
    restored = tmp_path / 'restored'
    restored.mkdir()
    for name in completed:
        dest = str(restored / name)
        assert walarchive.fetch(name, dest, repo=repo) == 'local'
        assert sha(dest) == sha(os.path.join(cluster.pgdata, 'pg_wal', name))
        with open(dest, 'rb') as handle:
            assert walnames.read_sysid(handle.read(8192)) == sysid
    dump = subprocess.run([os.path.join(cluster.bindir, 'pg_waldump'), str(restored / completed[-1])],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert dump.returncode == 0, dump.stderr
    assert 'SWITCH' in dump.stdout

    # Fault: the archive cannot be written (wal/ and today's directory, so that
    # even a date change during the test finds nothing writable).
    wal_dir = os.path.join(repo, 'wal')
    date_dir = os.path.join(wal_dir, today())
    os.chmod(date_dir, 0o500)
    os.chmod(wal_dir, 0o500)
    try:
        failed_before = archiver(cluster)['failed_count']
        stuck = switch_wal(cluster)
        wait_for(lambda: archiver(cluster)['failed_count'] > failed_before and
                 archiver(cluster)['last_failed_wal'] == stuck, 'the archiver to report the failure')
        assert os.path.exists(os.path.join(cluster.pgdata, 'pg_wal', stuck))
        assert os.path.exists(os.path.join(cluster.pgdata, 'pg_wal', 'archive_status', stuck + '.ready'))
        assert walarchive.find_segment(repo, stuck) is None
        stuck_too = switch_wal(cluster)
    finally:
        os.chmod(wal_dir, 0o700)
        os.chmod(date_dir, 0o700)
    assert [n for n in os.listdir(date_dir) if n.startswith('.')] == []

    # Fixed: the next segment wakes the archiver, which catches up in order, with no gap.
    last = switch_wal(cluster)
    wait_for(lambda: archiver(cluster)['last_archived_wal'] == last, 'archiving to catch up', timeout=60)
    names = [e['name'] for e in segments(repo)]
    assert {stuck, stuck_too, last} <= set(names)
    assert names == walnames.wal_range(names[0], names[-1])
    assert not os.path.exists(os.path.join(cluster.pgdata, 'pg_wal', 'archive_status', stuck + '.ready'))
    summary = walarchive.status(repo)
    assert summary['newest_segment'] == last and summary['system_identifier'] == str(sysid)


def test_another_cluster_cannot_archive_into_the_same_repository(new_cluster, backup_root):
    repo = make_repo(backup_root)
    first = archiving_cluster(new_cluster, repo)
    name = switch_wal(first)
    wait_for(lambda: archiver(first)['last_archived_wal'] == name, 'the first cluster to archive')
    before = {e['path']: sha(e['path']) for e in walarchive.list_archive(repo)}

    second = archiving_cluster(new_cluster, repo)
    sysid2 = second.psql('SELECT system_identifier FROM pg_control_system()')
    assert sysid2 != walarchive.read_archive_info(repo)['system_identifier']
    switch_wal(second)
    wait_for(lambda: archiver(second)['failed_count'] > 0, 'the second cluster to be refused')
    assert archiver(second)['archived_count'] == 0

    def refused_in_log():
        with open(second.log) as handle:
            text = handle.read()
        return 'REFUSED' in text and sysid2 in text and 'must not archive here' in text
    wait_for(refused_in_log, 'the refusal in the server log')
    # Same segment names, other cluster: nothing was added or replaced.
    assert {e['path']: sha(e['path']) for e in walarchive.list_archive(repo)} == before


# --- S3 ---------------------------------------------------------------------------------------

SEG = 1024 * 1024


def make_segment(directory, name, sysid=7312345678901234567):
    tli, segno = walnames.parse_segment_name(name, SEG)
    header = struct.pack('<HHIQI4xQII', 0xD110, walnames.XLP_LONG_HEADER, tli, segno * SEG, 0, sysid, SEG, 8192)
    path = os.path.join(str(directory), name)
    with open(path, 'wb') as handle:
        handle.write((header + hashlib.sha256(name.encode()).digest() * 1024).ljust(SEG, b'\0'))
    return path


def run(*args):
    """The command with the test's Python (the one that has boto3), environment from s3_bucket."""
    return subprocess.run([sys.executable, SCRIPT] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, check=False)


def s3_args(bucket, url, prefix='database-backups/'):
    return ['--s3-bucket', bucket, '--s3-prefix', prefix, '--s3-endpoint-url', url, '--aws-region', 'us-east-1']


def test_s3_push_and_fetch_back(s3_bucket, tmp_path):
    repo = str(tmp_path / 'repo')
    os.mkdir(repo)
    pg_wal = tmp_path / 'pg_wal'
    pg_wal.mkdir()
    client, bucket = s3_bucket['client'], s3_bucket['name']
    opts = s3_args(bucket, s3_bucket['url'])

    name = '000000010000000000000003'
    src = make_segment(pg_wal, name)
    proc = run('push', '--repo', repo, *(opts + [src, name]))
    assert proc.returncode == 0, proc.stderr
    local = walarchive.find_segment(repo, name)
    key = 'database-backups/' + os.path.relpath(local, repo)
    head = client.head_object(Bucket=bucket, Key=key)
    assert head['ServerSideEncryption'] == 'AES256'
    assert head['Metadata']['sha256'] == sha(local) and head['Metadata']['raw-sha256'] == sha(src)
    info = client.get_object(Bucket=bucket, Key='database-backups/wal/archive.json')['Body'].read()
    assert b'7312345678901234567' in info

    # Pushing again is a no-op in both places.
    proc = run('push', '--repo', repo, *(opts + [src, name]))
    assert proc.returncode == 0 and 'identical' in proc.stderr

    # The local copy is gone (a lost disk): fetch falls back to S3.
    os.unlink(local)
    dest = str(tmp_path / 'RECOVERYXLOG')
    proc = run('fetch', '--repo', repo, *(opts + [name, dest]))
    assert proc.returncode == 0, proc.stderr
    assert sha(dest) == sha(src)

    # --s3-only: nothing local, and fetch finds it in S3 without knowing the date.
    only = '000000010000000000000004'
    src_only = make_segment(pg_wal, only)
    proc = run('push', '--repo', repo, '--s3-only', *(opts + [src_only, only]))
    assert proc.returncode == 0, proc.stderr
    assert walarchive.find_segment(repo, only) is None
    keys = [o['Key'] for o in client.list_objects_v2(Bucket=bucket)['Contents']]
    assert 'database-backups/wal/%s/%s.zst' % (today(), only) in keys
    proc = run('fetch', '--s3-only', *(opts + [only, dest]))
    assert proc.returncode == 0, proc.stderr
    assert sha(dest) == sha(src_only)
    proc = run('fetch', '--repo', repo, *(opts + ['000000010000000000000009', dest]))
    assert proc.returncode == 1 and 'not in the archive' in proc.stderr

    # A different segment under an archived name is refused by S3's copy too.
    other = tmp_path / 'other'
    other.mkdir()
    conflicting = make_segment(other, only)
    with open(conflicting, 'r+b') as handle:
        handle.seek(SEG - 10)
        handle.write(b'different!')
    proc = run('push', '--s3-only', *(opts + [conflicting, only]))
    assert proc.returncode == 1 and 'CONFLICT' in proc.stderr


def test_s3_push_without_server_side_encryption_when_the_setting_says_so(s3_bucket, tmp_path):
    """s3_server_side_encryption: false reaches the WAL copies too (it used to be AES256 whatever it said)."""
    pg_wal = tmp_path / 'pg_wal'
    pg_wal.mkdir()
    client, bucket = s3_bucket['client'], s3_bucket['name']
    config = tmp_path / 'pgbackup-wal.json'
    config.write_text(json.dumps({'s3_bucket': bucket, 's3_prefix': 'database-backups/', 's3_only': True,
                                  's3_endpoint_url': s3_bucket['url'], 'aws_region': 'us-east-1', 's3_sse': False}))
    name = '000000010000000000000005'
    proc = run('push', '--config', str(config), make_segment(pg_wal, name), name)
    assert proc.returncode == 0, proc.stderr
    key = 'database-backups/wal/%s/%s.zst' % (today(), name)
    assert 'ServerSideEncryption' not in client.head_object(Bucket=bucket, Key=key)
    assert 'ServerSideEncryption' not in client.head_object(Bucket=bucket, Key='database-backups/wal/archive.json')


def test_s3_down(s3_bucket, tmp_path):
    repo = str(tmp_path / 'repo')
    os.mkdir(repo)
    pg_wal = tmp_path / 'pg_wal'
    pg_wal.mkdir()
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        dead_url = 'http://127.0.0.1:%d' % sock.getsockname()[1]
    name = '000000010000000000000003'
    src = make_segment(pg_wal, name)

    proc = run('push', '--repo', repo, '--s3-only', *(s3_args(s3_bucket['name'], dead_url) + [src, name]))
    assert proc.returncode == 1 and 'S3' in proc.stderr
    assert os.listdir(repo) == []

    # Local and S3: every destination's identity is checked before anything is written.
    proc = run('push', '--repo', repo, *(s3_args(s3_bucket['name'], dead_url) + [src, name]))
    assert proc.returncode == 1 and 'S3' in proc.stderr
    assert walarchive.list_archive(repo) == []
    # An earlier push that stored the local copy before S3 failed: the retry
    # accepts the identical local copy and gives S3 its copy, same relative path.
    walarchive.push(src, name, repo=repo)
    proc = run('push', '--repo', repo, *(s3_args(s3_bucket['name'], s3_bucket['url']) + [src, name]))
    assert proc.returncode == 0, proc.stderr
    relpath = os.path.relpath(walarchive.find_segment(repo, name), repo)
    assert s3_bucket['client'].list_objects_v2(Bucket=s3_bucket['name'], Prefix='database-backups/wal/'
                                               )['KeyCount'] == 2   # the segment and archive.json
    s3_bucket['client'].head_object(Bucket=s3_bucket['name'], Key='database-backups/' + relpath)

    # fetch cannot tell "missing" from "unreachable": it stops recovery instead of ending it.
    shutil.rmtree(os.path.join(repo, 'wal'))
    proc = run('fetch', '--repo', repo, *(s3_args(s3_bucket['name'], dead_url) + [name, str(tmp_path / 'x')]))
    assert proc.returncode == walerrors.EXIT_FATAL, proc.stderr
    assert not os.path.exists(str(tmp_path / 'x'))
