# -*- coding: utf-8 -*-
"""archiving: the wal_archive module's planning logic, files and verification loop, without a server."""

import json
import os
import pwd
import shutil
import stat
import tempfile

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import archiving, walcommand
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import archive as walarchive, cli as walcli
from ansible_collections.modulo.pgbackup.plugins.module_utils.archiving import ArchivingError

SYSID = '7312345678901234567'
CMD = '/usr/bin/python3 -S /usr/local/lib/modulo-pgbackup/pgbackup-wal push %p %f'


# --- the command and its settings -------------------------------------------------------------

def test_commands_use_the_system_python_and_placeholders():
    archive, restore = archiving.commands('/usr/local/lib/modulo-pgbackup/pgbackup-wal')
    assert archive == '/usr/bin/python3 -S /usr/local/lib/modulo-pgbackup/pgbackup-wal push %p %f'
    assert restore == '/usr/bin/python3 -S /usr/local/lib/modulo-pgbackup/pgbackup-wal fetch %f %p'


def test_paths_survive_the_shell_and_the_percent_placeholders():
    archive, _restore = archiving.commands('/opt/my dir/100%/cmd')
    assert archive == "/usr/bin/python3 -S '/opt/my dir/100%%/cmd' push %p %f"
    with pytest.raises(ArchivingError, match='line break'):
        archiving.commands('/opt/a\nb')


def test_settings_are_what_the_command_reads(tmp_path):
    s3 = {'bucket': 'modulo-backups', 'prefix': 'database-backups/', 'region': 'eu-west-1',
          'endpoint_url': None, 'sse': True}
    command = str(tmp_path / 'pgbackup-wal')
    walcommand.install(command, archiving.command_settings('/var/backups/postgresql', 'gzip', 5, s3))
    settings = walcommand.installed_settings(command)
    assert settings['repo'] == '/var/backups/postgresql' and settings['compression'] == 'gzip' and settings['level'] == 5
    assert walcli.s3_settings(settings) == {'bucket': 'modulo-backups', 'prefix': 'database-backups/',
                                            'endpoint_url': None, 'region': 'eu-west-1', 'sse': True}
    # s3_server_side_encryption: false reaches the command (it used to ask for AES256 whatever the option said).
    walcommand.install(command, archiving.command_settings('/r', 'gzip', 5, dict(s3, sse=False)))
    assert walcli.s3_settings(walcommand.installed_settings(command))['sse'] is False
    local = archiving.command_settings('/r')
    assert local['s3_bucket'] is None and local['s3_prefix'] is None and local['compression'] == 'auto'
    assert walcli.s3_settings(local) is None
    assert not any('secret' in key or 'key_id' in key for key in settings)
    files = walcommand.files(command, local)
    assert files == walcommand.files(command, dict(local))   # stable bytes: idempotence


def test_compression_checked_before_configuring():
    assert archiving.check_compression('gzip', 9) == 'gzip'
    assert archiving.check_compression('none', None) == 'none'
    with pytest.raises(ArchivingError, match='out of range'):
        archiving.check_compression('gzip', 12)
    with pytest.raises(ArchivingError, match='out of range'):
        archiving.check_compression('auto', 15)       # fine for zstd, not for gzip, which auto may pick


# --- files --------------------------------------------------------------------------------------

