# -*- coding: utf-8 -*-
"""The production shape: the controller reaches a Debian-layout database host over ssh as a deploy user
with sudo (tools/prodhost.py builds it on this machine, the tests reach it as users do).

One host per test session (per xdist worker); each test gets its own repository under /var/backups.
"""

import json
import os
import shutil
import uuid

import pytest
import yaml


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMA_SQL = os.path.join(ROOT, 'tests', 'data', 'modulo_schema.sql')
PRODUCTION_INVENTORY = os.path.join(ROOT, 'inventories', 'production')
DB_HOST = 'db1'


@pytest.fixture(scope='session')
def prod_host(ssh_host):
    """The ssh host with the Modulo sample database."""
    ssh_host.psql('CREATE DATABASE modulodb')
    ssh_host.psql_file(SCHEMA_SQL, 'modulodb')
    yield ssh_host
    shutil.rmtree('/usr/local/lib/modulo-pgbackup-%s' % ssh_host.id, ignore_errors=True)


class Prod(object):
    """How the controller reaches the host: inventories, and the module and playbook runs over ssh."""

    def __init__(self, host, ansible, workdir):
        self.host, self.ansible, self.workdir = host, ansible, workdir
        self.backup_root = '/var/backups/modulo-test-%s/postgresql' % uuid.uuid4().hex[:8]
        # Every test host shares this machine's /usr/local/lib: each gets its own archive command there, as
        # each real host has its own (two clusters must never share one config).
        self.command_path = '/usr/local/lib/modulo-pgbackup-%s/pgbackup-wal' % host.id

    def coordinates(self):
        """What differs between the test cluster and a stock 15/main: its port, data directory and unit."""
        return {'pgbackup_port': self.host.pg_port, 'pgbackup_pgdata': self.host.pgdata,
                'pgbackup_pg_service': self.host.unit, 'pgbackup_backup_root': self.backup_root,
                'pgbackup_s3_bucket': '', 'wal_archive_command_path': self.command_path}

    def inventory(self, become=True, **hostvars):
        """A one-host inventory: the host in group postgres, reached over ssh as the deploy user."""
        values = dict(self.host.host_vars(), **hostvars)
        if become:
            values['ansible_become'] = True
        path = os.path.join(self.workdir, 'inventory-%s.json' % uuid.uuid4().hex[:6])
        with open(path, 'w') as handle:
            json.dump({'all': {'children': {'postgres': {'hosts': {DB_HOST: values}}}}}, handle)
        return path

    def production_inventory(self, app_hostvars=None):
        """inventories/production as shipped, with the host name changed (and the test cluster's coordinates)."""
        target = os.path.join(self.workdir, 'production-%s' % uuid.uuid4().hex[:6])
        shutil.copytree(PRODUCTION_INVENTORY, target)
        hosts_file = os.path.join(target, 'hosts.yml')
        with open(hosts_file) as handle:
            text = handle.read().replace('db1.example.internal', DB_HOST)
        data = yaml.safe_load(text)
        apps = data['all']['children']['modulo_app']
        apps['hosts'] = {'modulo-app-test': None} if app_hostvars else {}
        with open(hosts_file, 'w') as handle:
            yaml.safe_dump(data, handle)
        os.makedirs(os.path.join(target, 'host_vars'), exist_ok=True)
        with open(os.path.join(target, 'host_vars', DB_HOST + '.yml'), 'w') as handle:
            yaml.safe_dump(dict(self.host.host_vars(), **self.coordinates()), handle)
        if app_hostvars:
            with open(os.path.join(target, 'host_vars', 'modulo-app-test.yml'), 'w') as handle:
                yaml.safe_dump(app_hostvars, handle)
        return os.path.join(target, 'hosts.yml')

    def task(self, module, args, check=False, become=True, **hostvars):
        args = dict({'backup_root': self.backup_root, 'port': self.host.pg_port}, **args)
        if module == 'modulo.pgbackup.wal_archive':
            args.setdefault('command_path', self.command_path)
        return self.ansible.task(module, args, check=check, inventory=self.inventory(become=become, **hostvars),
                                 host=DB_HOST)

    def playbook(self, name, extra_vars=None, tags=None, check=False, inventory=None):
        return self.ansible.playbook(name, extra_vars=extra_vars, tags=tags, check=check,
                                     inventory=inventory or self.production_inventory())

    def cleanup(self):
        shutil.rmtree(os.path.dirname(self.backup_root), ignore_errors=True)


@pytest.fixture
def prod(prod_host, ansible, tmp_path):
    env = Prod(prod_host, ansible, str(tmp_path))
    yield env
    env.cleanup()
