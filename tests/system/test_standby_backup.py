# -*- coding: utf-8 -*-
"""Base backups from a real streaming standby, the WAL from the primary's archive, and a PITR from them.

The primary archives through the collection's wal_archive module with archive_timeout 0: the backup's last
WAL segment can then only reach the archive because the backup asked the primary to switch WAL, as a standby
neither archives nor switches WAL itself.
"""

import json
import os
import pwd
import shutil
import subprocess
import time
import uuid

import pytest

import pgsandbox
from test_pitr import args_for, count, insert_batch, make_repo, wait_archived

from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import archive as walarchive, names as walnames


def replay_caught_up(primary, replica, timeout=60):
    target = primary.psql('SELECT pg_current_wal_lsn()')
    deadline = time.time() + timeout
    while time.time() < deadline:
        if replica.psql("SELECT pg_last_wal_replay_lsn() >= '%s'::pg_lsn" % target) == 't':
            return
        time.sleep(0.2)
    raise AssertionError('the standby did not replay up to %s' % target)


def make_standby(sandbox_base, primary):
    """pg_basebackup -R from the primary, started on its own port: a streaming standby as a DBA makes one."""
    replica = pgsandbox.Cluster(sandbox_base, name='standby-%s' % uuid.uuid4().hex[:8])
    for path in (replica.dir, replica.socket_dir):
        os.makedirs(path, exist_ok=True)
        os.chmod(path, 0o755)
        pgsandbox._chown_to_server_user(path)  # pylint: disable=protected-access
    replica._run([os.path.join(replica.bindir, 'pg_basebackup'), '-D', replica.pgdata, '-h', '127.0.0.1',  # pylint: disable=protected-access
                  '-p', str(primary.port), '-U', 'postgres', '-R', '-X', 'stream', '-c', 'fast'])
    replica._append_conf("port = %d\nunix_socket_directories = '%s'\n" % (replica.port, replica.socket_dir))  # pylint: disable=protected-access
    replica.start()
    deadline = time.time() + 60
    while replica.psql("SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'none')") != 'streaming':
        if time.time() > deadline:
            raise AssertionError('the standby does not stream: %s' % open(replica.log).read()[-2000:])
        time.sleep(0.2)
    return replica


@pytest.fixture
def replicated(ansible, new_cluster, sandbox_base, backup_root):
    repo = make_repo(backup_root)
    primary = new_cluster()
    wal = dict(args_for(primary, repo), archive_timeout=0,
               command_path=os.path.join(sandbox_base, 'walcmd-%s' % uuid.uuid4().hex[:8], 'bin', 'pgbackup-wal'))
    res = ansible.task('modulo.pgbackup.wal_archive', wal)
    assert not res.get('failed'), res.get('msg')
    primary.stop()
    primary.start()
    res = ansible.task('modulo.pgbackup.wal_archive', dict(wal, verify=True))
    assert not res.get('failed') and res['verified'], res.get('msg')
    assert primary.psql('SHOW archive_timeout') == '0'
    primary.psql('CREATE DATABASE shop')
    primary.psql('CREATE TABLE events (id int PRIMARY KEY, note text, '
                 'committed_at timestamptz NOT NULL DEFAULT clock_timestamp())', db='shop')
    replica = make_standby(sandbox_base, primary)
    try:
        yield {'primary': primary, 'standby': replica, 'repo': repo, 'db': 'shop'}
    finally:
        replica.destroy()
        shutil.rmtree(os.path.dirname(os.path.dirname(wal['command_path'])), ignore_errors=True)


def standby_backup(ansible, r, **extra):
    args = dict({'type': 'physical', 'backup_from': 'standby', 'wait_archive': 60}, **extra)
    return ansible.task('modulo.pgbackup.pg_backup', args_for(r['standby'], r['repo'], **args))


def basebackups(res):
    return [argv for argv in res.get('executed_commands', []) if os.path.basename(argv[0]) == 'pg_basebackup'
            or (argv[0] == 'runuser' and os.path.basename(argv[-1]) == 'pg_basebackup')]


def ids(cluster, db):
    return cluster.psql('SELECT string_agg(id::text, \',\' ORDER BY id) FROM events', db=db)


