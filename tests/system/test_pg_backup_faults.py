# -*- coding: utf-8 -*-
"""pg_backup when things go wrong: every failure must be loud, leave nothing that
looks like a backup, keep existing backups and databases as they were, and never
show the password.

Each task gets a unique ``login_password`` (also on trust-auth clusters, where
libpq simply does not use it), so a leak anywhere would be found by the checks.
"""

import datetime
import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid

import pytest

import pgsandbox
from conftest import table_rows
from ansible_collections.modulo.pgbackup.plugins.module_utils import (
    fsutil, logical_backup, pgclient, pipeline, repository)

MODULE = 'modulo.pgbackup.pg_backup'
# What Ansible prints in place of a no_log value: seeing it in a result means the
# module put the password there and only Ansible's masking hid it.
ANSIBLE_MASK = '********'


def _secret():
    return 'Pw-%s-secret' % uuid.uuid4().hex


def _is_root():
    return os.geteuid() == 0


# -- helpers ---------------------------------------------------------------

def seed_backup(pg, db, root):
    """A real, complete backup from the past in ``root``, taken with the module's own logic."""
    conn = pgclient.Connection(login_host='127.0.0.1', port=pg.port, login_user='postgres', bindir=pg.bindir)
    repo = repository.Repository(root).ensure()
    # A day old, so its name can never collide with the backup under test.
    when = repository.utcnow() - datetime.timedelta(days=1)
    plan = logical_backup.plan(repo, db, 'plain', 'gzip', None, 'modulo', 15, now=when)
    return logical_backup.take(conn, repo, plan, jobs=1)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def snapshot(root, sub='full'):
    """relative path -> (size, sha256, mtime) of every file under ``root/sub``."""
    files = {}
    top = os.path.join(root, sub)
    for base, _dirs, names in os.walk(top):
        for name in names:
            path = os.path.join(base, name)
            st = os.stat(path)
            files[os.path.relpath(path, top)] = (st.st_size, _sha256(path), st.st_mtime_ns)
    return files


def assert_no_new_backup(root, before, killed=False):
    """Nothing new in full/ (only ``.tmp-`` leftovers if the module itself was SIGKILLed);
    everything that was there is byte for byte the same."""
    after = snapshot(root)
    new = sorted(set(after) - set(before))
    if killed:
        assert all(os.path.basename(n).startswith(fsutil.TMP_PREFIX) for n in new), new
    else:
        assert new == [], 'a failed run left files in full/: %s' % new
    assert not [n for n in new if n.endswith('.meta')]
    for name, state in before.items():
        assert after.get(name) == state, 'existing backup file %s changed' % name
    entries, _problems = repository.Repository(root).scan('full')
    before_metas = sorted(repository.backup_of_meta(n) for n in before if n.endswith('.meta'))
    assert sorted(e['name'] for e in entries) == before_metas


def assert_secret_hidden(res, root, *secrets):
    """The password is in no result field, no executed command, no file of the repository."""
    shown = dict(res)
    shown.pop('invocation', None)  # Ansible's own record of the (masked) arguments
    text = json.dumps(shown)
    for secret in secrets:
        assert secret not in text
        assert secret not in res.get('_output', '')
        for command in res.get('executed_commands') or []:
            assert secret not in ' '.join(command)
    assert ANSIBLE_MASK not in json.dumps(dict((k, v) for k, v in shown.items() if k != '_output'))
    for command in res.get('executed_commands') or []:
        assert ANSIBLE_MASK not in ' '.join(command)
    if os.path.isdir(root):
        for base, _dirs, names in os.walk(root):
            for name in names:
                with open(os.path.join(base, name), 'rb') as handle:
                    data = handle.read()
                for secret in secrets:
                    assert secret.encode() not in data, os.path.join(base, name)


def assert_failed_report(res, root):
    """A failed run still writes its report, and the report says why."""
    assert res.get('report_path'), 'a failed run must write a report'
    assert os.path.dirname(res['report_path']) == os.path.join(root, 'logs')
    with open(res['report_path']) as handle:
        report = json.load(handle)
    assert report['status'] == 'failed'
    assert report['error'] == res['msg']
    return report


