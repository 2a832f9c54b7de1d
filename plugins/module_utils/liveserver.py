# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The live PostgreSQL server of this host: where its files are, and how to stop, start and restart it.

Where the files are is asked of the running server (``data_directory``, ``config_file``, ``hba_file``,
``ident_file``), never assumed: Debian keeps the configuration in /etc/postgresql/<version>/<cluster>,
RHEL/PGDG and a plain initdb keep it in the data directory. When the server is down (the emergency
this collection exists for), the data directory must be given and a Debian cluster is found by the
``data_directory`` line of its postgresql.conf.

How it is controlled, in the order ``auto`` tries them:

- ``systemd``: the unit given (``pg_service``), or the unit the running postmaster belongs to (read
  from its cgroup). Needs root, like ``systemctl`` itself.
- ``pg_ctlcluster``: a Debian cluster (postgresql-common), as root or as the cluster's owner.
- ``pg_ctl``: on the data directory, as the server's OS user, with ``config_file`` passed on when the
  configuration lives elsewhere.

``check()`` says, before anything is touched, what would stop a control from working.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import glob
import os
import re
import shutil
import subprocess
import time

from ansible_collections.modulo.pgbackup.plugins.module_utils import errors, osuser
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import PgError, psql_query

METHODS = ('auto', 'systemd', 'pg_ctlcluster', 'pg_ctl')
DEBIAN_CONF_RE = re.compile(r'^/etc/postgresql/(?P<version>[0-9.]+)/(?P<name>[^/]+)/postgresql\.conf\Z')
DATA_DIRECTORY_RE = re.compile(r"^\s*data_directory\s*=?\s*'(?P<path>[^']*)'", re.M)


class LiveServerError(errors.PgBackupError):
    pass


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------

def read_layout(conn, log=None):
    """The running server's own word on its files (needs a superuser or pg_read_all_settings)."""
    rows = psql_query(conn, "SELECT current_setting('data_directory'), current_setting('config_file'), "
                            "current_setting('hba_file'), current_setting('ident_file'), "
                            "current_setting('server_version_num')", db='postgres', log=log)
    data_directory, config_file, hba_file, ident_file, version_num = rows[0]
    return {'running': True, 'data_directory': data_directory, 'config_file': config_file,
            'hba_file': hba_file, 'ident_file': ident_file, 'major': int(version_num) // 10000,
            'debian': debian_cluster(config_file)}


def layout_when_down(pgdata):
    """The layout of a server that is not running, from its data directory and the Debian configs."""
    pgdata = os.path.abspath(pgdata.rstrip('/'))
    found = find_debian_config(pgdata)
    config_file = found or os.path.join(pgdata, 'postgresql.conf')
    confdir = os.path.dirname(config_file)
    return {'running': False, 'data_directory': pgdata, 'config_file': config_file,
            'hba_file': os.path.join(confdir, 'pg_hba.conf'), 'ident_file': os.path.join(confdir, 'pg_ident.conf'),
            'major': None, 'debian': debian_cluster(config_file) if found else None}


def debian_cluster(config_file):
    """{'version', 'name'} of a postgresql-common cluster, from where its postgresql.conf is; else None."""
    match = DEBIAN_CONF_RE.match(config_file or '')
    return match.groupdict() if match else None


def find_debian_config(pgdata, root='/etc/postgresql'):
    """The postgresql.conf of the Debian cluster whose data_directory is ``pgdata``, or None."""
    wanted = os.path.realpath(pgdata)
    for path in sorted(glob.glob(os.path.join(root, '*', '*', 'postgresql.conf'))):
        try:
            with open(path) as handle:
                match = DATA_DIRECTORY_RE.search(handle.read())
        except OSError:
            continue
        if match and os.path.realpath(match.group('path')) == wanted:
            return path
    return None


def config_outside(layout):
    """Whether postgresql.conf lives outside the data directory (Debian), so pg_ctl must be told."""
    return os.path.dirname(os.path.abspath(layout['config_file'])) != os.path.abspath(layout['data_directory'])


def _postmaster_pid(pgdata):
    try:
        with open(os.path.join(pgdata, 'postmaster.pid')) as handle:
            return int(handle.readline().strip())
    except (OSError, ValueError):
        return None


def postmaster_alive(pgdata):
    """The pid in ``pgdata``'s postmaster.pid when a process of that pid exists, else None."""
    pid = _postmaster_pid(pgdata)
    if not pid or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def server_log_of(pgdata, proc='/proc'):
    """The file the running postmaster of ``pgdata`` writes its output to (its stderr), or None.

    A restart through pg_ctl must send the server's output where it went before (Debian's
    /var/log/postgresql/..., an operator's own -l file), not to a new file nobody looks at.
    """
    pid = _postmaster_pid(pgdata)
    if pid is None:
        return None
    try:
        target = os.readlink(os.path.join(proc, str(pid), 'fd', '2'))
    except OSError:
        return None
    return target if target.startswith('/') and os.path.isfile(target) else None


