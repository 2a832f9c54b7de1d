# -*- coding: utf-8 -*-
"""wal_archive against real PostgreSQL 15 clusters: check mode, restart, verification, idempotence, absent.

The archive command is installed under the sandbox's base directory (0755),
never under /usr/local or pytest's 0700 tmp_path: the server runs as the
``postgres`` OS user and must be able to read it, exactly as on a real host.
"""

import json
import os
import pwd
import re
import shutil
import subprocess
import time
import uuid

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import archiving, pgclient, walcommand


from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import archive as walarchive
MODULE = 'modulo.pgbackup.wal_archive'


@pytest.fixture
def command_dir(sandbox_base):
    path = os.path.join(sandbox_base, 'walcmd-%s' % uuid.uuid4().hex[:8])
    yield path
    shutil.rmtree(path, ignore_errors=True)


def module_args(cluster, backup_root, command_dir, **extra):
    args = {'login_host': '127.0.0.1', 'port': cluster.port, 'login_user': 'postgres',
            'pg_bindir': cluster.bindir, 'backup_root': backup_root,
            'command_path': os.path.join(command_dir, 'bin', 'pgbackup-wal'), 'verify_timeout': 30}
    args.update(extra)
    return args


def run_directly(args):
    """What the module does, without check mode or verification, in this process."""
    params = {'state': 'present', 'archive_timeout': 60, 'compression': 'auto', 'compression_level': None,
              'verify': False, 'verify_timeout': 30, 'pg_os_user': 'postgres'}
    params.update(args)
    log = pgclient.CommandLog()
    result = archiving.new_result(params['command_path'], log=log)
    conn = pgclient.Connection(login_user=params['login_user'], login_host=params['login_host'],
                               port=params['port'], bindir=params['pg_bindir'])
    request = archiving.Request(params['backup_root'], state=params['state'], archive_timeout=params['archive_timeout'],
                                compression=params['compression'], compression_level=params['compression_level'],
                                verify=params['verify'], verify_timeout=params['verify_timeout'],
                                pg_os_user=params['pg_os_user'])
    return archiving.run(conn, request, result, log=log)


def show(cluster, name):
    return cluster.psql('SHOW %s' % name)


def archiver(cluster):
    return json.loads(cluster.psql('SELECT row_to_json(a) FROM pg_stat_archiver a'))


def auto_conf(cluster):
    with open(os.path.join(cluster.pgdata, 'postgresql.auto.conf')) as handle:
        return handle.read()


def restart(cluster):
    cluster.stop()
    cluster.start()


def as_postgres(argv):
    return (['runuser', '-u', 'postgres', '--'] if os.geteuid() == 0 else []) + argv


def owner(path):
    return pwd.getpwuid(os.stat(path).st_uid).pw_name