def test_plan_and_write_file(tmp_path):
    path = str(tmp_path / 'a' / 'b' / 'cmd')
    assert archiving.missing_dirs(path) == [str(tmp_path / 'a'), str(tmp_path / 'a' / 'b')]
    assert archiving.plan_file(path, b'one', 0o755) == 'create'
    old = os.umask(0o077)
    try:
        archiving.write_file(path, b'one', 0o755)
    finally:
        os.umask(old)
    # Parents 0755 whatever the umask: the server's user must traverse them.
    assert stat.S_IMODE(os.stat(str(tmp_path / 'a')).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
    assert archiving.plan_file(path, b'one', 0o755) is None
    assert archiving.plan_file(path, b'two', 0o755) == 'update'
    os.chmod(path, 0o700)
    assert archiving.plan_file(path, b'one', 0o755) == 'mode'
    archiving.write_file(path, b'two', 0o644)
    with open(path, 'rb') as handle:
        assert handle.read() == b'two'
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert sorted(os.listdir(os.path.dirname(path))) == ['cmd']     # no temporary file left


# --- repository ---------------------------------------------------------------------------------

def test_plan_repository_creates_missing_and_fixes_wal(tmp_path):
    repo = str(tmp_path / 'repo')
    plan = archiving.plan_repository(repo)
    assert [(a['path'], a['action']) for a in plan] == [(repo, 'create'), (os.path.join(repo, 'wal'), 'create')]
    archiving.apply_repository(plan)
    assert stat.S_IMODE(os.stat(repo).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(repo, 'wal')).st_mode) == 0o700
    assert archiving.plan_repository(repo) == []

    os.chmod(os.path.join(repo, 'wal'), 0o755)
    os.chmod(repo, 0o750)           # an existing backup_root keeps its mode
    assert [(a['action'], a['mode']) for a in archiving.plan_repository(repo)] == [('chmod', 0o700)]
    st = os.stat(repo)
    other = (st.st_uid + 4242, st.st_gid + 4242)
    assert [(a['path'], a['action']) for a in archiving.plan_repository(repo, other)] == [
        (repo, 'chown'), (os.path.join(repo, 'wal'), 'chown'), (os.path.join(repo, 'wal'), 'chmod')]
    open(str(tmp_path / 'file'), 'w').close()
    with pytest.raises(ArchivingError, match='not a directory'):
        archiving.plan_repository(str(tmp_path / 'file'))


@pytest.mark.skipif(os.geteuid() != 0, reason='giving files to the postgres user needs root')
def test_repository_and_archive_info_owned_by_the_server_user(tmp_path):
    pw = pwd.getpwnam('postgres')
    owner = (pw.pw_uid, pw.pw_gid)
    repo = str(tmp_path / 'repo')
    archiving.apply_repository(archiving.plan_repository(repo, owner))
    path = archiving.seed_archive_info(repo, SYSID, 16 * 1024 * 1024, owner)
    for item in (repo, os.path.join(repo, 'wal'), path):
        assert (os.stat(item).st_uid, os.stat(item).st_gid) == owner
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert archiving.plan_repository(repo, owner) == []
    # Left behind by a push run by hand as root: given back to the archive's one owner.
    stray = os.path.join(repo, 'wal', '20261124')
    os.mkdir(stray, 0o700)
    open(os.path.join(stray, '000000010000000000000001.zst'), 'w').close()
    os.chown(path, 0, 0)
    plan = archiving.plan_repository(repo, owner)
    assert sorted(a['path'] for a in plan if a['action'] == 'chown') == sorted(
        [path, stray, os.path.join(stray, '000000010000000000000001.zst')])
    archiving.apply_repository(plan)
    assert archiving.plan_repository(repo, owner) == []
    assert os.stat(os.path.join(stray, '000000010000000000000001.zst')).st_uid == owner[0]


def test_archive_info_guards_the_cluster_identity(tmp_path):
    repo = str(tmp_path / 'repo')
    os.makedirs(os.path.join(repo, 'wal'))
    assert archiving.archive_owner(repo, SYSID) == 'absent'
    archiving.seed_archive_info(repo, SYSID, 16 * 1024 * 1024)
    info = walarchive.read_archive_info(repo)
    assert info['system_identifier'] == SYSID and info['wal_segment_size'] == 16 * 1024 * 1024
    assert archiving.archive_owner(repo, SYSID) == 'same'
    assert archiving.archive_owner(repo, int(SYSID)) == 'same'
    with pytest.raises(ArchivingError) as exc:
        archiving.archive_owner(repo, '7399999999999999999')
    assert 'belongs to another cluster' in str(exc.value) and SYSID in str(exc.value)
    assert '7399999999999999999' in str(exc.value)
    with open(os.path.join(repo, 'wal', 'archive.json'), 'w') as handle:
        handle.write('{not json')
    with pytest.raises(ArchivingError, match='not valid JSON'):
        archiving.archive_owner(repo, SYSID)


