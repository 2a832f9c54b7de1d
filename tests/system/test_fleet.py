# -*- coding: utf-8 -*-
"""A fleet: three PostgreSQL 15 clusters (three inventory hosts, three ports) and one broken host, backed
up in one run with forks into one S3 bucket (moto on loopback), with one set of variables.

Each cluster gets its own prefix (<pgbackup_s3_prefix><inventory_hostname>/), so its archive.json, WAL,
base and logical backups stay apart; the broken host fails alone; list-backups.yml and health-check.yml
end with one table for the fleet.
"""

import datetime
import json
import os
import re
import sys
import uuid

import pytest
import yaml

import pgsandbox

PREFIX = 'fleet/'
HOSTS = ('db1', 'db2', 'db3')


def recap(output):
    """{host: {ok: n, failed: n, unreachable: n, ...}} from the PLAY RECAP."""
    found = {}
    for host, counts in re.findall(r'^(\S+)\s+:\s+(ok=.*)$', output, re.M):
        found[host] = dict((k, int(v)) for k, v in re.findall(r'(\w+)=(\d+)', counts))
    return found


@pytest.fixture
def fleet(new_cluster, sandbox_base, s3_bucket, tmp_path):
    clusters = dict((host, new_cluster()) for host in HOSTS)
    for cluster in clusters.values():
        cluster.psql('CREATE DATABASE modulodb')
    hosts = {}
    for host, cluster in clusters.items():
        cluster.psql('CREATE TABLE %s_orders AS SELECT g AS id FROM generate_series(1, %d) g'
                     % (host, 100 * int(host[-1])), db='modulodb')
        workdir = pgsandbox.make_base(os.path.join(sandbox_base, 'fleet-%s-%s' % (host, uuid.uuid4().hex[:6])))
        hosts[host] = dict(cluster.connection_vars(), pgbackup_backup_root=os.path.join(workdir, 'repo'),
                           wal_archive_command_path=os.path.join(workdir, 'bin', 'pgbackup-wal'))
    # A host whose server is not there (a wrong port, a missing data directory): it must fail alone.
    broken = pgsandbox.make_base(os.path.join(sandbox_base, 'fleet-broken-%s' % uuid.uuid4().hex[:6]))
    hosts['broken'] = {'pgbackup_login_host': '127.0.0.1', 'pgbackup_port': pgsandbox.free_port(),
                       'pgbackup_login_user': 'postgres', 'pgbackup_pg_bindir': clusters['db1'].bindir,
                       'pgbackup_pgdata': os.path.join(broken, 'no-data'),
                       'pgbackup_backup_root': os.path.join(broken, 'repo'),
                       'wal_archive_command_path': os.path.join(broken, 'bin', 'pgbackup-wal')}
    for variables in hosts.values():
        variables.update(ansible_connection='local', ansible_python_interpreter=sys.executable)
    inventory = str(tmp_path / 'fleet.yml')
    with open(inventory, 'w') as handle:
        yaml.safe_dump({'all': {
            'vars': {'pgbackup_db': 'modulodb', 'pgbackup_login_password': '', 'pgbackup_login_unix_socket': '',
                     'pgbackup_pg_service': '', 'pgbackup_s3_bucket': s3_bucket['name'],
                     'pgbackup_s3_prefix': PREFIX, 'pgbackup_s3_endpoint_url': s3_bucket['url'],
                     'pgbackup_aws_region': 'us-east-1'},
            'children': {'postgres': {'hosts': hosts}}}}, handle)
    return {'clusters': clusters, 'hosts': hosts, 'inventory': inventory, 'bucket': s3_bucket, 'sandbox': sandbox_base}


def keys(bucket, prefix):
    paginator = bucket['client'].get_paginator('list_objects_v2')
    return [o['Key'] for page in paginator.paginate(Bucket=bucket['name'], Prefix=prefix)
            for o in page.get('Contents', [])]


def read_json(bucket, key):
    return json.loads(bucket['client'].get_object(Bucket=bucket['name'], Key=key)['Body'].read())