def test_pitr_from_a_base_backup_of_the_standby(ansible, replicated, sandbox_base):
    primary, replica, repo, db = replicated['primary'], replicated['standby'], replicated['repo'], replicated['db']
    insert_batch(primary, db, 1, 100)
    replay_caught_up(primary, replica)
    archived_before = set(e['name'] for e in walarchive.list_archive(repo))

    res = standby_backup(ansible, replicated)
    assert not res.get('failed'), res.get('msg')
    meta = res['backup']['meta']
    assert meta['status'] == 'complete' and meta['type'] == 'physical'
    assert meta['backup_from'] == 'standby' and meta['standby_port'] == replica.port
    # Nobody named the primary: it is the server the standby streams from.
    assert meta['primary_host'] == '127.0.0.1' and meta['primary_port'] == primary.port
    assert meta['replay_lag_s'] is not None and meta['replay_lag_s'] < 300
    assert meta['system_identifier'] == primary.psql('SELECT system_identifier FROM pg_control_system()')
    assert meta['timeline'] == 1 and walnames.parse_lsn(meta['start_lsn']) < walnames.parse_lsn(meta['stop_lsn'])
    for segment in walnames.wal_range(meta['wal_start'], meta['wal_stop']):
        assert walarchive.find_segment(repo, segment), segment
    # With archive_timeout 0, only the switch the backup asked of the primary put the stop segment there.
    assert meta['wal_stop'] not in archived_before
    assert any('pg_switch_wal()' in ' '.join(argv) for argv in res['executed_commands'])
    # A standby leaves no backup history file in the archive (the one there is the primary's, from making the
    # standby); the WAL range came from the backup's manifest.
    for entry in walarchive.list_archive(repo):
        if entry['kind'] == 'backup':
            with open(entry['path']) as handle:
                assert 'LABEL: %s' % meta['name'] not in handle.read()
    assert basebackups(res), res['executed_commands']

    # The server's own label says where the backup was taken, and pg_verifybackup accepts the copy.
    unpacked = os.path.join(sandbox_base, 'verify-%s' % uuid.uuid4().hex[:8])
    os.makedirs(unpacked)
    try:
        subprocess.run(['tar', '-I', 'zstd', '-xf', os.path.join(res['backup']['path'], 'base.tar.zst'),
                        '-C', unpacked], check=True)
        with open(os.path.join(unpacked, 'backup_label')) as handle:
            assert 'BACKUP FROM: standby' in handle.read()
        proc = subprocess.run([os.path.join(primary.bindir, 'pg_verifybackup'), '--no-parse-wal', '--manifest-path',
                               os.path.join(res['backup']['path'], 'backup_manifest'), unpacked],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, check=False)
        assert proc.returncode == 0, proc.stdout
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)

    insert_batch(primary, db, 101, 200)
    time.sleep(1.2)
    mark = primary.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")
    time.sleep(1.2)
    insert_batch(primary, db, 201, 300)
    wait_archived(primary, repo)
    expected = primary.psql("SELECT string_agg(id::text || ':' || note, ',' ORDER BY id) FROM events "
                            "WHERE committed_at <= '%s+00'" % mark, db=db)
    assert expected.count(',') == 199

    res = ansible.task('modulo.pgbackup.backup_restore', args_for(primary, repo, db=db, target_db='shop_at_mark',
                                                                  target_time=mark))
    assert not res.get('failed'), res.get('msg')
    assert res['restore']['recovery']['base_backup'] == meta['name']
    assert primary.psql("SELECT string_agg(id::text || ':' || note, ',' ORDER BY id) FROM events",
                        db='shop_at_mark') == expected
    assert count(primary, db) == 300


def test_backup_from_standby_refuses_a_primary(ansible, replicated):
    primary = replicated['primary']
    res = ansible.task('modulo.pgbackup.pg_backup', args_for(primary, replicated['repo'], type='physical',
                                                             backup_from='standby'))
    assert res.get('failed') and 'is not a standby' in res['msg'], res.get('msg')
    assert not basebackups(res)
    assert not os.path.exists(os.path.join(replicated['repo'], 'base')) or not os.listdir(
        os.path.join(replicated['repo'], 'base'))


def test_a_primary_backup_of_a_standby_says_to_use_backup_from_standby(ansible, replicated):
    res = ansible.task('modulo.pgbackup.pg_backup', args_for(replicated['standby'], replicated['repo'],
                                                             type='physical'))
    assert res.get('failed') and 'is a standby' in res['msg'] and 'backup_from: standby' in res['msg'], res.get('msg')
    assert not basebackups(res)


def test_a_standby_far_behind_is_refused(ansible, replicated):
    primary, replica, db = replicated['primary'], replicated['standby'], replicated['db']
    insert_batch(primary, db, 1, 10)
    replay_caught_up(primary, replica)
    time.sleep(2.5)
    replica.psql('SELECT pg_wal_replay_pause()')
    try:
        insert_batch(primary, db, 11, 20)
        deadline = time.time() + 30
        while replica.psql('SELECT pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()') != 't':
            assert time.time() < deadline, 'the standby received nothing new'
            time.sleep(0.2)
        res = standby_backup(ansible, replicated, max_replay_lag=2)
        assert res.get('failed') and 'behind its primary' in res['msg'] and 'max_replay_lag' in res['msg'], \
            res.get('msg')
        assert not basebackups(res)
    finally:
        replica.psql('SELECT pg_wal_replay_resume()')