def test_first_blocking_dir():
    # Under /tmp, not pytest's tmp_path, whose base is closed to other users.
    base = tempfile.mkdtemp(prefix='modulo-archiving-', dir='/tmp')
    try:
        os.chmod(base, 0o755)
        closed = os.path.join(base, 'closed')
        os.makedirs(os.path.join(closed, 'inner'))
        os.chmod(closed, 0o700)
        stranger = os.stat(closed).st_uid + 4242
        target = os.path.join(closed, 'inner', 'repo')
        assert archiving.first_blocking_dir(target, stranger, {stranger}) == closed
        assert archiving.first_blocking_dir(target, 0, {0}) is None            # root goes everywhere
        os.chmod(closed, 0o750)
        group = os.stat(closed).st_gid
        assert archiving.first_blocking_dir(target, stranger, {group}) is None  # through the group
        os.chmod(closed, 0o711)
        assert archiving.first_blocking_dir(target, stranger, {stranger}) is None
        # Missing parts will be created 0755: only what exists can block.
        assert archiving.first_blocking_dir(os.path.join(base, 'new', 'a', 'b'), stranger, {stranger}) is None
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- settings -----------------------------------------------------------------------------------

def entry(setting, configured=None, context='sighup', pending=False, auto=None, elsewhere=None):
    return {'setting': setting, 'context': context, 'pending_restart': pending, 'configured': configured,
            'in_auto_conf': bool(auto), 'configured_elsewhere': elsewhere}


def fresh(**changes):
    """A PostgreSQL 15 cluster just out of initdb."""
    current = {
        'wal_level': entry('replica', context='postmaster'),
        'archive_mode': entry('off', context='postmaster'),
        'archive_command': entry(''),
        'archive_timeout': entry('0'),
        'archive_library': entry(''),
    }
    current.update(changes)
    return current


def configured():
    return fresh(archive_mode=entry('on', 'on', 'postmaster', auto=True),
                 archive_command=entry(CMD, CMD, auto=True), archive_timeout=entry('60', '60', auto=True))


def test_normalize():
    assert archiving.normalize('archive_mode', 'TRUE') == 'on'
    assert archiving.normalize('archive_mode', '0') == 'off'
    assert archiving.normalize('archive_mode', 'always') == 'always'
    assert archiving.normalize('wal_level', 'hot_standby') == 'replica'
    assert archiving.normalize('wal_level', 'Logical') == 'logical'
    assert archiving.normalize('archive_command', ' x ') == 'x'
    assert archiving.normalize('archive_mode', None) is None


def test_fresh_cluster_needs_three_settings_and_a_restart():
    plan = archiving.plan_settings('present', fresh(), CMD, 60)
    assert plan['changed'] == ['archive_mode', 'archive_command', 'archive_timeout']
    assert plan['restart_required'] and plan['restart_settings'] == ['archive_mode']
    sql = dict(plan['statements'])
    assert sql['archive_mode'] == "ALTER SYSTEM SET archive_mode = 'on'"
    assert sql['archive_timeout'] == "ALTER SYSTEM SET archive_timeout = '60'"
    assert sql['archive_command'] == "ALTER SYSTEM SET archive_command = '%s'" % CMD
    assert plan['before']['archive_mode'] == 'off' and plan['after']['archive_mode'] == 'on'


def test_wal_level_minimal_becomes_replica_and_logical_is_kept():
    plan = archiving.plan_settings('present', fresh(wal_level=entry('minimal', 'minimal', 'postmaster')), CMD)
    assert dict(plan['statements'])['wal_level'] == "ALTER SYSTEM SET wal_level = 'replica'"
    assert plan['restart_settings'] == ['wal_level', 'archive_mode']
    plan = archiving.plan_settings('present', fresh(wal_level=entry('logical', 'logical', 'postmaster')), CMD)
    assert 'wal_level' not in plan['changed']
    current = configured()
    current['archive_mode'] = entry('always', 'always', 'postmaster')
    assert archiving.plan_settings('present', current, CMD, 60)['statements'] == []


def test_already_configured_changes_nothing():
    plan = archiving.plan_settings('present', configured(), CMD, 60)
    assert plan['statements'] == [] and not plan['restart_required'] and plan['warnings'] == []
    assert plan['before'] == plan['after']


