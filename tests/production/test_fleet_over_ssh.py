# -*- coding: utf-8 -*-
"""The fleet as users run it: three Debian-layout database hosts and a drill host, reached over ssh as a
sudo deploy user, backed up with forks into one S3 bucket (moto on loopback), one host broken; then the
drill on the drill host from S3 alone, and a lost host rebuilt from S3 by the emergency recovery.

The controller holds no S3 credentials: each host has its own (tools/prodhost.py puts them in its ssh
sessions and in its cluster's environment file, as an instance profile would), because the modules run on
the hosts and PostgreSQL runs the archive command outside any playbook.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid

import pytest
import yaml

import prodhost
import pgsandbox
from test_fleet import (PREFIX, assert_drilled_elsewhere, assert_kept_apart, fleet_table, keys, recap,
                        tree)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMA_SQL = os.path.join(ROOT, 'tests', 'data', 'modulo_schema.sql')
PRODUCTION_INVENTORY = os.path.join(ROOT, 'inventories', 'production')

HOSTS = ('db1', 'db2', 'db3')
# The remote temporary directory is the deploy user's own (the runner's default is in the controller's
# pytest directory, which only root may enter).
FORKS = {'ANSIBLE_FORKS': '5', 'ANSIBLE_REMOTE_TEMP': '~/.ansible/tmp'}
S3_KEYS = {'AWS_ACCESS_KEY_ID': 'testing', 'AWS_SECRET_ACCESS_KEY': 'testing'}


@pytest.fixture(scope='module')
def fleet(s3_server):
    missing = prodhost.missing_requirements()
    if missing:
        pytest.skip('the production-shaped hosts cannot be built here: %s' % '; '.join(missing))
    for name in S3_KEYS:
        assert name not in os.environ, 'the controller must not hold S3 credentials in this test'
    base = tempfile.mkdtemp(prefix='modulo-pgbackup-fleet-', dir='/var/tmp')
    os.chmod(base, 0o755)
    repos = '/var/backups/modulo-fleet-%s' % uuid.uuid4().hex[:8]
    hosts, built = {}, []
    try:
        for name in HOSTS:
            host = prodhost.ProdHost(os.path.join(base, name), environment=S3_KEYS)
            built.append(host)
            host.up()
            host.psql('CREATE DATABASE modulodb')
            host.psql_file(SCHEMA_SQL, 'modulodb')
            host.psql('CREATE TABLE %s_orders AS SELECT g AS id FROM generate_series(1, %d) g'
                      % (name, 100 * int(name[-1])), db='modulodb')
            hosts[name] = host
        bucket = 'modulo-fleet-%s' % uuid.uuid4().hex[:8]
        client = s3_server.create_bucket(bucket)
        yield {'hosts': hosts, 'base': base, 'repos': repos, 'bucket': {'name': bucket, 'client': client},
               'inventory': inventory(base, repos, hosts, bucket, s3_server.url)}
    finally:
        for host in built:
            host.down()
            shutil.rmtree('/usr/local/lib/modulo-pgbackup-%s' % host.id, ignore_errors=True)
        shutil.rmtree(repos, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


def inventory(base, repos, hosts, bucket, endpoint):
    """inventories/production as shipped, with the fleet's hosts, a broken one and a drill host."""
    target = os.path.join(base, 'inventory')
    shutil.copytree(PRODUCTION_INVENTORY, target)
    with open(os.path.join(target, 'group_vars', 'all.yml')) as handle:
        common = yaml.safe_load(handle)
    common.update(pgbackup_s3_bucket=bucket, pgbackup_s3_prefix=PREFIX, pgbackup_s3_endpoint_url=endpoint)
    with open(os.path.join(target, 'group_vars', 'all.yml'), 'w') as handle:
        yaml.safe_dump(common, handle)
    host_vars = {}
    for name, host in hosts.items():
        host_vars[name] = dict(host.host_vars(), pgbackup_port=host.pg_port, pgbackup_pgdata=host.pgdata,
                               pgbackup_pg_service=host.unit, pgbackup_backup_root=os.path.join(repos, name),
                               wal_archive_command_path='/usr/local/lib/modulo-pgbackup-%s/pgbackup-wal' % host.id)
    # A host whose cluster is not there (reached over db1's ssh): it must fail alone.
    gone = 'gone%s' % uuid.uuid4().hex[:6]
    host_vars['broken'] = dict(hosts['db1'].host_vars(), pgbackup_port=pgsandbox.free_port(),
                               pgbackup_pgdata='/var/lib/postgresql/15/%s' % gone,
                               pgbackup_pg_service='postgresql@15-%s' % gone,
                               pgbackup_backup_root=os.path.join(repos, 'broken'),
                               wal_archive_command_path='/usr/local/lib/modulo-pgbackup-%s/pgbackup-wal' % gone)
    # The drill host is no database host of the fleet (reached over db2's ssh, its own directories).
    host_vars['drill1'] = dict(hosts['db2'].host_vars(), ansible_become=True,
                               pgbackup_drill_root=os.path.join(repos, 'drill'), pgbackup_drill_sources=['db1', 'db2'])
    os.makedirs(os.path.join(target, 'host_vars'), exist_ok=True)
    for name, values in host_vars.items():
        with open(os.path.join(target, 'host_vars', name + '.yml'), 'w') as handle:
            yaml.safe_dump(values, handle)
    hosts_file = os.path.join(target, 'hosts.yml')
    with open(hosts_file) as handle:
        data = yaml.safe_load(handle)
    children = data['all']['children']
    children['postgres']['hosts'] = dict((name, None) for name in HOSTS + ('broken',))
    children['modulo_app']['hosts'] = {}
    children['drill']['hosts'] = {'drill1': None}
    with open(hosts_file, 'w') as handle:
        yaml.safe_dump(data, handle)
    return hosts_file


