# -*- coding: utf-8 -*-
"""playbooks/schedule.yml (role schedule) and playbooks/nightly-backup.yml (role backup), run for real.

Every path the schedule role writes is redirected into the test's temporary directory, so the
host's /etc/cron.d, /etc/systemd/system, /usr/local/bin and /var/log are never touched.
"""

import datetime
import fcntl
import getpass
import glob
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time

import pytest

from conftest import ROOT

NIGHTLY_PLAYBOOK = os.path.join(ROOT, 'playbooks', 'nightly-backup.yml')
DRILL_PLAYBOOK = os.path.join(ROOT, 'playbooks', 'restore-drill.yml')
INVENTORY = os.path.join(ROOT, 'inventories', 'local', 'hosts.yml')
# 02:00 in Tokyo is 17:00 UTC the day before: a guard that read local time would run then.
LOCAL_TZ = 'JST-9'   # POSIX form: needs no tzdata


def recap(proc):
    match = re.search(r'localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)', proc.stdout)
    assert match, proc.stdout[-5000:]
    return dict(zip(('ok', 'changed', 'unreachable', 'failed'), map(int, match.groups())))


def run_ok(ansible, extra_vars, playbook='schedule.yml'):
    proc = ansible.playbook(playbook, extra_vars=extra_vars)
    assert proc.returncode == 0, proc.stdout[-5000:]
    return recap(proc)


@pytest.fixture
def sched(tmp_path):
    """Schedule variables that keep every file the role writes under tmp_path."""
    paths = {name: tmp_path / name for name in ('cron.d', 'units', 'bin', 'log', 'lock')}
    for name in ('cron.d', 'units', 'bin'):
        paths[name].mkdir()
    extra = {
        'schedule_cron_file': str(paths['cron.d'] / 'modulo-pgbackup'),
        'schedule_systemd_unit_dir': str(paths['units']),
        'schedule_wrapper_path': str(paths['bin'] / 'modulo-pgbackup-run'),
        'schedule_log_dir': str(paths['log']),
        'schedule_lock_dir': str(paths['lock']),
        'schedule_inventory': INVENTORY,
        'schedule_user': getpass.getuser(),
    }
    # The test's unit directory is not one systemd reads: the units are written, never activated.
    extra['schedule_systemd_activate'] = False
    return extra


def cron_entries(path):
    """(name comment, schedule fields, user, command) of each job line of a cron.d file."""
    entries = []
    comment = None
    with open(path) as handle:
        for line in handle.read().splitlines():
            if line.startswith('#'):
                comment = line
                continue
            if not line.strip() or re.match(r'^[A-Z_]+=', line):
                continue
            fields = line.split(None, 6)
            entries.append((comment, fields[:5], fields[5], fields[6]))
    return entries


def units(unit_dir):
    return sorted(os.listdir(unit_dir))


def unit_lines(path):
    with open(path) as handle:
        return [line.strip() for line in handle if line.strip() and not line.startswith('#')]


# -- cron -----------------------------------------------------------------------------