def test_set_but_not_restarted_yet_needs_only_the_restart():
    current = configured()
    current['archive_mode'] = entry('off', 'on', 'postmaster', pending=True, auto=True)
    plan = archiving.plan_settings('present', current, CMD, 60)
    assert plan['statements'] == [] and plan['restart_required'] and plan['restart_settings'] == ['archive_mode']


def test_a_pending_change_we_undo_needs_no_restart():
    # Someone wrote archive_mode = off but never restarted: writing "on" back makes the restart unnecessary.
    current = configured()
    current['archive_mode'] = entry('on', 'off', 'postmaster', pending=True, auto=True)
    plan = archiving.plan_settings('present', current, CMD, 60)
    assert plan['changed'] == ['archive_mode'] and not plan['restart_required']


def test_other_timeout_and_command_are_replaced_with_quoting():
    command = "/usr/bin/python3 '/opt/it''s/cmd' push --config /x.json %p %f"
    plan = archiving.plan_settings('present', configured(), command, 300)
    assert plan['changed'] == ['archive_command', 'archive_timeout'] and not plan['restart_required']
    assert dict(plan['statements'])['archive_command'] == \
        "ALTER SYSTEM SET archive_command = '/usr/bin/python3 ''/opt/it''''s/cmd'' push --config /x.json %p %f'"


def test_archive_library_is_not_silently_replaced():
    with pytest.raises(ArchivingError, match='archive_library'):
        archiving.plan_settings('present', fresh(archive_library=entry('basic_archive')), CMD, 60)


def test_absent_turns_off_and_resets_what_we_set():
    plan = archiving.plan_settings('absent', configured(), CMD, 60)
    assert plan['statements'] == [('archive_mode', "ALTER SYSTEM SET archive_mode = 'off'"),
                                  ('archive_command', 'ALTER SYSTEM RESET archive_command'),
                                  ('archive_timeout', 'ALTER SYSTEM RESET archive_timeout')]
    assert plan['restart_required'] and any('pg_wal' in w for w in plan['warnings'])
    assert plan['after'] == {'wal_level': 'replica', 'archive_mode': 'off', 'archive_command': '',
                             'archive_timeout': '0'}


def test_absent_when_postgresql_conf_sets_the_command():
    current = fresh(archive_mode=entry('on', 'on', 'postmaster'),
                    archive_command=entry('cp %p /a/%f', 'cp %p /a/%f', elsewhere='cp %p /a/%f'))
    plan = archiving.plan_settings('absent', current, CMD, 60)
    # RESET would fall back to postgresql.conf's command: the empty value is written instead.
    assert dict(plan['statements'])['archive_command'] == "ALTER SYSTEM SET archive_command = ''"


def test_absent_twice_changes_nothing():
    current = fresh(archive_mode=entry('off', 'off', 'postmaster', auto=True))
    plan = archiving.plan_settings('absent', current, CMD, 60)
    assert plan['statements'] == [] and not plan['restart_required'] and plan['warnings'] == []
    current['archive_mode'] = entry('on', 'off', 'postmaster', pending=True, auto=True)
    plan = archiving.plan_settings('absent', current, CMD, 60)
    assert plan['statements'] == [] and plan['restart_required']


# --- verification loop --------------------------------------------------------------------------

class FakeServer(object):
    """pg_stat_archiver and pg_switch_wal as seen by verify_archiving, driven by the test."""

    def __init__(self, repo, segment='000000010000000000000007', archive_after=2, fail_after=None):
        self.repo, self.segment = repo, segment
        self.polls = 0
        self.archive_after, self.fail_after = archive_after, fail_after
        self.stats = {'archived_count': 3, 'failed_count': 1, 'last_failed_wal': None}

    def archiver_stats(self, conn, log=None):
        self.polls += 1
        if self.fail_after is not None and self.polls > self.fail_after:
            self.stats = dict(self.stats, failed_count=2, last_failed_wal=self.segment,
                              last_failed_time='2026-11-24T02:00:00Z')
        if self.archive_after is not None and self.polls > self.archive_after:
            directory = os.path.join(self.repo, 'wal', '20261124')
            if not os.path.isdir(directory):
                os.makedirs(directory)
                open(os.path.join(directory, self.segment + '.zst'), 'w').close()
            self.stats = dict(self.stats, archived_count=4, last_archived_wal=self.segment)
        return dict(self.stats)

    def switch_wal(self, conn, log=None):
        return self.segment


