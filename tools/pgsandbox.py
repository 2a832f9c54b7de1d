#!/usr/bin/env python3
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Throwaway PostgreSQL 15 clusters and a loopback S3 endpoint.

One implementation for the pytest fixtures, ``make demo`` and Molecule's
create/destroy.  PostgreSQL refuses to run as root, so when we are root the
cluster runs as the ``postgres`` OS user, in a directory that user can reach.

CLI:  pgsandbox.py start DIR [--port N]   |   pgsandbox.py stop DIR
      pgsandbox.py s3-start DIR [--port N] [--bucket NAME]   |   pgsandbox.py s3-stop DIR
"""

import argparse
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time

BINDIR = os.environ.get('PG_BINDIR', '/usr/lib/postgresql/15/bin')
RUN_AS = 'postgres'


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def port_free(port):
    with socket.socket() as sock:
        try:
            sock.bind(('127.0.0.1', port))
        except OSError:
            return False
    return True


def is_root():
    return os.geteuid() == 0


def as_server_user(argv):
    """argv that runs as the OS user owning the cluster."""
    if is_root():
        return ['runuser', '-u', RUN_AS, '--'] + argv
    return argv


def _chown_to_server_user(path):
    if is_root():
        pw = pwd.getpwnam(RUN_AS)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def make_base(path):
    """A directory the server user can traverse (pytest's tmp base is 0700 root)."""
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o755 if is_root() else 0o700)
    return path


