# -*- coding: utf-8 -*-
"""Progress of long work in the playbooks' output and in the repository's progress files (real PostgreSQL 15).

A rate-limited base backup (about 10 s: a loaded machine takes seconds per poll and must still see it twice) lasts
long enough for several progress lines; the playbook prints them while the module runs in the background (async),
from the file the module keeps in logs/.
"""

import json
import os
import re

from test_pitr import archiving_cluster, make_repo, wait_archived


def read_progress(repo, kind):
    with open(os.path.join(repo, 'logs', 'progress-%s.json' % kind)) as handle:
        return json.load(handle)


def test_a_long_base_backup_and_a_recovery_show_their_progress(ansible, new_cluster, backup_root):
    repo = make_repo(backup_root)
    cluster = archiving_cluster(new_cluster, repo)
    cluster.psql('CREATE DATABASE shop')
    cluster.psql('CREATE TABLE filler AS SELECT i, md5(i::text) AS t FROM generate_series(1, 150000) i', db='shop')
    extra = dict(cluster.connection_vars(), pgbackup_db='shop', pgbackup_backup_root=repo, pgbackup_s3_bucket='',
                 pgbackup_progress_interval=1, pgbackup_backup_max_rate='4M', pgbackup_cleanup=False,
                 # uncompressed, so that the limit holds the whole cluster back (it applies after compression)
                 backup_compression='none')

    proc = ansible.playbook('nightly-backup.yml', extra_vars=extra, env={'BACKUP_S3_BUCKET': ''})
    assert proc.returncode == 0, proc.stdout[-4000:]
    # The server's own progress, one line a second while pg_basebackup streams.
    percents = [int(p) for p in re.findall(r'base backup: streaming database files, [0-9.]+ [kMGT]?B of [0-9.]+ '
                                           r'[kMGT]?B \((\d+)%\)', proc.stdout)]
    assert len(percents) >= 2, proc.stdout[-4000:]
    assert percents == sorted(percents) and percents[0] < 100
    doc = read_progress(repo, 'backup')
    assert doc['operation'] == 'base backup' and doc['finished'] is True and doc['status'] == 'complete'
    assert doc['summary'].endswith('complete')
    # The role still reports what the module returned, read from the background job.
    assert re.search(r'backup: +modulo_base_\d{8}_\d{6}', proc.stdout), proc.stdout[-3000:]

    cluster.psql('INSERT INTO filler SELECT i, md5(i::text) FROM generate_series(150001, 150100) i', db='shop')
    wait_archived(cluster, repo)
    proc = ansible.playbook('pitr.yml', extra_vars=dict(extra, target='latest', target_db='shop_latest'))
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert cluster.psql('SELECT count(*) FROM filler', db='shop_latest') == '150100'
    doc = read_progress(repo, 'restore')
    assert doc['operation'].startswith('point-in-time recovery from modulo_base_') and doc['status'] == 'complete'
    assert doc['target'] == 'latest' or 'latest' in doc['target']

    # Check mode cannot run a task in the background: the same playbook runs it in the foreground.
    proc = ansible.playbook('nightly-backup.yml', extra_vars=extra, env={'BACKUP_S3_BUCKET': ''}, check=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert 'streaming database files' not in proc.stdout

    # pgbackup_progress_interval 0: in the foreground (no temporary files on the host), no progress lines.
    bases = len(os.listdir(os.path.join(repo, 'base')))
    proc = ansible.playbook('nightly-backup.yml', extra_vars=dict(extra, pgbackup_progress_interval=0),
                            env={'BACKUP_S3_BUCKET': ''})
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert 'streaming database files' not in proc.stdout and 'ansible_job_id' not in proc.stdout
    assert len(os.listdir(os.path.join(repo, 'base'))) == bases + 2   # a new base backup and its .meta


def test_a_failed_backup_says_so_in_the_progress_file_and_the_play(ansible, new_cluster, backup_root):
    repo = make_repo(backup_root)
    cluster = archiving_cluster(new_cluster, repo)
    extra = dict(cluster.connection_vars(), pgbackup_db='no_such_db', pgbackup_backup_root=repo, pgbackup_s3_bucket='',
                 pgbackup_progress_interval=1, pgbackup_nightly_physical=False, pgbackup_cleanup=False)
    proc = ansible.playbook('nightly-backup.yml', extra_vars=extra, env={'BACKUP_S3_BUCKET': ''})
    assert proc.returncode != 0
    # The module's own words reach the play through the background job.
    assert 'Backup of database no_such_db failed' in proc.stdout and 'no_such_db' in proc.stdout
    doc = read_progress(repo, 'backup')
    assert doc['finished'] is True and doc['status'] == 'failed' and doc['operation'] == 'backup of database no_such_db'
