# -*- coding: utf-8 -*-
"""liveserver: the layout of a server that is down, the choice of service control, the commands it runs and
its pre-checks; cluster_recovery's pre-check and failure messages (pure parts, on real directories)."""

import json
import os

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import cluster_recovery, liveserver, osuser

BINDIR = '/usr/lib/postgresql/15/bin'


def debian_layout(tmp_path, name='main'):
    """/etc/postgresql/15/<name>/postgresql.conf naming a data directory, under tmp_path."""
    etc = tmp_path / 'etc' / '15' / name
    etc.mkdir(parents=True)
    data = tmp_path / 'lib' / '15' / name
    data.mkdir(parents=True)
    (etc / 'postgresql.conf').write_text("# Debian\ndata_directory = '%s'\t\t# use data in another directory\n" % data)
    (etc / 'pg_hba.conf').write_text('local all all peer\n')
    return str(tmp_path / 'etc'), str(data), str(etc)


def test_debian_cluster_is_named_by_where_its_configuration_is():
    assert liveserver.debian_cluster('/etc/postgresql/15/main/postgresql.conf') == {'version': '15', 'name': 'main'}
    assert liveserver.debian_cluster('/var/lib/pgsql/15/data/postgresql.conf') is None


def test_a_debian_cluster_that_is_down_is_found_by_its_data_directory(tmp_path):
    etc_root, data, etc = debian_layout(tmp_path)
    debian_layout(tmp_path, 'other')
    assert liveserver.find_debian_config(data, root=etc_root) == os.path.join(etc, 'postgresql.conf')
    assert liveserver.find_debian_config(str(tmp_path / 'elsewhere'), root=etc_root) is None


def test_layout_when_down_of_a_plain_data_directory(tmp_path):
    layout = liveserver.layout_when_down(str(tmp_path / 'data') + '/')
    assert layout['config_file'] == str(tmp_path / 'data' / 'postgresql.conf')
    assert not liveserver.config_outside(layout) and layout['debian'] is None and not layout['running']


def test_auto_picks_systemd_for_a_unit_then_pg_ctlcluster_then_pg_ctl(tmp_path):
    debian = {'data_directory': str(tmp_path / 'data'), 'config_file': '/etc/postgresql/15/main/postgresql.conf',
              'debian': {'version': '15', 'name': 'main'}}
    plain = {'data_directory': str(tmp_path / 'data'), 'config_file': str(tmp_path / 'data' / 'postgresql.conf'),
             'debian': None}
    assert liveserver.choose(debian, unit='postgresql@15-main').describe() == 'systemd unit postgresql@15-main'
    control = liveserver.choose(debian, bindir=BINDIR)
    if control.method == 'pg_ctlcluster':
        assert control.argv('stop') == ['pg_ctlcluster', '15', 'main', 'stop', '-m', 'fast']
    control = liveserver.choose(plain, bindir=BINDIR)
    assert control.method == 'pg_ctl' and control.config_file is None
    with pytest.raises(liveserver.LiveServerError, match='needs a Debian cluster'):
        liveserver.choose(plain, method='pg_ctlcluster', bindir=BINDIR)
    with pytest.raises(liveserver.LiveServerError, match='set pg_service'):
        liveserver.choose(plain, method='systemd', bindir=BINDIR)


def test_pg_ctl_on_a_debian_data_directory_is_given_the_config_file(tmp_path):
    layout = {'data_directory': '/var/lib/postgresql/15/main', 'debian': None,
              'config_file': '/etc/postgresql/15/main/postgresql.conf'}
    control = liveserver.choose(layout, method='pg_ctl', bindir=BINDIR, os_user='postgres')
    start = control.argv('start')
    assert start[start.index('-o') + 1] == '-c config_file=/etc/postgresql/15/main/postgresql.conf'
    assert start[start.index('-l') + 1] == '/var/lib/postgresql/15/server.log'
    assert start[-1] == 'start' and start[:len(osuser.run_as('postgres'))] == osuser.run_as('postgres')
    # A restart reuses postmaster.opts, which holds config_file already; status takes nothing else.
    assert '-o' not in control.argv('restart')
    assert control.argv('status')[-1] == 'status' and '-l' not in control.argv('status')


def test_the_unit_a_postmaster_runs_in_is_read_from_its_cgroup(tmp_path):
    pgdata, proc = tmp_path / 'data', tmp_path / 'proc'
    pgdata.mkdir()
    (proc / '4242').mkdir(parents=True)
    (pgdata / 'postmaster.pid').write_text('4242\n/var/lib/postgresql/15/main\n')
    (proc / '4242' / 'cgroup').write_text('0::/system.slice/system-postgresql.slice/postgresql@15-main.service\n')
    assert liveserver.systemd_unit_of(str(pgdata), proc=str(proc)) == 'postgresql@15-main'
    (proc / '4242' / 'cgroup').write_text('0::/init.scope\n')
    assert liveserver.systemd_unit_of(str(pgdata), proc=str(proc)) is None
    assert liveserver.systemd_unit_of(str(tmp_path / 'none'), proc=str(proc)) is None


def test_systemd_needs_root_and_says_so():
    problems = liveserver.Systemd('postgresql@15-main').check()
    if not osuser.is_root():
        assert any('needs root' in p and 'become: true' in p for p in problems), problems


def test_log_window_reads_only_what_was_written_after_it(tmp_path):
    log = tmp_path / 'server.log'
    log.write_text('old run: recovery stopping before commit\n')
    window = liveserver.LogWindow(str(log))
    with open(str(log), 'a') as handle:
        handle.write('new run\n')
    assert window.text() == 'new run\n'
    assert liveserver.LogWindow(None).text() == '' and liveserver.LogWindow(str(tmp_path / 'x')).text() == ''