class ProcessWatch(object):
    """Samples every process's command line while a task runs (what ``ps`` shows)."""

    def __init__(self, *secrets):
        self.secrets = [s.encode() for s in secrets]
        self.leaks = []
        self.seen = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for pid in os.listdir('/proc'):
                if not pid.isdigit():
                    continue
                try:
                    with open('/proc/%s/cmdline' % pid, 'rb') as handle:
                        cmdline = handle.read()
                except OSError:
                    continue
                for secret in self.secrets:
                    if secret in cmdline:
                        self.leaks.append(cmdline.replace(b'\0', b' ').decode('utf-8', 'replace'))
                for program in (b'pg_dump', b'psql', b'ansible-playbook'):
                    if program in cmdline:
                        self.seen.add(program.decode())
            self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)
        return False


def _closed_port():
    return pgsandbox.free_port()  # bound then released: nothing listens there


def _task(ansible, conn_args, backup_root, db, secret, check=False, **extra):
    """Run pg_backup with ``secret`` as the password, watching the process list meanwhile."""
    args = dict(conn_args, backup_root=backup_root, db=db, login_password=secret)
    args.update(extra)
    with ProcessWatch(secret) as watch:
        res = ansible.task(MODULE, args, check=check)
    assert watch.leaks == [], 'the password showed in a process list: %s' % watch.leaks
    assert 'ansible-playbook' in watch.seen  # the watch really sampled while the task ran
    return res


# -- the database side fails ----------------------------------------------

@pytest.mark.parametrize('case', ['wrong_port', 'missing_database'])
def test_unreachable_or_missing_database_fails_clearly(case, ansible, pg, modulo_db, backup_root, conn_args):
    seed_backup(pg, modulo_db, backup_root)
    before = snapshot(backup_root)
    rows = table_rows(pg, modulo_db)
    secret = _secret()
    if case == 'wrong_port':
        port = _closed_port()
        res = _task(ansible, conn_args, backup_root, modulo_db, secret, port=port)
        expected = ['cannot reach PostgreSQL', ':%d/' % port, 'port']
    else:
        res = _task(ansible, conn_args, backup_root, 'no_such_db_here', secret)
        expected = ['database does not exist', 'no_such_db_here', 'check db']

    assert res.get('failed') is True
    for words in expected:
        assert words in res['msg'], res['msg']
    assert res['changed'] is False
    assert_no_new_backup(backup_root, before)
    assert table_rows(pg, modulo_db) == rows
    assert_failed_report(res, backup_root)
    assert_secret_hidden(res, backup_root, secret)


def _write_as_server_user(path, text):
    subprocess.run(pgsandbox.as_server_user(['tee', path]), input=text.encode(), check=True,
                   stdout=subprocess.DEVNULL)


def _psql_stdin(cluster, sql, db='postgres'):
    """SQL through stdin, so a password in it never shows in a process list."""
    subprocess.run([os.path.join(cluster.bindir, 'psql'), '-X', '-q', '-v', 'ON_ERROR_STOP=1'],
                   input=sql.encode(), env=cluster.env(db), check=True, stdout=subprocess.DEVNULL)