def test_cron_entry_hourly_with_utc_guard_idempotent_and_removable(ansible, sched):
    first = run_ok(ansible, sched)
    assert first['changed'] > 0

    entries = cron_entries(sched['schedule_cron_file'])
    # the default jobs: the nightly backup, the monthly restore drill, the hourly health check
    assert len(entries) == 3
    comment, when, user, command = entries[0]
    assert 'modulo-pgbackup-nightly-backup' in comment and '02:00 UTC' in comment
    # Debian's cron has no CRON_TZ: minute 0 of every hour, the guard picks 02 UTC
    assert when == ['0', '*', '*', '*', '*']
    assert user == sched['schedule_user']
    argv = command.split()
    assert argv[0] == sched['schedule_wrapper_path']
    assert argv[argv.index('--utc-hour') + 1] == '2'
    assert '--utc-weekday' not in argv and '--utc-days' not in argv
    assert argv[argv.index('--lock') + 1] == os.path.join(sched['schedule_lock_dir'],
                                                          'modulo-pgbackup-nightly-backup.lock')
    assert argv[argv.index('--log') + 1] == os.path.join(sched['schedule_log_dir'], 'nightly-backup.log')
    job = argv[argv.index('--') + 1:]
    assert os.path.basename(job[0]) == 'ansible-playbook'
    assert os.path.realpath(job[1]) == os.path.realpath(NIGHTLY_PLAYBOOK)
    assert job[2:] == ['-i', INVENTORY]
    # the drill: hourly too, the guard lets only 04 UTC on a Sunday that is day 1-7 of the month through
    comment, when, user, command = entries[1]
    assert 'modulo-pgbackup-restore-drill' in comment and '04:00 UTC on Sun, days 1-7' in comment
    assert when == ['0', '*', '*', '*', '*']
    argv = command.split()
    assert argv[argv.index('--utc-hour') + 1] == '4'
    assert argv[argv.index('--utc-weekday') + 1] == '7'
    assert argv[argv.index('--utc-days') + 1] == '1-7'
    assert argv[argv.index('--lock') + 1] == os.path.join(sched['schedule_lock_dir'],
                                                          'modulo-pgbackup-restore-drill.lock')
    job = argv[argv.index('--') + 1:]
    assert os.path.realpath(job[1]) == os.path.realpath(DRILL_PLAYBOOK)
    # the health check: every hour at minute 30, so no UTC guard at all
    comment, when, user, command = entries[2]
    assert 'modulo-pgbackup-health-check' in comment and 'every hour at :30 UTC' in comment
    assert when == ['30', '*', '*', '*', '*']
    argv = command.split()
    assert '--utc-hour' not in argv and '--utc-weekday' not in argv
    assert os.path.basename(argv[argv.index('--') + 2]) == 'health-check.yml'
    # cron.d files must not be writable by group/others, the wrapper must be executable
    assert stat.S_IMODE(os.stat(sched['schedule_cron_file']).st_mode) == 0o644
    assert os.access(sched['schedule_wrapper_path'], os.X_OK)
    assert os.path.isdir(sched['schedule_log_dir'])
    # the cron method leaves no systemd units behind
    assert units(sched['schedule_systemd_unit_dir']) == []

    second = run_ok(ansible, sched)
    assert second['changed'] == 0, 'second run changed something'

    removed = run_ok(ansible, dict(sched, schedule_state='absent'))
    assert removed['changed'] > 0
    assert not os.path.exists(sched['schedule_cron_file'])
    assert not os.path.exists(sched['schedule_wrapper_path'])
    assert run_ok(ansible, dict(sched, schedule_state='absent'))['changed'] == 0


# -- systemd ----------------------------------------------------------------------------


def test_systemd_units_in_utc_idempotent_and_removable(ansible, sched):
    run_ok(ansible, dict(sched, schedule_method='systemd'))
    unit_dir = sched['schedule_systemd_unit_dir']
    assert units(unit_dir) == ['modulo-pgbackup-health-check.service', 'modulo-pgbackup-health-check.timer',
                               'modulo-pgbackup-nightly-backup.service', 'modulo-pgbackup-nightly-backup.timer',
                               'modulo-pgbackup-restore-drill.service', 'modulo-pgbackup-restore-drill.timer']
    assert 'OnCalendar=*-*-* *:30:00 UTC' in unit_lines(os.path.join(unit_dir, 'modulo-pgbackup-health-check.timer'))
    drill_timer = unit_lines(os.path.join(unit_dir, 'modulo-pgbackup-restore-drill.timer'))
    # systemd says "first Sunday" itself: a Sunday that is one of days 1-7
    assert 'OnCalendar=Sun *-*-01..07 04:00:00 UTC' in drill_timer
    drill_service = unit_lines(os.path.join(unit_dir, 'modulo-pgbackup-restore-drill.service'))
    drill_argv = [line for line in drill_service if line.startswith('ExecStart=')][0].split()
    assert '--utc-hour' not in drill_argv and '--utc-weekday' not in drill_argv
    assert os.path.realpath(drill_argv[drill_argv.index('--') + 2]) == os.path.realpath(DRILL_PLAYBOOK)

    timer = unit_lines(os.path.join(unit_dir, 'modulo-pgbackup-nightly-backup.timer'))
    assert 'OnCalendar=*-*-* 02:00:00 UTC' in timer
    assert 'Persistent=true' in timer
    assert 'Unit=modulo-pgbackup-nightly-backup.service' in timer
    assert 'WantedBy=timers.target' in timer

    service = unit_lines(os.path.join(unit_dir, 'modulo-pgbackup-nightly-backup.service'))
    assert 'Type=oneshot' in service
    assert 'User=%s' % sched['schedule_user'] in service
    exec_start = [line for line in service if line.startswith('ExecStart=')]
    assert len(exec_start) == 1
    argv = exec_start[0][len('ExecStart='):].split()
    assert argv[0] == sched['schedule_wrapper_path']
    assert '--lock' in argv and '--log' in argv
    # the timer decides in UTC itself: no hourly guard
    assert '--utc-hour' not in argv
    job = argv[argv.index('--') + 1:]
    assert os.path.realpath(job[1]) == os.path.realpath(NIGHTLY_PLAYBOOK)
    assert job[2:] == ['-i', INVENTORY]
    assert not os.path.exists(sched['schedule_cron_file'])

    assert run_ok(ansible, dict(sched, schedule_method='systemd'))['changed'] == 0

    run_ok(ansible, dict(sched, schedule_method='systemd', schedule_state='absent'))
    assert units(unit_dir) == []
    assert not os.path.exists(sched['schedule_wrapper_path'])