def test_a_primary_host_of_another_cluster_is_refused(ansible, replicated, pg):
    res = standby_backup(ansible, replicated, primary_host='127.0.0.1', primary_port=pg.port)
    assert res.get('failed') and 'another cluster' in res['msg'], res.get('msg')
    assert not basebackups(res)


@pytest.mark.skipif(not os.path.exists('/usr/bin/age'), reason='the age package is not installed')
def test_an_encrypted_base_backup_of_the_standby_restores(ansible, replicated, sandbox_base):
    """The encrypted stream has no manifest file beside it and the standby no .backup file: the WAL range is
    read from the stream as it passes."""
    primary, replica, repo, db = replicated['primary'], replicated['standby'], replicated['repo'], replicated['db']
    keydir = os.path.join(sandbox_base, 'keys-%s' % uuid.uuid4().hex[:6])
    os.makedirs(keydir)
    key = os.path.join(keydir, 'backup.key')
    subprocess.run(['age-keygen', '-o', key], check=True, stderr=subprocess.DEVNULL)
    if os.geteuid() == 0:  # restore_command runs as postgres
        for path in (keydir, key):
            os.chown(path, pwd.getpwnam('postgres').pw_uid, -1)
    try:
        insert_batch(primary, db, 1, 50)
        replay_caught_up(primary, replica)
        res = standby_backup(ansible, replicated, encryption_key_file=key)
        assert not res.get('failed'), res.get('msg')
        meta = res['backup']['meta']
        assert meta['encryption'] == 'age' and meta['backup_from'] == 'standby'
        assert os.listdir(res['backup']['path']) == ['base.tar.zst.age']
        for segment in walnames.wal_range(meta['wal_start'], meta['wal_stop']):
            assert walarchive.find_segment(repo, segment), segment
        insert_batch(primary, db, 51, 80)
        wait_archived(primary, repo)
        res = ansible.task('modulo.pgbackup.backup_restore', args_for(
            primary, repo, db=db, target_db='shop_encrypted', target='latest', encryption_key_file=key))
        assert not res.get('failed'), res.get('msg')
        assert res['restore']['recovery']['base_backup'] == meta['name']
        assert ids(primary, 'shop_encrypted') == ids(primary, db)
        assert count(primary, 'shop_encrypted') == 80
    finally:
        shutil.rmtree(keydir, ignore_errors=True)


def test_the_nightly_playbook_takes_its_base_backup_from_the_standby(ansible, replicated):
    """pgbackup_backup_from drives the backup role; the nightly dump reads from the same standby."""
    primary, replica, repo, db = replicated['primary'], replicated['standby'], replicated['repo'], replicated['db']
    insert_batch(primary, db, 1, 40)
    replay_caught_up(primary, replica)
    extra = dict(replica.connection_vars(), pgbackup_db=db, pgbackup_backup_root=repo, pgbackup_s3_bucket='',
                 pgbackup_backup_from='standby', pgbackup_cleanup=False)
    proc = ansible.playbook('nightly-backup.yml', extra_vars=extra, env={'BACKUP_S3_BUCKET': ''})
    assert proc.returncode == 0, proc.stdout[-4000:]
    metas = [n for n in os.listdir(os.path.join(repo, 'base')) if n.endswith('.meta')]
    assert len(metas) == 1, metas
    with open(os.path.join(repo, 'base', metas[0])) as handle:
        meta = json.load(handle)
    assert meta['backup_from'] == 'standby' and meta['standby_port'] == replica.port
    assert meta['primary_port'] == primary.port
    dumps = [n for n in os.listdir(os.path.join(repo, 'full')) if n.endswith('.sql.gz.meta')]
    with open(os.path.join(repo, 'full', dumps[0])) as handle:
        assert json.load(handle)['table_rows'] == {'public.events': 40}


