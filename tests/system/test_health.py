# -*- coding: utf-8 -*-
"""Backup health on a real archiving cluster: healthy passes; a WAL gap, a failing archiver,
a backlog and an old recovery point are each detected by backup_info and fail playbooks/health-check.yml."""

import json
import os
import shutil
import time

from test_pitr import archiving_cluster, args_for, make_repo, wait_archived

from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import archive as walarchive, names as walnames


def checks(res):
    return dict((c['check'], c) for c in res['health']['checks'])


def info(ansible, cluster, repo, **extra):
    res = ansible.task('modulo.pgbackup.backup_info',
                       args_for(cluster, repo, server_checks=True, pgdata=cluster.pgdata, **extra))
    assert not res.get('failed'), res.get('msg')
    return res


def playbook(ansible, cluster, repo, textfile, **extra):
    extra_vars = {'pgbackup_backup_root': repo, 'pgbackup_port': cluster.port, 'pgbackup_login_host': '127.0.0.1',
                  'pgbackup_pgdata': cluster.pgdata, 'pgbackup_pg_bindir': cluster.bindir, 'pgbackup_s3_bucket': '',
                  'pgbackup_health_textfile': textfile}
    extra_vars.update(extra)
    return ansible.playbook('health-check.yml', extra_vars=extra_vars)


