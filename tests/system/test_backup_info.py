# -*- coding: utf-8 -*-
"""backup_info: listing, selection, verification and health on real backups."""

import json
import os
import re
import time

from conftest import flip_byte
from test_restore import backup


def info(ansible, conn_args, backup_root, **args):
    return ansible.task('modulo.pgbackup.backup_info', dict(conn_args, backup_root=backup_root, **args))


def test_list_select_verify(ansible, pg, modulo_db, backup_root, conn_args):
    first = backup(ansible, conn_args, backup_root, modulo_db)
    time.sleep(1.1)
    second = backup(ansible, conn_args, backup_root, modulo_db, format='custom', compression='zstd')
    # a leftover of an interrupted run and a foreign file
    open(os.path.join(backup_root, 'full', '.tmp-modulo_full_20260101_000000.sql.gz.123'), 'w').close()
    open(os.path.join(backup_root, 'full', 'modulo_full_20260102_000000.sql.gz'), 'w').close()

    res = info(ansible, conn_args, backup_root)
    assert not res.get('failed'), res.get('msg')
    names = [b['name'] for b in res['backups']]
    assert names == [first['meta']['name'], second['meta']['name']]  # oldest first, orphans excluded
    assert res['latest']['name'] == second['meta']['name']
    assert all(b['location'] == 'local' for b in res['backups'])
    problems = sorted(p['problem'] for p in res['problems'])
    assert len(problems) == 2 and any('no .meta' in p for p in problems)
    # healthy, but no restore drill has ever proven these backups
    assert res['health']['breached'] == ['restore_drill'], res['health']['summary']
    assert res['health']['latest'] == second['meta']['name']

    res = info(ansible, conn_args, backup_root, select='latest', verify=True)
    assert not res.get('failed'), res.get('msg')
    assert [b['name'] for b in res['backups']] == [second['meta']['name']]
    assert res['verification'][0]['ok'] is True

    res = info(ansible, conn_args, backup_root, select=first['meta']['name'], verify=True)
    assert not res.get('failed') and res['verification'][0]['checksum_ok'] is True

    flip_byte(first['path'])
    res = info(ansible, conn_args, backup_root, select='all', verify=True)
    assert res.get('failed')
    assert first['meta']['name'] in res['msg'] and 'sha256' in res['msg']
    bad = [v for v in res['verification'] if not v['ok']]
    assert [v['name'] for v in bad] == [first['meta']['name']]
    assert bad[0]['decompress_ok'] is False  # gzip -t catches the flipped byte as well


def test_health_flags_an_old_backup(ansible, pg, modulo_db, backup_root, conn_args):
    backup(ansible, conn_args, backup_root, modulo_db)
    time.sleep(2)
    res = info(ansible, conn_args, backup_root, rpo_target_s=1)
    assert not res.get('failed')
    age = [c for c in res['health']['checks'] if c['check'] == 'backup_age'][0]
    assert age['breached'] is True and res['health']['ok'] is False


def test_empty_repository(ansible, backup_root, conn_args):
    res = info(ansible, conn_args, backup_root)
    assert not res.get('failed')
    assert res['backups'] == [] and res['latest'] is None and res['health']['ok'] is False


def test_list_backups_playbook_shows_the_cluster_the_verification_and_why_health_fails(
        ansible, pg, modulo_db, backup_root, conn_args):
    res = ansible.task('modulo.pgbackup.pg_backup', dict(conn_args, backup_root=backup_root, db=modulo_db))
    assert not res.get('failed'), res.get('msg')
    base_meta = dict(res['backup']['meta'], name='modulo_base_20200101_000000', type='physical', database=None,
                     format='tar', file='modulo_base_20200101_000000')
    with open(os.path.join(backup_root, 'base', 'modulo_base_20200101_000000.meta'), 'w') as handle:
        json.dump(base_meta, handle)
    os.makedirs(os.path.join(backup_root, 'base', 'modulo_base_20200101_000000'))
    extra = dict(pg.connection_vars(), pgbackup_backup_root=backup_root, pgbackup_s3_bucket='', verify=True)
    proc = ansible.playbook('list-backups.yml', extra_vars=extra)
    out = proc.stdout
    assert '(cluster)' in out and 'None' not in out.split('Backups, oldest first')[1].split('TASK')[0]
    name = res['backup']['meta']['name']
    assert re.search(r'%s\s+%s .* ok' % (name, modulo_db), out), out[-3000:]
    # The health verdict says which check failed and why (no drill has run in this repository).
    assert 'NOT OK (' in out and 'restore_drill' in out and 'playbooks/restore-drill.yml' in out
    assert proc.returncode != 0 and 'failed verification' in out     # the base backup has no files
