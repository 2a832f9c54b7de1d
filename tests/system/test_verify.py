# -*- coding: utf-8 -*-
"""pg_restore_drill mode=verify (runbook step 4 "Verify Restore") and playbooks/verify.yml on a live database."""

import json
import os
import re
import uuid

MODULE = 'modulo.pgbackup.pg_restore_drill'


def extensions(pg, db):
    return pg.psql('SELECT string_agg(extname, \',\' ORDER BY extname) FROM pg_extension', db=db)


def check(report, name):
    found = [c for c in report['checks'] if c['name'] == name]
    assert len(found) == 1, report['checks']
    return found[0]


def verify(ansible, conn_args, backup_root, db, **extra):
    args = dict(conn_args, backup_root=backup_root, mode='verify', db=db)
    args.update(extra)
    return ansible.task(MODULE, args)


def test_verify_a_restored_database_exact_rows_amcheck_and_a_read_only_run(ansible, pg, modulo_db, backup_root,
                                                                           conn_args):
    res = ansible.task('modulo.pgbackup.pg_backup', dict(conn_args, backup_root=backup_root, db=modulo_db))
    assert not res.get('failed'), res.get('msg')
    backup = res['backup']['meta']['name']
    restored = 'verify_%s' % uuid.uuid4().hex[:8]
    res = ansible.task('modulo.pgbackup.backup_restore', dict(conn_args, backup_root=backup_root, backup=backup,
                                                              target_db=restored))
    assert not res.get('failed'), res.get('msg')
    try:
        before = extensions(pg, restored)
        assert 'amcheck' not in before.split(',')

        # right after the restore: every count equals the backup's .meta
        res = verify(ansible, conn_args, backup_root, restored, backup=backup, expect_exact_rows=True,
                     smoke_queries=[{'name': 'customers exist', 'sql': 'SELECT count(*) > 0 FROM customers',
                                     'expect': True}])
        assert not res.get('failed'), res.get('msg')
        report = res['report']
        assert report['status'] == 'passed' and report['database'] == restored
        assert check(report, 'connectivity')['passed'] and report['server_version'].startswith('15')
        rows = check(report, 'table_rows')
        assert rows['passed'] and rows['level'] == 'error' and backup in rows['detail']
        assert check(report, 'smoke: customers exist')['passed']
        amcheck = check(report, 'amcheck')
        assert amcheck['level'] == 'skipped' and 'CREATE EXTENSION amcheck' in amcheck['detail']
        # verify installs nothing in a live database
        assert extensions(pg, restored) == before
        path = res['report_path']
        assert os.path.dirname(path) == os.path.join(backup_root, 'logs')
        assert re.match(r'^verify_%s_\d{8}_\d{6}(_\d+)?\.json$' % restored, os.path.basename(path))
        with open(path) as handle:
            assert json.load(handle) == report

        # rows gone since the backup: a failure with expect_exact_rows, naming the table
        pg.psql('DELETE FROM order_items WHERE order_id IN (SELECT min(order_id) FROM order_items)', db=restored)
        res = verify(ansible, conn_args, backup_root, restored, backup=backup, expect_exact_rows=True)
        assert res.get('failed')
        assert 'table_rows' in res['msg'] and 'public.order_items' in res['msg']
        assert res['report']['status'] == 'failed'
        assert os.path.exists(res['report_path'])

        # without it, a live database that moved on is a warning only
        pg.psql('CREATE EXTENSION amcheck', db=restored)
        with_amcheck = extensions(pg, restored)
        res = verify(ansible, conn_args, backup_root, restored, backup=backup)
        assert not res.get('failed'), res.get('msg')
        report = res['report']
        rows = check(report, 'table_rows')
        assert not rows['passed'] and rows['level'] == 'warning' and 'public.order_items' in rows['detail']
        assert report['warnings'] == ['table_rows']
        # the extension is there now: pg_amcheck runs
        amcheck = check(report, 'amcheck')
        assert amcheck['passed'] and amcheck['level'] == 'error' and 'heapallindexed' in amcheck['detail']
        assert any('pg_amcheck' in ' '.join(c) and '--install-missing' not in c for c in res['executed_commands'])
        assert extensions(pg, restored) == with_amcheck
    finally:
        pg.psql('DROP DATABASE IF EXISTS %s WITH (FORCE)' % restored, check=False)


def test_verify_without_a_backup_of_the_database_skips_row_counts_and_connection_failure_fails(
        ansible, modulo_db, backup_root, conn_args):
    res = verify(ansible, conn_args, backup_root, modulo_db)
    assert not res.get('failed'), res.get('msg')
    rows = check(res['report'], 'table_rows')
    assert rows['level'] == 'skipped' and 'no complete logical backup' in rows['detail']

    res = verify(ansible, conn_args, backup_root, 'no_such_db_%s' % uuid.uuid4().hex[:6])
    assert res.get('failed') and 'connectivity' in res['msg']
    assert os.path.exists(res['report_path'])


def test_verify_playbook(ansible, pg, modulo_db, backup_root):
    extra = dict(pg.connection_vars(), pgbackup_backup_root=backup_root, target_db=modulo_db,
                 pgbackup_s3_bucket='', pgbackup_aws_region='', pgbackup_s3_endpoint_url='')
    proc = ansible.playbook('verify.yml', extra_vars=extra, env={'BACKUP_S3_BUCKET': ''})
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert 'Verify PASSED: database %s' % modulo_db in proc.stdout
    assert 'amcheck | skipped | NOT OK' in proc.stdout
    assert os.listdir(os.path.join(backup_root, 'logs'))
