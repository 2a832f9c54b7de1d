# -*- coding: utf-8 -*-
"""backup_restore (logical) against a real PostgreSQL 15: rows compared, never exit codes alone."""

import os

import pytest

from conftest import flip_byte, table_digest, table_rows


def backup(ansible, conn_args, backup_root, db, **extra):
    res = ansible.task('modulo.pgbackup.pg_backup', dict(conn_args, backup_root=backup_root, db=db, **extra))
    assert not res.get('failed'), res.get('msg')
    return res['backup']


def restore(ansible, conn_args, backup_root, check=False, **args):
    return ansible.task('modulo.pgbackup.backup_restore', dict(conn_args, backup_root=backup_root, **args),
                        check=check)


@pytest.mark.parametrize('fmt,codec', [('plain', 'gzip'), ('custom', 'zstd'), ('directory', 'gzip'),
                                       ('custom', 'gzip'), ('plain', 'lz4')])
def test_restore_latest_matches_source(ansible, pg, modulo_db, backup_root, conn_args, fmt, codec):
    taken = backup(ansible, conn_args, backup_root, modulo_db, format=fmt, compression=codec)
    target = modulo_db + '_test'
    res = restore(ansible, conn_args, backup_root, target_db=target, jobs=2)
    try:
        assert not res.get('failed'), res.get('msg')
        assert res['changed'] is True
        assert res['restore']['backup'] == taken['meta']['name']
        assert res['restore']['rows_match'] is True
        assert table_rows(pg, target) == table_rows(pg, modulo_db)
        for table, key in (('orders', 'id'), ('customers', 'id'), ('billing.invoices', 'id')):
            assert table_digest(pg, target, table, key) == table_digest(pg, modulo_db, table, key)
        # sequences restored: the next order id continues after the restored ones
        assert pg.psql("SELECT nextval('orders_id_seq')", db=target) == '3001'
    finally:
        pg.psql('DROP DATABASE IF EXISTS %s WITH (FORCE)' % target)


def test_restore_specific_file_and_name(ansible, pg, modulo_db, backup_root, conn_args):
    first = backup(ansible, conn_args, backup_root, modulo_db)
    pg.psql('DELETE FROM order_items; DELETE FROM billing.invoices; DELETE FROM orders WHERE id > 100',
            db=modulo_db)
    import time
    time.sleep(1.1)  # backup names have one-second resolution
    second = backup(ansible, conn_args, backup_root, modulo_db)
    assert second['meta']['table_rows']['public.orders'] == 100
    target = modulo_db + '_file'
    try:
        res = restore(ansible, conn_args, backup_root, backup=first['path'], target_db=target)
        assert not res.get('failed'), res.get('msg')
        assert table_rows(pg, target)['public.orders'] == 3000
        res = restore(ansible, conn_args, backup_root, backup=second['meta']['name'], target_db=target,
                      confirm=target, keep_old=False)
        assert not res.get('failed'), res.get('msg')
        assert table_rows(pg, target)['public.orders'] == 100
        assert res['restore']['old_db'] is None and res['restore']['old_db_dropped'] is True
    finally:
        pg.psql('DROP DATABASE IF EXISTS %s WITH (FORCE)' % target)