def systemd_unit_of(pgdata, proc='/proc'):
    """The systemd service the postmaster of ``pgdata`` runs in, from its cgroup; None when there is none."""
    pid = _postmaster_pid(pgdata)
    try:
        with open(os.path.join(proc, str(pid), 'cgroup')) as handle:
            lines = handle.read().splitlines()
    except (OSError, TypeError):
        return None
    for line in lines:
        unit = line.rsplit('/', 1)[-1]
        if unit.endswith('.service') and 'postgres' in unit:
            return unit[:-len('.service')]
    return None


# --------------------------------------------------------------------------------------------
# Control
# --------------------------------------------------------------------------------------------

class Control(object):
    """Stop, start, restart and status of the live server through one service manager."""

    method = None

    def __init__(self, log=None):
        self.log = log

    def describe(self):
        raise NotImplementedError

    def argv(self, action):
        raise NotImplementedError

    def check(self):
        """Problems that would make stop/start fail, as sentences; empty when it can work."""
        raise NotImplementedError

    def _run(self, action, timeout=None):
        argv = self.argv(action)
        if self.log is not None:
            self.log.add(argv)
        try:
            proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False, cwd='/',
                                  timeout=timeout)
        except OSError as exc:
            raise LiveServerError('%s: cannot run %s: %s' % (self.describe(), argv[0], exc))
        except subprocess.TimeoutExpired:
            raise LiveServerError('%s %s did not finish within %d s' % (self.describe(), action, timeout))
        return proc.returncode, proc.stdout.decode('utf-8', 'replace').strip()

    def act(self, action, timeout=None):
        rc, out = self._run(action, timeout=timeout)
        if rc != 0:
            raise LiveServerError('%s %s failed (exit code %d): %s' % (self.describe(), action, rc, out[-1500:]))
        return out

    def stop(self):
        if self.running():
            self.act('stop')

    def start(self):
        self.act('start')

    def restart(self):
        self.act('restart')

    def running(self):
        return self._run('status')[0] == 0

    def log_path(self):
        """Where the server's output goes after ``start``, when this control knows it."""
        return None


class Systemd(Control):
    method = 'systemd'

    def __init__(self, unit, log=None):
        super(Systemd, self).__init__(log)
        self.unit = unit

    def describe(self):
        return 'systemd unit %s' % self.unit

    def argv(self, action):
        if action == 'status':
            return ['systemctl', 'is-active', '--quiet', self.unit]
        return ['systemctl', action, self.unit]

    def check(self):
        if not shutil.which('systemctl'):
            return ['systemctl is not installed, so %s cannot be controlled: leave pg_service empty to use '
                    'pg_ctlcluster or pg_ctl' % self.describe()]
        if not osuser.is_root():
            return ['controlling %s needs root (systemctl refuses %s): run the play with become: true '
                    '(sudo to root)' % (self.describe(), osuser.current_user())]
        argv = ['systemctl', 'show', '--property', 'LoadState', '--value', self.unit]
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False, cwd='/')
        state = proc.stdout.decode('utf-8', 'replace').strip()
        if proc.returncode != 0 or state != 'loaded':
            return ['%s is not known to systemd (%s): check pg_service (pgbackup_pg_service), e.g. '
                    'postgresql@15-main on Debian or postgresql-15 on RHEL' % (self.describe(), state or 'no answer')]
        return []


class PgCtlCluster(Control):
    method = 'pg_ctlcluster'

    def __init__(self, version, name, os_user, log=None):
        super(PgCtlCluster, self).__init__(log)
        self.version, self.name, self.os_user = version, name, os_user

    def describe(self):
        return 'pg_ctlcluster %s %s' % (self.version, self.name)

    def argv(self, action):
        argv = ['pg_ctlcluster', self.version, self.name, action]
        if action in ('stop', 'restart'):
            argv += ['-m', 'fast']
        return argv

    def check(self):
        if not shutil.which('pg_ctlcluster'):
            return ['pg_ctlcluster is not installed (package postgresql-common): set service_control to pg_ctl']
        if not osuser.is_root() and osuser.current_user() != self.os_user:
            return ['%s needs root or the cluster owner %s; the module runs as %s: run the play with become: true'
                    % (self.describe(), self.os_user, osuser.current_user())]
        return []

    def log_path(self):
        return '/var/log/postgresql/postgresql-%s-%s.log' % (self.version, self.name)