def assert_kept_apart(bucket, host, sysid):
    """One cluster's prefix: its own archive identity, a logical and a base backup, WAL, and a logical backup
    that holds its own table and no neighbour's. Returns the keys and the newest logical backup's .meta key."""
    mine = keys(bucket, PREFIX + host + '/')
    assert str(read_json(bucket, PREFIX + host + '/wal/archive.json')['system_identifier']) == sysid
    assert [k for k in mine if re.search(r'/full/modulo_full_\d{8}_\d{6}\.sql\.gz\.meta$', k)], mine
    assert [k for k in mine if re.search(r'/base/modulo_base_\d{8}_\d{6}\.meta$', k)], mine
    assert [k for k in mine if re.search(r'/wal/\d{8}/[0-9A-F]{24}', k)], mine
    meta = [k for k in mine if k.endswith('.sql.gz.meta')][-1]
    rows = read_json(bucket, meta)['table_rows']
    assert rows['public.%s_orders' % host] == 100 * int(host[-1])
    assert not [t for t in rows if t.endswith('_orders') and t != 'public.%s_orders' % host], rows
    return mine, meta


def fleet_table(output, title):
    """The run_once table a playbook ends with (list-backups, health-check), from its title on."""
    assert title in output, output[-8000:]
    return output[output.index(title):]


def assert_drilled_elsewhere(bucket, drilled):
    """Each database host's prefix holds one passed drill report of the kind asked, made from S3 backups.
    ``drilled``: [(host, kind)]. Returns {host: report}."""
    reports = {}
    for host, kind in drilled:
        found = [k for k in keys(bucket, PREFIX + host + '/restore-tests/') if k.endswith('.json')]
        assert len(found) == 1, found
        report = reports[host] = read_json(bucket, found[0])
        assert report['status'] == 'passed' and report['kind'] == kind, report
        assert report['backup']['fetched_from_s3'] is True
    return reports


def test_a_fleet_is_backed_up_in_one_run_each_cluster_apart_and_a_broken_host_fails_alone(ansible, fleet):
    env = {'ANSIBLE_FORKS': '4'}
    proc = ansible.playbook('configure-pitr.yml', inventory=fleet['inventory'], env=env)
    counts = recap(proc.stdout)
    assert counts['broken']['failed'] == 1, proc.stdout[-4000:]
    assert all(counts[h]['failed'] == 0 for h in HOSTS), proc.stdout[-6000:]
    for cluster in fleet['clusters'].values():
        assert cluster.psql("SELECT current_setting('archive_mode')") == 'on'

    proc = ansible.playbook('nightly-backup.yml', inventory=fleet['inventory'], env=env)
    counts = recap(proc.stdout)
    assert counts['broken']['failed'] == 1 and counts['broken']['ok'] >= 0, proc.stdout[-4000:]
    assert all(counts[h]['failed'] == 0 for h in HOSTS), proc.stdout[-6000:]

    bucket = fleet['bucket']
    assert not keys(bucket, PREFIX + 'broken/')
    assert not [k for k in keys(bucket, PREFIX) if k.split('/')[1] not in HOSTS]
    for host, cluster in fleet['clusters'].items():
        _mine, meta = assert_kept_apart(bucket, host, cluster.psql('SELECT system_identifier FROM pg_control_system()'))
        # the database holds only that table here
        assert read_json(bucket, meta)['table_rows'] == {'public.%s_orders' % host: 100 * int(host[-1])}
        local = os.listdir(os.path.join(fleet['hosts'][host]['pgbackup_backup_root'], 'full'))
        assert os.path.basename(meta) in local

    # Retention per cluster: db3's logical backup, 30 days old in its prefix, goes; the neighbours' stay.
    client = bucket['client']
    db3_meta = [k for k in keys(bucket, PREFIX + 'db3/full/') if k.endswith('.sql.gz.meta')][0]
    aged = read_json(bucket, db3_meta)
    month_ago = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)).strftime('%Y-%m-%dT%H:%M:%SZ')
    aged.update(started_at=month_ago, finished_at=month_ago)
    client.put_object(Bucket=bucket['name'], Key=db3_meta, Body=json.dumps(aged).encode())
    neighbours = dict((h, keys(bucket, PREFIX + h + '/full/')) for h in ('db1', 'db2'))
    proc = ansible.playbook('cleanup.yml', inventory=fleet['inventory'], env=env,
                            extra_vars={'pgbackup_retention_min_full': 0})
    assert all(recap(proc.stdout)[h]['failed'] == 0 for h in HOSTS), proc.stdout[-4000:]
    assert not [k for k in keys(bucket, PREFIX + 'db3/full/') if k.startswith(db3_meta[:-len('.sql.gz.meta')])]
    assert dict((h, keys(bucket, PREFIX + h + '/full/')) for h in ('db1', 'db2')) == neighbours

    # One table for the fleet, the broken host named in it.
    proc = ansible.playbook('list-backups.yml', inventory=fleet['inventory'], env=env)
    table = fleet_table(proc.stdout, "The fleet's backups")
    for host in HOSTS:
        assert re.search(r'%s\s+2\s+modulo_(full|base)_\d{8}_\d{6}' % host, table), table[:3000]
    # its repository was never made: no backups, and not healthy
    assert re.search(r'broken\s+0\s+none\s+NOT OK: backup_age', table), table[:3000]

    proc = ansible.playbook('health-check.yml', inventory=fleet['inventory'], env=env)
    table = fleet_table(proc.stdout, "The fleet's backup health")
    for host in HOSTS:
        assert re.search(r'\b%s\s+(OK|NOT OK)\s' % host, table), table[:3000]
    assert re.search(r'broken\s+(NO RESULT|NOT OK)\s', table), table[:3000]
    assert recap(proc.stdout)['broken']['failed'] == 1

    drill_from_s3_on_a_host_apart(ansible, fleet, env)


