# -*- coding: utf-8 -*-
"""delta: a data directory brought to a tar stream in place, on real directories and GNU tar archives.

The result is always compared with what a fresh GNU tar extraction of the same archive gives, so
"in place" can never mean "different from a full restore".  Real pg_basebackup output and a real
server are exercised by tests/system/test_delta_restore.py.
"""

import json
import os
import shutil
import stat
import subprocess

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import delta, untar


def make_data_dir(root):
    """A small data directory: relation files over several pages, a small one, pg_control, WAL, config."""
    for directory in ('base/1', 'global', 'pg_wal/archive_status', 'pg_xact'):
        os.makedirs(os.path.join(root, directory))
    with open(os.path.join(root, 'PG_VERSION'), 'w') as handle:
        handle.write('15\n')
    with open(os.path.join(root, 'base/1/16384'), 'wb') as handle:
        handle.write(os.urandom(delta.PAGE * 300))
    with open(os.path.join(root, 'base/1/16385'), 'wb') as handle:
        handle.write(os.urandom(delta.PAGE * 3 + 100))
    with open(os.path.join(root, 'global/pg_control'), 'wb') as handle:
        handle.write(b'control-from-backup'.ljust(8192, b'\0'))
    with open(os.path.join(root, 'pg_xact/0000'), 'wb') as handle:
        handle.write(b'x' * 8192)
    with open(os.path.join(root, 'postgresql.conf'), 'w') as handle:
        handle.write("port = 5432\n")
    with open(os.path.join(root, 'backup_label'), 'w') as handle:
        handle.write('START WAL LOCATION: 0/2000028\n')
    os.chmod(os.path.join(root, 'PG_VERSION'), 0o600)


def tar_of(src, path):
    subprocess.run(['tar', '--format=ustar', '-c', '-f', path, '-C', src, '.'], check=True)
    return path


def chunks_of(path, size=65536):
    with open(path, 'rb') as handle:
        while True:
            data = handle.read(size)
            if not data:
                return
            yield data


