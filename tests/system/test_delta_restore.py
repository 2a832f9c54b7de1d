# -*- coding: utf-8 -*-
"""backup_restore mode=cluster delta=true against a real PostgreSQL 15 cluster and real WAL.

A base backup is taken, a small part of the data changes afterwards (rows updated and deleted, a
table and a database created), the server is stopped and the data directory is brought back in place:
the rows of the target come back, what came after is gone, and most files are reused, not written.
"""

import json
import os
import subprocess
import time

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import delta
from test_pitr import archiving_cluster, args_for, make_repo, wait_archived

from pgsandbox import as_server_user

ROWS = 20000


def rows_digest(cluster, db='shop'):
    return cluster.psql("SELECT count(*), md5(string_agg(id || ':' || note, ',' ORDER BY id)) FROM events", db=db)


def snapshot(pgdata):
    """Every path with its size and modification time: what any write would change."""
    found = {}
    for base, dirs, files in os.walk(pgdata):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            found[os.path.relpath(path, pgdata)] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return found


@pytest.fixture
def changed(new_cluster, backup_root, ansible):
    """A base backup, a mark just after it, then a small change: rows, a new table, a new database."""
    repo = make_repo(backup_root)
    cluster = archiving_cluster(new_cluster, repo)
    cluster.psql('CREATE DATABASE shop')
    cluster.psql('CREATE TABLE events (id int PRIMARY KEY, note text)', db='shop')
    cluster.psql("INSERT INTO events SELECT g, 'event ' || g FROM generate_series(1, %d) g" % ROWS, db='shop')
    cluster.psql('CREATE TABLE stock AS SELECT g AS id, md5(g::text) AS code, repeat(md5(g::text), 4) AS filler '
                 'FROM generate_series(1, 150000) g', db='shop')
    cluster.psql('VACUUM (FREEZE, ANALYZE)', db='shop')
    cluster.psql('CHECKPOINT')
    res = ansible.task('modulo.pgbackup.pg_backup', args_for(cluster, repo, type='physical', wait_archive=60))
    assert not res.get('failed'), res.get('msg')
    before = rows_digest(cluster)
    mark = cluster.psql("SELECT pg_sleep(1.1), to_char(clock_timestamp() AT TIME ZONE 'UTC', "
                        "'YYYY-MM-DD HH24:MI:SS.US'), pg_sleep(1.1)").split('|')[1]
    cluster.psql("UPDATE events SET note = 'changed' WHERE id <= 300", db='shop')
    cluster.psql('DELETE FROM events WHERE id > %d' % (ROWS - 200), db='shop')
    cluster.psql('CREATE TABLE added_later AS SELECT g FROM generate_series(1, 1000) g', db='shop')
    cluster.psql('CREATE DATABASE made_later')
    cluster.psql('CHECKPOINT')
    wait_archived(cluster, repo)
    assert rows_digest(cluster) != before
    return {'cluster': cluster, 'repo': repo, 'before': before, 'mark': mark, 'base': res['backup']}


def delta_args(h, **extra):
    cluster = h['cluster']
    return args_for(cluster, h['repo'], mode='cluster', delta=True, pgdata=cluster.pgdata, confirm=cluster.pgdata,
                    target_time=h['mark'], **extra)


def assert_back_at_the_mark(h):
    cluster = h['cluster']
    assert rows_digest(cluster) == h['before']
    assert cluster.psql("SELECT count(*) FROM events WHERE note = 'changed'", db='shop') == '0'
    assert cluster.psql("SELECT to_regclass('added_later') IS NULL", db='shop') == 't'
    assert cluster.psql("SELECT count(*) FROM pg_database WHERE datname = 'made_later'") == '0'
    assert cluster.psql('SELECT pg_is_in_recovery()') == 'f'
    assert not os.path.exists(os.path.join(cluster.pgdata, delta.MARKER))
    assert not os.path.exists(os.path.join(cluster.pgdata, 'recovery.signal'))
    with open(os.path.join(cluster.pgdata, 'postgresql.auto.conf')) as handle:
        auto_conf = handle.read()
    assert 'recovery_target' not in auto_conf and 'restore_command' not in auto_conf