def test_switching_method_never_leaves_the_job_scheduled_twice(ansible, sched):
    run_ok(ansible, sched)
    assert os.path.exists(sched['schedule_cron_file'])
    run_ok(ansible, dict(sched, schedule_method='systemd'))
    assert not os.path.exists(sched['schedule_cron_file'])
    assert len(units(sched['schedule_systemd_unit_dir'])) == 6   # a service and a timer per default job
    run_ok(ansible, dict(sched, schedule_method='cron'))
    assert units(sched['schedule_systemd_unit_dir']) == []
    assert len(cron_entries(sched['schedule_cron_file'])) == 3


# -- the UTC guard, run for real with a faked clock ---------------------------------------


@pytest.fixture
def fake_clock(tmp_path):
    """A `date` first in PATH that answers for a fixed instant; everything else is real `date`."""
    real_date = shutil.which('date')
    stub_dir = tmp_path / 'fakeclock'
    stub_dir.mkdir()
    stub = stub_dir / 'date'
    stub.write_text('#!/bin/sh\nexec %s -d "$FAKE_NOW" "$@"\n' % real_date)
    stub.chmod(0o755)

    def env(now):
        return {'PATH': '%s:/usr/bin:/bin' % stub_dir, 'FAKE_NOW': now, 'TZ': LOCAL_TZ,
                'HOME': str(tmp_path), 'LANG': 'C'}
    return env


@pytest.fixture
def recorder(tmp_path):
    """Stands in for ansible-playbook: records its arguments and working directory."""
    record = tmp_path / 'calls.jsonl'
    script = tmp_path / 'fake-ansible-playbook'
    script.write_text('#!/usr/bin/env python3\nimport json, os, sys\n'
                      'with open(%r, "a") as handle:\n'
                      '    handle.write(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd()}) + "\\n")\n'
                      % str(record))
    script.chmod(0o755)

    def calls():
        if not record.exists():
            return []
        return [json.loads(line) for line in record.read_text().splitlines()]
    return str(script), calls


def _cron_command(sched, name='modulo-pgbackup-nightly-backup'):
    for comment, _when, _user, command in cron_entries(sched['schedule_cron_file']):
        if name in comment:
            # cron turns an unescaped % into a newline and drops the backslash of \%
            return command.replace('\\%', '%')
    raise AssertionError('no cron entry %s' % name)


