# -*- coding: utf-8 -*-
"""Test harness: real PostgreSQL 15 clusters, a loopback S3, and real Ansible runs.

Every server a fixture starts is torn down in a ``finally``/finalizer, so a
failing test leaves no cluster or moto process behind.
"""

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))
sys.path.insert(0, os.path.join(ROOT, '.collections'))
# tests/faults imports the helpers of tests/system (one harness, not a copy).
sys.path.insert(0, os.path.join(ROOT, 'tests', 'system'))

import pgsandbox  # noqa: E402
import prodhost  # noqa: E402

SCHEMA_SQL = os.path.join(ROOT, 'tests', 'data', 'modulo_schema.sql')
APP_SCRIPT = os.path.join(ROOT, 'tests', 'modulo_app.py')
VENV_BIN = os.path.dirname(sys.executable)
_counter = itertools.count()


@pytest.fixture(scope='session')
def sandbox_base():
    # Not under pytest's tmp_path: that is 0700 root, and the server runs as postgres.
    base = tempfile.mkdtemp(prefix='modulo-pgbackup-tests-', dir='/tmp')
    pgsandbox.make_base(base)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope='session')
def pg(sandbox_base):
    """One PostgreSQL 15 cluster per test session (each xdist worker has its own)."""
    cluster = pgsandbox.Cluster(sandbox_base, name='pg-session')
    try:
        cluster.init().start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def new_cluster(sandbox_base):
    """Factory for extra clusters a test may stop, break or compare."""
    made = []

    def make(settings=None):
        cluster = pgsandbox.Cluster(sandbox_base, name='pg-%s' % uuid.uuid4().hex[:8])
        made.append(cluster)
        cluster.init(settings).start()
        return cluster

    yield make
    for cluster in made:
        cluster.destroy()


@pytest.fixture
def modulo_db(pg):
    """A fresh, populated Modulo-like database; dropped after the test."""
    name = 'modulo_%d_%s' % (next(_counter), uuid.uuid4().hex[:6])
    pg.psql('CREATE DATABASE %s' % name)
    pg.psql_file(SCHEMA_SQL, db=name)
    yield name
    pg.psql('DROP DATABASE IF EXISTS %s WITH (FORCE)' % name, check=False)


@pytest.fixture
def backup_root(sandbox_base):
    path = os.path.join(sandbox_base, 'repo-%s' % uuid.uuid4().hex[:8])
    yield path
    if os.path.isdir(path):
        for base, dirs, _files in os.walk(path):  # a test may have made it read-only
            for name in dirs:
                os.chmod(os.path.join(base, name), 0o700)
        os.chmod(path, 0o700)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope='session')
def ssh_host():
    """A database host reached over ssh as a sudo deploy user (tools/prodhost.py), removed afterwards.

    Skips the test where it cannot be built (it needs root and openssh-server, sudo, postgresql-common).
    """
    missing = prodhost.missing_requirements()
    if missing:
        pytest.skip('the production-shaped host cannot be built here: %s' % '; '.join(missing))
    base = tempfile.mkdtemp(prefix='modulo-pgbackup-ssh-', dir='/var/tmp')
    os.chmod(base, 0o755)
    host = prodhost.ProdHost(os.path.join(base, 'host'))
    try:
        host.up()
        yield host
    finally:
        host.down()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope='session')
def s3_server(sandbox_base):
    server = pgsandbox.S3Server(os.path.join(sandbox_base, 's3'))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """A fresh bucket on the loopback S3, with the environment pointing at it."""
    name = 'modulo-test-%s' % uuid.uuid4().hex[:10]
    client = s3_server.create_bucket(name)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return {'name': name, 'client': client, 'url': s3_server.url}


