# -*- coding: utf-8 -*-
"""Encryption at rest end to end on a real cluster: WAL, base backup and dumps encrypted with age;
restore, PITR, drill and verify decrypt; a missing or wrong key is a clear error; key rotation."""

import os
import pwd
import subprocess
import time
import uuid

import pytest

from test_pitr import args_for, count, insert_batch, make_repo, wait_archived

from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import archive as walarchive

pytestmark = pytest.mark.skipif(not os.path.exists('/usr/bin/age'), reason='the age package is not installed')

MARKER = 'TOP-SECRET-ROW-%s' % uuid.uuid4().hex[:8]


def keygen(directory, name):
    path = os.path.join(directory, name)
    subprocess.run(['age-keygen', '-o', path], check=True, stderr=subprocess.DEVNULL)
    if os.geteuid() == 0:  # the archive command runs as postgres and must read the WAL key
        pw = pwd.getpwnam('postgres')
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def files_under(root):
    for base, _dirs, names in os.walk(root):
        for name in names:
            yield os.path.join(base, name)


def test_encrypted_repository_end_to_end(ansible, new_cluster, backup_root, sandbox_base):
    keydir = os.path.join(sandbox_base, 'keys-%s' % uuid.uuid4().hex[:6])
    os.makedirs(keydir)
    if os.geteuid() == 0:
        os.chown(keydir, pwd.getpwnam('postgres').pw_uid, -1)
    key1, key2 = keygen(keydir, 'backup-2026.key'), keygen(keydir, 'backup-2027.key')
    repo = make_repo(backup_root)
    cluster = new_cluster()
    wal = dict(args_for(cluster, repo), command_path=os.path.join(keydir, 'bin', 'pgbackup-wal'),
               encryption_key_file=key1)
    res = ansible.task('modulo.pgbackup.wal_archive', wal)
    assert not res.get('failed'), res.get('msg')
    cluster.stop()
    cluster.start()
    res = ansible.task('modulo.pgbackup.wal_archive', dict(wal, verify=True))
    assert not res.get('failed') and res['verified'], res.get('msg')

    cluster.psql('CREATE DATABASE shop')
    cluster.psql('CREATE TABLE events (id int PRIMARY KEY, note text)', db='shop')
    insert_batch(cluster, 'shop', 1, 100)
    cluster.psql("UPDATE events SET note = '%s' WHERE id = 7" % MARKER, db='shop')
    enc = {'encryption_key_file': key1}
    res = ansible.task('modulo.pgbackup.pg_backup', args_for(cluster, repo, type='physical', wait_archive=60, **enc))
    assert not res.get('failed'), res.get('msg')
    base = res['backup']['meta']
    assert base['encryption'] == 'age' and base['encryption_key_id'].startswith('age1')
    assert os.listdir(res['backup']['path']) == ['base.tar.zst.age']
    res = ansible.task('modulo.pgbackup.pg_backup', args_for(cluster, repo, db='shop', format='custom', **enc))
    assert not res.get('failed'), res.get('msg')
    dump = res['backup']
    assert dump['path'].endswith('.dump.age') and dump['meta']['globals']['file'].endswith('.globals.sql.age')
    insert_batch(cluster, 'shop', 101, 150)
    wait_archived(cluster, repo)

    # Nothing in the repository is readable without the key: not a row, not a role.
    segments = [e for e in walarchive.list_archive(repo) if e['kind'] == 'segment']
    assert len(segments) >= 3 and all(e['file'].endswith('.zst.age') for e in segments), segments
    for path in files_under(repo):
        with open(path, 'rb') as handle:
            assert MARKER.encode() not in handle.read(), path

    # Verified, restored, recovered and drilled with the key.
    res = ansible.task('modulo.pgbackup.backup_info', args_for(cluster, repo, verify=True, **enc))
    assert not res.get('failed'), res.get('msg')
    assert len(res['verification']) == 2 and all(v['ok'] for v in res['verification'])
    res = ansible.task('modulo.pgbackup.backup_restore', args_for(cluster, repo, backup=dump['meta']['name'],
                                                                  target_db='shop_copy', jobs=2, **enc))
    assert not res.get('failed'), res.get('msg')
    assert count(cluster, 'shop_copy') == 100
    res = ansible.task('modulo.pgbackup.backup_restore', args_for(cluster, repo, db='shop', target='latest',
                                                                  target_db='shop_pitr', **enc))
    assert not res.get('failed'), res.get('msg')
    assert count(cluster, 'shop_pitr') == 150
    res = ansible.task('modulo.pgbackup.pg_restore_drill', args_for(cluster, repo, kind='pitr', db='shop', **enc))
    assert not res.get('failed'), res.get('msg')
    checks = dict((c['name'], c['passed']) for c in res['report']['checks'])
    assert checks.get('pg_verifybackup') and checks.get('recovery'), res['report']['checks']

    # Without the key, or with another one: refused, with what to do, and nothing touched.
    res = ansible.task('modulo.pgbackup.backup_restore', args_for(cluster, repo, backup=dump['meta']['name'],
                                                                  target_db='shop_nokey'))
    assert res.get('failed') and 'encryption_key_file' in res['msg'], res.get('msg')
    res = ansible.task('modulo.pgbackup.backup_restore', args_for(cluster, repo, backup=dump['meta']['name'],
                                                                  target_db='shop_wrongkey', encryption_key_file=key2))
    assert res.get('failed') and 'encryption_old_key_files' in res['msg'], res.get('msg')
    assert cluster.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'shop_%key%'") == '0'

    # Rotation: new backups use the new key, the old backup still restores with the old key listed.
    rotated = {'encryption_key_file': key2, 'encryption_old_key_files': [key1]}
    time.sleep(1.1)
    res = ansible.task('modulo.pgbackup.pg_backup', args_for(cluster, repo, db='shop', **rotated))
    assert not res.get('failed'), res.get('msg')
    assert res['backup']['meta']['encryption_key_id'] != dump['meta']['encryption_key_id']
    res = ansible.task('modulo.pgbackup.backup_restore', args_for(cluster, repo, backup=dump['meta']['name'],
                                                                  target_db='shop_rotated', **rotated))
    assert not res.get('failed'), res.get('msg')
    assert count(cluster, 'shop_rotated') == 100