def tree(root, skip=()):
    found = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            rel = os.path.relpath(path, root)
            if rel in skip:
                continue
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                found[rel] = ('link', os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[rel] = ('dir',)
            else:
                with open(path, 'rb') as handle:
                    found[rel] = ('file', stat.S_IMODE(info.st_mode), handle.read())
    return found


@pytest.fixture
def backup(tmp_path):
    """(the source tree, its tar, a fresh extraction of it as GNU tar makes it)."""
    src = str(tmp_path / 'src')
    make_data_dir(src)
    archive = tar_of(src, str(tmp_path / 'base.tar'))
    fresh = str(tmp_path / 'fresh')
    os.makedirs(fresh)
    subprocess.run(['tar', '-x', '-f', archive, '-C', fresh], check=True)
    return src, archive, fresh


def live_copy(src, dest):
    shutil.copytree(src, dest, symlinks=True)
    return dest


def restore(archive, pgdata, keep=()):
    delta.begin(pgdata, 'modulo_base_test')
    stats = delta.apply(chunks_of(archive, 7000), pgdata, keep=keep, sync=False)
    delta.commit(pgdata)
    return stats


def test_an_unchanged_directory_is_all_reused_and_nothing_is_written(backup, tmp_path):
    src, archive, fresh = backup
    pgdata = live_copy(src, str(tmp_path / 'pgdata'))
    stats = restore(archive, pgdata)
    assert tree(pgdata) == tree(fresh)
    # pg_control is always rewritten (begin() removed it); every other file is reused
    assert stats['written_files'] == 1 and stats['written_bytes'] == 8192
    assert stats['reused_files'] == len([f for f in tree(fresh).values() if f[0] == 'file']) - 1
    assert stats['removed_files'] == 0


def test_changed_pages_are_patched_new_files_removed_and_missing_ones_written(backup, tmp_path):
    src, archive, fresh = backup
    pgdata = live_copy(src, str(tmp_path / 'pgdata'))
    rel = os.path.join(pgdata, 'base/1/16384')
    with open(rel, 'r+b') as handle:               # two pages changed, and the file grew
        handle.seek(delta.PAGE * 10 + 5)
        handle.write(b'changed')
        handle.seek(delta.PAGE * 200)
        handle.write(b'also changed')
        handle.seek(0, 2)
        handle.write(os.urandom(delta.PAGE * 4))
    with open(os.path.join(pgdata, 'base/1/16385'), 'r+b') as handle:
        handle.truncate(100)                        # shorter than in the backup
    os.unlink(os.path.join(pgdata, 'PG_VERSION'))
    os.makedirs(os.path.join(pgdata, 'base/16999'))
    with open(os.path.join(pgdata, 'base/16999/1'), 'wb') as handle:
        handle.write(b'a table the backup never had')
    with open(os.path.join(pgdata, 'pg_wal/000000010000000000000009'), 'wb') as handle:
        handle.write(b'wal of the old cluster')
    os.chmod(os.path.join(pgdata, 'pg_xact/0000'), 0o644)

    stats = restore(archive, pgdata)

    assert tree(pgdata) == tree(fresh)
    # 16384: at most its two changed pages, plus the truncation; 16385: all but its first 100 bytes;
    # PG_VERSION; pg_control
    assert stats['written_files'] == 4
    rest = delta.PAGE * 3 + 3 + 8192
    assert rest + len('changed') + len('also changed') <= stats['written_bytes'] <= rest + 2 * delta.PAGE
    assert stats['removed_files'] == 2
    assert stats['reused_files'] == 3      # backup_label, postgresql.conf, pg_xact/0000 (mode fixed, not rewritten)


def test_kept_configuration_and_logs_stay_as_they_are(backup, tmp_path):
    src, archive, fresh = backup
    pgdata = live_copy(src, str(tmp_path / 'pgdata'))
    with open(os.path.join(pgdata, 'postgresql.conf'), 'w') as handle:
        handle.write("port = 6543\n")               # today's configuration, not the backup's
    os.makedirs(os.path.join(pgdata, 'log'))
    with open(os.path.join(pgdata, 'log', 'postgresql-today.log'), 'w') as handle:
        handle.write('the incident\n')
    stats = restore(archive, pgdata, keep=['postgresql.conf'])
    with open(os.path.join(pgdata, 'postgresql.conf')) as handle:
        assert handle.read() == 'port = 6543\n'
    assert os.path.isfile(os.path.join(pgdata, 'log', 'postgresql-today.log'))
    assert stats['kept_files'] == 1 and stats['removed_files'] == 0


def test_types_swapped_are_replaced(backup, tmp_path):
    src, archive, fresh = backup
    pgdata = live_copy(src, str(tmp_path / 'pgdata'))
    shutil.rmtree(os.path.join(pgdata, 'pg_xact'))
    with open(os.path.join(pgdata, 'pg_xact'), 'w') as handle:      # a file where the backup has a directory
        handle.write('not a directory')
    os.unlink(os.path.join(pgdata, 'backup_label'))
    os.makedirs(os.path.join(pgdata, 'backup_label', 'inside'))      # a directory where it has a file
    os.unlink(os.path.join(pgdata, 'PG_VERSION'))
    os.symlink('/etc/passwd', os.path.join(pgdata, 'PG_VERSION'))    # a symlink where it has a file
    restore(archive, pgdata)
    assert tree(pgdata) == tree(fresh)
    with open('/etc/passwd', 'rb') as handle:
        assert b'15\n' != handle.read()[:3]


def test_an_empty_directory_is_filled_like_a_full_restore(backup, tmp_path):
    src, archive, fresh = backup
    pgdata = str(tmp_path / 'pgdata')
    os.makedirs(pgdata)
    stats = restore(archive, pgdata)
    assert tree(pgdata) == tree(fresh)
    assert stats['reused_files'] == 0 and stats['written_bytes'] == sum(
        len(f[2]) for f in tree(fresh).values() if f[0] == 'file')


def test_pg_wal_kept_on_another_volume_through_a_link_stays_linked_and_is_emptied(backup, tmp_path):
    src, archive, fresh = backup
    pgdata = live_copy(src, str(tmp_path / 'pgdata'))
    waldir = str(tmp_path / 'walvolume')
    shutil.move(os.path.join(pgdata, 'pg_wal'), waldir)
    os.symlink(waldir, os.path.join(pgdata, 'pg_wal'))
    with open(os.path.join(waldir, '000000010000000000000003'), 'wb') as handle:
        handle.write(b'old wal')
    stats = restore(archive, pgdata)
    assert os.readlink(os.path.join(pgdata, 'pg_wal')) == waldir
    assert os.listdir(waldir) == ['archive_status'] and stats['removed_files'] == 1


def test_a_truncated_stream_leaves_an_unstartable_directory_and_a_rerun_completes_it(backup, tmp_path):
    src, archive, fresh = backup
    pgdata = live_copy(src, str(tmp_path / 'pgdata'))
    with open(os.path.join(pgdata, 'base/1/16384'), 'r+b') as handle:
        handle.write(b'changed after the backup')
    with open(archive, 'rb') as handle:
        data = handle.read()
    cut = str(tmp_path / 'cut.tar')
    with open(cut, 'wb') as handle:
        handle.write(data[:len(data) // 2])
    delta.begin(pgdata, 'modulo_base_test')
    with pytest.raises(untar.UntarError, match='truncated'):
        delta.apply(chunks_of(cut), pgdata, sync=False)
    # No pg_control: PostgreSQL would refuse to start this directory; the marker says how to resume.
    assert not os.path.exists(os.path.join(pgdata, delta.CONTROL))
    assert delta.in_progress(pgdata)['backup'] == 'modulo_base_test'
    with pytest.raises(delta.DeltaError):
        delta.commit(pgdata)
    stats = restore(archive, pgdata)
    assert tree(pgdata) == tree(fresh)
    assert delta.in_progress(pgdata) is None
    assert stats['written_files'] == 0       # the first run did the work: all reused now


def test_a_full_disk_mid_way_leaves_it_unstartable_and_a_rerun_after_freeing_space_completes_it(
        backup, tmp_path, tmpfs_at):
    src, archive, fresh = backup
    volume = str(tmp_path / 'volume')
    tmpfs_at(volume, size='4m')
    pgdata = live_copy(src, os.path.join(volume, 'pgdata'))
    os.unlink(os.path.join(pgdata, 'base/1/16384'))             # 2.4 MB to write, 1 MB left
    filler = os.path.join(volume, 'filler')
    with open(filler, 'wb') as handle:
        handle.write(b'\0' * (3 * 1024 * 1024 - 64 * 1024))
    delta.begin(pgdata, 'modulo_base_test')
    with pytest.raises(OSError) as failed:
        delta.apply(chunks_of(archive), pgdata)
    assert failed.value.errno == 28     # ENOSPC
    assert not os.path.exists(os.path.join(pgdata, delta.CONTROL)) and delta.in_progress(pgdata)
    with pytest.raises(delta.DeltaError):
        delta.commit(pgdata)
    os.unlink(filler)
    restore(archive, pgdata)
    assert tree(pgdata) == tree(fresh)


def test_names_the_restore_uses_itself_are_refused_in_an_archive(tmp_path):
    src = str(tmp_path / 'src')
    os.makedirs(src)
    with open(os.path.join(src, delta.MARKER), 'w') as handle:
        json.dump({}, handle)
    archive = tar_of(src, str(tmp_path / 'x.tar'))
    pgdata = str(tmp_path / 'pgdata')
    os.makedirs(pgdata)
    with pytest.raises(untar.UntarError, match='uses for itself'):
        delta.apply(chunks_of(archive), pgdata, sync=False)