def test_delta_restore_reuses_most_files_and_brings_back_the_rows_of_the_target(ansible, changed):
    h, cluster = changed, changed['cluster']
    res = ansible.task('modulo.pgbackup.backup_restore', args_for(cluster, h['repo'], delta=True, target_db='x',
                                                                  target='latest'))
    assert res.get('failed') and 'only to mode=cluster' in res['msg'], res.get('msg')

    res = ansible.task('modulo.pgbackup.backup_restore', delta_args(h))
    assert res.get('failed') and 'refuses while PostgreSQL runs' in res['msg'], res.get('msg')
    assert 'Nothing was changed' in res['msg']
    assert cluster.psql("SELECT count(*) FROM events WHERE note = 'changed'", db='shop') == '300'

    cluster.stop()
    res = ansible.task('modulo.pgbackup.backup_restore', dict(delta_args(h), confirm='/somewhere/else'))
    assert res.get('failed') and 'confirm: %s' % cluster.pgdata in res['msg'] and 'no old directory' in res['msg']

    untouched = snapshot(cluster.pgdata)
    check = ansible.task('modulo.pgbackup.backup_restore', delta_args(h), check=True)
    assert not check.get('failed'), check.get('msg')
    assert check['restore']['cluster']['delta'] is True and check['restore']['cluster']['delta_in_progress'] is None
    assert 'delta' in check['msg']
    assert snapshot(cluster.pgdata) == untouched

    started = time.time()
    res = ansible.task('modulo.pgbackup.backup_restore', delta_args(h))
    took = time.time() - started
    assert not res.get('failed'), res.get('msg')
    assert_back_at_the_mark(h)
    counts = res['restore']['delta']
    assert res['changed'] is True and res['restore']['old_pgdata'] is None
    assert 'delta, in place' in res['msg']
    total = counts['total_bytes']
    assert counts['reused_files'] > 4 * counts['written_files'], counts
    assert counts['reused_bytes'] > 0.8 * total and counts['written_bytes'] < 0.05 * total, counts
    assert counts['removed_files'] > 100, counts     # the new database's files, the old WAL
    assert counts['kept_files'] >= 3, counts         # postgresql.conf, pg_hba.conf, ... of today
    assert not [n for n in os.listdir(os.path.dirname(cluster.pgdata)) if '.old-' in n or '.pitr-' in n]
    assert res['restore']['recovery']['timeline'] == 2
    print('delta cluster restore: %.1f s (module %.1f s), %s' % (took, res['restore']['duration_s'], counts))

    # For comparison, a full cluster restore of the same backup to the same point (the old directory aside);
    # recovery follows the latest timeline: it needs a commit there after the mark to stop at, archived.
    cluster.psql('CREATE TABLE after_the_delta (id int)')
    wait_archived(cluster, h['repo'])
    started = time.time()
    full = ansible.task('modulo.pgbackup.backup_restore', dict(delta_args(h), delta=False))
    assert not full.get('failed'), full.get('msg')
    print('full cluster restore: %.1f s (module %.1f s)' % (time.time() - started, full['restore']['duration_s']))
    assert rows_digest(cluster) == h['before']
    subprocess.run(['rm', '-rf', full['restore']['old_pgdata']], check=True)


def test_an_interrupted_delta_cannot_start_and_running_it_again_completes_it(ansible, changed):
    h, cluster = changed, changed['cluster']
    cluster.stop()
    archive = os.path.join(h['base']['path'], 'base.tar.zst')
    os.rename(archive, archive + '.whole')
    try:
        # A real fault mid-way: the backup's stream ends in the middle (a copy cut short).
        with open(archive + '.whole', 'rb') as src, open(archive, 'wb') as dst:
            dst.write(src.read(int(os.path.getsize(archive + '.whole') * 0.7)))
        res = ansible.task('modulo.pgbackup.backup_restore', delta_args(h))
    finally:
        os.replace(archive + '.whole', archive)
    assert res.get('failed'), res.get('msg')
    assert 'run the same delta restore again' in res['msg'] and 'cannot be started' in res['msg'], res['msg']
    assert res['rollback']['delta'] is True and res['rollback']['startable'] is False
    assert res['rollback']['touched'] is True and res['rollback']['server_running'] is False
    with open(os.path.join(cluster.pgdata, delta.MARKER)) as handle:
        assert json.load(handle)['backup'] == h['base']['meta']['name']
    assert not os.path.exists(os.path.join(cluster.pgdata, 'global', 'pg_control'))
    proc = subprocess.run(as_server_user([os.path.join(cluster.bindir, 'pg_ctl'), '-D', cluster.pgdata, '-l',
                                          cluster.log, '-w', '-t', '20', 'start']),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, check=False)
    assert proc.returncode != 0
    with open(cluster.log) as handle:
        assert 'global/pg_control' in handle.read()

    check = ansible.task('modulo.pgbackup.backup_restore', delta_args(h), check=True)
    assert check['restore']['cluster']['delta_in_progress']['backup'] == h['base']['meta']['name']

    res = ansible.task('modulo.pgbackup.backup_restore', delta_args(h))
    assert not res.get('failed'), res.get('msg')
    assert_back_at_the_mark(h)


def test_pitr_playbook_restores_in_place_with_pitr_delta(ansible, changed):
    h, cluster = changed, changed['cluster']
    cluster.stop()
    extra = dict(cluster.connection_vars(), pgbackup_backup_root=h['repo'], pgbackup_pgdata=cluster.pgdata,
                 pitr_mode='cluster', pitr_delta=True, confirm=cluster.pgdata, target_time=h['mark'])
    proc = ansible.playbook('pitr.yml', extra_vars=extra)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert 'Delta, in place: ' in proc.stdout and 'no old directory kept' in proc.stdout, proc.stdout[-4000:]
    assert_back_at_the_mark(h)