def test_playbooks_pass_the_key_nightly_backup_and_restore(ansible, pg, modulo_db, backup_root, sandbox_base):
    """pgbackup_encryption_key_file drives the playbooks: an encrypted nightly dump, restored by restore.yml."""
    keydir = os.path.join(sandbox_base, 'keys-%s' % uuid.uuid4().hex[:6])
    os.makedirs(keydir)
    key = keygen(keydir, 'nightly.key')
    extra = dict(pg.connection_vars(), pgbackup_db=modulo_db, pgbackup_backup_root=backup_root,
                 pgbackup_s3_bucket='', pgbackup_encryption_key_file=key)
    proc = ansible.playbook('nightly-backup.yml', extra_vars=extra, env={'BACKUP_S3_BUCKET': ''})
    assert proc.returncode == 0, proc.stdout[-4000:]
    dumps = [n for n in os.listdir(os.path.join(backup_root, 'full')) if n.startswith('modulo_full_')]
    assert any(n.endswith('.sql.gz.age') for n in dumps) and not any(n.endswith('.sql.gz') for n in dumps), dumps
    target = modulo_db + '_restored'
    proc = ansible.playbook('restore.yml', extra_vars=dict(extra, target_db=target))
    try:
        assert proc.returncode == 0, proc.stdout[-4000:]
        rows = 'SELECT count(*) FROM orders'
        assert int(pg.psql(rows, db=target)) == int(pg.psql(rows, db=modulo_db))
    finally:
        pg.psql('DROP DATABASE IF EXISTS %s WITH (FORCE)' % target, check=False)
