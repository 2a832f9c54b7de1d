# -*- coding: utf-8 -*-
"""The audit log written by the real modules: one line per operation, failures included, no secret."""

import json
import os
import stat

from test_restore import backup, restore


def audit_lines(backup_root):
    with open(os.path.join(backup_root, 'logs', 'audit.log')) as handle:
        return [json.loads(line) for line in handle]


def test_operations_are_audited(ansible, pg, modulo_db, backup_root, conn_args):
    secret = 'audit-secret-4711'
    args = dict(conn_args, login_password=secret)
    made = backup(ansible, args, backup_root, modulo_db)
    target = modulo_db + '_copy'
    res = restore(ansible, args, backup_root, backup='latest', target_db=target)
    assert not res.get('failed'), res.get('msg')
    refused = restore(ansible, args, backup_root, backup='latest', target_db=target)  # exists: no confirm
    assert refused.get('failed')
    res = restore(ansible, args, backup_root, backup='latest', target_db=target + '_x', check=True)
    assert not res.get('failed'), res.get('msg')
    res = ansible.task('modulo.pgbackup.backup_retention', {'backup_root': backup_root})
    assert not res.get('failed'), res.get('msg')
    pg.psql('DROP DATABASE IF EXISTS %s WITH (FORCE)' % target, check=False)
    for name in os.listdir(os.path.join(backup_root, 'full')):
        assert 'audit' not in name

    records = audit_lines(backup_root)
    # check mode is a dry run and leaves no line
    assert [(r['operation'], r['result']) for r in records] == [
        ('backup', 'success'), ('restore', 'success'), ('restore', 'failed'), ('retention', 'success')]
    done, restored, failed, cleaned = records
    assert done['target'] == modulo_db and done['backup'] == made['meta']['name'] and done['type'] == 'logical'
    assert done['db_user'] == 'postgres' and done['os_user'] and done['host']
    assert restored['target'] == target and restored['requested_backup'] == 'latest'
    assert 'confirm' in failed['error'] and failed['target'] == target
    assert cleaned['deleted'] == 0
    path = os.path.join(backup_root, 'logs', 'audit.log')
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.stat(path).st_uid == os.stat(backup_root).st_uid
    with open(path) as handle:
        assert secret not in handle.read()