def test_configure_restart_verify_idempotent_then_absent(new_cluster, backup_root, command_dir, ansible):
    cluster = new_cluster()
    assert show(cluster, 'archive_mode') == 'off'
    args = module_args(cluster, backup_root, command_dir)
    command_path = args['command_path']
    settings_path = walcommand.settings_path(command_path)
    conf_before = auto_conf(cluster)

    # Check mode: the whole plan, nothing done.
    res = ansible.task(MODULE, args, check=True)
    assert not res.get('failed'), res.get('msg')
    assert res['changed'] and res['restart_required']
    assert set(res['settings_changed']) == {'archive_mode', 'archive_command', 'archive_timeout'}
    assert not os.path.exists(command_path) and not os.path.exists(backup_root)
    assert auto_conf(cluster) == conf_before and show(cluster, 'archive_timeout') == '0'
    assert not res['verified']

    # Real run: files, repository, settings; the restart is left to the caller. The host had the single-file
    # command of earlier versions: its files go once the new command line is set.
    legacy = [os.path.join(command_path + '.lib', 'walarchive.py'), command_path + '.json']
    os.makedirs(command_path + '.lib')
    with open(legacy[0], 'w') as handle:
        handle.write('# the old library\n')
    with open(legacy[1], 'w') as handle:
        json.dump({'_managed_by': 'modulo.pgbackup wal_archive (Ansible): edits here are overwritten', 'repo': '/x'},
                  handle)
    res = ansible.task(MODULE, args)
    assert not res.get('failed'), res.get('msg')
    assert res['changed'] and res['restart_required'] and not res['verified']
    assert not [p for p in legacy if os.path.exists(p)] and set(legacy) <= set(res['files_changed'])
    assert any('restart' in w for w in res.get('warnings', [])), res.get('warnings')
    assert res['archive_command'] == '/usr/bin/python3 -S %s push %%p %%f' % command_path
    assert res['restore_command'] == '/usr/bin/python3 -S %s fetch %%f %%p' % command_path
    assert res['settings_path'] == settings_path
    assert any('ALTER SYSTEM SET archive_mode' in ' '.join(c) for c in res['executed_commands'])
    assert os.stat(command_path).st_mode & 0o7777 == 0o755
    assert os.stat(settings_path).st_mode & 0o7777 == 0o644
    # The package and its settings, compiled by the system Python that runs them.
    library = [path for path, _content in walcommand.library_files(command_path)]
    assert set(library + [settings_path]) <= set(res['files_changed'])
    # Written in this order: the launcher never exists without what it imports.
    assert max(res['files_changed'].index(p) for p in library + [settings_path]) < res['files_changed'].index(command_path)
    assert set(walcommand.bytecode_dirs(command_path)) <= set(res['files_changed'])
    assert walcommand.bytecode(command_path, write=False) == []
    with open(command_path) as handle:
        assert handle.readline() == '#!/usr/bin/python3 -S\n'
    settings = walcommand.installed_settings(command_path)
    assert settings['repo'] == backup_root and settings['s3_bucket'] is None
    wal = os.path.join(backup_root, 'wal')
    assert os.stat(wal).st_mode & 0o7777 == 0o700 and os.stat(backup_root).st_mode & 0o7777 == 0o700
    sysid = cluster.psql('SELECT system_identifier FROM pg_control_system()')
    assert walarchive.read_archive_info(backup_root)['system_identifier'] == sysid == res['system_identifier']
    if os.geteuid() == 0:
        assert owner(backup_root) == owner(wal) == owner(os.path.join(wal, 'archive.json')) == 'postgres'
    assert show(cluster, 'archive_timeout') == '1min'
    assert show(cluster, 'archive_mode') == 'off'          # needs the restart

    # Again before the restart (directly, without Ansible's start-up time): nothing left to
    # change, and the restart is still reported as pending.
    res = run_directly(args)
    assert not res['changed'] and res['restart_required'], (res['files_changed'], res['settings_changed'])

    restart(cluster)
    assert show(cluster, 'archive_mode') == 'on' and show(cluster, 'wal_level') == 'replica'

    res = ansible.task(MODULE, args)
    assert not res.get('failed'), res.get('msg')
    assert not res['changed'] and not res['restart_required'] and res['verified']
    segment = res['segment']
    found = walarchive.find_segment(backup_root, segment)
    assert found and found.startswith(os.path.join(wal, time.strftime('%Y%m%d', time.gmtime())) + os.sep)
    assert res['archiver']['failed_count'] == 0 and res['archiver']['archived_count'] >= 1

    # Idempotent: same arguments, no change (verification switches WAL again, which is not a change).
    res = ansible.task(MODULE, args)
    assert not res.get('failed'), res.get('msg')
    assert not res['changed'] and res['verified'] and res['segment'] != segment
    assert res['files_changed'] == [] and res['settings_changed'] == []

    # The server really archives with the installed command, as postgres with /usr/bin/python3.
    stats = archiver(cluster)
    assert stats['archived_count'] >= 2 and stats['failed_count'] == 0
    entries = [e for e in walarchive.list_archive(backup_root) if e['kind'] == 'segment']
    assert {segment, res['segment']} <= {e['name'] for e in entries}
    assert all(re.match(r'^wal/\d{8}/[0-9A-F]{24}(\.zst|\.gz)?$', e['relpath']) for e in entries)
    proc = subprocess.run(as_postgres([command_path, 'status']),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)['system_identifier'] == sysid

    # A broken archive: verification fails fast with the archiver's own report, then recovers.
    date_dir = os.path.dirname(found)
    os.chmod(date_dir, 0o500)
    os.chmod(wal, 0o500)
    try:
        with pytest.raises(archiving.ArchivingError) as exc:
            run_directly(dict(args, verify=True))
    finally:
        os.chmod(wal, 0o700)
        os.chmod(date_dir, 0o700)
    assert 'last_failed_wal' in str(exc.value) and 'runuser -u postgres' in str(exc.value)
    assert archiver(cluster)['last_failed_wal'] in str(exc.value)
    res = run_directly(dict(args, verify=True))
    assert res['verified'] and archiver(cluster)['last_archived_wal'] == res['segment']

    # state=absent: archiving off after the restart, the archive and the command kept.
    kept = sorted(e['path'] for e in walarchive.list_archive(backup_root))
    absent = dict(args, state='absent')
    res = ansible.task(MODULE, absent)
    assert not res.get('failed'), res.get('msg')
    assert res['changed'] and res['restart_required']
    assert set(res['settings_changed']) == {'archive_mode', 'archive_command', 'archive_timeout'}
    assert "archive_command" not in auto_conf(cluster)
    restart(cluster)
    assert show(cluster, 'archive_mode') == 'off'
    res = run_directly(absent)
    assert not res['changed'] and not res['restart_required'], res
    assert sorted(e['path'] for e in walarchive.list_archive(backup_root)) == kept
    assert os.path.exists(command_path) and os.path.exists(settings_path)


