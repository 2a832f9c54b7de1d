#!/usr/bin/env python3
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A production-shaped database host on this machine, for the tests that run the collection as users do.

What users have, and what ``up`` builds (everything named after one short id, so two hosts never meet):

- a Debian-layout PostgreSQL 15 cluster made by ``pg_createcluster`` (postgresql-common): configuration in
  /etc/postgresql/15/<cluster>, data in /var/lib/postgresql/15/<cluster>, socket /var/run/postgresql,
  peer authentication, started and stopped by ``pg_ctlcluster``, on a port of its own;
- a deploy user with passwordless sudo (a sudoers.d file) and no password of its own;
- an sshd on 127.0.0.1 with its own configuration and host key (not the system service), which accepts
  the deploy user's key only;
- optionally, the host's own S3 credentials (what an instance profile gives a real host): in the
  environment of every ssh session (sshd's ``SetEnv``, kept through sudo by ``env_keep``) and in the
  cluster's Debian ``environment`` file, which pg_ctlcluster gives the server and so its archive command;
- a stand-in ``systemctl`` for the unit ``postgresql@15-<cluster>``: no systemd runs here, so the stand-in
  maps start/stop/restart/is-active/show of that unit to pg_ctlcluster and, like the real one, refuses
  callers that are not root ("Access denied"). It is on the deploy user's sudo path only
  (``secure_path`` in its sudoers file), so nothing else on the machine sees it; any other unit goes to
  the real systemctl.

Needs root (users, sudoers, sshd, pg_createcluster). ``down`` removes all of it.

CLI:  prodhost.py up DIR [--id ID]   |   prodhost.py down DIR   |   prodhost.py show DIR
      prodhost.py psql DIR (SQL | --file PATH) [--db DB]
"""

import argparse
import contextlib
import fcntl
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
import uuid

PG_VERSION = '15'
BINDIR = '/usr/lib/postgresql/%s/bin' % PG_VERSION
SSHD = '/usr/sbin/sshd'
SUDOERS_DIR = '/etc/sudoers.d'
STATE_FILE = 'prodhost.json'
SECURE_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

# The stand-in systemctl. Stdlib only, run by /usr/bin/python3 as whoever called it.
SYSTEMCTL = r'''#!/usr/bin/python3
"""Stand-in systemctl for the test host (tools/prodhost.py): units in units.json map to pg_ctlcluster."""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REAL = '/usr/bin/systemctl'


def unit_name(arg):
    return arg[:-len('.service')] if arg.endswith('.service') else arg


def main(argv):
    with open(os.path.join(HERE, 'units.json')) as handle:
        units = json.load(handle)
    words = [a for a in argv if not a.startswith('-')]
    props, value_only, i = [], '--value' in argv, 0
    while i < len(argv):
        if argv[i] in ('-p', '--property') and i + 1 < len(argv):
            props += argv[i + 1].split(',')
            words.remove(argv[i + 1])
            i += 1
        elif argv[i].startswith('--property='):
            props += argv[i].split('=', 1)[1].split(',')
        i += 1
    if not words or words[0] == 'daemon-reload':
        return 0
    action, names = words[0], [unit_name(w) for w in words[1:]]
    if not names or any(n not in units for n in names):
        if os.path.exists(REAL):
            os.execv(REAL, [REAL] + argv)
        sys.stderr.write('Unit %s.service could not be found.\n' % (names[0] if names else '?'))
        return 5
    rc = 0
    for name in names:
        unit = units[name]
        status = subprocess.run(['pg_ctlcluster', unit['version'], unit['cluster'], 'status'],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        active = 'active' if status == 0 else 'inactive'
        if action in ('start', 'stop', 'restart', 'reload'):
            if os.geteuid() != 0:
                sys.stderr.write('Failed to %s %s.service: Access denied\n' % (action, name))
                return 1
            argv_ctl = ['pg_ctlcluster', '--skip-systemctl-redirect', unit['version'], unit['cluster'], action]
            if action in ('stop', 'restart'):
                argv_ctl += ['-m', 'fast']
            if action == 'stop' and active == 'inactive':
                continue
            if action == 'start' and active == 'active':
                continue
            proc = subprocess.run(argv_ctl, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if proc.returncode:
                sys.stderr.write(proc.stdout.decode('utf-8', 'replace'))
                sys.stderr.write('Job for %s.service failed because the control process exited with error code.\n'
                                 'See "systemctl status %s.service" and "journalctl -xeu %s.service" for details.\n'
                                 % (name, name, name))
                rc = 1
        elif action == 'is-active':
            print(active)
            rc = rc or (0 if active == 'active' else 3)
        elif action == 'status':
            print('* %s.service - PostgreSQL Cluster %s-%s (stand-in)' % (name, unit['version'], unit['cluster']))
            print('     Active: %s' % active)
            rc = rc or (0 if active == 'active' else 3)
        elif action == 'show':
            facts = {'Id': name + '.service', 'LoadState': 'loaded', 'ActiveState': active,
                     'SubState': 'running' if active == 'active' else 'dead', 'UnitFileState': 'enabled'}
            for key in (props or sorted(facts)):
                print(facts.get(key, '') if value_only else '%s=%s' % (key, facts.get(key, '')))
        else:
            sys.stderr.write('stand-in systemctl: %s is not implemented\n' % action)
            return 1
    return rc


sys.exit(main(sys.argv[1:]))
'''


class HostError(Exception):
    pass


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def run(argv, check=True, **kwargs):
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False, **kwargs)
    if check and proc.returncode:
        raise HostError('%s failed (%d): %s' % (' '.join(argv), proc.returncode,
                                                proc.stdout.decode('utf-8', 'replace')[-2000:]))
    return proc.stdout.decode('utf-8', 'replace')


@contextlib.contextmanager
def machine_lock():
    """One host at a time is built or removed on this machine: useradd/userdel lock /etc/passwd and fail
    (rather than wait) when another is at it, and pg_createcluster reads the clusters that exist."""
    with open('/run/lock/modulo-pgbackup-prodhost.lock', 'a') as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def missing_requirements():
    """What this machine lacks to build the host; empty when it can."""
    if os.geteuid() != 0:
        return ['root (it creates a user, a sudoers file, an sshd and a pg_createcluster cluster)']
    needs = {SSHD: 'openssh-server', '/usr/bin/sudo': 'sudo', '/usr/bin/pg_createcluster': 'postgresql-common',
             os.path.join(BINDIR, 'postgres'): 'postgresql-%s' % PG_VERSION, '/usr/bin/ssh': 'openssh-client'}
    return ['%s (package %s)' % (path, pkg) for path, pkg in sorted(needs.items()) if not os.path.exists(path)]


class ProdHost(object):
    def __init__(self, state_dir, host_id=None, environment=None):
        self.dir = os.path.abspath(state_dir)
        self.id = host_id or uuid.uuid4().hex[:6]
        self.environment = dict(environment or {})
        self.user = 'pgbdeploy_%s' % self.id
        self.cluster = 'pgb_%s' % self.id
        self.version = PG_VERSION
        self.pg_port = None
        self.ssh_port = None
        self.sshd_pid = None

    # -- paths -------------------------------------------------------------
    @property
    def pgdata(self):
        return '/var/lib/postgresql/%s/%s' % (self.version, self.cluster)

    @property
    def confdir(self):
        return '/etc/postgresql/%s/%s' % (self.version, self.cluster)

    @property
    def unit(self):
        return 'postgresql@%s-%s' % (self.version, self.cluster)

    @property
    def key(self):
        return os.path.join(self.dir, 'id_ed25519')

    @property
    def known_hosts(self):
        return os.path.join(self.dir, 'known_hosts')

    @property
    def sudoers(self):
        return os.path.join(SUDOERS_DIR, 'modulo-pgbackup-test-%s' % self.id)

    @property
    def standin_dir(self):
        return os.path.join(self.dir, 'sbin')

    # -- state -------------------------------------------------------------
    def save(self):
        data = {k: getattr(self, k) for k in ('id', 'pg_port', 'ssh_port', 'sshd_pid', 'environment')}
        data.update(user=self.user, cluster=self.cluster, pgdata=self.pgdata, confdir=self.confdir,
                    unit=self.unit, key=self.key, known_hosts=self.known_hosts, bindir=BINDIR)
        with open(os.path.join(self.dir, STATE_FILE), 'w') as handle:
            json.dump(data, handle, indent=2)

    @classmethod
    def load(cls, state_dir):
        with open(os.path.join(state_dir, STATE_FILE)) as handle:
            data = json.load(handle)
        host = cls(state_dir, data['id'], data.get('environment'))
        host.pg_port, host.ssh_port, host.sshd_pid = data['pg_port'], data['ssh_port'], data['sshd_pid']
        return host

    # -- up / down ---------------------------------------------------------
    def up(self):
        missing = missing_requirements()
        if missing:
            raise HostError('cannot build the test host, missing: %s' % '; '.join(missing))
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)   # the stand-in runs from here, as root and as the deploy user
        self.pg_port, self.ssh_port = free_port(), free_port()
        self.save()
        try:
            with machine_lock():
                self._user()
                self._sshd()
                self._cluster()
                self._standin()
        except BaseException:
            self.down()
            raise
        self.save()
        return self

    def _user(self):
        run(['useradd', '--create-home', '--shell', '/bin/bash', self.user])
        # A locked account ('!') may not log in over ssh at all; '*' has no password but is not locked.
        run(['usermod', '-p', '*', self.user])
        run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', self.user, '-f', self.key])
        pw = pwd.getpwnam(self.user)
        ssh_dir = os.path.join(pw.pw_dir, '.ssh')
        os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
        shutil.copy(self.key + '.pub', os.path.join(ssh_dir, 'authorized_keys'))
        for path in (ssh_dir, os.path.join(ssh_dir, 'authorized_keys')):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        os.chmod(os.path.join(ssh_dir, 'authorized_keys'), 0o600)
        rules = ('# modulo.pgbackup test host %s: a deploy user with passwordless sudo\n'
                 'Defaults:%s secure_path="%s:%s"\n%s ALL=(ALL:ALL) NOPASSWD: ALL\n'
                 % (self.id, self.user, self.standin_dir, SECURE_PATH, self.user))
        if self.environment:
            rules += 'Defaults:%s env_keep += "%s"\n' % (self.user, ' '.join(sorted(self.environment)))
        tmp = os.path.join(self.dir, 'sudoers.tmp')
        with open(tmp, 'w') as handle:
            handle.write(rules)
        run(['visudo', '-cqf', tmp])
        os.chmod(tmp, 0o440)
        shutil.move(tmp, self.sudoers)

    def _sshd(self):
        hostkey = os.path.join(self.dir, 'ssh_host_ed25519_key')
        run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', hostkey])
        config = os.path.join(self.dir, 'sshd_config')
        lines = ['Port %d' % self.ssh_port, 'ListenAddress 127.0.0.1', 'HostKey %s' % hostkey,
                 'PidFile %s' % os.path.join(self.dir, 'sshd.pid'), 'UsePAM no', 'PasswordAuthentication no',
                 'KbdInteractiveAuthentication no', 'PubkeyAuthentication yes', 'PermitRootLogin no',
                 'AllowUsers %s' % self.user, 'AuthorizedKeysFile .ssh/authorized_keys', 'StrictModes yes',
                 'MaxStartups 50', 'MaxSessions 50', 'Subsystem sftp /usr/lib/openssh/sftp-server']
        if self.environment:
            lines.append('SetEnv %s' % ' '.join('%s=%s' % item for item in sorted(self.environment.items())))
        with open(config, 'w') as handle:
            handle.write('\n'.join(lines) + '\n')
        os.makedirs('/run/sshd', mode=0o755, exist_ok=True)   # privilege separation directory
        run([SSHD, '-t', '-f', config])
        run([SSHD, '-f', config, '-E', os.path.join(self.dir, 'sshd.log')])
        deadline = time.time() + 15
        while True:
            try:
                with socket.create_connection(('127.0.0.1', self.ssh_port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline:
                    raise HostError('sshd did not listen on port %d: %s' % (self.ssh_port, self._tail('sshd.log')))
                time.sleep(0.1)
        # sshd listens before it has written its pid file: wait for the number too.
        while True:
            try:
                with open(os.path.join(self.dir, 'sshd.pid')) as handle:
                    self.sshd_pid = int(handle.read().strip())
                break
            except (OSError, ValueError):
                if time.time() > deadline:
                    raise HostError('sshd wrote no pid file: %s' % self._tail('sshd.log'))
                time.sleep(0.05)
        with open(hostkey + '.pub') as handle:
            key_type, key = handle.read().split()[:2]
        with open(self.known_hosts, 'w') as handle:
            handle.write('[127.0.0.1]:%d %s %s\n' % (self.ssh_port, key_type, key))

    def _cluster(self):
        run(['pg_createcluster', self.version, self.cluster, '--port', str(self.pg_port),
             '--', '--data-checksums'])
        # What a DBA tunes on any host; small values keep the test quick.
        with open(os.path.join(self.confdir, 'conf.d', 'modulo-test.conf'), 'w') as handle:
            handle.write("shared_buffers = '64MB'\nmax_wal_size = '256MB'\nmax_connections = 40\n")
        if self.environment:
            with open(os.path.join(self.confdir, 'environment'), 'a') as handle:
                handle.write(''.join("%s = '%s'\n" % item for item in sorted(self.environment.items())))
        run(['pg_ctlcluster', '--skip-systemctl-redirect', self.version, self.cluster, 'start'])

    def _standin(self):
        os.makedirs(self.standin_dir, mode=0o755, exist_ok=True)
        with open(os.path.join(self.standin_dir, 'units.json'), 'w') as handle:
            json.dump({self.unit: {'version': self.version, 'cluster': self.cluster}}, handle)
        path = os.path.join(self.standin_dir, 'systemctl')
        with open(path, 'w') as handle:
            handle.write(SYSTEMCTL)
        os.chmod(path, 0o755)

    def down(self):
        """Remove everything ``up`` made; every step runs even when an earlier one fails."""
        with machine_lock():
            self._down()

    def _down(self):
        if self.sshd_pid:
            run(['kill', str(self.sshd_pid)], check=False)
        if os.path.isdir(self.confdir):
            run(['pg_dropcluster', '--stop', self.version, self.cluster], check=False)
        for leftover in (self.confdir, self.pgdata):
            shutil.rmtree(leftover, ignore_errors=True)
        if os.path.exists(self.sudoers):
            os.unlink(self.sudoers)
        try:
            pwd.getpwnam(self.user)
            run(['pkill', '-u', self.user], check=False)
            run(['userdel', '--remove', self.user], check=False)
        except KeyError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers for the tests -------------------------------------------
    def _tail(self, name, lines=20):
        try:
            with open(os.path.join(self.dir, name)) as handle:
                return ''.join(handle.readlines()[-lines:])
        except OSError:
            return '(no %s)' % name

    def ssh_args(self):
        """ssh options of the controller: this host's key pinned, nothing read from ~/.ssh."""
        return ['-o', 'UserKnownHostsFile=%s' % self.known_hosts, '-o', 'StrictHostKeyChecking=yes',
                '-o', 'IdentitiesOnly=yes', '-o', 'BatchMode=yes']

    def host_vars(self):
        """How an inventory reaches this host: a name, an address, the deploy user and its key."""
        return {'ansible_host': '127.0.0.1', 'ansible_port': self.ssh_port, 'ansible_user': self.user,
                'ansible_ssh_private_key_file': self.key,
                'ansible_ssh_common_args': ' '.join(self.ssh_args()),
                'ansible_python_interpreter': '/usr/bin/python3'}

    def ssh(self, command, check=True):
        """Run a shell command on the host as the deploy user, over ssh."""
        argv = ['ssh', '-i', self.key, '-p', str(self.ssh_port)] + self.ssh_args() + \
            ['%s@127.0.0.1' % self.user, command]
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
        if check and proc.returncode:
            raise HostError('ssh %r failed (%d): %s%s' % (command, proc.returncode, proc.stdout, proc.stderr))
        return proc

    def psql(self, sql, db='postgres', check=True):
        """psql as postgres over the cluster's socket (peer authentication), as a DBA on the host would."""
        proc = subprocess.run(['runuser', '-u', 'postgres', '--', os.path.join(BINDIR, 'psql'), '-X', '-q', '-A',
                               '-t', '-v', 'ON_ERROR_STOP=1', '-p', str(self.pg_port), '-d', db, '-c', sql],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd='/', check=False)
        if check and proc.returncode:
            raise HostError('psql failed: %s' % proc.stderr.decode())
        return proc.stdout.decode().strip()

    def wait_archived(self, segment, timeout=60):
        """Wait until the archiver reports ``segment`` (or a later one) archived; its last failure if it does not."""
        deadline = time.time() + timeout
        while self.psql("SELECT coalesce(last_archived_wal, '') >= '%s' FROM pg_stat_archiver" % segment) != 't':
            if time.time() > deadline:
                raise HostError('segment %s was not archived within %d s: last failure %s' % (
                    segment, timeout, self.psql('SELECT last_failed_wal, last_failed_time FROM pg_stat_archiver')))
            time.sleep(0.2)

    def switch_wal_and_wait(self, timeout=60):
        """Close the current WAL segment and wait until it is archived; returns its name."""
        segment = self.psql('SELECT pg_walfile_name(pg_switch_wal())')
        self.wait_archived(segment, timeout)
        return segment

    def psql_file(self, path, db):
        with open(path, 'rb') as handle:
            proc = subprocess.run(['runuser', '-u', 'postgres', '--', os.path.join(BINDIR, 'psql'), '-X', '-q',
                                   '-v', 'ON_ERROR_STOP=1', '-p', str(self.pg_port), '-d', db, '-f', '-'],
                                  stdin=handle, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd='/',
                                  check=False)
        if proc.returncode:
            raise HostError('psql -f %s failed: %s' % (path, proc.stderr.decode()))

    def lsclusters(self):
        """This cluster's line of pg_lsclusters: version, name, port, status, owner, data directory, log."""
        for line in run(['pg_lsclusters', '--no-header']).splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] == self.version and fields[1] == self.cluster:
                return fields
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('action', choices=['up', 'down', 'show', 'psql'])
    parser.add_argument('dir')
    parser.add_argument('sql', nargs='?')
    parser.add_argument('--id', help='up: the short id every name is made of (default: random)')
    parser.add_argument('--db', default='postgres')
    parser.add_argument('--file', help='psql: run this SQL file (read by this process, so any path works)')
    args = parser.parse_intermixed_args()
    try:
        if args.action == 'up':
            host = ProdHost(args.dir, args.id).up()
            print(json.dumps(dict(host.host_vars(), pg_port=host.pg_port, pgdata=host.pgdata, unit=host.unit)))
        elif args.action == 'down':
            if os.path.exists(os.path.join(args.dir, STATE_FILE)):
                ProdHost.load(args.dir).down()
        elif args.action == 'show':
            with open(os.path.join(args.dir, STATE_FILE)) as handle:
                print(handle.read())
        elif args.action == 'psql' and args.file:
            ProdHost.load(args.dir).psql_file(args.file, db=args.db)
        elif args.action == 'psql':
            print(ProdHost.load(args.dir).psql(args.sql, db=args.db))
    except HostError as exc:
        sys.exit('prodhost: %s' % exc)


if __name__ == '__main__':
    main()