@pytest.mark.parametrize('now,runs', [
    ('2026-11-24 02:00:00 UTC', True),
    ('2026-11-24 03:00:00 UTC', False),
    ('2026-11-23 17:00:00 UTC', False),   # 02:00 local time in Tokyo
    ('2026-11-24 01:00:00 UTC', False),
])
def test_cron_guard_runs_the_backup_only_at_02_utc(ansible, sched, fake_clock, recorder, now, runs):
    fake_playbook, calls = recorder
    run_ok(ansible, dict(sched, schedule_ansible_playbook=fake_playbook))
    command = _cron_command(sched)

    # what cron does with the entry: /bin/sh -c COMMAND, in cron's minimal environment
    proc = subprocess.run(['/bin/sh', '-c', command], env=fake_clock(now), check=False,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert proc.returncode == 0, proc.stdout
    log = os.path.join(sched['schedule_log_dir'], 'nightly-backup.log')
    if runs:
        assert len(calls()) == 1
        call = calls()[0]
        assert os.path.realpath(call['argv'][0]) == os.path.realpath(NIGHTLY_PLAYBOOK)
        assert call['argv'][1:] == ['-i', INVENTORY]
        # the job runs where the collection's ansible.cfg is found
        assert os.path.realpath(call['cwd']) == os.path.realpath(ROOT)
        with open(log) as handle:
            text = handle.read()
        assert 'nightly-backup: start:' in text and 'finished with exit code 0' in text
        assert text.startswith(now[:10] + 'T02:00:00Z')
    else:
        assert calls() == []
        assert not os.path.exists(log) or os.path.getsize(log) == 0


def test_cron_guard_never_overlaps_a_running_job(ansible, sched, fake_clock, recorder):
    fake_playbook, calls = recorder
    run_ok(ansible, dict(sched, schedule_ansible_playbook=fake_playbook))
    command = _cron_command(sched)
    lock = os.path.join(sched['schedule_lock_dir'], 'modulo-pgbackup-nightly-backup.lock')
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    with open(lock, 'a') as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)   # a previous run still going
        proc = subprocess.run(['/bin/sh', '-c', command], env=fake_clock('2026-11-24 02:00:00 UTC'), check=False)
        assert proc.returncode == 75
        assert calls() == []
    with open(os.path.join(sched['schedule_log_dir'], 'nightly-backup.log')) as handle:
        assert 'not started, the previous run still holds %s' % lock in handle.read()
    # once the lock is free the next run goes through
    proc = subprocess.run(['/bin/sh', '-c', command], env=fake_clock('2026-11-24 02:00:00 UTC'), check=False)
    assert proc.returncode == 0
    assert len(calls()) == 1


def test_job_list_takes_a_first_sunday_of_the_month_job(ansible, sched, fake_clock, recorder):
    """The shape a monthly job (e.g. a restore drill, first Sunday 04:00 UTC) will use."""
    fake_playbook, calls = recorder
    jobs = [
        {'name': 'nightly-backup', 'playbook': 'nightly-backup.yml', 'hour': 2},
        {'name': 'first-sunday', 'playbook': 'nightly-backup.yml', 'hour': 4, 'weekday': 7, 'days': '1-7'},
    ]
    run_ok(ansible, dict(sched, schedule_jobs=jobs, schedule_ansible_playbook=fake_playbook))
    assert len(cron_entries(sched['schedule_cron_file'])) == 2
    command = _cron_command(sched, 'modulo-pgbackup-first-sunday')
    for now, runs in (('2026-12-06 04:00:00 UTC', True),    # first Sunday
                      ('2026-12-13 04:00:00 UTC', False),   # second Sunday
                      ('2026-12-07 04:00:00 UTC', False),   # first Monday
                      ('2026-12-06 02:00:00 UTC', False)):  # first Sunday, other hour
        before = len(calls())
        subprocess.run(['/bin/sh', '-c', command], env=fake_clock(now), check=True)
        assert len(calls()) - before == (1 if runs else 0), now

    run_ok(ansible, dict(sched, schedule_jobs=jobs, schedule_method='systemd'))
    timer = unit_lines(os.path.join(sched['schedule_systemd_unit_dir'], 'modulo-pgbackup-first-sunday.timer'))
    assert 'OnCalendar=Sun *-*-01..07 04:00:00 UTC' in timer