def test_a_fleet_over_ssh_backs_up_apart_drills_elsewhere_and_rebuilds_a_lost_host(ansible, fleet):
    hosts, bucket, inv = fleet['hosts'], fleet['bucket'], fleet['inventory']

    proc = ansible.playbook('configure-pitr.yml', inventory=inv, env=FORKS)
    counts = recap(proc.stdout)
    assert counts['broken']['failed'] == 1, proc.stdout[-4000:]
    assert all(counts[h]['failed'] == 0 for h in HOSTS), proc.stdout[-6000:]
    for host in hosts.values():
        assert host.psql("SELECT current_setting('archive_mode')") == 'on'

    proc = ansible.playbook('nightly-backup.yml', inventory=inv, env=FORKS)
    counts = recap(proc.stdout)
    assert counts['broken']['failed'] == 1, proc.stdout[-4000:]
    assert all(counts[h]['failed'] == 0 for h in HOSTS), proc.stdout[-6000:]
    assert not keys(bucket, PREFIX + 'broken/')
    for name, host in hosts.items():
        # The backups ran in the background (async) through sudo and reported their progress on the host.
        with open(os.path.join(fleet['repos'], name, 'logs', 'progress-backup.json')) as handle:
            progress = json.load(handle)
        assert progress['operation'] == 'base backup' and progress['status'] == 'complete', progress
        assert_kept_apart(bucket, name, host.psql('SELECT system_identifier FROM pg_control_system()'))
        # the archive command's pushes reached S3 with the host's own credentials
        segment = host.switch_wal_and_wait()
        assert [k for k in keys(bucket, PREFIX + name + '/wal/') if k.split('/')[-1].startswith(segment)]

    proc = ansible.playbook('list-backups.yml', inventory=inv, env=FORKS)
    table = fleet_table(proc.stdout, "The fleet's backups")
    for name in HOSTS:
        assert re.search(r'%s\s+2\s+modulo_(full|base)_\d{8}_\d{6}' % name, table), table[:3000]
    assert re.search(r'broken\s+0\s+none\s+NOT OK', table), table[:3000]

    # The drill host restores db1's and db2's newest logical backups from S3, then db3 by PITR.
    production = dict((h, tree(os.path.join(fleet['repos'], h))) for h in HOSTS)
    proc = ansible.playbook('restore-drill.yml', inventory=inv, env=FORKS)
    assert proc.returncode == 0, proc.stdout[-6000:]
    counts = recap(proc.stdout)
    assert counts['drill1']['changed'] == 2 and counts['drill1']['failed'] == 0, counts
    proc = ansible.playbook('restore-drill.yml', inventory=inv, env=FORKS, limit='drill', extra_vars={
        'restore_drill_kind': 'pitr', 'pgbackup_drill_sources': ['db3']})
    assert proc.returncode == 0, proc.stdout[-6000:]
    for name in assert_drilled_elsewhere(bucket, (('db1', 'logical'), ('db2', 'logical'), ('db3', 'pitr'))):
        assert os.listdir(os.path.join(fleet['repos'], 'drill', name, 'restore-tests'))
    assert dict((h, tree(os.path.join(fleet['repos'], h))) for h in HOSTS) == production

    proc = ansible.playbook('health-check.yml', inventory=inv, env=FORKS)
    table = fleet_table(proc.stdout, "The fleet's backup health")
    for name in HOSTS:
        assert re.search(r'\b%s\s+(OK|NOT OK)\s' % name, table), table[:3000]
    assert re.search(r'broken\s+(NO RESULT|NOT OK)\s', table), table[:3000]
    assert len(re.findall(r'OK\s+restore_drill\s+the last (logical|pitr) drill passed', proc.stdout)) == 3, \
        proc.stdout[-6000:]

    rebuild_a_lost_host(ansible, fleet, hosts['db3'])


