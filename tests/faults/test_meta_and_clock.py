# -*- coding: utf-8 -*-
"""A damaged ``.meta`` and a repository whose clock was wrong (files and ``.meta`` from the future).

A flipped byte in a backup file is tests/system/test_restore.py::test_corrupt_or_truncated_backup_
changes_nothing (restore), test_restore_drill.py::test_flipped_byte_fails_on_the_checksum (drill) and
test_s3_restore.py::test_damaged_s3_copy_is_refused (S3 copy).
"""

import datetime
import json
import os

import pytest

from conftest import table_rows
from ansible_collections.modulo.pgbackup.plugins.module_utils import logical_backup, pgclient, repository

DAY = datetime.timedelta(days=1)


def take(pg, db, root, when):
    """A real backup of ``db`` named and dated as if taken at ``when``, with the module's own logic."""
    conn = pgclient.Connection(login_host='127.0.0.1', port=pg.port, login_user='postgres', bindir=pg.bindir)
    repo = repository.Repository(root).ensure()
    plan = logical_backup.plan(repo, db, 'plain', 'gzip', None, 'modulo', 15, now=when)
    return logical_backup.take(conn, repo, plan, jobs=1)


def meta_path(root, meta):
    return os.path.join(root, 'full', meta['file'] + '.meta')


def task(ansible, module, conn_args, root, **args):
    return ansible.task('modulo.pgbackup.' + module, dict(conn_args, backup_root=root, **args))


@pytest.mark.parametrize('damage', ['checksum field', 'json structure'])
def test_flipped_byte_in_a_meta_is_refused_and_latest_never_falls_back_silently(
        damage, ansible, pg, modulo_db, backup_root, conn_args):
    now = repository.utcnow()
    older = take(pg, modulo_db, backup_root, now - DAY)
    newest = take(pg, modulo_db, backup_root, now - DAY / 24)
    path = meta_path(backup_root, newest)
    with open(path, 'rb') as handle:
        data = bytearray(handle.read())
    if damage == 'checksum field':
        at = data.index(newest['sha256'].encode()) + 10
        data[at] = ord('0') if data[at] != ord('0') else ord('1')
    else:
        data[0] ^= 0x01                           # '{' becomes 'z': no longer JSON
    with open(path, 'wb') as handle:
        handle.write(bytes(data))
    target = modulo_db + '_r'
    rows = table_rows(pg, modulo_db)

    res = task(ansible, 'backup_restore', conn_args, backup_root, db=modulo_db, target_db=target)
    assert res.get('failed') is True, res
    if damage == 'checksum field':
        assert 'is corrupt' in res['msg'] and 'does not match the .meta' in res['msg'], res['msg']
    else:
        assert 'of a newer backup is damaged' in res['msg'] and older['name'] in res['msg'], res['msg']
        res = task(ansible, 'backup_restore', conn_args, backup_root, backup=newest['name'], target_db=target)
        assert res.get('failed') is True and 'its .meta %s is damaged' % path in res['msg'], res['msg']
    assert pg.psql("SELECT count(*) FROM pg_database WHERE datname = '%s'" % target) == '0'
    assert table_rows(pg, modulo_db) == rows

    res = task(ansible, 'backup_info', conn_args, backup_root, verify=True)
    if damage == 'checksum field':
        assert res.get('failed') is True, res
        assert '1 backup(s) failed verification: %s' % newest['name'] in res['msg'], res['msg']
        assert 'does not match the .meta' in res['msg']
    else:
        assert not res.get('failed'), res.get('msg')
        assert [b['name'] for b in res['backups']] == [older['name']]
        assert [p['path'] for p in res['problems']] == [path], res['problems']

    if damage == 'json structure':
        # Going back deliberately, by name, works and restores the older backup's rows.
        res = task(ansible, 'backup_restore', conn_args, backup_root, backup=older['name'], target_db=target)
        assert not res.get('failed'), res.get('msg')
        assert table_rows(pg, target) == older['table_rows']
        pg.psql('DROP DATABASE %s' % target)


def redate(root, meta, when, mtime):
    """What a host with a wrong clock leaves: ``.meta`` times from ``when``, file times from ``mtime``."""
    path = meta_path(root, meta)
    with open(path) as handle:
        doc = json.load(handle)
    doc['started_at'] = repository.iso(when)
    doc['finished_at'] = repository.iso(when + datetime.timedelta(seconds=doc['duration_s']))
    with open(path, 'w') as handle:
        json.dump(doc, handle)
    for name in os.listdir(os.path.join(root, 'full')):
        if name.startswith(meta['name']):
            os.utime(os.path.join(root, 'full', name), (mtime.timestamp(), mtime.timestamp()))


def test_skewed_clock_ages_come_from_the_meta_and_a_future_backup_is_flagged(
        ansible, pg, modulo_db, backup_root, conn_args):
    now = repository.utcnow()
    expired = take(pg, modulo_db, backup_root, now - 10 * DAY)
    recent = take(pg, modulo_db, backup_root, now - DAY)
    future = take(pg, modulo_db, backup_root, now + 2 * DAY)
    redate(backup_root, expired, now - 10 * DAY, mtime=now)              # touched since: mtime says "new"
    redate(backup_root, recent, now - DAY, mtime=now - 30 * DAY)         # restored from tape: mtime says "old"
    redate(backup_root, future, now + 2 * DAY, mtime=now + 2 * DAY)      # written while the clock was ahead

    res = task(ansible, 'backup_retention', conn_args, backup_root, full_days=7, min_full=1)
    assert not res.get('failed'), res.get('msg')
    gone = sorted(set(d['backup'] for d in res['deleted'] if d.get('backup')))
    assert gone == [expired['name']], res['deleted']
    left = sorted(n for n in os.listdir(os.path.join(backup_root, 'full')) if n.endswith('.meta'))
    assert left == sorted([recent['file'] + '.meta', future['file'] + '.meta'])

    res = task(ansible, 'backup_info', conn_args, backup_root)
    assert not res.get('failed'), res.get('msg')
    assert [b['name'] for b in res['backups']] == [recent['name'], future['name']]
    age = [c for c in res['health']['checks'] if c['check'] == 'backup_age'][0]
    assert age['breached'] and 'in the future' in age['detail'] and future['name'] in age['detail'], age