@pytest.fixture
def fake(monkeypatch, tmp_path):
    def install(**kwargs):
        server = FakeServer(str(tmp_path / 'repo'), **kwargs)
        os.makedirs(os.path.join(server.repo, 'wal'))
        monkeypatch.setattr(archiving, 'archiver_stats', server.archiver_stats)
        monkeypatch.setattr(archiving, 'switch_wal', server.switch_wal)
        return server
    return install


class Clock(object):
    def __init__(self):
        self.now = 1000.0

    def time(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_verify_waits_until_the_segment_is_archived(fake):
    server = fake(archive_after=3)
    clock = Clock()
    segment, stats = archiving.verify_archiving(None, server.repo, timeout=60, sleep=clock.sleep, clock=clock.time)
    assert segment == server.segment and stats['last_archived_wal'] == server.segment
    assert stats['failed_count'] == 1                # old failures are not this run's problem


def test_verify_fails_fast_on_a_new_archiver_failure(fake):
    server = fake(archive_after=None, fail_after=2)
    clock = Clock()
    with pytest.raises(ArchivingError) as exc:
        archiving.verify_archiving(None, server.repo, timeout=60, sleep=clock.sleep, clock=clock.time,
                                   hint='Check that postgres can read /cmd')
    message = str(exc.value)
    assert 'failed_count 1 -> 2' in message and server.segment in message and 'postgres can read' in message
    assert clock.now < 1010                        # did not sit out the timeout


def test_verify_times_out_with_the_archiver_state(fake):
    server = fake(archive_after=None)
    clock = Clock()
    with pytest.raises(ArchivingError) as exc:
        archiving.verify_archiving(None, server.repo, timeout=5, sleep=clock.sleep, clock=clock.time)
    assert 'not archived' in str(exc.value) and 'within 5 s' in str(exc.value)
    assert clock.now >= 1005


def test_system_python_checks(monkeypatch):
    archiving.check_system_python(False)
    monkeypatch.setattr(archiving, 'SYSTEM_PYTHON', '/nonexistent/python3')
    with pytest.raises(ArchivingError, match='missing'):
        archiving.check_system_python(False)


def test_new_result_names_both_commands():
    result = archiving.new_result('/c/cmd')
    assert result['archive_command'].endswith('/c/cmd push %p %f') and result['restore_command'].endswith('fetch %f %p')
    assert result['settings_path'] == '/c/cmd.lib/pgbackup_wal_settings.py'
    assert result['changed'] is False and result['restart_required'] is False
    assert json.dumps(result)


def test_the_files_of_the_single_file_command_are_found_for_removal(tmp_path):
    command = str(tmp_path / 'pgbackup-wal')
    lib = tmp_path / 'pgbackup-wal.lib'
    (lib / '__pycache__').mkdir(parents=True)
    for name in ('walarchive.py', '__pycache__/walarchive.cpython-311.pyc', '__pycache__/other.cpython-311.pyc'):
        (lib / name).write_text('x')
    (tmp_path / 'pgbackup-wal.json').write_text('{"_managed_by": "modulo.pgbackup wal_archive (Ansible): ...", "repo": "/r"}')
    assert archiving.legacy_files(command) == [
        str(lib / 'walarchive.py'), str(lib / '__pycache__/walarchive.cpython-311.pyc'), command + '.json']
    # A JSON file there that is not ours stays.
    (tmp_path / 'pgbackup-wal.json').write_text('{"repo": "/r"}')
    assert command + '.json' not in archiving.legacy_files(command)
    assert archiving.legacy_files(str(tmp_path / 'elsewhere')) == []


def test_a_request_refuses_impossible_timeouts_and_states():
    request = archiving.Request('repo/../backups', compression=None)
    assert request.backup_root == os.path.abspath('backups') and request.compression == 'auto'
    with pytest.raises(ArchivingError, match='archive_timeout must be 0 or more and verify_timeout 1 or more'):
        archiving.Request('/r', archive_timeout=-1)
    with pytest.raises(ArchivingError, match='state must be present or absent'):
        archiving.Request('/r', state='paused')
