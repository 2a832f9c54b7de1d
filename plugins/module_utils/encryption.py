# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Encryption at rest with age: backups, base backups and WAL are encrypted on the host, as a stream,
before they reach the disk or S3.

age (X25519 key agreement, ChaCha20-Poly1305 in 64 KiB chunks) is authenticated: a flipped byte or a
truncated file fails to decrypt instead of yielding wrong data.  It runs as one more stage of the
pipelines that already compress (``pg_dump | zstd | age -e``), so nothing unencrypted is ever written.

Keys are age identity files (``age-keygen -o key``; the line ``AGE-SECRET-KEY-1...``), or the same text
in an environment variable.  Encryption needs only the key's public recipient (``age1...``), which is
what the ``.meta`` records as ``encryption_key_id``; the secret key never appears in an argument, a log
or a report: age reads it from a file, and a key given in the environment is written to a private
0600 file in memory (``/dev/shm``) for the run and removed afterwards.

Key rotation: encrypt new backups with the new key (``encryption_key_file``) and list the old ones in
``encryption_old_key_files`` so older backups still restore; age tries every listed identity.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import atexit
import os
import shutil
import subprocess
import tempfile

from ansible_collections.modulo.pgbackup.plugins.module_utils import errors

SUFFIX = '.age'
METHOD = 'age'
KEY_ENV = 'MODULO_PGBACKUP_ENCRYPTION_KEY'
SECRET_PREFIX = 'AGE-SECRET-KEY-1'


class EncryptionError(errors.PgBackupError):
    pass


def age_program(name='age'):
    path = shutil.which(name) or ('/usr/bin/%s' % name if os.access('/usr/bin/%s' % name, os.X_OK) else None)
    if not path:
        raise EncryptionError('encryption is configured but the %s program is not installed: install the Debian '
                              'package age (apt-get install age)' % name)
    return path


def is_encrypted(path_or_meta):
    if isinstance(path_or_meta, dict):
        return path_or_meta.get('encryption') == METHOD
    return str(path_or_meta).endswith(SUFFIX)


def strip_suffix(path):
    return path[:-len(SUFFIX)] if str(path).endswith(SUFFIX) else path


def require_keys(path, keys):
    """``keys`` for reading the encrypted ``path``; without any, say which options give them."""
    if keys is None:
        raise EncryptionError('%s is encrypted: give its key with encryption_key_file (or '
                              'encryption_old_key_files)' % path)
    return keys


class Keys(object):
    """The keys of one run: the current one (encrypts and decrypts) and old ones (decrypt only)."""

    def __init__(self, key_file=None, old_key_files=None, key_env=None):
        self.key_file = key_file
        self.old_key_files = list(old_key_files or [])
        self.key_env = key_env
        self._tmpdir = None
        self._identity = None
        self._recipient = None

    @classmethod
    def from_params(cls, params):
        """From the modules' ``encryption_*`` options; key_env names an environment variable."""
        env_name = params.get('encryption_key_env')
        return cls(key_file=params.get('encryption_key_file'), old_key_files=params.get('encryption_old_key_files'),
                   key_env=env_name if env_name and os.environ.get(env_name) else None)

    @property
    def enabled(self):
        """New backups are encrypted only when a current key is given."""
        return bool(self.key_file or self.key_env)

    def _check_file(self, path):
        try:
            with open(path) as handle:
                text = handle.read()
        except OSError as exc:
            raise EncryptionError('cannot read the encryption key file %s: %s (it must be readable by the user '
                                  'running the task, and by postgres for WAL)' % (path, exc.strerror or exc))
        if SECRET_PREFIX not in text:
            raise EncryptionError('%s is not an age identity file (no %s... line): create one with '
                                  'age-keygen -o %s' % (path, SECRET_PREFIX, path))
        return path

    def identity(self):
        """Path of the current identity file (written from the environment when the key is there)."""
        if self._identity:
            return self._identity
        if self.key_file:
            self._identity = self._check_file(self.key_file)
        elif self.key_env:
            secret = os.environ.get(self.key_env, '')
            if SECRET_PREFIX not in secret:
                raise EncryptionError('environment variable %s does not hold an age secret key (%s...)'
                                      % (self.key_env, SECRET_PREFIX))
            base = '/dev/shm' if os.path.isdir('/dev/shm') and os.access('/dev/shm', os.W_OK) else None
            self._tmpdir = tempfile.mkdtemp(prefix='modulo-pgbackup-key-', dir=base)
            # Modules end with sys.exit from exit_json/fail_json: remove the key file however the run ends.
            atexit.register(self.close)
            path = os.path.join(self._tmpdir, 'key')
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, 'w') as handle:
                handle.write(secret.strip() + '\n')
            self._identity = path
        else:
            raise EncryptionError('no encryption key given: set encryption_key_file (or encryption_key_env)')
        return self._identity

    def identities(self):
        """Every identity that may decrypt: the current one first, then the old ones."""
        found = [self.identity()] if self.enabled else []
        found.extend(self._check_file(path) for path in self.old_key_files)
        if not found:
            raise EncryptionError('this backup is encrypted: give its key with encryption_key_file (or '
                                  'encryption_key_env), or list it in encryption_old_key_files')
        return found

    def recipient(self):
        """The public key (``age1...``) of the current identity: the key id a ``.meta`` records."""
        if self._recipient is None:
            with open(self.identity(), 'rb') as handle:
                proc = subprocess.run([age_program('age-keygen'), '-y'], stdin=handle, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, check=False)
            if proc.returncode or not proc.stdout.strip():
                raise EncryptionError('cannot derive the public key of the encryption key: %s'
                                      % proc.stderr.decode('utf-8', 'replace').strip())
            self._recipient = proc.stdout.decode().split()[0]
        return self._recipient

    def encrypt_argv(self):
        """A pipeline stage: plaintext on stdin, ciphertext on stdout. Only the public key is an argument."""
        return [age_program(), '--encrypt', '--recipient', self.recipient()]

    def decrypt_argv(self, path=None):
        argv = [age_program(), '--decrypt']
        for identity in self.identities():
            argv += ['--identity', identity]
        return argv + ([path] if path else [])

    def grant(self, os_user):
        """Let the server's OS user read a key written from the environment (restore_command runs as it)."""
        if self._tmpdir and os.geteuid() == 0 and os_user and os_user != 'root':
            import pwd
            pw = pwd.getpwnam(os_user)
            for path in (self._tmpdir, self._identity):
                os.chown(path, pw.pw_uid, pw.pw_gid)

    def meta_fields(self):
        return {'encryption': METHOD, 'encryption_key_id': self.recipient()} if self.enabled else {}

    def close(self):
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
            self._identity = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def explain(stderr, meta=None):
    """age's error, said so that a DBA at 3 a.m. knows which key is missing."""
    text = (stderr or '').strip()
    key_id = (meta or {}).get('encryption_key_id')
    if 'no identity matched' in text:
        return ('none of the given keys can decrypt %s%s: add the key it was made with to '
                'encryption_old_key_files (or set it as encryption_key_file)'
                % ((meta or {}).get('name') or 'this file', ' (encrypted for %s)' % key_id if key_id else ''))
    if 'failed to decrypt' in text or 'header' in text or 'unexpected EOF' in text:
        return 'the encrypted file is damaged (authentication failed): %s' % text
    return text