def test_existing_database_needs_confirm_and_is_kept(ansible, pg, modulo_db, backup_root, conn_args):
    backup(ansible, conn_args, backup_root, modulo_db)
    target = modulo_db + '_prod'
    pg.psql('CREATE DATABASE %s' % target)
    pg.psql('CREATE TABLE precious (v text); INSERT INTO precious VALUES (\'keep me\')', db=target)
    try:
        res = restore(ansible, conn_args, backup_root, target_db=target)
        assert res.get('failed')
        assert 'confirm: %s' % target in res['msg']
        assert pg.psql('SELECT v FROM precious', db=target) == 'keep me'

        res = restore(ansible, conn_args, backup_root, target_db=target, confirm='something-else')
        assert res.get('failed') and 'confirm' in res['msg']

        res = restore(ansible, conn_args, backup_root, target_db=target, confirm=target, check=True)
        assert not res.get('failed') and res['changed'] is True
        assert pg.psql('SELECT v FROM precious', db=target) == 'keep me'

        res = restore(ansible, conn_args, backup_root, target_db=target, confirm=target)
        assert not res.get('failed'), res.get('msg')
        old = res['restore']['old_db']
        assert old.startswith(target + '_old_')
        assert pg.psql('SELECT v FROM precious', db=old) == 'keep me'
        assert table_rows(pg, target)['public.orders'] == 3000
    finally:
        for name in pg.psql("SELECT datname FROM pg_database WHERE datname LIKE '%s%%'" % target).split():
            pg.psql('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)


def test_corrupt_or_truncated_backup_changes_nothing(ansible, pg, modulo_db, backup_root, conn_args):
    taken = backup(ansible, conn_args, backup_root, modulo_db)
    target = modulo_db + '_corrupt'
    pg.psql('CREATE DATABASE %s' % target)
    pg.psql('CREATE TABLE precious (v text); INSERT INTO precious VALUES (\'intact\')', db=target)
    try:
        flip_byte(taken['path'])
        res = restore(ansible, conn_args, backup_root, target_db=target, confirm=target)
        assert res.get('failed')
        assert 'corrupt' in res['msg'] and 'sha256' in res['msg']
        assert pg.psql('SELECT v FROM precious', db=target) == 'intact'

        # Truncated, with the .meta "fixed" to match: the checksum passes, the load itself must fail.
        import json
        from ansible_collections.modulo.pgbackup.plugins.module_utils import fsutil
        with open(taken['path'], 'r+b') as handle:
            handle.truncate(os.path.getsize(taken['path']) // 2)
        meta_path = os.path.join(backup_root, 'full', taken['meta']['file'] + '.meta')
        with open(meta_path) as handle:
            meta = json.load(handle)
        meta['sha256'] = fsutil.sha256_file(taken['path'])
        with open(meta_path, 'w') as handle:
            json.dump(meta, handle)
        res = restore(ansible, conn_args, backup_root, target_db=target, confirm=target)
        assert res.get('failed')
        assert 'not touched' in res['msg']
        assert pg.psql('SELECT v FROM precious', db=target) == 'intact'
        leftovers = pg.psql("SELECT datname FROM pg_database WHERE datname LIKE '%%restoring%%'")
        assert leftovers == ''
    finally:
        pg.psql('DROP DATABASE IF EXISTS %s WITH (FORCE)' % target)


@pytest.mark.parametrize('bad', ['bad"name', 'with space', "quote'd", 'postgres', ''])
def test_bad_target_names_are_refused(ansible, pg, modulo_db, backup_root, conn_args, bad):
    backup(ansible, conn_args, backup_root, modulo_db)
    before = pg.psql('SELECT count(*) FROM pg_database')
    res = restore(ansible, conn_args, backup_root, target_db=bad)
    assert res.get('failed')
    assert 'target_db' in res['msg']
    assert pg.psql('SELECT count(*) FROM pg_database') == before


def test_no_backup_and_unknown_name(ansible, pg, backup_root, conn_args):
    res = restore(ansible, conn_args, backup_root, target_db='anything')
    assert res.get('failed') and 'no complete logical backup' in res['msg']
    res = restore(ansible, conn_args, backup_root, backup='modulo_full_20000101_000000', target_db='anything')
    assert res.get('failed') and 'no backup named' in res['msg']


def test_file_without_meta_is_not_trusted(ansible, pg, modulo_db, backup_root, conn_args):
    taken = backup(ansible, conn_args, backup_root, modulo_db)
    os.unlink(os.path.join(backup_root, 'full', taken['meta']['file'] + '.meta'))
    res = restore(ansible, conn_args, backup_root, backup=taken['path'], target_db='never_created')
    assert res.get('failed') and 'no .meta' in res['msg']
    assert pg.psql("SELECT count(*) FROM pg_database WHERE datname = 'never_created'") == '0'


def test_pitr_options_fail_clearly(ansible, pg, backup_root, conn_args):
    res = restore(ansible, conn_args, backup_root, target_db='x', target_time='2026-11-24 14:30:00')
    assert res.get('failed') and 'point-in-time' in res['msg']


def test_rows_are_checked_from_the_load_and_a_difference_is_counted_again(ansible, pg, modulo_db, backup_root, conn_args):
    """The restored database is not read a second time: the server counted the rows while loading them.
    A table whose count differs from the .meta is counted with count(*), so the error shows real numbers;
    where statistics are off, every table is counted."""
    import json
    taken = backup(ansible, conn_args, backup_root, modulo_db)
    target = modulo_db + '_rows'
    try:
        res = restore(ansible, conn_args, backup_root, target_db=target)
        assert not res.get('failed'), res.get('msg')
        assert res['restore']['rows_recounted'] == []
        assert res['restore']['table_rows'] == table_rows(pg, target) == taken['meta']['table_rows']
        pg.psql('DROP DATABASE %s WITH (FORCE)' % target)

        pg.psql('ALTER SYSTEM SET track_counts = off')
        pg.psql('SELECT pg_reload_conf()')
        try:
            res = restore(ansible, conn_args, backup_root, target_db=target)
        finally:
            pg.psql('ALTER SYSTEM RESET track_counts')
            pg.psql('SELECT pg_reload_conf()')
        assert not res.get('failed'), res.get('msg')
        assert res['restore']['rows_recounted'] == sorted(taken['meta']['table_rows'])
        assert res['restore']['table_rows'] == taken['meta']['table_rows']
        pg.psql('DROP DATABASE %s WITH (FORCE)' % target)

        meta_path = taken['path'] + '.meta'
        with open(meta_path) as handle:
            meta = json.load(handle)
        meta['table_rows']['public.orders'] -= 1
        with open(meta_path, 'w') as handle:
            json.dump(meta, handle)
        res = restore(ansible, conn_args, backup_root, target_db=target)
        assert res.get('failed')
        assert 'row counts differ' in res['msg']
        assert '"table": "public.orders", "expected": 2999, "restored": 3000' in res['msg'], res['msg']
        assert pg.psql("SELECT count(*) FROM pg_database WHERE datname LIKE '%s%%'" % target) == '0'
    finally:
        pg.psql('DROP DATABASE IF EXISTS %s WITH (FORCE)' % target)


def test_the_load_builds_indexes_with_a_share_of_the_hosts_memory(ansible, pg, modulo_db, backup_root, conn_args):
    """maintenance_work_mem reaches every session of the load: the server's own sort trace shows it."""
    from ansible_collections.modulo.pgbackup.plugins.module_utils import logical_restore
    backup(ansible, conn_args, backup_root, modulo_db, format='custom', compression='gzip')
    target = modulo_db + '_mwm'
    with open(pg.log, 'rb') as handle:
        handle.seek(0, 2)
        offset = handle.tell()
    pg.psql('ALTER SYSTEM SET trace_sort = on')
    pg.psql('SELECT pg_reload_conf()')
    try:
        res = restore(ansible, conn_args, backup_root, target_db=target, jobs=2)
    finally:
        pg.psql('ALTER SYSTEM RESET trace_sort')
        pg.psql('SELECT pg_reload_conf()')
    try:
        assert not res.get('failed'), res.get('msg')
        share = logical_restore.maintenance_work_mem(logical_restore.host_memory(), 2, 64 * 1024 * 1024)
        assert share, 'this host has too little memory for the test'
        assert res['restore']['load_settings'] == {'maintenance_work_mem': '%dMB' % (share // 1024 // 1024)}
        with open(pg.log, 'rb') as handle:
            handle.seek(offset)
            trace = handle.read().decode('utf-8', 'replace')
        # Each index build's main sort runs in maintenance_work_mem (a unique index's second spool, for dead
        # rows, runs in work_mem, 4 MB): none may be left at the server's 64 MB.
        sorts = [line for line in trace.splitlines() if 'begin index sort' in line]
        with_share = [line for line in sorts if 'workMem = %d,' % (share // 1024) in line]
        assert len(with_share) >= 3, sorts or trace[-2000:]
        assert not [line for line in sorts if 'workMem = 65536,' in line], sorts
    finally:
        pg.psql('DROP DATABASE IF EXISTS %s WITH (FORCE)' % target)