@pytest.mark.parametrize('job', [
    {'name': 'bad-hour', 'playbook': 'health-check.yml', 'hour': 24},
    {'name': 'hourly-on-sundays', 'playbook': 'health-check.yml', 'hour': '*', 'weekday': 7},
])
def test_impossible_jobs_are_refused_before_anything_is_written(ansible, sched, job):
    proc = ansible.playbook('schedule.yml', extra_vars=dict(sched, schedule_jobs=[job]))
    assert proc.returncode != 0 and 'Each entry of schedule_jobs needs' in proc.stdout, proc.stdout[-3000:]
    assert not os.path.exists(sched['schedule_cron_file'])


def test_cron_jobs_without_a_cron_daemon_are_refused_before_anything_is_written(ansible, sched, tmp_path):
    proc = ansible.playbook('schedule.yml', extra_vars=dict(sched, schedule_cron_daemons=[str(tmp_path / 'no-cron')]))
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert 'No cron daemon on localhost' in proc.stdout and 'install it (apt-get install cron' in proc.stdout
    assert not os.path.exists(sched['schedule_cron_file']) and not os.path.exists(sched['schedule_wrapper_path'])


def test_timers_without_a_running_systemd_are_refused_unless_only_written(ansible, sched):
    if os.path.isdir('/run/systemd/system'):
        pytest.skip('systemd runs here: the timers would be activated for real')
    proc = ansible.playbook('schedule.yml', extra_vars=dict(sched, schedule_method='systemd',
                                                            schedule_systemd_activate=True))
    assert proc.returncode != 0 and 'systemd is not running on localhost' in proc.stdout, proc.stdout[-3000:]
    assert units(sched['schedule_systemd_unit_dir']) == []


def test_a_job_that_would_run_a_missing_playbook_is_refused(ansible, sched, tmp_path):
    job = {'name': 'nightly-backup', 'playbook': 'no-such-playbook.yml', 'hour': 2}
    proc = ansible.playbook('schedule.yml', extra_vars=dict(sched, schedule_jobs=[job]))
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert re.search(r'The jobs would run \S*/playbooks/no-such-playbook\.yml, which does\s+not exist on localhost',
                     proc.stdout), proc.stdout[-3000:]
    assert not os.path.exists(sched['schedule_cron_file'])


@pytest.mark.parametrize('option', ['schedule_ansible_playbook', 'schedule_inventory', 'schedule_workdir',
                                    'schedule_collection_dir'])
def test_an_explicit_job_path_that_does_not_exist_is_refused_naming_it(ansible, sched, tmp_path, option):
    missing = str(tmp_path / 'not-here' / option)
    proc = ansible.playbook('schedule.yml', extra_vars=dict(sched, **{option: missing}))
    assert proc.returncode != 0, proc.stdout[-3000:]
    # the collection directory is named through the playbooks the jobs would run from it
    named = missing + '/playbooks/' if option == 'schedule_collection_dir' else missing
    assert re.search(r'The jobs would run [^\n]*%s' % re.escape(named), proc.stdout), proc.stdout[-3000:]
    assert 'not exist on localhost' in re.sub(r'\s+', ' ', proc.stdout)
    assert not os.path.exists(sched['schedule_cron_file']) and not os.path.exists(sched['schedule_wrapper_path'])


def test_a_relative_job_path_is_refused(ansible, sched):
    """cron would look ansible-playbook up on its own PATH: only an absolute path can be checked beforehand."""
    proc = ansible.playbook('schedule.yml', extra_vars=dict(sched, schedule_ansible_playbook='ansible-playbook'))
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert 'schedule_ansible_playbook=ansible-playbook must be an absolute path on localhost' in proc.stdout, \
        proc.stdout[-3000:]
    assert not os.path.exists(sched['schedule_cron_file'])


def test_a_job_user_the_host_does_not_have_is_refused(ansible, sched):
    proc = ansible.playbook('schedule.yml', extra_vars=dict(sched, schedule_user='modulo-no-such-user'))
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert 'The jobs would run as modulo-no-such-user, which is not a user of localhost' in proc.stdout, \
        proc.stdout[-3000:]
    assert not os.path.exists(sched['schedule_cron_file']) and not os.path.exists(sched['schedule_wrapper_path'])


