# -*- coding: utf-8 -*-
"""Encryption at rest with the real age program: keys, WAL push/fetch, streams that are never plaintext."""

import os
import subprocess

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import compression, encryption, pipeline
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import archive as walarchive, errors as walerrors
# The WAL tests' own segments and fixtures (``repo`` here is a directory, not the conftest's Repository).
from ansible_collections.modulo.pgbackup.tests.unit.plugins.module_utils.test_walarchive import (  # noqa: F401  # pylint: disable=unused-import
    make_segment, pg_wal, repo, sha, temp_files)

pytestmark = pytest.mark.skipif(not os.path.exists('/usr/bin/age'), reason='the age package is not installed')


def keygen(path):
    subprocess.run(['age-keygen', '-o', str(path)], check=True, stderr=subprocess.DEVNULL)
    return str(path)


@pytest.fixture
def keys(tmp_path):
    return {'new': keygen(tmp_path / 'new.key'), 'old': keygen(tmp_path / 'old.key'),
            'other': keygen(tmp_path / 'other.key')}


def wal_settings(key, *old):
    recipient = encryption.Keys(key_file=key).recipient()
    return {'recipient': recipient, 'identities': [key] + list(old)}


# --- Keys ---------------------------------------------------------------------------------------

def test_key_file_recipient_and_argv_never_hold_the_secret(keys):
    with open(keys['new']) as handle:
        secret = [line for line in handle if line.startswith(encryption.SECRET_PREFIX)][0].strip()
    k = encryption.Keys(key_file=keys['new'], old_key_files=[keys['old']])
    assert k.enabled and k.recipient().startswith('age1')
    argv = k.encrypt_argv() + k.decrypt_argv('/x')
    assert secret not in ' '.join(argv)
    assert k.decrypt_argv('/x')[-1] == '/x' and argv.count('--identity') == 2
    assert k.meta_fields() == {'encryption': 'age', 'encryption_key_id': k.recipient()}


def test_key_from_the_environment_lives_in_a_private_file_removed_at_close(keys, monkeypatch):
    with open(keys['new']) as handle:
        monkeypatch.setenv('MY_BACKUP_KEY', handle.read())
    k = encryption.Keys.from_params({'encryption_key_env': 'MY_BACKUP_KEY'})
    path = k.identity()
    assert os.stat(path).st_mode & 0o777 == 0o600 and os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    assert k.recipient() == encryption.Keys(key_file=keys['new']).recipient()
    k.close()
    assert not os.path.exists(path)
    # an unset variable means no encryption, not an error
    assert not encryption.Keys.from_params({'encryption_key_env': 'NOT_SET_ANYWHERE'}).enabled


def test_bad_keys_are_refused_clearly(tmp_path, monkeypatch):
    bogus = tmp_path / 'bogus.key'
    bogus.write_text('not a key\n')
    with pytest.raises(encryption.EncryptionError, match='not an age identity file'):
        encryption.Keys(key_file=str(bogus)).recipient()
    with pytest.raises(encryption.EncryptionError, match='cannot read the encryption key file'):
        encryption.Keys(key_file=str(tmp_path / 'missing.key')).recipient()
    monkeypatch.setenv('MY_BACKUP_KEY', 'hunter2')
    with pytest.raises(encryption.EncryptionError, match='does not hold an age secret key'):
        encryption.Keys.from_params({'encryption_key_env': 'MY_BACKUP_KEY'}).identity()
    with pytest.raises(encryption.EncryptionError, match='this backup is encrypted'):
        encryption.Keys().identities()


def test_stream_round_trip_rotation_and_wrong_key(keys, tmp_path):
    plain = tmp_path / 'dump.sql'
    plain.write_bytes(b'COPY public.orders FROM stdin;\n' + b'42\tsecret order\n' * 5000)
    stored = str(tmp_path / 'dump.sql.gz.age')
    old = encryption.Keys(key_file=keys['old'])
    pipeline.run([compression.compress_argv('gzip', 6), old.encrypt_argv()], stdin_path=str(plain),
                 stdout_path=stored)
    with open(stored, 'rb') as handle:
        data = handle.read()
    assert b'secret order' not in data and data.startswith(b'age-encryption.org/v1')
    # after rotation: the new key encrypts, the old one still decrypts
    rotated = encryption.Keys(key_file=keys['new'], old_key_files=[keys['old']])
    stages, stdin = compression.read_stages(stored, rotated)
    out = str(tmp_path / 'back.sql')
    pipeline.run(stages, stdin_path=stdin, stdout_path=out)
    assert sha(out) == sha(str(plain))
    # a key that never encrypted it: a message that says which key to add
    wrong = encryption.Keys(key_file=keys['other'])
    stages, stdin = compression.read_stages(stored, wrong)
    with pytest.raises(pipeline.PipelineError) as caught:
        pipeline.run(stages, stdin_path=stdin, stdout_path=str(tmp_path / 'nope.sql'))
    assert caught.value.stage == 'age'
    assert 'encryption_old_key_files' in encryption.explain(caught.value.stderr, {'name': 'modulo_full_x'})
    with pytest.raises(encryption.EncryptionError, match='is encrypted'):
        compression.read_stages(stored, None)
    assert compression.codec_of_path(stored) == 'gzip'