def test_password_authentication(ansible, new_cluster, backup_root):
    cluster = new_cluster()
    secret, wrong = _secret(), _secret()
    _psql_stdin(cluster, "CREATE ROLE backup_op LOGIN PASSWORD '%s' IN ROLE pg_read_all_data;\n"
                         "CREATE DATABASE shop;\n" % secret)
    _psql_stdin(cluster, "CREATE TABLE items AS SELECT g AS id, 'item ' || g AS title "
                         "FROM generate_series(1, 500) g;\n", db='shop')
    # postgres keeps trust (the harness connects as it); every other role needs its password.
    _write_as_server_user(os.path.join(cluster.pgdata, 'pg_hba.conf'),
                          'local all all trust\n'
                          'host all postgres 127.0.0.1/32 trust\n'
                          'host all all 127.0.0.1/32 scram-sha-256\n')
    subprocess.run(pgsandbox.as_server_user([os.path.join(cluster.bindir, 'pg_ctl'), '-D', cluster.pgdata,
                                             'reload']), check=True, stdout=subprocess.DEVNULL)
    env = dict(cluster.env('shop'), PGUSER='backup_op', PGPASSWORD='')
    deadline = time.time() + 10
    while True:  # the reload is asynchronous: wait until a password is really required
        probe = subprocess.run([os.path.join(cluster.bindir, 'psql'), '-X', '-w', '-c', 'SELECT 1'],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if probe.returncode != 0 or time.time() > deadline:
            break
        time.sleep(0.2)
    assert probe.returncode != 0 and b'password' in probe.stderr, probe.stderr

    args = {'login_host': '127.0.0.1', 'port': cluster.port, 'login_user': 'backup_op',
            'pg_bindir': cluster.bindir, 'backup_root': backup_root, 'db': 'shop'}
    with ProcessWatch(secret, wrong) as watch:
        bad = ansible.task(MODULE, dict(args, login_password=wrong))
    assert bad.get('failed') is True
    assert 'authentication failed' in bad['msg'] and 'login_password' in bad['msg'], bad['msg']
    assert 'backup_op' in bad['msg']
    assert_no_new_backup(backup_root, {})
    assert_failed_report(bad, backup_root)
    assert_secret_hidden(bad, backup_root, secret, wrong)
    assert watch.leaks == []

    with ProcessWatch(secret) as watch:
        good = ansible.task(MODULE, dict(args, login_password=secret))
    assert not good.get('failed'), good.get('msg')
    meta = good['backup']['meta']
    assert meta['status'] == 'complete'
    assert meta['table_rows'] == {'public.items': 500}
    assert os.path.exists(good['backup']['path'])
    assert any('pg_dump' in ' '.join(c) for c in good['executed_commands'])
    assert_secret_hidden(good, backup_root, secret)
    with open(good['report_path']) as handle:
        assert json.load(handle)['status'] == 'success'
    assert watch.leaks == []
    assert 'ansible-playbook' in watch.seen  # the watcher really sampled the process list


# -- the repository side fails --------------------------------------------

def test_backup_root_not_writable(ansible, pg, modulo_db, backup_root, conn_args, tmpfs_at):
    secret = _secret()
    if _is_root():
        # root ignores permission bits, so make the repository's file system read-only.
        tmpfs_at(backup_root, size='16m')
    seed_backup(pg, modulo_db, backup_root)
    before = snapshot(backup_root)
    if _is_root():
        tmpfs_at.remount(backup_root, readonly=True)
    else:
        for sub in ('full', 'logs', ''):
            os.chmod(os.path.join(backup_root, sub), 0o500)

    res = _task(ansible, conn_args, backup_root, modulo_db, secret)

    assert res.get('failed') is True
    assert 'not writable' in res['msg'] or 'cannot create the backup repository' in res['msg'], res['msg']
    assert backup_root in res['msg']
    assert res['changed'] is False
    assert_no_new_backup(backup_root, before)
    assert_secret_hidden(res, backup_root, secret)


def test_backup_root_under_a_file_fails_clearly(ansible, modulo_db, conn_args, backup_root):
    os.makedirs(backup_root)
    blocker = os.path.join(backup_root, 'not-a-directory')
    with open(blocker, 'w') as handle:
        handle.write('x')
    secret = _secret()
    res = _task(ansible, conn_args, os.path.join(blocker, 'repo'), modulo_db, secret)
    assert res.get('failed') is True
    assert 'cannot create the backup repository' in res['msg'] and 'Not a directory' in res['msg'], res['msg']
    assert 'writable by user' in res['msg']
    assert sorted(os.listdir(backup_root)) == ['not-a-directory']
    assert_secret_hidden(res, backup_root, secret)


def test_disk_full_during_dump(ansible, pg, modulo_db, backup_root, conn_args, tmpfs_at):
    tmpfs_at(backup_root, size='2m')
    seed = seed_backup(pg, modulo_db, backup_root)
    before = snapshot(backup_root)
    # About 5 MB once gzipped (md5 text barely compresses): more than the 2 MB disk.
    pg.psql('CREATE TABLE public.filler AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS pad '
            'FROM generate_series(1, 150000) g', db=modulo_db)
    rows = table_rows(pg, modulo_db)
    secret = _secret()

    res = _task(ansible, conn_args, backup_root, modulo_db, secret)

    assert res.get('failed') is True
    msg = res['msg']
    assert 'No space left on device' in msg, msg
    assert 'is full' in msg and backup_root in msg, msg
    # The compressor hit the full disk; pg_dump only lost its reader. The cause comes first.
    assert msg.index('No space left on device') < msg.index('pg_dump failed'), msg
    assert 'nothing was kept' in msg
    assert_no_new_backup(backup_root, before)
    assert table_rows(pg, modulo_db) == rows
    assert_failed_report(res, backup_root)
    assert_secret_hidden(res, backup_root, secret)
    # The space taken by the partial dump was given back.
    st = os.statvfs(backup_root)
    assert (st.f_blocks - st.f_bfree) * st.f_frsize < 2 * seed['size_bytes'] + 256 * 1024


def test_pg_dump_killed_half_way(ansible, pg, modulo_db, backup_root, conn_args):
    seed_backup(pg, modulo_db, backup_root)
    before = snapshot(backup_root)
    rows = table_rows(pg, modulo_db)
    secret = _secret()
    # Another session holds an exclusive lock, so pg_dump blocks half way (after
    # connecting and starting to lock tables) and stays there until we kill it.
    locker = subprocess.Popen([os.path.join(pg.bindir, 'psql'), '-X', '-q', '-v', 'ON_ERROR_STOP=1'],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=pg.env(modulo_db), universal_newlines=True)
    locker.stdin.write('BEGIN;\nLOCK TABLE public.orders IN ACCESS EXCLUSIVE MODE;\n'
                       "SELECT pg_sleep(0);\n")
    locker.stdin.flush()
    result = []
    runner = threading.Thread(
        target=lambda: result.append(_task(ansible, conn_args, backup_root, modulo_db, secret)), daemon=True)
    killed_pid = None
    try:
        with ProcessWatch(secret) as watch:
            runner.start()
            deadline = time.time() + 60
            pids = []
            while time.time() < deadline:
                waiting = pg.psql("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                                  "WHERE NOT l.granted AND c.relname = 'orders'", db=modulo_db)
                pids = subprocess.run(['pgrep', '-f', 'pg_dump --snapshot=.*--dbname=%s' % modulo_db],
                                      stdout=subprocess.PIPE, universal_newlines=True).stdout.split()
                if pids and int(waiting) > 0:
                    break
                assert runner.is_alive(), result and result[0].get('msg')
                time.sleep(0.1)
            assert len(pids) == 1, 'pg_dump did not start or block: %s' % pids
            killed_pid = int(pids[0])
            os.kill(killed_pid, signal.SIGKILL)
            locker.stdin.write('ROLLBACK;\n\\q\n')
            locker.stdin.flush()
            runner.join(120)
        assert not runner.is_alive(), 'the backup did not finish after pg_dump was killed'
    finally:
        if locker.poll() is None:
            locker.kill()
        locker.wait()
        runner.join(60)

    res = result[0]
    assert res.get('failed') is True
    assert 'pg_dump failed' in res['msg'] and 'SIGKILL' in res['msg'], res['msg']
    assert 'nothing was kept' in res['msg']
    assert 'pg_dump' in watch.seen
    assert watch.leaks == []
    assert_no_new_backup(backup_root, before)
    assert table_rows(pg, modulo_db) == rows
    report = assert_failed_report(res, backup_root)
    assert 'SIGKILL' in report['error']
    assert_secret_hidden(res, backup_root, secret)


def test_second_backup_while_one_runs_fails_with_lock_message(ansible, pg, modulo_db, backup_root, conn_args):
    seed_backup(pg, modulo_db, backup_root)
    before = snapshot(backup_root)
    secret = _secret()
    lock_path = os.path.join(backup_root, '.lock-backup')
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b'pid=%d started=test\n' % os.getpid())
        res = _task(ansible, conn_args, backup_root, modulo_db, secret)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    assert res.get('failed') is True
    msg = res['msg']
    assert 'another backup is already running on this repository' in msg, msg
    assert lock_path in msg and 'pid=%d' % os.getpid() in msg
    assert 'wait for it to finish' in msg
    assert not any('pg_dump' in ' '.join(c) for c in res['executed_commands'])
    assert_no_new_backup(backup_root, before)
    assert_failed_report(res, backup_root)
    assert_secret_hidden(res, backup_root, secret)


def _processes_holding(path):
    """pids (other than ours) with ``path`` open."""
    pids = []
    for pid in os.listdir('/proc'):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            fds = os.listdir('/proc/%s/fd' % pid)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink('/proc/%s/fd/%s' % (pid, fd)) == path:
                    pids.append(int(pid))
                    break
            except OSError:
                continue
    return pids


def test_second_backup_with_lock_wait_runs_after_the_first(ansible, pg, modulo_db, backup_root, conn_args):
    seed_backup(pg, modulo_db, backup_root)
    before = snapshot(backup_root)
    secret = _secret()
    lock_path = os.path.join(backup_root, '.lock-backup')
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    result = []
    runner = threading.Thread(target=lambda: result.append(
        _task(ansible, conn_args, backup_root, modulo_db, secret, lock_wait=60)), daemon=True)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        runner.start()
        deadline = time.time() + 60
        while not _processes_holding(lock_path):  # the module is waiting on the lock
            assert time.time() < deadline and runner.is_alive(), 'the module never waited for the lock'
            time.sleep(0.1)
        time.sleep(1.1)  # a wait long enough to show in the backup's name
        released = repository.utcnow()
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        runner.join(120)

    res = result[0]
    assert not res.get('failed'), res.get('msg')
    meta = res['backup']['meta']
    # Named and timed from when it really started, not from when it began to wait.
    assert repository.parse_iso(meta['started_at']) >= released
    assert meta['name'] >= 'modulo_full_%s' % released.strftime(repository.STAMP_FORMAT)
    after = snapshot(backup_root)
    for name, state in before.items():
        assert after[name] == state
    assert meta['file'] + '.meta' in after
    assert_secret_hidden(res, backup_root, secret)


# -- options and check mode -----------------------------------------------

@pytest.mark.parametrize('extra,words', [
    ({'compression_level': 42}, ['compression_level 42 is out of range for gzip', '1..9']),
    ({'name_prefix': 'nightly_db'}, ["name_prefix 'nightly_db' is invalid", 'letters, digits and dashes']),
    ({'format': 'directory', 'compression': 'zstd'},
     ['format directory with zstd needs pg_dump 16', 'use compression gzip']),
    ({'jobs': 0}, ['jobs must be 1 or more']),
], ids=['gzip-level', 'prefix-underscore', 'directory-zstd', 'jobs'])
def test_bad_options_fail_before_touching_anything(ansible, modulo_db, backup_root, conn_args, extra, words):
    secret = _secret()
    res = _task(ansible, conn_args, backup_root, modulo_db, secret, **extra)
    assert res.get('failed') is True
    for text in words:
        assert text in res['msg'], res['msg']
    assert res['changed'] is False
    assert not os.path.exists(backup_root), 'a rejected task must not create the repository'
    assert res['executed_commands'] == []
    assert_secret_hidden(res, backup_root, secret)


def test_check_mode_reports_plan_and_creates_nothing(ansible, modulo_db, backup_root, conn_args):
    secret = _secret()
    res = _task(ansible, conn_args, backup_root, modulo_db, secret, check=True, format='custom')
    assert not res.get('failed'), res.get('msg')
    assert res['changed'] is True
    path = res['backup']['path']
    assert os.path.dirname(path) == os.path.join(backup_root, 'full')
    name = os.path.basename(path)
    assert name.startswith('modulo_full_') and name.endswith('.dump')
    assert repository.NAME_RE.match(name[:-len('.dump')])
    assert res['backup']['meta'] is None
    assert 'would back up database %s to %s' % (modulo_db, path) in res['msg']
    assert not os.path.exists(backup_root), 'check mode must not even create backup_root'
    assert not any('pg_dump --snapshot' in ' '.join(c) for c in res['executed_commands'])
    assert_secret_hidden(res, backup_root, secret)


# -- the pieces the above relies on, called directly ----------------------

def test_failure_after_publish_leaves_no_orphan_dump(pg, modulo_db, backup_root, monkeypatch):
    """If the .meta cannot be written (disk full at the last step), the dump that
    already has its final name is removed too, not left as an orphan."""
    seed_backup(pg, modulo_db, backup_root)
    before = snapshot(backup_root)
    conn = pgclient.Connection(login_host='127.0.0.1', port=pg.port, login_user='postgres', bindir=pg.bindir)
    repo = repository.Repository(backup_root).ensure()
    plan = logical_backup.plan(repo, modulo_db, 'custom', 'gzip', None, 'modulo', 15)
    real_write = fsutil.write_json_atomic

    def full_disk(path, obj, overwrite=False):
        if path == plan['meta_path']:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real_write(path, obj, overwrite=overwrite)

    monkeypatch.setattr(fsutil, 'write_json_atomic', full_disk)
    with pytest.raises(OSError) as info:
        logical_backup.take(conn, repo, plan, jobs=1)
    assert info.value.errno == errno.ENOSPC
    assert not os.path.exists(plan['path'])
    assert_no_new_backup(backup_root, before)


def test_backup_is_never_named_like_an_existing_one(backup_root, monkeypatch):
    """Two runs within one second get two names; the earlier backup is not touched."""
    repo = repository.Repository(backup_root).ensure()
    first = datetime.datetime(2026, 11, 24, 2, 0, 0, tzinfo=datetime.timezone.utc)
    times = iter([first, first + datetime.timedelta(seconds=1)])
    monkeypatch.setattr(repository, 'utcnow', lambda: next(times))
    monkeypatch.setattr(logical_backup.time, 'sleep', lambda _s: None)
    taken = logical_backup.plan(repo, 'modulodb', 'plain', 'gzip', None, 'modulo', 15, now=first)
    with open(taken['meta_path'], 'w') as handle:
        handle.write('{}')
    fresh = logical_backup.unused_plan(repo, taken)
    assert fresh['name'] == 'modulo_full_20261124_020001'
    assert fresh['started'] == first + datetime.timedelta(seconds=1)
    assert fresh['path'].endswith('.sql.gz') and fresh['compression_level'] == taken['compression_level']
    with open(taken['meta_path']) as handle:
        assert handle.read() == '{}'


def test_pipeline_reports_every_failed_stage_root_cause_first(tmp_path):
    out = str(tmp_path / 'out')
    with pytest.raises(pipeline.PipelineError) as info:
        pipeline.run([['yes'], ['sh', '-c', 'head -c 1000 >/dev/null; echo disk is full >&2; exit 4']],
                     stdout_path=out)
    err = info.value
    assert err.stage == 'sh' and err.returncode == 4
    assert str(err).startswith('sh failed (exit code 4): disk is full'), str(err)
    assert 'yes failed (killed by signal SIGPIPE)' in str(err)


def test_pipeline_fails_when_an_upstream_stage_is_killed(tmp_path):
    # The shell pipeline's status would be cat's 0, with a truncated file behind it.
    out = str(tmp_path / 'out')
    with pytest.raises(pipeline.PipelineError) as info:
        pipeline.run([['sh', '-c', 'echo partial; kill -KILL $$'], ['cat']], stdout_path=out)
    assert info.value.stage == 'sh'
    assert 'killed by signal SIGKILL' in str(info.value)
    assert info.value.returncode == -signal.SIGKILL


def test_pipeline_success_writes_output_and_logs_commands(tmp_path):
    out = str(tmp_path / 'out')
    log = pgclient.CommandLog()
    texts = pipeline.run([['printf', 'a b c'], ['tr', ' ', '-']], stdout_path=out, log=log)
    with open(out) as handle:
        assert handle.read() == 'a-b-c'
    assert oct(os.stat(out).st_mode & 0o777) == oct(0o600)
    assert log.commands == [['printf', 'a b c'], ['tr', ' ', '-']]
    assert texts == ['', '']
    # Never writes over an existing file.
    with pytest.raises(OSError) as info:
        pipeline.run([['true']], stdout_path=out)
    assert info.value.errno == errno.EEXIST


def test_pipeline_stage_that_cannot_start_stops_the_others(tmp_path):
    marker = 'sleep-%s' % uuid.uuid4().hex[:8]
    script = str(tmp_path / marker)
    shutil.copy('/bin/sleep', script)
    with pytest.raises(OSError):
        pipeline.run([[script, '60'], [str(tmp_path / 'no-such-program')]])
    alive = subprocess.run(['pgrep', '-f', marker], stdout=subprocess.PIPE).stdout.split()
    assert alive == [], 'the first stage was left running'