class Cluster(object):
    def __init__(self, base, port=None, name='pg'):
        self.base = os.path.abspath(base)
        self.dir = os.path.join(self.base, name)
        self.pgdata = os.path.join(self.dir, 'data')
        self.socket_dir = os.path.join(self.dir, 'run')
        self.log = os.path.join(self.dir, 'server.log')
        self.port = port or free_port()
        self.bindir = BINDIR

    # -- lifecycle --------------------------------------------------------
    def init(self, settings=None):
        make_base(self.base)
        os.makedirs(self.dir, exist_ok=True)
        os.makedirs(self.socket_dir, exist_ok=True)
        os.chmod(self.dir, 0o755 if is_root() else 0o700)
        for path in (self.dir, self.socket_dir):
            _chown_to_server_user(path)
        self._run([os.path.join(self.bindir, 'initdb'), '-D', self.pgdata, '-U', 'postgres',
                   '--auth=trust', '--data-checksums', '--encoding=UTF8', '--locale=C.UTF-8'])
        conf = {
            'port': self.port,
            'listen_addresses': "'127.0.0.1'",
            'unix_socket_directories': "'%s'" % self.socket_dir,
            'max_connections': 40,
            'shared_buffers': "'64MB'",
            'logging_collector': 'off',
            'max_wal_size': "'256MB'",
        }
        conf.update(settings or {})
        lines = ['%s = %s' % (k, v) for k, v in conf.items()]
        self._append_conf('\n'.join(lines) + '\n')
        return self

    def _append_conf(self, text):
        path = os.path.join(self.pgdata, 'postgresql.conf')
        proc = subprocess.run(as_server_user(['tee', '-a', path]), input=text.encode(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode:
            raise RuntimeError(proc.stderr.decode())

    def start(self):
        self._run([os.path.join(self.bindir, 'pg_ctl'), '-D', self.pgdata, '-l', self.log,
                   '-w', '-t', '60', 'start'])
        return self

    def stop(self, mode='fast'):
        if os.path.exists(os.path.join(self.pgdata, 'postmaster.pid')):
            subprocess.run(as_server_user([os.path.join(self.bindir, 'pg_ctl'), '-D', self.pgdata,
                                           '-m', mode, '-w', '-t', '60', 'stop']),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def destroy(self):
        self.stop('immediate')
        shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self, argv):
        proc = subprocess.run(as_server_user(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if proc.returncode:
            raise RuntimeError('%s failed: %s' % (' '.join(argv), proc.stdout.decode()[-3000:]))
        return proc.stdout.decode()

    # -- client helpers ---------------------------------------------------
    def env(self, db='postgres'):
        env = dict(os.environ)
        env.update(PGHOST='127.0.0.1', PGPORT=str(self.port), PGUSER='postgres', PGDATABASE=db)
        return env

    def psql(self, sql, db='postgres', check=True):
        proc = subprocess.run([os.path.join(self.bindir, 'psql'), '-X', '-q', '-A', '-t',
                               '-v', 'ON_ERROR_STOP=1', '-c', sql],
                              env=self.env(db), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if check and proc.returncode:
            raise RuntimeError('psql failed: %s' % proc.stderr.decode())
        return proc.stdout.decode().strip()

    def psql_file(self, path, db='postgres'):
        proc = subprocess.run([os.path.join(self.bindir, 'psql'), '-X', '-q', '-v', 'ON_ERROR_STOP=1',
                               '-f', path], env=self.env(db), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
        if proc.returncode:
            raise RuntimeError('psql -f %s failed: %s' % (path, proc.stderr.decode()))

    def connection_vars(self):
        """The playbooks' connection variables for this cluster."""
        return {'pgbackup_login_host': '127.0.0.1', 'pgbackup_port': self.port,
                'pgbackup_login_user': 'postgres', 'pgbackup_pg_bindir': self.bindir,
                'pgbackup_pgdata': self.pgdata}

    def save(self):
        with open(os.path.join(self.base, 'cluster.json'), 'w') as handle:
            json.dump({'port': self.port, 'dir': self.dir, 'pgdata': self.pgdata,
                       'socket_dir': self.socket_dir}, handle)

    @classmethod
    def load(cls, base):
        with open(os.path.join(base, 'cluster.json')) as handle:
            data = json.load(handle)
        return cls(base, port=data['port'])


# moto's application behind werkzeug with TLS and HTTP/1.1 keep-alive: moto_server's own TLS mode ends some
# answers by closing the connection without a TLS close_notify, which pgBackRest (OpenSSL 3) reports as
# "unexpected eof while reading".
_MOTO_TLS = """
import sys
from werkzeug.serving import WSGIRequestHandler, run_simple
from moto.server import DomainDispatcherApplication, create_backend_app


class Handler(WSGIRequestHandler):
    protocol_version = 'HTTP/1.1'

    def finish(self):
        super().finish()
        # werkzeug closes every connection after its answer: end TLS properly first (close_notify).
        try:
            self.connection.settimeout(2)
            self.connection.unwrap()
        except Exception:
            pass


moto = DomainDispatcherApplication(create_backend_app)


def app(environ, start_response):
    # Every answer with its length, so the connection stays open instead of ending the body by closing.
    answer = {}
    body = b''.join(moto(environ, lambda status, headers, exc_info=None: answer.update(status=status, headers=headers)))
    headers = answer['headers']
    if environ['REQUEST_METHOD'] != 'HEAD' or not any(k.lower() == 'content-length' for k, _v in headers):
        headers = [(k, v) for k, v in headers if k.lower() != 'content-length'] + [('Content-Length', str(len(body)))]
    start_response(answer['status'], headers)
    return [body]


run_simple('127.0.0.1', int(sys.argv[1]), app, threaded=True, ssl_context=(sys.argv[2], sys.argv[3]),
           request_handler=Handler)
"""


class S3Server(object):
    """moto's server mode: a real HTTP S3 endpoint on 127.0.0.1 (HTTPS with ``tls=(cert, key)``: clients then
    verify against ``cert``)."""

    def __init__(self, workdir, port=None, tls=None):
        self.workdir = workdir
        self.port = port or free_port()
        self.proc = None
        self.tls = tls
        self.url = '%s://127.0.0.1:%d' % ('https' if tls else 'http', self.port)

    def start(self):
        os.makedirs(self.workdir, exist_ok=True)
        exe = os.path.join(os.path.dirname(sys.executable), 'moto_server')
        if not os.path.exists(exe):
            exe = shutil.which('moto_server')
        self._log = open(os.path.join(self.workdir, 'moto.log'), 'ab')
        argv = [exe, '-H', '127.0.0.1', '-p', str(self.port)]
        if self.tls:
            argv = [sys.executable, '-c', _MOTO_TLS, str(self.port), self.tls[0], self.tls[1]]
        self.proc = subprocess.Popen(argv,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with socket.create_connection(('127.0.0.1', self.port), timeout=0.5):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError('moto_server exited: see %s' % self._log.name)
                time.sleep(0.1)
        raise RuntimeError('moto_server did not listen on port %d' % self.port)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc:
            self._log.close()

    def env(self):
        return {'AWS_ACCESS_KEY_ID': 'testing', 'AWS_SECRET_ACCESS_KEY': 'testing',
                'AWS_REGION': 'us-east-1', 'AWS_DEFAULT_REGION': 'us-east-1',
                'AWS_ENDPOINT_URL': self.url}

    def client(self):
        import boto3
        return boto3.client('s3', endpoint_url=self.url, region_name='us-east-1', aws_access_key_id='testing',
                            aws_secret_access_key='testing', verify=self.tls[0] if self.tls else None)

    def create_bucket(self, name):
        client = self.client()
        client.create_bucket(Bucket=name)
        return client


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('action', choices=['start', 'stop', 'status', 's3-start', 's3-stop'])
    parser.add_argument('dir')
    parser.add_argument('--port', type=int)
    parser.add_argument('--bucket', help='s3-start: also create this bucket')
    args = parser.parse_args()
    if args.action == 'start':
        if os.path.exists(os.path.join(args.dir, 'cluster.json')):
            cluster = Cluster.load(args.dir)
            if not os.path.exists(os.path.join(cluster.pgdata, 'postmaster.pid')):
                cluster.start()
        else:
            port = args.port
            if port and not port_free(port):
                # Another sandbox (another user's, or a test's) has it: any free port will do.
                port = None
            cluster = Cluster(args.dir, port=port).init()
            cluster.start()
            cluster.save()
        print(json.dumps({'port': cluster.port, 'pgdata': cluster.pgdata}))
    elif args.action == 'stop':
        if os.path.exists(os.path.join(args.dir, 'cluster.json')):
            Cluster.load(args.dir).destroy()
        shutil.rmtree(args.dir, ignore_errors=True)
    elif args.action == 'status':
        cluster = Cluster.load(args.dir)
        print(cluster.psql('SELECT version()'))
    elif args.action == 's3-start':
        server = S3Server(args.dir, port=args.port).start()
        with open(os.path.join(args.dir, 's3.json'), 'w') as handle:
            json.dump({'pid': server.proc.pid, 'url': server.url, 'bucket': args.bucket}, handle)
        if args.bucket:
            server.create_bucket(args.bucket)
        print(server.url)
    elif args.action == 's3-stop':
        path = os.path.join(args.dir, 's3.json')
        if os.path.exists(path):
            with open(path) as handle:
                pid = json.load(handle)['pid']
            try:
                os.killpg(pid, signal.SIGTERM)
            except OSError:
                pass
            os.unlink(path)


if __name__ == '__main__':
    main()