# --- WAL ----------------------------------------------------------------------------------------

def test_wal_push_and_fetch_encrypted(repo, pg_wal, keys, tmp_path):
    name = '000000010000000000000003'
    src = make_segment(pg_wal, name)
    settings = wal_settings(keys['new'])
    result = walarchive.push(src, name, repo=repo, compression='zstd', encryption=settings)
    assert result['status'] == 'archived' and result['path'].endswith(name + '.zst.age')
    with open(result['path'], 'rb') as handle:
        assert handle.read(21) == b'age-encryption.org/v1'
    [entry] = walarchive.list_archive(repo)
    assert entry['name'] == name and entry['compression'] == 'zstd'
    # the same segment again: a duplicate, compared through decryption
    assert walarchive.push(src, name, repo=repo, compression='zstd', encryption=settings)['status'] == 'duplicate'
    dest = str(tmp_path / 'RECOVERYXLOG')
    assert walarchive.fetch(name, dest, repo=repo, encryption=settings) == 'local'
    assert sha(dest) == sha(src) and temp_files(repo) == []
    # a different segment under the same name is still a conflict
    other = make_segment(tmp_path, name, seed=b'other')
    with pytest.raises(walerrors.Conflict):
        walarchive.push(other, name, repo=repo, compression='zstd', encryption=settings)


def test_wal_fetch_with_the_wrong_key_or_none_is_fatal(repo, pg_wal, keys, tmp_path):
    name = '000000010000000000000004'
    walarchive.push(make_segment(pg_wal, name), name, repo=repo, compression='gzip',
                    encryption=wal_settings(keys['old']))
    with pytest.raises(walerrors.FatalError, match='none of encryption_key_files can decrypt'):
        walarchive.fetch(name, str(tmp_path / 'x'), repo=repo, encryption={'identities': [keys['other']]})
    with pytest.raises(walerrors.FatalError, match='no encryption_key_files'):
        walarchive.fetch(name, str(tmp_path / 'x'), repo=repo)
    assert not os.path.exists(str(tmp_path / 'x'))
    # rotated: the new key archives, the old one is listed for fetching
    rotated = wal_settings(keys['new'], keys['old'])
    walarchive.fetch(name, str(tmp_path / 'y'), repo=repo, encryption=rotated)
    assert sha(str(tmp_path / 'y')) == sha(os.path.join(pg_wal, name))


def test_wal_tampered_encrypted_segment_is_refused(repo, pg_wal, keys, tmp_path):
    name = '000000010000000000000005'
    settings = wal_settings(keys['new'])
    stored = walarchive.push(make_segment(pg_wal, name), name, repo=repo, compression='none',
                             encryption=settings)['path']
    os.chmod(stored, 0o600)
    with open(stored, 'r+b') as handle:
        handle.seek(5000)
        byte = handle.read(1)
        handle.seek(5000)
        handle.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(walerrors.FatalError, match='age could not decrypt'):
        walarchive.fetch(name, str(tmp_path / 'z'), repo=repo, encryption=settings)
    assert not os.path.exists(str(tmp_path / 'z'))


def test_history_files_stay_readable(repo, pg_wal, keys):
    path = os.path.join(pg_wal, '00000002.history')
    with open(path, 'w') as handle:
        handle.write('1\t0/3000000\tno recovery target specified\n')
    result = walarchive.push(path, '00000002.history', repo=repo, encryption=wal_settings(keys['new']))
    assert result['path'].endswith('00000002.history')
    with open(result['path']) as handle:
        assert handle.read().startswith('1\t0/3000000')


