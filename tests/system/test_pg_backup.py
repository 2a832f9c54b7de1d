# -*- coding: utf-8 -*-
"""pg_backup type logical against a real PostgreSQL 15."""

import gzip
import json
import os
import stat
import subprocess

import pytest

from conftest import table_rows


def _backup(ansible, conn_args, backup_root, db, **extra):
    args = dict(conn_args, backup_root=backup_root, db=db)
    args.update(extra)
    return ansible.task('modulo.pgbackup.pg_backup', args)


def test_plain_gzip_backup_is_the_runbooks_file(ansible, pg, modulo_db, backup_root, conn_args):
    res = _backup(ansible, conn_args, backup_root, modulo_db)
    assert not res.get('failed'), res.get('msg')
    assert res['changed'] is True
    path = res['backup']['path']
    meta = res['backup']['meta']
    assert os.path.basename(path) == meta['name'] + '.sql.gz'
    assert meta['name'].startswith('modulo_full_')
    # gzip -t passes, as the runbook's troubleshooting step expects
    subprocess.run(['gzip', '-t', path], check=True)
    # .meta contract fields
    with open(os.path.join(backup_root, 'full', meta['file'] + '.meta')) as handle:
        on_disk = json.load(handle)
    for field in ('format_version', 'name', 'type', 'database', 'format', 'compression', 'started_at',
                  'finished_at', 'duration_s', 'size_bytes', 'sha256', 'server_version',
                  'system_identifier', 'status', 'table_rows'):
        assert field in on_disk, field
    assert on_disk['status'] == 'complete'
    assert on_disk['type'] == 'logical'
    assert on_disk['size_bytes'] == os.path.getsize(path)
    assert on_disk['table_rows'] == table_rows(pg, modulo_db)
    assert on_disk['table_rows']['public.orders'] == 3000
    assert on_disk['table_rows']['billing.invoices'] == 1500
    assert on_disk['system_identifier'] == pg.psql('SELECT system_identifier FROM pg_control_system()')
    # modes: files 0600, dirs 0700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.join(backup_root, 'full')).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(backup_root).st_mode) == 0o700
    # globals next to the dump
    assert os.path.exists(os.path.join(backup_root, 'full', meta['name'] + '.globals.sql'))
    # report
    with open(res['report_path']) as handle:
        report = json.load(handle)
    assert report['status'] == 'success'
    assert report['backups'][0]['name'] == meta['name']
    assert any(c['check'] == 'backup_duration' and c['breached'] is False for c in report['thresholds'])
    with gzip.open(path, 'rt') as handle:
        text = handle.read()
    assert 'CREATE TABLE public.orders' in text


def test_gunzip_psql_restores_plain_backup(ansible, pg, modulo_db, backup_root, conn_args):
    res = _backup(ansible, conn_args, backup_root, modulo_db)
    assert not res.get('failed'), res.get('msg')
    pg.psql('CREATE DATABASE manual_restore')
    try:
        subprocess.run('gunzip -c %s | %s/psql -X -q -v ON_ERROR_STOP=1 -d manual_restore -o /dev/null'
                       % (res['backup']['path'], pg.bindir), shell=True, check=True, env=pg.env())
        assert table_rows(pg, 'manual_restore') == res['backup']['meta']['table_rows']
    finally:
        pg.psql('DROP DATABASE manual_restore')


@pytest.mark.parametrize('fmt,codec,suffix', [
    ('plain', 'zstd', '.sql.zst'),
    ('plain', 'lz4', '.sql.lz4'),
    ('plain', 'none', '.sql'),
    ('custom', 'gzip', '.dump'),
    ('custom', 'zstd', '.dump.zst'),
    ('directory', 'gzip', '.dir'),
])
def test_formats_and_compressions(ansible, pg, modulo_db, backup_root, conn_args, fmt, codec, suffix):
    res = _backup(ansible, conn_args, backup_root, modulo_db, format=fmt, compression=codec, jobs=2)
    assert not res.get('failed'), res.get('msg')
    assert res['backup']['path'].endswith(suffix)
    meta = res['backup']['meta']
    assert meta['format'] == fmt and meta['compression'] == codec
    assert meta['table_rows'] == table_rows(pg, modulo_db)