def test_health_of_a_real_repository(ansible, new_cluster, backup_root, tmp_path):
    repo = make_repo(backup_root)
    cluster = archiving_cluster(new_cluster, repo)
    cluster.psql('CREATE DATABASE modulodb')
    cluster.psql('CREATE TABLE orders (id serial PRIMARY KEY, note text)', db='modulodb')
    cluster.psql("INSERT INTO orders (note) SELECT 'order ' || g FROM generate_series(1, 500) g", db='modulodb')
    for extra in ({'type': 'physical', 'wait_archive': 60}, {'db': 'modulodb'}):
        res = ansible.task('modulo.pgbackup.pg_backup', args_for(cluster, repo, **extra))
        assert not res.get('failed'), res.get('msg')
    for _batch in range(3):  # a few segments after the base backup, so a gap can sit in the middle
        cluster.psql("INSERT INTO orders (note) SELECT 'later ' || g FROM generate_series(1, 100) g", db='modulodb')
        wait_archived(cluster, repo)

    # Healthy, except that no drill ever ran.
    res = info(ansible, cluster, repo)
    assert res['health']['breached'] == ['restore_drill'], res['health']['summary']
    res = ansible.task('modulo.pgbackup.pg_restore_drill', args_for(cluster, repo, kind='logical'))
    assert not res.get('failed'), res.get('msg')

    textfile = str(tmp_path / 'modulo_pgbackup.prom')
    proc = playbook(ansible, cluster, repo, textfile)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert 'backup health of %s at ' % repo in proc.stdout and 'OK      wal_chain ' in proc.stdout
    with open(os.path.join(repo, 'logs', 'health.json')) as handle:
        doc = json.load(handle)
    assert doc['ok'] is True and doc['breached'] == [] and 'metrics' not in doc
    by_name = dict((c['check'], c) for c in doc['checks'])
    for name in ('backup_age', 'last_backup_run', 'restore_drill', 'archiver', 'archive_backlog',
                 'repository_free_space', 'pg_wal_free_space', 'wal_chain'):
        assert by_name[name]['status'] == 'ok', by_name[name]
    assert by_name['backup_age']['value_s'] <= 60  # live archiving: at most archive_timeout behind
    assert doc['wal_chain']['segments'] >= 4 and doc['wal_chain']['missing_count'] == 0
    assert os.stat(os.path.join(repo, 'logs', 'health.json')).st_uid == os.stat(repo).st_uid
    with open(textfile) as handle:
        metrics = handle.read()
    assert 'modulo_pgbackup_health_ok{repository="%s"} 1' % repo in metrics
    assert 'modulo_pgbackup_wal_chain_missing_segments{repository="%s"} 0' % repo in metrics

    # A segment missing in the middle of the chain: named, and the play fails.
    chain_names = walnames.wal_range(doc['wal_chain']['from'], doc['wal_chain']['to'])
    victim = walarchive.find_segment(repo, chain_names[len(chain_names) // 2])
    aside = str(tmp_path / 'aside')
    shutil.move(victim, aside)
    res = info(ansible, cluster, repo)
    chain = checks(res)['wal_chain']
    assert chain['breached'] and chain['missing'] == [chain_names[len(chain_names) // 2]], chain
    proc = playbook(ansible, cluster, repo, textfile)
    assert proc.returncode != 0 and 'backup health NOT OK: wal_chain' in proc.stdout, proc.stdout[-3000:]
    with open(textfile) as handle:
        assert 'modulo_pgbackup_wal_chain_missing_segments{repository="%s"} 1' % repo in handle.read()
    shutil.move(aside, victim)

    # archive_command failing: pg_stat_archiver says so, and the .ready backlog grows.
    cluster.psql("ALTER SYSTEM SET archive_command = '/bin/false'")
    cluster.psql('SELECT pg_reload_conf()')
    time.sleep(0.5)
    cluster.psql('SELECT txid_current()')
    cluster.psql('SELECT pg_switch_wal()')
    deadline = time.time() + 30
    while time.time() < deadline and cluster.psql('SELECT failed_count FROM pg_stat_archiver') == '0':
        time.sleep(0.3)
    res = info(ansible, cluster, repo, max_archive_backlog=0, rpo_target_s=1)
    found = checks(res)
    assert found['archiver']['breached'] and 'archive_command is failing' in found['archiver']['detail']
    assert found['archive_backlog']['breached'] and found['archive_backlog']['value'] >= 1
    # with archiving broken the recovery point is the newest archived segment, and it ages
    assert found['backup_age']['basis'].startswith('archived WAL') and found['backup_age']['breached']
    assert set(res['health']['breached']) == {'archiver', 'archive_backlog', 'backup_age'}

    # The server gone: the check says so instead of passing.
    cluster.stop()
    res = info(ansible, cluster, repo)
    assert checks(res)['archiver']['breached'] and 'cannot reach' in checks(res)['archiver']['detail']


def test_bad_thresholds(ansible, backup_root):
    os.makedirs(backup_root)
    res = ansible.task('modulo.pgbackup.backup_info', {'backup_root': backup_root, 'min_free_percent': 100})
    assert res.get('failed') and 'min_free_percent must be from 0 to 99' in res['msg']


def test_wal_chain_read_from_the_s3_mirror(ansible, new_cluster, backup_root, s3_bucket):
    """With wal/ gone from the host, the chain is checked in S3, where recovery would fetch it from."""
    repo = make_repo(backup_root)
    s3 = '--s3-bucket %s --s3-endpoint-url %s --aws-region us-east-1' % (s3_bucket['name'], s3_bucket['url'])
    cluster = archiving_cluster(new_cluster, repo, extra=s3)
    s3_args = {'s3_bucket': s3_bucket['name'], 's3_endpoint_url': s3_bucket['url'], 'aws_region': 'us-east-1',
               'drill_max_age_days': 0}
    res = ansible.task('modulo.pgbackup.pg_backup', args_for(cluster, repo, type='physical', wait_archive=60,
                                                             upload=False))
    assert not res.get('failed'), res.get('msg')
    for _batch in range(3):
        cluster.psql('CREATE TABLE IF NOT EXISTS t (x int); INSERT INTO t SELECT generate_series(1, 1000)')
        wait_archived(cluster, repo)
    shutil.rmtree(os.path.join(repo, 'wal'))
    res = info(ansible, cluster, repo, **s3_args)
    chain = checks(res)['wal_chain']
    assert chain['status'] == 'ok' and res['health']['wal_chain']['segments'] >= 4, chain
    names = walnames.wal_range(res['health']['wal_chain']['from'], res['health']['wal_chain']['to'])
    victim = names[len(names) // 2]
    client = s3_bucket['client']
    keys = [o['Key'] for o in client.list_objects_v2(Bucket=s3_bucket['name'])['Contents'] if victim in o['Key']]
    assert len(keys) == 1
    client.delete_object(Bucket=s3_bucket['name'], Key=keys[0])
    chain = checks(info(ansible, cluster, repo, **s3_args))['wal_chain']
    assert chain['breached'] and chain['missing'] == [victim], chain
