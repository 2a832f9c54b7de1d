# -*- coding: utf-8 -*-
"""fsutil: atomic publication, modes, checksums and the repository lock, on real files."""

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import fsutil

# The directory holding ansible_collections/, wherever the collection was imported from (the
# .collections/ link of a working tree, or the copy ansible-test runs in).
COLLECTIONS = os.path.abspath(os.path.join(os.path.dirname(fsutil.__file__), *(['..'] * 5)))


def mode_of(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def leftovers(directory):
    return [n for n in os.listdir(directory) if n.startswith(fsutil.TMP_PREFIX)]


def run_child(script, *args, **kwargs):
    """A separate Python process importing the collection like the modules do."""
    env = dict(os.environ, PYTHONPATH=COLLECTIONS, PYTHONDONTWRITEBYTECODE='1')
    return subprocess.Popen([sys.executable, '-c', textwrap.dedent(script)] + list(args), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, **kwargs)


# --- write_atomic / publish -------------------------------------------------------------------

def test_write_atomic_writes_content_with_mode_0600_and_no_temp_left(tmp_path):
    final = str(tmp_path / 'modulo_full_20261124_020000.meta')
    assert fsutil.write_atomic(final, 'caf\u00e9 {"a": 1}\n') == final
    with open(final, 'rb') as handle:
        assert handle.read() == 'caf\u00e9 {"a": 1}\n'.encode('utf-8')
    assert mode_of(final) == 0o600
    assert leftovers(str(tmp_path)) == []
    assert os.listdir(str(tmp_path)) == ['modulo_full_20261124_020000.meta']


def test_write_atomic_mode_is_0600_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        path = fsutil.write_atomic(str(tmp_path / 'f'), b'x')
    finally:
        os.umask(old)
    assert mode_of(path) == 0o600


def test_write_atomic_bytes_larger_than_one_write(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 7)
    path = fsutil.write_atomic(str(tmp_path / 'big'), data)
    with open(path, 'rb') as handle:
        assert handle.read() == data


def test_write_atomic_refuses_to_overwrite_and_leaves_existing_file_intact(tmp_path):
    final = str(tmp_path / 'backup.meta')
    fsutil.write_atomic(final, b'original')
    with pytest.raises(OSError) as info:
        fsutil.write_atomic(final, b'replacement')
    assert info.value.errno == errno.EEXIST
    assert 'refusing to overwrite' in str(info.value)
    with open(final, 'rb') as handle:
        assert handle.read() == b'original'
    assert leftovers(str(tmp_path)) == []


def test_write_atomic_refuses_to_replace_a_dangling_symlink(tmp_path):
    final = str(tmp_path / 'link')
    os.symlink(str(tmp_path / 'nowhere'), final)
    with pytest.raises(OSError):
        fsutil.write_atomic(final, b'x')
    assert os.path.islink(final)
    assert not os.path.exists(str(tmp_path / 'nowhere'))
    assert leftovers(str(tmp_path)) == []


def test_write_atomic_overwrite_replaces_when_asked(tmp_path):
    final = str(tmp_path / 'backup.meta')
    fsutil.write_atomic(final, b'old')
    fsutil.write_atomic(final, b'new', overwrite=True)
    with open(final, 'rb') as handle:
        assert handle.read() == b'new'
    assert leftovers(str(tmp_path)) == []


def test_write_json_atomic_is_sorted_json(tmp_path):
    path = fsutil.write_json_atomic(str(tmp_path / 'x.json'), {'b': 1, 'a': [1, 2]})
    with open(path) as handle:
        text = handle.read()
    assert text.index('"a"') < text.index('"b"')
    assert text.endswith('\n')


def test_failure_mid_write_removes_the_temp_file(tmp_path):
    """A file-size limit makes os.write fail half way, like a full disk."""
    final = str(tmp_path / 'out.meta')
    child = run_child('''
        import errno, resource, signal, sys
        from ansible_collections.modulo.pgbackup.plugins.module_utils import fsutil
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            fsutil.write_atomic(sys.argv[1], b'x' * 200000)
        except OSError as exc:
            print('errno=%d' % exc.errno)
        else:
            print('no error')
    ''', final)
    out, err = child.communicate(timeout=20)
    assert child.returncode == 0, err
    assert out.strip() == 'errno=%d' % errno.EFBIG
    assert not os.path.exists(final)
    assert os.listdir(str(tmp_path)) == []


def test_publish_moves_a_directory_tree(tmp_path):
    tmp = str(tmp_path / (fsutil.TMP_PREFIX + 'dump.dir.1'))
    os.makedirs(os.path.join(tmp, 'sub'))
    with open(os.path.join(tmp, 'sub', 'toc.dat'), 'wb') as handle:
        handle.write(b'toc')
    final = str(tmp_path / 'dump.dir')
    fsutil.publish(tmp, final)
    assert not os.path.exists(tmp)
    with open(os.path.join(final, 'sub', 'toc.dat'), 'rb') as handle:
        assert handle.read() == b'toc'


def test_publish_refuses_existing_final_and_keeps_both(tmp_path):
    tmp = str(tmp_path / 'tmpfile')
    final = str(tmp_path / 'final')
    for path, data in ((tmp, b'new'), (final, b'old')):
        with open(path, 'wb') as handle:
            handle.write(data)
    with pytest.raises(OSError) as info:
        fsutil.publish(tmp, final)
    assert info.value.errno == errno.EEXIST
    with open(final, 'rb') as handle:
        assert handle.read() == b'old'
    assert os.path.exists(tmp)  # the caller decides what to do with it


def test_tmp_path_for_is_a_hidden_sibling():
    path = fsutil.tmp_path_for('/backups/full/modulo_full_20261124_020000.sql.gz')
    assert os.path.dirname(path) == '/backups/full'
    assert os.path.basename(path).startswith(fsutil.TMP_PREFIX + 'modulo_full_20261124_020000.sql.gz')


def test_remove_quietly_file_tree_and_missing(tmp_path):
    tree = tmp_path / 'tree' / 'a'
    tree.mkdir(parents=True)
    (tree / 'f').write_bytes(b'x')
    single = tmp_path / 'single'
    single.write_bytes(b'x')
    fsutil.remove_quietly(str(tmp_path / 'tree'))
    fsutil.remove_quietly(str(single))
    fsutil.remove_quietly(str(tmp_path / 'missing'))
    assert os.listdir(str(tmp_path)) == []


# --- ensure_dir / chmod_tree --------------------------------------------------------------------

def test_ensure_dir_creates_0700(tmp_path):
    path = str(tmp_path / 'a' / 'b')
    assert fsutil.ensure_dir(path) == path
    assert os.path.isdir(path)
    assert mode_of(path) == 0o700


def test_ensure_dir_tightens_an_existing_dir(tmp_path):
    path = str(tmp_path / 'loose')
    os.mkdir(path)
    os.chmod(path, 0o777)
    fsutil.ensure_dir(path)
    assert mode_of(path) == 0o700


def test_ensure_dir_honours_an_explicit_mode(tmp_path):
    path = str(tmp_path / 'shared')
    fsutil.ensure_dir(path, mode=0o750)
    assert mode_of(path) == 0o750


def test_ensure_dir_fails_beneath_a_regular_file(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_bytes(b'x')
    with pytest.raises(OSError):
        fsutil.ensure_dir(str(blocker / 'sub'))


def test_chmod_tree(tmp_path):
    root = tmp_path / 'dump.dir'
    (root / 'sub').mkdir(parents=True)
    (root / 'sub' / 'f').write_bytes(b'x')
    (root / 'g').write_bytes(b'y')
    for path in (root, root / 'sub'):
        os.chmod(str(path), 0o755)
    for path in (root / 'sub' / 'f', root / 'g'):
        os.chmod(str(path), 0o644)
    fsutil.chmod_tree(str(root))
    assert [mode_of(str(p)) for p in (root, root / 'sub')] == [0o700, 0o700]
    assert [mode_of(str(p)) for p in (root / 'sub' / 'f', root / 'g')] == [0o600, 0o600]
    single = tmp_path / 'single'
    single.write_bytes(b'z')
    os.chmod(str(single), 0o644)
    fsutil.chmod_tree(str(single))
    assert mode_of(str(single)) == 0o600


# --- sha256_path / size_of ----------------------------------------------------------------------

def make_tree(root):
    (root / 'sub').mkdir(parents=True)
    (root / 'toc.dat').write_bytes(b'table of contents')
    (root / '3001.dat.gz').write_bytes(os.urandom(4096))
    (root / 'sub' / 'deep.dat').write_bytes(b'deep' * 100)


def test_sha256_path_of_a_file_matches_hashlib(tmp_path):
    import hashlib
    data = os.urandom(2 * 1024 * 1024 + 3)
    path = tmp_path / 'f'
    path.write_bytes(data)
    assert fsutil.sha256_path(str(path)) == hashlib.sha256(data).hexdigest()


def test_sha256_path_of_a_directory_is_stable_and_content_sensitive(tmp_path):
    root = tmp_path / 'dump.dir'
    make_tree(root)
    first = fsutil.sha256_path(str(root))
    assert len(first) == 64
    assert fsutil.sha256_path(str(root)) == first

    # The same content in a copy elsewhere hashes the same (names are relative).
    import shutil
    shutil.copytree(str(root), str(tmp_path / 'copy'))
    assert fsutil.sha256_path(str(tmp_path / 'copy')) == first

    deep = root / 'sub' / 'deep.dat'
    data = bytearray(deep.read_bytes())
    data[17] ^= 0x01
    deep.write_bytes(bytes(data))
    changed = fsutil.sha256_path(str(root))
    assert changed != first

    data[17] ^= 0x01
    deep.write_bytes(bytes(data))
    assert fsutil.sha256_path(str(root)) == first

    os.rename(str(root / 'toc.dat'), str(root / 'toc2.dat'))
    assert fsutil.sha256_path(str(root)) not in (first, changed)


def test_sha256_path_of_a_directory_sees_a_file_moved_between_subdirs(tmp_path):
    root = tmp_path / 'd'
    make_tree(root)
    before = fsutil.sha256_path(str(root))
    os.rename(str(root / 'sub' / 'deep.dat'), str(root / 'deep.dat'))
    assert fsutil.sha256_path(str(root)) != before


def test_size_of_file_and_directory(tmp_path):
    root = tmp_path / 'd'
    make_tree(root)
    assert fsutil.size_of(str(root / 'toc.dat')) == len(b'table of contents')
    assert fsutil.size_of(str(root)) == len(b'table of contents') + 4096 + 400
    (root / 'empty').mkdir()
    assert fsutil.size_of(str(root)) == len(b'table of contents') + 4096 + 400


# --- RepositoryLock ---------------------------------------------------------------------------

HOLDER = '''
    import sys, time
    from ansible_collections.modulo.pgbackup.plugins.module_utils import fsutil
    with fsutil.RepositoryLock(sys.argv[1], sys.argv[2]):
        print('locked', flush=True)
        time.sleep(float(sys.argv[3]))
'''


def start_holder(root, operation='backup', hold_s=60):
    child = run_child(HOLDER, root, operation, str(hold_s))
    line = child.stdout.readline()
    assert line.strip() == 'locked', child.stderr.read()
    return child


def test_lock_second_acquisition_in_same_process_fails_with_clear_message(tmp_path):
    root = str(tmp_path)
    with fsutil.RepositoryLock(root, 'backup'):
        assert mode_of(os.path.join(root, '.lock-backup')) == 0o600
        with pytest.raises(fsutil.LockBusy) as info:
            with fsutil.RepositoryLock(root, 'backup'):
                pass
    message = str(info.value)
    assert 'another backup is already running' in message
    assert 'pid=%d' % os.getpid() in message
    assert os.path.join(root, '.lock-backup') in message


def test_lock_is_released_on_exit_and_on_exception(tmp_path):
    root = str(tmp_path)
    with fsutil.RepositoryLock(root, 'backup'):
        pass
    with pytest.raises(ZeroDivisionError):
        with fsutil.RepositoryLock(root, 'backup'):
            1 / 0
    with fsutil.RepositoryLock(root, 'backup') as lock:
        assert lock.operation == 'backup'


def test_lock_file_is_removed_when_released(tmp_path):
    root = str(tmp_path)
    for target in ('modulodb_a', 'modulodb_b'):
        with fsutil.RepositoryLock(root, 'restore-%s' % target):
            assert os.path.exists(os.path.join(root, '.lock-restore-%s' % target))
    assert [n for n in os.listdir(root) if n.startswith('.lock-')] == []


def test_a_waiter_on_a_removed_lock_file_takes_the_new_one(tmp_path):
    """The holder removes the file it locked as it finishes; the waiter had opened that file and must not
    believe it holds the lock while a third run locks the path's new file."""
    root = str(tmp_path)
    child = start_holder(root, hold_s=0.5)
    try:
        with fsutil.RepositoryLock(root, 'backup', wait_s=10) as lock:
            assert child.wait(timeout=10) == 0
            assert os.fstat(lock._fd).st_ino == os.stat(lock.path).st_ino      # pylint: disable=protected-access
            with pytest.raises(fsutil.LockBusy):
                with fsutil.RepositoryLock(root, 'backup'):
                    pass
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=10)


def test_locks_of_different_operations_do_not_conflict(tmp_path):
    root = str(tmp_path)
    with fsutil.RepositoryLock(root, 'backup'):
        with fsutil.RepositoryLock(root, 'retention'):
            pass


def test_lock_held_by_another_process_then_released_when_it_is_killed(tmp_path):
    root = str(tmp_path)
    child = start_holder(root)
    try:
        with pytest.raises(fsutil.LockBusy) as info:
            with fsutil.RepositoryLock(root, 'backup'):
                pass
        assert 'another backup is already running' in str(info.value)
        assert 'pid=%d' % child.pid in str(info.value)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL
    with fsutil.RepositoryLock(root, 'backup'):
        with open(os.path.join(root, '.lock-backup')) as handle:
            assert handle.read().startswith('pid=%d ' % os.getpid())


def test_lock_wait_times_out_with_lockbusy(tmp_path):
    root = str(tmp_path)
    child = start_holder(root)
    try:
        begin = time.time()
        with pytest.raises(fsutil.LockBusy):
            with fsutil.RepositoryLock(root, 'backup', wait_s=0.6):
                pass
        assert time.time() - begin >= 0.5
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=10)


def test_lock_wait_acquires_once_the_holder_finishes(tmp_path):
    root = str(tmp_path)
    child = start_holder(root, hold_s=0.3)
    try:
        with fsutil.RepositoryLock(root, 'backup', wait_s=10):
            assert child.wait(timeout=10) == 0
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=10)


def test_tree_digest_of_the_files_digests_is_the_directory_digest(tmp_path):
    """A backup streamed from S3 is checked with tree_digest: it must agree with sha256_path of the directory."""
    (tmp_path / 'sub').mkdir()
    files = {'base.tar.zst': b'archive', 'backup_manifest': b'{}', 'sub/pg_wal.tar': b''}
    for rel, content in files.items():
        (tmp_path / rel).write_bytes(content)
    digests = dict((rel, fsutil.sha256_file(str(tmp_path / rel))) for rel in files)
    assert fsutil.tree_digest(digests) == fsutil.sha256_path(str(tmp_path))
    digests['backup_manifest'] = fsutil.sha256_file(str(tmp_path / 'base.tar.zst'))
    assert fsutil.tree_digest(digests) != fsutil.sha256_path(str(tmp_path))