def test_a_cron_daemon_installed_but_not_running_is_only_a_warning(ansible, sched, tmp_path):
    # A daemon binary no process is named after: pgrep finds nothing, whether this machine runs cron or not.
    daemon = tmp_path / 'modulo-idle-crond'
    daemon.write_text('#!/bin/sh\n')
    daemon.chmod(0o755)
    proc = ansible.playbook('schedule.yml', extra_vars=dict(sched, schedule_cron_daemons=[str(daemon)]))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert 'no cron process runs on localhost' in re.sub(r'\s+', ' ', proc.stdout), proc.stdout[-3000:]
    assert len(cron_entries(sched['schedule_cron_file'])) == 3


def test_the_controller_as_inventories_spell_it_with_its_user_and_a_host_list(ansible, sched, tmp_path):
    """ansible.builtin.local is the local connection: the controller's own paths are accepted there. The jobs run
    as the user running the play by default, and a host-list inventory is passed on as it is (not a file)."""
    inventory = str(tmp_path / 'fqcn-inventory.json')
    with open(inventory, 'w') as handle:
        json.dump({'all': {'children': {'backup_scheduler': {'hosts': {'localhost': {
            'ansible_connection': 'ansible.builtin.local', 'ansible_python_interpreter': sys.executable}}}}}}, handle)
    extra = dict((k, v) for k, v in sched.items() if k != 'schedule_user')
    proc = ansible.playbook('schedule.yml', extra_vars=dict(extra, schedule_inventory='db1.example.internal,'),
                            inventory=inventory)
    assert proc.returncode == 0, proc.stdout[-3000:]
    entries = cron_entries(sched['schedule_cron_file'])
    assert [entry[2] for entry in entries] == [getpass.getuser()] * 3
    job = entries[0][3].split(' -- ')[1].split()
    assert os.path.realpath(job[0]) == os.path.realpath(os.path.join(os.path.dirname(sys.executable),
                                                                     'ansible-playbook'))
    assert os.path.realpath(job[1]) == os.path.realpath(NIGHTLY_PLAYBOOK)
    assert job[2:] == ['-i', 'db1.example.internal,']


@pytest.fixture
def remote_scheduler(ssh_host):
    """A host reached over ssh as a sudo deploy user: a scheduler that is not the controller."""
    return ssh_host


# The deploy user creates Ansible's temporary files on the host before it becomes root (the template module
# transfers a file): they go to its home, as on any real host, not to the test's root-only directory.
REMOTE_ENV = {'ANSIBLE_REMOTE_TEMP': '~/.ansible/tmp'}


def remote_inventory(tmp_path, host):
    path = str(tmp_path / 'remote-inventory.json')
    with open(path, 'w') as handle:
        json.dump({'all': {'children': {'backup_scheduler': {'hosts': {
            'db1': dict(host.host_vars(), ansible_become=True)}}}}}, handle)
    return path


def test_a_remote_scheduler_is_refused_the_controllers_paths(ansible, sched, remote_scheduler, tmp_path):
    """Over ssh the default paths are the controller's (its virtualenv, inventory, collection): refused, even
    here where the test host is this very machine and they happen to exist."""
    defaults = dict((k, v) for k, v in sched.items() if k != 'schedule_inventory')
    proc = ansible.playbook('schedule.yml', extra_vars=defaults, inventory=remote_inventory(tmp_path, remote_scheduler),
                            env=REMOTE_ENV)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert 'on db1: these are this controller\'s files' in proc.stdout, proc.stdout[-3000:]
    assert ('(schedule_ansible_playbook, schedule_collection_dir, schedule_inventory, schedule_workdir left '
            'empty)') in re.sub(r'\s+', ' ', proc.stdout)
    assert 'schedule_ansible_playbook, schedule_collection_dir, schedule_inventory' in proc.stdout
    # it names the controller's files the jobs would call
    controller_playbook = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), 'ansible-playbook')
    assert 'The jobs would use %s, ' % controller_playbook in re.sub(r'\s+', ' ', proc.stdout), proc.stdout[-3000:]
    assert not os.path.exists(sched['schedule_cron_file']) and not os.path.exists(sched['schedule_wrapper_path'])