class PgCtl(Control):
    method = 'pg_ctl'

    def __init__(self, bindir, pgdata, os_user, logfile, config_file=None, timeout=300, log=None):
        super(PgCtl, self).__init__(log)
        self.bindir, self.pgdata, self.os_user = bindir, pgdata, os_user
        self.logfile, self.config_file, self.timeout = logfile, config_file, timeout
        self.stop_mode = 'fast'

    def describe(self):
        return 'pg_ctl on %s' % self.pgdata

    def argv(self, action):
        argv = osuser.run_as(self.os_user) + [os.path.join(self.bindir, 'pg_ctl'), '-D', self.pgdata]
        if action == 'status':
            return argv + ['status']
        if action == 'start' and self.config_file:
            # postmaster.opts does not come with a base backup: say again where the configuration is.
            argv += ['-o', '-c config_file=%s' % self.config_file]
        if action in ('start', 'restart'):
            # pg_ctl must send the server's output to a file: a postmaster holding our pipes would never
            # let the module finish.
            argv += ['-l', self.logfile]
        if action in ('stop', 'restart'):
            argv += ['-m', self.stop_mode]
        return argv + ['-w', '-t', str(int(self.timeout)), action]

    def check(self):
        problems = []
        if not os.access(os.path.join(self.bindir, 'pg_ctl'), os.X_OK):
            problems.append('%s has no pg_ctl: set pg_bindir' % self.bindir)
        if not osuser.is_root() and osuser.current_user() != self.os_user:
            problems.append('pg_ctl must run as %s (the server\'s OS user) or as root, not as %s: run the play '
                            'with become: true' % (self.os_user, osuser.current_user()))
        try:
            osuser.lookup(self.os_user)
        except osuser.OsUserError as exc:
            problems.append(str(exc))
        return problems

    def log_path(self):
        return self.logfile


def choose(layout, method='auto', unit=None, bindir=None, os_user='postgres', logfile=None, timeout=300, log=None):
    """The control for the server described by ``layout`` (read_layout / layout_when_down)."""
    if method not in METHODS:
        raise LiveServerError('service_control %r is not one of %s' % (method, ', '.join(METHODS)))
    pgdata = layout['data_directory']
    if method == 'systemd' or (method == 'auto' and unit):
        unit = unit or systemd_unit_of(pgdata)
        if not unit:
            raise LiveServerError('service_control systemd needs the unit: set pg_service (pgbackup_pg_service)')
        return Systemd(unit, log=log)
    if method == 'auto':
        found = systemd_unit_of(pgdata)
        if found:
            return Systemd(found, log=log)
    debian = layout.get('debian')
    if method == 'pg_ctlcluster' or (method == 'auto' and debian and shutil.which('pg_ctlcluster')):
        if not debian:
            raise LiveServerError('service_control pg_ctlcluster needs a Debian cluster; %s is configured by %s'
                                  % (pgdata, layout['config_file']))
        return PgCtlCluster(debian['version'], debian['name'], os_user, log=log)
    if not bindir:
        raise LiveServerError('pg_ctl needs pg_bindir')
    if not logfile:
        debian_log = ('/var/log/postgresql/postgresql-%s-%s.log' % (debian['version'], debian['name'])
                      if debian else None)
        logfile = server_log_of(pgdata) or (debian_log if debian_log and os.path.isfile(debian_log) else None) \
            or default_logfile(pgdata)
    return PgCtl(bindir, pgdata, os_user, logfile,
                 config_file=layout['config_file'] if config_outside(layout) else None, timeout=timeout, log=log)


def wait_accepting(conn, timeout_s):
    """After a start: until the server accepts connections (PgError after ``timeout_s``)."""
    deadline = time.time() + timeout_s
    while True:
        try:
            psql_query(conn, 'SELECT 1', db='postgres')
            return
        except PgError:
            if time.time() >= deadline:
                raise
            time.sleep(0.5)


def default_logfile(pgdata):
    """Where pg_ctl sends the output of a server whose own log is unknown: beside the data directory, as
    initdb suggests."""
    return os.path.join(os.path.dirname(os.path.abspath(pgdata.rstrip('/'))), 'server.log')


class LogWindow(object):
    """What a server writes to its log from now on (the log may hold earlier runs)."""

    def __init__(self, path):
        self.path = path
        try:
            self.offset = os.path.getsize(path) if path else 0
        except OSError:
            self.offset = 0

    def text(self):
        if not self.path:
            return ''
        try:
            with open(self.path, 'rb') as handle:
                handle.seek(self.offset)
                return handle.read().decode('utf-8', 'replace')
        except OSError:
            return ''