def tree(root):
    return sorted(os.path.relpath(os.path.join(base, name), root)
                  for base, dirs, files in os.walk(root) for name in dirs + files)


def drill_from_s3_on_a_host_apart(ansible, fleet, env):
    """The runbook's drill on a machine of group drill: everything from S3, nothing from the database hosts."""
    # the server's OS user runs the scratch clusters: a directory it can reach, like the hosts' repositories
    drill_root = pgsandbox.make_base(os.path.join(fleet['sandbox'], 'drill-host-%s' % uuid.uuid4().hex[:6]))
    with open(fleet['inventory']) as handle:
        inventory = yaml.safe_load(handle)
    inventory['all']['children']['drill'] = {'hosts': {'drill1': {
        'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable,
        'pgbackup_drill_root': drill_root, 'pgbackup_pg_bindir': fleet['clusters']['db1'].bindir,
        'pgbackup_drill_sources': ['db1', 'db2']}}}
    path = fleet['inventory'][:-len('.yml')] + '-drill.yml'
    with open(path, 'w') as handle:
        yaml.safe_dump(inventory, handle)
    production = dict((h, tree(fleet['hosts'][h]['pgbackup_backup_root'])) for h in HOSTS)

    proc = ansible.playbook('restore-drill.yml', inventory=path, env=env)
    assert proc.returncode == 0, proc.stdout[-6000:]
    counts = recap(proc.stdout)
    # the database hosts only skip the on-host drill; the drill host restores both
    assert all(counts[h]['ok'] == 0 and counts[h]['changed'] == 0 for h in HOSTS + ('broken',)), counts
    assert counts['drill1']['changed'] == 2 and counts['drill1']['failed'] == 0, counts
    proc = ansible.playbook('restore-drill.yml', inventory=path, env=env,
                            extra_vars={'restore_drill_kind': 'pitr', 'pgbackup_drill_sources': ['db3']})
    assert proc.returncode == 0, proc.stdout[-6000:]

    reports = assert_drilled_elsewhere(fleet['bucket'], (('db1', 'logical'), ('db2', 'logical'), ('db3', 'pitr')))
    for host, report in reports.items():
        assert report['host'] != host
        # the drill host's own repository for that database host holds the fetched backup and the report
        assert os.listdir(os.path.join(drill_root, host, 'restore-tests'))
    # nothing of the database hosts was read or written
    assert dict((h, tree(fleet['hosts'][h]['pgbackup_backup_root'])) for h in HOSTS) == production

    # each database host's health check finds the drill that ran elsewhere, in its own S3 prefix
    proc = ansible.playbook('health-check.yml', inventory=path, env=env)
    assert len(re.findall(r'OK\s+restore_drill\s+the last logical drill passed', proc.stdout)) == 2, proc.stdout[-6000:]
    assert len(re.findall(r'OK\s+restore_drill\s+the last pitr drill passed', proc.stdout)) == 1, proc.stdout[-6000:]