def test_a_run_that_fails_half_way_reports_only_what_it_did(new_cluster, sandbox_base, command_dir, ansible,
                                                            tmpfs_at):
    """The command's files are written, then the repository cannot be made (a read-only file system): the
    result lists those files only. It used to report every planned file, the repository and archive.json
    among them, although they were never created."""
    cluster = new_cluster()
    mount = os.path.join(sandbox_base, 'ro-%s' % uuid.uuid4().hex[:6])
    tmpfs_at(mount)
    os.chmod(mount, 0o755)   # the server's user may traverse it: only the read-only mount stands in the way
    tmpfs_at.remount(mount, readonly=True)
    repo = os.path.join(mount, 'repo')
    res = ansible.task('modulo.pgbackup.wal_archive', module_args(cluster, repo, command_dir, verify=False))
    assert res.get('failed') is True, res
    written = res['files_changed']
    assert written and all(p.startswith(command_dir) for p in written), res['msg']
    assert res['changed'] is True and res['settings_changed'] == []
    assert all(os.path.exists(p) for p in written)
    assert show(cluster, 'archive_mode') == 'off'


def test_refuses_an_archive_of_another_cluster(new_cluster, backup_root, command_dir, ansible):
    cluster = new_cluster()
    os.makedirs(os.path.join(backup_root, 'wal'), 0o700)
    walarchive.write_archive_info(backup_root, 7312345678901234567)
    args = module_args(cluster, backup_root, command_dir)
    conf_before = auto_conf(cluster)

    res = ansible.task(MODULE, args)
    assert res.get('failed')
    sysid = cluster.psql('SELECT system_identifier FROM pg_control_system()')
    assert 'belongs to another cluster' in res['msg']
    assert '7312345678901234567' in res['msg'] and sysid in res['msg']
    # Refused before anything was installed or configured.
    assert not os.path.exists(args['command_path'])
    assert auto_conf(cluster) == conf_before and show(cluster, 'archive_mode') == 'off'
    assert walarchive.read_archive_info(backup_root)['system_identifier'] == '7312345678901234567'


def test_verification_also_waits_for_s3(s3_bucket, new_cluster, backup_root, command_dir, ansible):
    # The cluster starts after s3_bucket has put the loopback S3 credentials in the
    # environment, so the server (and its archive command) has them, like an instance profile.
    cluster = new_cluster()
    args = module_args(cluster, backup_root, command_dir, s3_bucket=s3_bucket['name'],
                       s3_endpoint_url=s3_bucket['url'], aws_region='us-east-1', verify=False)
    res = ansible.task(MODULE, args)
    assert not res.get('failed'), res.get('msg')
    with open(res['settings_path']) as handle:
        assert 'secret' not in handle.read().lower()
    assert walcommand.installed_settings(args['command_path'])['s3_bucket'] == s3_bucket['name']
    restart(cluster)

    res = ansible.task(MODULE, dict(args, verify=True))
    assert not res.get('failed'), res.get('msg')
    assert res['verified'] and not res['changed']
    keys = [o['Key'] for o in s3_bucket['client'].list_objects_v2(
        Bucket=s3_bucket['name'], Prefix='database-backups/wal/').get('Contents', [])]
    assert any(k.endswith('/' + res['segment'] + '.zst') or k.endswith('/' + res['segment'] + '.gz') for k in keys)
    assert 'database-backups/wal/archive.json' in keys


def recap_changed(output):
    match = re.search(r'^localhost\s+:.*?changed=(\d+).*?failed=(\d+)', output, re.M)
    assert match, output[-3000:]
    return int(match.group(1)), int(match.group(2))


def test_configure_pitr_playbook_restarts_with_pg_ctl_and_is_idempotent(
        new_cluster, backup_root, command_dir, ansible):
    cluster = new_cluster()
    extra = dict(cluster.connection_vars(), pgbackup_backup_root=backup_root, pgbackup_pg_service='',
                 pgbackup_s3_bucket='', wal_archive_command_path=os.path.join(command_dir, 'pgbackup-wal'),
                 wal_archive_verify_timeout=30)

    proc = ansible.playbook('configure-pitr.yml', extra_vars=extra)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert 'restarted:       yes, through pg_ctl on %s' % cluster.pgdata in proc.stdout, proc.stdout[-5000:]
    assert show(cluster, 'archive_mode') == 'on'
    assert 'verified:        segment' in proc.stdout
    assert archiver(cluster)['archived_count'] >= 1 and archiver(cluster)['failed_count'] == 0
    changed, failed = recap_changed(proc.stdout)
    assert changed == 1 and failed == 0

    proc = ansible.playbook('configure-pitr.yml', extra_vars=extra)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert recap_changed(proc.stdout) == (0, 0), proc.stdout[-5000:]
    assert 'restarted:       no' in proc.stdout