def rebuild_a_lost_host(ansible, fleet, host):
    """db3 is gone: its data directory, its repository and its archive command. PostgreSQL is installed and
    its cluster configured in /etc (what provisioning gives a replacement host); everything else is in S3."""
    bucket, name = fleet['bucket'], 'db3'
    host.psql('CREATE TABLE journal (id int PRIMARY KEY)', db='modulodb')
    host.psql('INSERT INTO journal SELECT g FROM generate_series(1, 100) g', db='modulodb')
    mark = host.psql("SELECT pg_sleep(1.1), to_char(clock_timestamp() AT TIME ZONE 'UTC', "
                     "'YYYY-MM-DD\"T\"HH24:MI:SS.US'), pg_sleep(1.1)", db='modulodb').split('|')[1]
    host.psql('INSERT INTO journal SELECT g FROM generate_series(101, 150) g', db='modulodb')
    host.switch_wal_and_wait()
    old_timeline = dict((k, None) for k in keys(bucket, PREFIX + name + '/wal/'))
    etags = dict((k, bucket['client'].head_object(Bucket=bucket['name'], Key=k)['ETag']) for k in old_timeline)

    subprocess.run(['pg_ctlcluster', '--skip-systemctl-redirect', '15', host.cluster, 'stop', '-m', 'immediate'],
                   check=True)
    shutil.rmtree(host.pgdata)
    shutil.rmtree(os.path.join(fleet['repos'], name))
    shutil.rmtree('/usr/local/lib/modulo-pgbackup-%s' % host.id)

    # The on-call engineer's command, limited to the lost host (the fleet has no application hosts here).
    proc = ansible.playbook('emergency-recovery.yml', inventory=fleet['inventory'], limit=name,
                            tags='assess,restore,verify', extra_vars={
                                'restore_source': 'pitr', 'pitr_mode': 'cluster', 'confirm': host.pgdata,
                                'target_time': mark})
    assert proc.returncode == 0, proc.stdout[-8000:]
    assert host.psql('SELECT count(*), max(id) FROM journal', db='modulodb') == '100|100'
    assert host.psql('SELECT count(*) FROM db3_orders', db='modulodb') == '300'
    line = host.lsclusters()
    assert line[3] == 'online' and line[5] == host.pgdata, line

    # Archiving again, re-installed by the recovery: a new timeline beside the old one, which is unchanged.
    host.psql('INSERT INTO journal SELECT g FROM generate_series(1001, 1010) g', db='modulodb')
    host.switch_wal_and_wait()
    now = keys(bucket, PREFIX + name + '/wal/')
    assert [k for k in now if k.endswith('/00000002.history')], sorted(now)[-5:]
    for key, etag in etags.items():
        if not key.endswith('archive.json'):
            assert bucket['client'].head_object(Bucket=bucket['name'], Key=key)['ETag'] == etag, key