def test_a_remote_scheduler_is_refused_any_one_of_the_controllers_paths(ansible, sched, remote_scheduler, tmp_path):
    """Three paths set for the host are not enough: the inventory left empty is still the controller's."""
    partial = dict((k, v) for k, v in sched.items() if k != 'schedule_inventory')
    partial.update(schedule_ansible_playbook=os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'),
                   schedule_collection_dir=ROOT, schedule_workdir=ROOT)
    inventory = remote_inventory(tmp_path, remote_scheduler)
    proc = ansible.playbook('schedule.yml', extra_vars=partial, inventory=inventory, env=REMOTE_ENV)
    assert proc.returncode != 0, proc.stdout[-3000:]
    text = re.sub(r'\s+', ' ', proc.stdout)
    assert ('The jobs would use the inventory %s on db1: these are this controller\'s files (schedule_inventory left '
            'empty)' % inventory) in text, proc.stdout[-3000:]
    assert not os.path.exists(sched['schedule_cron_file']) and not os.path.exists(sched['schedule_wrapper_path'])


def test_a_remote_scheduler_with_its_own_paths_is_accepted(ansible, sched, remote_scheduler, tmp_path):
    """The rule is about the controller's defaults, not about remote hosts: paths named for the host, that
    exist there, are scheduled."""
    own = dict(sched, schedule_ansible_playbook=os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'),
               schedule_collection_dir=ROOT, schedule_workdir=ROOT, schedule_inventory=INVENTORY)
    proc = ansible.playbook('schedule.yml', extra_vars=own, inventory=remote_inventory(tmp_path, remote_scheduler),
                            env=REMOTE_ENV)
    assert proc.returncode == 0, proc.stdout[-3000:]
    entries = cron_entries(sched['schedule_cron_file'])
    assert len(entries) == 3
    assert entries[0][3].split(' -- ')[1].startswith(own['schedule_ansible_playbook'] + ' ')

    # Removal checks nothing it does not need: with the controller's paths again, and no cron daemon, it works.
    defaults = dict((k, v) for k, v in sched.items() if k != 'schedule_inventory')
    proc = ansible.playbook('schedule.yml', inventory=remote_inventory(tmp_path, remote_scheduler), env=REMOTE_ENV,
                            extra_vars=dict(defaults, schedule_state='absent',
                                            schedule_cron_daemons=[str(tmp_path / 'no-cron')]))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert not os.path.exists(sched['schedule_cron_file']) and not os.path.exists(sched['schedule_wrapper_path'])


FIRST_SUNDAYS_2027 = ['2027-01-03', '2027-02-07', '2027-03-07', '2027-04-04', '2027-05-02', '2027-06-06',
                      '2027-07-04', '2027-08-01', '2027-09-05', '2027-10-03', '2027-11-07', '2027-12-05']