def test_the_installed_command_reads_its_encryption_settings(repo, pg_wal, keys, tmp_path):
    """The archive command as PostgreSQL runs it: the system python3, its generated settings."""
    from ansible_collections.modulo.pgbackup.plugins.module_utils import walcommand
    name = '000000010000000000000006'
    src = make_segment(pg_wal, name)
    settings = wal_settings(keys['new'])
    command = walcommand.install(str(tmp_path / 'pgbackup-wal'), {
        'repo': repo, 'compression': 'zstd', 'encryption_recipient': settings['recipient'],
        'encryption_key_files': settings['identities']})
    archive, restore = walcommand.command_lines(command)
    subprocess.run(archive.replace('%p', src).replace('%f', name), shell=True, check=True)
    assert walarchive.list_archive(repo)[0]['file'] == name + '.zst.age'
    dest = str(tmp_path / 'fetched')
    subprocess.run(restore.replace('%f', name).replace('%p', dest), shell=True, check=True)
    assert sha(dest) == sha(src)


# --- Base backups -------------------------------------------------------------------------------

def test_encrypted_base_backup_unpacks_with_its_key_only(keys, tmp_path):
    """scratch.extract_base decrypts a base.tar.zst.age in-process; a wrong key says which option to use."""
    from ansible_collections.modulo.pgbackup.plugins.module_utils import scratch
    source = tmp_path / 'src'
    (source / 'global').mkdir(parents=True)
    (source / 'global' / 'pg_control').write_bytes(os.urandom(8192))
    tar = subprocess.run(['tar', '-c', '-f', '-', '-C', str(source), '.'], stdout=subprocess.PIPE, check=True).stdout
    backup = tmp_path / 'backup'
    backup.mkdir()
    stages = [['zstd', '-q', '-c'], encryption.Keys(key_file=keys['old']).encrypt_argv()]
    plain = tmp_path / 'base.tar'
    plain.write_bytes(tar)
    pipeline.run(stages, stdin_path=str(plain), stdout_path=str(backup / 'base.tar.zst.age'))

    scratch.extract_base(str(backup), str(tmp_path / 'ok'), keys=encryption.Keys(key_file=keys['new'],
                                                                                 old_key_files=[keys['old']]))
    assert (tmp_path / 'ok' / 'global' / 'pg_control').read_bytes() == (source / 'global' / 'pg_control').read_bytes()
    with pytest.raises(scratch.ScratchError, match='encryption_old_key_files'):
        scratch.extract_base(str(backup), str(tmp_path / 'wrong'), keys=encryption.Keys(key_file=keys['other']))
    with pytest.raises(scratch.ScratchError, match='encryption_key_file'):
        scratch.extract_base(str(backup), str(tmp_path / 'none'))


class _Stream(object):
    """A file object with readinto and no descriptor, as an object read from S3 (s3store.ObjectReader);
    ``fail_after`` bytes, then the error a broken connection gives for good."""

    def __init__(self, data, fail_after=None):
        self.data, self.offset, self.fail_after = data, 0, fail_after

    def readinto(self, buffer):
        if self.fail_after is not None and self.offset >= self.fail_after:
            raise encryption.EncryptionError('the S3 read broke off for good')
        piece = self.data[self.offset:self.offset + min(len(buffer), 65536)]
        buffer[:len(piece)] = piece
        self.offset += len(piece)
        return len(piece)


def test_an_encrypted_stream_without_a_descriptor_is_fed_to_age_and_its_own_failure_is_the_error(keys, tmp_path):
    from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import codec as walcodec
    content = os.urandom(700 * 1024) + b'\0' * (3 * 1024 * 1024)
    plain, stored = tmp_path / 'plain', tmp_path / 'base.tar.zst.age'
    plain.write_bytes(content)
    with open(str(plain), 'rb') as src, open(str(stored), 'wb') as dst:
        walcodec.compress_into(src, dst.fileno(), 'zstd', 3, encryption=wal_settings(keys['new']))
    data = stored.read_bytes()
    settings = {'identities': [keys['new']]}
    got = b''.join(bytes(c) for c in walcodec.content_chunks(_Stream(data), 'zstd', settings, encrypted=True))
    assert got == content
    # A read that fails half way: its own error, not age's complaint about a truncated input.
    with pytest.raises(encryption.EncryptionError, match='broke off for good'):
        for _chunk in walcodec.content_chunks(_Stream(data, fail_after=len(data) // 2), 'zstd', settings,
                                              encrypted=True):
            pass
    # The wrong key: age's own error, as for a file.
    with pytest.raises(walerrors.WalArchiveError, match='age could not decrypt the S3 object'):
        for _chunk in walcodec.content_chunks(_Stream(data), 'zstd', {'identities': [keys['other']]}, encrypted=True):
            pass