def test_without_the_right_to_switch_wal_the_backup_waits_for_archive_timeout(ansible, replicated):
    """The least-privilege backup role (REPLICATION, pg_monitor, pg_read_all_data) may not run pg_switch_wal():
    the backup's last segment then reaches the archive only at the primary's archive_timeout."""
    primary, replica, db = replicated['primary'], replicated['standby'], replicated['db']
    primary.psql('CREATE ROLE modulo_backup LOGIN REPLICATION IN ROLE pg_monitor, pg_read_all_data')
    insert_batch(primary, db, 1, 30)
    replay_caught_up(primary, replica)
    as_role = {'login_user': 'modulo_backup'}

    res = standby_backup(ansible, replicated, wait_archive=5, **as_role)
    assert res.get('failed'), res.get('msg')
    assert 'was not archived within 5 s' in res['msg'] and 'switch WAL' in res['msg'] \
        and 'permission denied' in res['msg'], res['msg']
    assert not [n for n in os.listdir(os.path.join(replicated['repo'], 'base')) if n.endswith('.meta')]

    primary.psql('ALTER SYSTEM SET archive_timeout = 3')
    primary.psql('SELECT pg_reload_conf()')
    res = standby_backup(ansible, replicated, wait_archive=60, **as_role)
    assert not res.get('failed'), res.get('msg')
    meta = res['backup']['meta']
    assert meta['backup_from'] == 'standby' and meta['status'] == 'complete'
    for segment in walnames.wal_range(meta['wal_start'], meta['wal_stop']):
        assert walarchive.find_segment(replicated['repo'], segment), segment
    assert any('pg_switch_wal()' in w and 'archive_timeout' in w for w in res.get('warnings', [])), res.get('warnings')


def test_db_roles_grants_the_switch_a_standby_backup_needs_and_takes_it_back(ansible, replicated):
    """db_roles on the primary with pgbackup_backup_from: standby grants EXECUTE on pg_switch_wal() to the backup
    role (once: a second run changes nothing); the standby backup as that role then archives its last segment
    at once, archive_timeout being 0; with db_roles_switch_wal: false the grant is taken back."""
    primary, replica, db = replicated['primary'], replicated['standby'], replicated['db']
    play_vars = dict(primary.connection_vars(), pgbackup_backup_from='standby')
    proc = ansible.playbook('db-roles.yml', extra_vars=play_vars)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert 'granted EXECUTE on pg_switch_wal()' in ' '.join(proc.stdout.split())
    proc = ansible.playbook('db-roles.yml', extra_vars=play_vars)
    assert proc.returncode == 0 and 'changed=0' in proc.stdout and 'nothing to change' in proc.stdout, \
        proc.stdout[-3000:]
    insert_batch(primary, db, 1, 30)
    replay_caught_up(primary, replica)

    res = standby_backup(ansible, replicated, wait_archive=20, login_user='modulo_backup')
    assert not res.get('failed'), res.get('msg')
    meta = res['backup']['meta']
    assert meta['backup_from'] == 'standby' and meta['status'] == 'complete'
    for segment in walnames.wal_range(meta['wal_start'], meta['wal_stop']):
        assert walarchive.find_segment(replicated['repo'], segment), segment
    assert not [w for w in res.get('warnings', []) if 'archive_timeout' in w], res.get('warnings')

    proc = ansible.playbook('db-roles.yml', extra_vars=dict(play_vars, db_roles_switch_wal=False))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert 'revoked EXECUTE on pg_switch_wal()' in ' '.join(proc.stdout.split())
    assert primary.psql("SELECT has_function_privilege('modulo_backup', 'pg_switch_wal()', 'EXECUTE')") == 'f'


def test_the_primary_rebuilt_in_cluster_mode_from_a_standby_backup(ansible, replicated):
    """The backup of the standby replaces the primary's whole data directory (mode=cluster, target=latest): the
    recovery starts from the standby's backup label and replays the primary's archive to its end, so every
    row the primary committed and archived is back, on a new timeline."""
    primary, replica, repo, db = replicated['primary'], replicated['standby'], replicated['repo'], replicated['db']
    insert_batch(primary, db, 1, 100)
    replay_caught_up(primary, replica)
    res = standby_backup(ansible, replicated)
    assert not res.get('failed'), res.get('msg')
    name = res['backup']['meta']['name']
    insert_batch(primary, db, 101, 150)
    wait_archived(primary, repo)
    expected = ids(primary, db)
    replica.stop()

    res = ansible.task('modulo.pgbackup.backup_restore', args_for(
        primary, repo, mode='cluster', pgdata=primary.pgdata, confirm=primary.pgdata, target='latest'))
    assert not res.get('failed'), res.get('msg')
    assert res['restore']['recovery']['base_backup'] == name
    assert res['restore']['recovery']['timeline'] == 2
    assert ids(primary, db) == expected and count(primary, db) == 150
    assert primary.psql('SELECT pg_is_in_recovery()') == 'f'
    # The data directory is the standby's copy, made a primary: no standby.signal, no primary_conninfo left.
    assert not os.path.exists(os.path.join(primary.pgdata, 'standby.signal'))
    assert primary.psql('SHOW primary_conninfo') == ''