def test_installed_drill_guard_runs_exactly_on_the_first_sundays_of_2027(ansible, sched, fake_clock, tmp_path):
    """Every day of 2027 at 04:00 UTC through the installed cron entry; the first Sundays also at 03 and 05."""
    record = tmp_path / 'drill-runs.txt'
    fake_playbook = tmp_path / 'fake-drill-playbook'
    # Records the faked instant it was started at; sh is much faster than a Python stand-in for 365 runs.
    fake_playbook.write_text('#!/bin/sh\necho "$FAKE_NOW" >> %s\n' % record)
    fake_playbook.chmod(0o755)
    run_ok(ansible, dict(sched, schedule_ansible_playbook=str(fake_playbook)))
    command = _cron_command(sched, 'modulo-pgbackup-restore-drill')

    days = [datetime.date(2027, 1, 1) + datetime.timedelta(days=n) for n in range(365)]
    assert days[-1] == datetime.date(2027, 12, 31)
    instants = ['%s 04:00:00 UTC' % day for day in days]
    instants += ['%s %s:00:00 UTC' % (day, hour) for day in FIRST_SUNDAYS_2027 for hour in ('03', '05')]
    instants_file = tmp_path / 'instants.txt'
    instants_file.write_text('\n'.join(instants) + '\n')
    # One shell runs cron's command once per instant, the way cron would at each of those hours.
    loop = 'while IFS= read -r FAKE_NOW; do export FAKE_NOW; /bin/sh -c "$1" || exit 1; done < "$2"'
    started = time.time()
    proc = subprocess.run(['/bin/sh', '-c', loop, 'walk', command, str(instants_file)],
                          env=fake_clock('2027-01-01 00:00:00 UTC'), check=False,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert proc.returncode == 0, proc.stdout
    assert time.time() - started < 60
    ran = record.read_text().splitlines() if record.exists() else []
    assert ran == ['%s 04:00:00 UTC' % day for day in FIRST_SUNDAYS_2027]
    # they are Sundays, each the first of its month
    assert all(datetime.date.fromisoformat(day).isoweekday() == 7 and int(day[8:]) <= 7 for day in FIRST_SUNDAYS_2027)
    assert len(set(day[:7] for day in FIRST_SUNDAYS_2027)) == 12


# -- the nightly backup playbook against a real database -----------------------------------


def test_nightly_backup_playbook_creates_a_complete_backup(ansible, pg, modulo_db, backup_root):
    extra = dict(pg.connection_vars(), pgbackup_db=modulo_db, pgbackup_backup_root=backup_root,
                 pgbackup_s3_bucket='', pgbackup_aws_region='', pgbackup_s3_endpoint_url='')
    proc = ansible.playbook('nightly-backup.yml', extra_vars=extra, env={'BACKUP_S3_BUCKET': ''})
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert recap(proc)['failed'] == 0

    dumps = glob.glob(os.path.join(backup_root, 'full', 'modulo_full_*.sql.gz'))
    assert len(dumps) == 1
    name = os.path.basename(dumps[0])[:-len('.sql.gz')]
    with open(dumps[0] + '.meta') as handle:
        meta = json.load(handle)
    assert meta['status'] == 'complete'
    assert meta['name'] == name
    assert meta['database'] == modulo_db
    assert meta['size_bytes'] == os.path.getsize(dumps[0])
    subprocess.run(['gzip', '-t', dumps[0]], check=True)
    # the role's summary names the backup and says it stayed local
    assert 'backup:    %s' % name in proc.stdout
    assert dumps[0] in proc.stdout
    assert 'none (local only)' in proc.stdout
    assert 'thresholds: ok' in proc.stdout


def _s3_keys(s3_bucket):
    listing = s3_bucket['client'].list_objects_v2(Bucket=s3_bucket['name'])
    return sorted(obj['Key'] for obj in listing.get('Contents', []))


def test_nightly_backup_playbook_uploads_to_s3_only_when_a_bucket_is_set(ansible, pg, modulo_db, backup_root,
                                                                         s3_bucket):
    base = dict(pg.connection_vars(), pgbackup_db=modulo_db, pgbackup_backup_root=backup_root,
                pgbackup_s3_prefix='database-backups/', pgbackup_aws_region='us-east-1',
                pgbackup_s3_endpoint_url=s3_bucket['url'])

    # an empty bucket variable means local only, even with BACKUP_S3_BUCKET in the environment
    proc = ansible.playbook('nightly-backup.yml', extra_vars=dict(base, pgbackup_s3_bucket=''),
                            env={'BACKUP_S3_BUCKET': s3_bucket['name']})
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert 'none (local only)' in proc.stdout
    assert _s3_keys(s3_bucket) == []

    proc = ansible.playbook('nightly-backup.yml', extra_vars=dict(base, pgbackup_s3_bucket=s3_bucket['name']))
    assert proc.returncode == 0, proc.stdout[-5000:]
    newest = sorted(glob.glob(os.path.join(backup_root, 'full', 'modulo_full_*.sql.gz')))[-1]
    # one prefix per inventory host (here localhost), so a fleet can share the bucket
    key = 'database-backups/localhost/full/' + os.path.basename(newest)
    assert key in _s3_keys(s3_bucket)
    assert 's3://%s/%s' % (s3_bucket['name'], key) in proc.stdout