@pytest.fixture
def tmpfs_at():
    """Mount a small tmpfs on a directory (root only); always unmounted afterwards."""
    mounted = []

    def mount(path, size='2m'):
        if os.geteuid() != 0:
            pytest.skip('mounting a tmpfs needs root')
        os.makedirs(path, exist_ok=True)
        proc = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=%s,mode=0700' % size, 'tmpfs', path],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if proc.returncode:
            pytest.skip('cannot mount a tmpfs here: %s' % proc.stdout.decode().strip())
        mounted.append(path)

    def remount(path, readonly):
        subprocess.run(['mount', '-o', 'remount,%s' % ('ro' if readonly else 'rw'), path], check=True)

    mount.remount = remount
    yield mount
    for path in reversed(mounted):
        subprocess.run(['umount', '-l', path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def flip_byte(path):
    """Damage a file in its middle, one byte inverted: what a bad disk or a bad copy leaves."""
    with open(path, 'r+b') as handle:
        handle.seek(os.path.getsize(path) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))


def table_rows(cluster, db):
    """Exact row counts of every user table, the way a DBA would check a restore."""
    out = cluster.psql("SELECT n.nspname || '.' || c.relname FROM pg_class c "
                       "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' "
                       "AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1", db=db)
    counts = {}
    for table in out.splitlines():
        schema, name = table.split('.', 1)
        counts[table] = int(cluster.psql('SELECT count(*) FROM "%s"."%s"' % (schema, name), db=db))
    return counts


def table_digest(cluster, db, table, order_by='1'):
    """md5 of a whole table's content, to compare data and not only counts."""
    return cluster.psql('SELECT md5(string_agg(t::text, \'|\' ORDER BY %s)) FROM %s t' % (order_by, table), db=db)


class AnsibleRunner(object):
    """Runs modules and playbooks with the real ansible-playbook, as a user would."""

    def __init__(self, workdir):
        self.workdir = workdir

    def env(self, extra=None, inventory=None):
        """The environment of ansible-playbook. With an ``inventory`` (hosts reached as their inventory says,
        over ssh for tests/production), the hosts' temporary directory is Ansible's default, in the remote
        user's home, as on a real host: tasks run with async need one the deploy user can create."""
        env = dict(os.environ)
        env.update(ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'), ANSIBLE_NOCOLOR='1',
                   ANSIBLE_FORCE_COLOR='0', ANSIBLE_LOCAL_TEMP=os.path.join(self.workdir, 'ansible-local'),
                   PATH=VENV_BIN + os.pathsep + env.get('PATH', ''))
        if inventory is None:
            env['ANSIBLE_REMOTE_TEMP'] = os.path.join(self.workdir, 'ansible-remote')
        env.update(extra or {})
        return env

    def task(self, module, args, check=False, env=None, alone=False, inventory=None, host='localhost', become=False):
        """Run one module task and return its registered result.

        On localhost by default; with ``inventory`` on ``host`` as that inventory says (over ssh for the
        production-shaped host of tests/production), with ``become`` as the play's.
        ``alone``: the play holds only that task and a callback (tests/callback_plugins) saves its
        result, the way the benchmark times a module: a second task to save the registered
        result would add a module run of its own to the time measured. Remote runs always save this way.
        """
        out = os.path.join(self.workdir, 'result-%s.json' % uuid.uuid4().hex)
        tasks = [{'name': 'module under test', module: args, 'register': 'result',
                  'ignore_errors': True, 'check_mode': check}]
        if alone or inventory:
            env = dict(env or {}, MODULO_RESULT_FILE=out, ANSIBLE_CALLBACKS_ENABLED='result_file',
                       ANSIBLE_CALLBACK_PLUGINS=os.path.join(ROOT, 'tests', 'callback_plugins'))
        else:
            tasks.append({'name': 'save result', 'ansible.builtin.copy': {
                'content': '{{ result | to_json }}', 'dest': out, 'mode': '0600'}, 'check_mode': False})
        play = {'hosts': host, 'gather_facts': False, 'become': become, 'tasks': tasks}
        if not inventory:
            play['vars'] = {'ansible_python_interpreter': sys.executable}
        path = os.path.join(self.workdir, 'play-%s.yml' % uuid.uuid4().hex)
        with open(path, 'w') as handle:
            json.dump([play], handle)
        argv = [os.path.join(VENV_BIN, 'ansible-playbook'), '-i', inventory or 'localhost,'] + \
            ([] if inventory else ['-c', 'local']) + [path]
        proc = subprocess.run(argv, cwd=ROOT, env=self.env(env, inventory), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if not os.path.exists(out):
            raise AssertionError('ansible-playbook did not run the task:\n%s' % proc.stdout.decode()[-5000:])
        with open(out) as handle:
            result = json.load(handle)
        result['_output'] = proc.stdout.decode()
        return result

    def playbook(self, playbook, extra_vars=None, tags=None, env=None, check=False, inventory=None, limit=None):
        argv = [os.path.join(VENV_BIN, 'ansible-playbook'), os.path.join(ROOT, 'playbooks', playbook)]
        argv += ['-i', inventory or os.path.join(ROOT, 'inventories', 'local', 'hosts.yml')]
        if limit:
            argv += ['--limit', limit]
        if extra_vars:
            vars_file = os.path.join(self.workdir, 'vars-%s.json' % uuid.uuid4().hex)
            with open(vars_file, 'w') as handle:
                json.dump(extra_vars, handle)
            argv += ['-e', '@' + vars_file]
        if tags:
            argv += ['--tags', tags]
        if check:
            argv.append('--check')
        return subprocess.run(argv, cwd=ROOT, env=self.env(env, inventory), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, universal_newlines=True)


@pytest.fixture
def ansible(tmp_path):
    return AnsibleRunner(str(tmp_path))


@pytest.fixture
def conn_args(pg):
    """Module connection options for the session cluster."""
    return {'login_host': '127.0.0.1', 'port': pg.port, 'login_user': 'postgres',
            'pg_bindir': pg.bindir}


class ModuloApp(object):
    """The test application (tests/modulo_app.py) writing orders into ``db`` of ``cluster``."""

    def __init__(self, workdir, cluster, db):
        self.workdir = workdir
        self.port = pgsandbox.free_port()
        self.pidfile = os.path.join(workdir, 'modulo-app.pid')
        self.journal_path = os.path.join(workdir, 'orders.jsonl')
        self.log = os.path.join(workdir, 'modulo-app.log')
        self.url = 'http://127.0.0.1:%d/health' % self.port
        base = [sys.executable, APP_SCRIPT]
        start_args = ['--port', str(self.port), '--journal', self.journal_path, '--log', self.log,
                      '--host', '127.0.0.1', '--dbport', str(cluster.port), '--user', 'postgres', '--db', db]
        self.commands = {name: ' '.join(base + [name, '--pidfile', self.pidfile] + (start_args if name == 'start' else []))
                         for name in ('start', 'stop', 'status')}

    def _run(self, action):
        return subprocess.run(self.commands[action].split(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True)

    def start(self):
        proc = self._run('start')
        assert proc.returncode == 0, proc.stdout
        return self

    def stop(self):
        self._run('stop')

    def running(self):
        return self._run('status').returncode == 0

    def journal(self):
        """Committed orders, oldest first: dicts with id and created_at (the database's clock, UTC)."""
        if not os.path.exists(self.journal_path):
            return []
        with open(self.journal_path) as handle:
            return [json.loads(line) for line in handle if line.endswith('\n')]

    def wait_for_orders(self, count, after=None, timeout=30):
        """Wait until ``count`` orders were committed (after the ISO time ``after`` when given)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            done = [o for o in self.journal() if after is None or o['created_at'] > after]
            if len(done) >= count:
                return done
            time.sleep(0.1)
        raise AssertionError('the application committed fewer than %d orders%s in %d s; log: %s' % (
            count, ' after %s' % after if after else '', timeout, open(self.log).read()[-2000:]))

    def host_vars(self):
        """What an inventory says about this application host (role app_services)."""
        return {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable,
                'app_services_commands': [dict(name='modulo-app', **self.commands)],
                'app_services_health_urls': [self.url], 'app_services_timeout': 30}


@pytest.fixture
def modulo_app(tmp_path):
    """Factory: ``modulo_app(cluster, db)`` starts the test application; stopped after the test."""
    apps = []

    def start(cluster, db):
        app = ModuloApp(str(tmp_path), cluster, db)
        apps.append(app)
        return app.start()

    yield start
    for app in apps:
        app.stop()