class Ready(object):
    method = 'pg_ctl'

    def __init__(self, problems=()):
        self.problems = list(problems)

    def check(self):
        return self.problems


def test_precheck_passes_for_a_writable_parent_with_room(tmp_path):
    etc_root, data, etc = debian_layout(tmp_path)
    layout = {'data_directory': data, 'config_file': os.path.join(etc, 'postgresql.conf'),
              'hba_file': os.path.join(etc, 'pg_hba.conf')}
    base = tmp_path / 'base'
    base.mkdir()
    (base / 'backup_manifest').write_text(json.dumps({'Files': [{'Path': 'PG_VERSION', 'Size': 3}]}))
    assert cluster_recovery.precheck(layout, Ready(), osuser.current_user(), {'path': str(base)}) == []


def test_precheck_names_every_problem_before_anything_is_touched(tmp_path):
    etc_root, data, etc = debian_layout(tmp_path)
    os.unlink(os.path.join(etc, 'pg_hba.conf'))
    layout = {'data_directory': data, 'config_file': os.path.join(etc, 'postgresql.conf'),
              'hba_file': os.path.join(etc, 'pg_hba.conf')}
    base = tmp_path / 'base'
    base.mkdir()
    (base / 'backup_manifest').write_text(json.dumps({'Files': [{'Path': 'big', 'Size': 1 << 60}]}))
    problems = cluster_recovery.precheck(layout, Ready(['the unit is unknown']), 'modulo_no_such_user',
                                         {'path': str(base)})
    text = ' | '.join(problems)
    assert 'the unit is unknown' in text
    assert 'OS user modulo_no_such_user does not exist' in text
    assert 'needs about 1048576.0 TB (manifest, plus 10 %)' in text
    assert "hba_file %s is missing" % layout['hba_file'] in text


def test_restored_size_falls_back_to_the_backup_size_without_a_manifest(tmp_path):
    assert cluster_recovery.restored_size({'path': str(tmp_path), 'size_bytes': 1234}) == (
        1234, 'compressed size (no readable manifest)')


def test_restored_size_of_a_backup_in_s3_is_its_manifest_read_from_there(tmp_path):
    # A base backup only in S3 has no local path; restored_bytes is the sum its manifest in S3 gives.
    assert cluster_recovery.restored_size({'size_bytes': 1234, 'restored_bytes': 98765}) == (98765, 'manifest')
    assert cluster_recovery.restored_size({'size_bytes': 1234, 'restored_bytes': None}) == (
        1234, 'compressed size (no readable manifest)')


@pytest.mark.parametrize('state, expected, absent', [
    ({'touched': False}, 'Nothing was changed: the server was not stopped', 'Rolled back'),
    ({'touched': True, 'rolled_back': True, 'failed_copy': '/d.failed-1'},
     'Rolled back: the previous data directory is back at /d', 'by hand'),
    ({'touched': True, 'rolled_back': False, 'server_running': False, 'old_pgdata': '/d.old-1',
      'rollback_error': 'start failed'}, 'The automatic rollback failed (start failed); PostgreSQL is DOWN', 'Rolled back'),
])
def test_failure_message_promises_only_what_happened(state, expected, absent):
    state = dict({'data_directory': '/d', 'failed_copy': None, 'old_pgdata': None, 'server_running': None}, **state)
    msg = cluster_recovery.failure_message('cause', state, 'pg_ctlcluster 15 main')
    assert msg.startswith('cause. ') and expected in msg and absent not in msg, msg
    if state.get('old_pgdata'):
        assert 'rename /d.old-1 to /d' in msg


class _Control(object):
    """Stands for the service manager: records what it was asked."""

    def __init__(self):
        self.calls, self.up = [], True

    def stop(self):
        self.calls.append('stop')
        self.up = False

    def start(self):
        self.calls.append('start')
        self.up = True

    def running(self):
        return self.up

    def describe(self):
        return 'a stand-in'

    def log_path(self):
        return None


def test_an_unexpected_error_after_the_stop_is_rolled_back_too(tmp_path, monkeypatch):
    """A defect (here an AttributeError while unpacking) must not leave the server stopped and its directory aside."""
    from ansible_collections.modulo.pgbackup.plugins.module_utils import scratch
    pgdata = tmp_path / 'main'
    pgdata.mkdir()
    (pgdata / 'PG_VERSION').write_text('15\n')
    recovery = cluster_recovery.ClusterRecovery.__new__(cluster_recovery.ClusterRecovery)
    recovery.conn, recovery.os_user, recovery.log, recovery.timeout_s = None, None, None, 60
    recovery.layout = {'data_directory': str(pgdata), 'running': True}
    recovery.control = _Control()

    def broken_unpack(*args, **kwargs):
        raise AttributeError("'StreamingBody' object has no attribute 'readinto'")

    monkeypatch.setattr(scratch, 'install_wal_command', lambda *args, **kwargs: 'true')
    monkeypatch.setattr(scratch, 'extract_base', broken_unpack)
    monkeypatch.setattr(cluster_recovery.liveserver, 'wait_accepting', lambda conn, timeout: None)
    with pytest.raises(cluster_recovery.ClusterRecoveryError) as raised:
        recovery.run({'name': 'b1', 'path': str(tmp_path / 'b1')}, str(tmp_path / 'repo'), {})
    assert 'unexpected AttributeError' in str(raised.value) and 'readinto' in str(raised.value)
    state = raised.value.state
    assert state['rolled_back'] is True and state['server_running'] is True
    assert recovery.control.calls == ['stop', 'stop', 'start']
    assert (pgdata / 'PG_VERSION').read_text() == '15\n'
    assert not [p.name for p in tmp_path.iterdir() if '.old-' in p.name or '.pitr-' in p.name]
