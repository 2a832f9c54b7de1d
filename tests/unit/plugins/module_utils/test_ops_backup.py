# -*- coding: utf-8 -*-
"""ops/backup: the typed request, and what a failed run leaves (a failed run report health reads, and a
message that says where the write failed)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno
import json
import os

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import encryption, errors, repository
from ansible_collections.modulo.pgbackup.plugins.module_utils.ops import backup as backups
from ansible_collections.modulo.pgbackup.plugins.module_utils.s3store import S3Error


def test_a_request_has_the_runbook_defaults_per_kind():
    logical = backups.Request()
    assert (logical.compression, logical.section, logical.target) == ('gzip', 'full', 'modulodb')
    physical = backups.Request(kind='physical', db='ignored')
    assert (physical.compression, physical.section, physical.target, physical.db) == ('zstd', 'base', 'cluster', None)
    assert backups.Request(compression='none').compression == 'none'


@pytest.mark.parametrize('kwargs, message', [
    ({'jobs': 0}, 'jobs must be 1 or more'),
    ({'kind': 'snapshot'}, 'type must be logical or physical'),
    ({'backup_from': 'standby'}, 'backup_from is a setting of a base backup'),
    ({'kind': 'physical', 'backup_from': 'replica'}, 'backup_from must be primary or standby'),
    ({'kind': 'physical', 'primary_host': 'db1'}, 'they go with backup_from: standby'),
    ({'kind': 'physical', 'backup_from': 'standby', 'max_replay_lag': -1}, 'max_replay_lag must be 0'),
])
def test_a_request_refuses_what_cannot_run(kwargs, message):
    with pytest.raises(errors.PgBackupError, match=message):
        backups.Request(**kwargs)


def failing_run(tmp_path, kind='logical'):
    repo = repository.Repository(str(tmp_path / 'repo'))
    repo.ensure()
    run = backups.Backup(backups.Request(kind=kind), conn=None, repo=repo, keys=encryption.Keys())
    run.plan = {'started': repository.utcnow(), 'name': 'modulo_full_20261204_020000', 'path': repo.path('full', 'x')}
    return run, repo


def reports_of(repo):
    logs = repo.path('logs')
    found = []
    for name in sorted(os.listdir(logs)):
        if repository.BACKUP_REPORT_RE.match(name):
            with open(os.path.join(logs, name)) as handle:
                found.append(json.load(handle))
    return found


def test_a_write_error_names_the_place_and_leaves_a_failed_report(tmp_path):
    run, repo = failing_run(tmp_path)
    failure = run._failed(run.plan['started'], None, OSError(errno.ENOSPC, 'No space left on device', '/var/x'))
    assert str(failure) == 'backup failed writing to /var/x: No space left on device (is the disk full or read-only?)'
    assert failure.backup is None and os.path.isfile(failure.report_path)
    report, = reports_of(repo)
    assert report['status'] == 'failed' and report['error'] == str(failure)
    assert (report['type'], report['database']) == ('logical', 'modulodb')


def test_an_upload_failure_keeps_the_local_backup_in_the_error(tmp_path):
    run, repo = failing_run(tmp_path, kind='physical')
    local = {'path': run.plan['path'], 'meta': {'name': run.plan['name']}, 's3_uri': None}
    failure = run._failed(run.plan['started'], local, S3Error('S3 endpoint unreachable'))
    assert str(failure).startswith('the local backup modulo_full_20261204_020000 is complete, but the S3 upload failed')
    assert failure.backup is local
    report, = reports_of(repo)
    assert report['backups'] == [local['meta']] and (report['type'], report['database']) == ('physical', None)
