# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""S3 mirror of the repository: same relative layout under ``s3://bucket/prefix``.

Upload order mirrors the local rule: the backup's bytes first, verified
(size and sha256 read back from the object), then its ``.meta`` last, so an
interrupted upload never leaves a ``.meta`` pointing at a partial object.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import base64
import binascii
import hashlib
import importlib.util
import json
import os
import time

from ansible_collections.modulo.pgbackup.plugins.module_utils import errors, fsutil, repository
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import names as walnames, s3 as wals3

# boto3 is imported by the first S3Store, not here: importing it takes a fifth of a second, every
# module imports this file, and most runs never touch S3.
HAS_BOTO3 = importlib.util.find_spec('boto3') is not None


class _BotoNotLoaded(errors.PgBackupError):
    """Stands for botocore's exception classes until boto3 is loaded; never raised."""


_BOTO = {'BotoCoreError': _BotoNotLoaded, 'ClientError': _BotoNotLoaded, 'Boto3Error': _BotoNotLoaded}


def _load_boto3():
    if 'boto3' not in _BOTO:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError
        # upload_file/download_file wrap ClientError in these (S3UploadFailedError,
        # RetriesExceededError), which are not botocore exceptions.
        from boto3.exceptions import Boto3Error
        _BOTO.update(boto3=boto3, TransferConfig=TransferConfig, Config=Config, BotoCoreError=BotoCoreError,
                     ClientError=ClientError, Boto3Error=Boto3Error)
    return _BOTO


def botocore_errors():
    """botocore's exception classes; placeholders that match nothing until boto3 is loaded."""
    return (_BOTO['BotoCoreError'], _BOTO['ClientError'])


DEFAULT_PREFIX = walnames.DEFAULT_S3_PREFIX
MULTIPART_THRESHOLD = 64 * 1024 * 1024
# One layer of retries, botocore's own (standard mode: throttling, 5xx and connection errors, exponential
# backoff with jitter of at most 1 + 2 + 4 s): each request is tried ATTEMPTS times, so an endpoint that
# refuses connections is reported within about 10 s, one that swallows them within ATTEMPTS x
# CONNECT_TIMEOUT_S + 7 s. The store itself never loops around botocore.
ATTEMPTS = 4
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 60
DELETE_BATCH = 1000
# A download read as a stream (ObjectReader) that breaks off is resumed from where it stopped, after these
# pauses, and given up after as many resumes in a row that bring no byte (one that does starts the count
# again: a flapping link still makes progress); botocore retries the requests themselves, not the reading
# of a response body.
RESUME_DELAYS_S = (1, 2, 4)


class S3Error(errors.PgBackupError):
    pass


def _unwrap(exc):
    """The botocore error behind boto3's transfer wrappers, so its error code can be read."""
    if isinstance(exc, botocore_errors()):
        return exc
    for inner in (getattr(exc, 'last_exception', None), exc.__cause__, exc.__context__):
        if isinstance(inner, botocore_errors()):
            return inner
    return exc


def normalize_prefix(prefix):
    prefix = (prefix if prefix is not None else DEFAULT_PREFIX).strip('/')
    return prefix + '/' if prefix else ''


def cluster_prefix(prefix, host, per_host=True):
    """The key prefix of one cluster's backups and WAL in a bucket a fleet shares: ``prefix`` (empty or
    None: the default), then the inventory host name, so that each cluster keeps its own ``archive.json``,
    WAL, base and logical backups and retention ages each cluster apart. ``per_host=False`` is the
    runbook's single-host layout, ``prefix`` alone."""
    base = normalize_prefix(prefix or None)
    if not per_host:
        return base
    host = str(host or '').strip()
    if not host or '/' in host or host in ('.', '..'):
        raise ValueError('cannot make an S3 prefix of the host name %r: give each cluster pgbackup_s3_prefix '
                         'of its own and set pgbackup_s3_prefix_per_host: false' % (host,))
    return base + host + '/'


class S3Store(object):
    def __init__(self, bucket, prefix=None, region=None, endpoint_url=None, sse=True):
        if not HAS_BOTO3:
            raise S3Error('boto3 is required for S3 (s3_bucket is set): install python3-boto3 '
                          '(Debian) or pip install boto3 for the Python that runs the module')
        boto = _load_boto3()
        self.bucket = bucket
        self.prefix = normalize_prefix(prefix)
        self.sse = sse
        config = boto['Config'](retries={'mode': 'standard', 'total_max_attempts': ATTEMPTS},
                                connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S)
        self.client = boto['boto3'].client('s3', region_name=region or 'us-east-1', endpoint_url=endpoint_url or None,
                                           config=config)
        self.transfer = boto['TransferConfig'](multipart_threshold=MULTIPART_THRESHOLD,
                                               multipart_chunksize=MULTIPART_THRESHOLD, max_concurrency=4)

    def key(self, relpath):
        return self.prefix + relpath.replace(os.sep, '/')

    def uri(self, relpath):
        return 's3://%s/%s' % (self.bucket, self.key(relpath))

    def _explain(self, exc, action):
        text = str(exc)
        code = ''
        if isinstance(exc, _BOTO['ClientError']):
            code = exc.response.get('Error', {}).get('Code', '')
        if type(exc).__name__ in wals3.CREDENTIAL_ERRORS:
            return 'S3 cannot %s: %s' % (action, wals3.no_credentials_advice(exc))
        if code == 'NoSuchBucket':
            return 'S3 bucket %r does not exist: create it or fix s3_bucket (%s)' % (self.bucket, action)
        if code in ('AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch'):
            return 'S3 refused %s on bucket %r (%s): check the credentials and bucket policy' % (action, self.bucket, code)
        if 'Could not connect' in text or 'Connect timeout' in text or 'EndpointConnectionError' in type(exc).__name__:
            return 'S3 endpoint unreachable while trying to %s (%s): check s3_endpoint_url/network' % (action, text)
        return 'S3 error while trying to %s: %s' % (action, text)

    def _call(self, action, func):
        """Run one S3 request (botocore retries it, see ATTEMPTS); its failure as an S3Error saying what to do."""
        try:
            return func()
        except botocore_errors() + (_BOTO['Boto3Error'],) as error:
            raise S3Error(self._explain(_unwrap(error), action))

    def upload_file(self, local_path, relpath, sha256=None):
        """Upload one file and check what S3 stored before calling it done.

        S3 validates the SHA-256 checksum of every part on receipt (ChecksumAlgorithm),
        and for a single-part object we compare the whole-object checksum S3 reports
        with our own; the size is compared for every object.
        """
        extra = {'Metadata': {}, 'ChecksumAlgorithm': 'SHA256'}
        if self.sse:
            extra['ServerSideEncryption'] = 'AES256'
        sha256 = sha256 or fsutil.sha256_file(local_path)
        extra['Metadata']['sha256'] = sha256
        key = self.key(relpath)
        self._call('upload %s' % self.uri(relpath), lambda: self.client.upload_file(
            local_path, self.bucket, key, ExtraArgs=extra, Config=self.transfer))
        head = self._call('check %s' % self.uri(relpath),
                          lambda: self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode='ENABLED'))
        size = os.path.getsize(local_path)
        stored = head.get('ChecksumSHA256') or ''
        expected = base64.b64encode(binascii.unhexlify(sha256)).decode('ascii')
        # A multipart object's checksum is a checksum of part checksums; S3 checked each part on receipt.
        whole_object = stored and size < MULTIPART_THRESHOLD
        if head.get('ContentLength') != size or (whole_object and stored != expected):
            raise S3Error('S3 object %s does not match the local file after upload (size %s vs %s, sha256 %s vs %s): '
                          'the upload is not trusted' % (self.uri(relpath), head.get('ContentLength'), size,
                                                         stored, expected))
        return self.uri(relpath)

    def upload_backup(self, root, backup_path, meta_path, extra_paths=()):
        """Upload a backup (file or directory) and its companions; the ``.meta`` goes last."""
        uploaded = []
        files = []
        if os.path.isdir(backup_path):
            for base, _dirs, names in os.walk(backup_path):
                files.extend(os.path.join(base, n) for n in sorted(names))
        else:
            files.append(backup_path)
        files.extend(p for p in extra_paths if p and os.path.exists(p))
        for path in files:
            uploaded.append(self.upload_file(path, os.path.relpath(path, root)))
        uploaded.append(self.upload_file(meta_path, os.path.relpath(meta_path, root)))
        return self.uri(os.path.relpath(backup_path, root)), uploaded

    def list(self, relprefix=''):
        """The storage interface's listing (wal/store.py): ``{'relpath', 'path' (the key), 'size', 'mtime'}``."""
        return wals3.list_objects(self.client, self._call, self.bucket, self.prefix, relprefix.replace(os.sep, '/'))

    def list_keys(self, relprefix):
        return [item['path'] for item in self.list(relprefix)]

    def open(self, relpath):
        key = self.key(relpath)
        return self._call('read s3://%s/%s' % (self.bucket, key),
                          lambda: self.client.get_object(Bucket=self.bucket, Key=key))['Body']

    def read_json(self, relpath):
        return json.loads(self.open(relpath).read().decode('utf-8'))

    def delete_keys(self, keys):
        """Delete keys in batches of up to DELETE_BATCH (the DeleteObjects limit); returns ``{key: error}``
        of those S3 refused."""
        refused = {}
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start:start + DELETE_BATCH]
            response = self._call('delete in s3://%s' % self.bucket, lambda b=batch: self.client.delete_objects(
                Bucket=self.bucket, Delete={'Objects': [{'Key': k} for k in b], 'Quiet': True}))
            refused.update((err.get('Key'), '%s: %s' % (err.get('Code'), err.get('Message')))
                           for err in response.get('Errors', []))
        return refused

    def list_metas(self, kind_dir='full'):
        """The ``.meta`` of every backup in ``kind_dir``, one per backup (the runbook's name when there are two),
        read as the local repository reads its own (``repository.read_metas``); an unreadable one is left out."""
        metas = []
        names = [item['relpath'][len(kind_dir) + 1:] for item in self.list(kind_dir + '/')]
        found = repository.meta_files_by_backup(n for n in names if '/' not in n)
        for _name, _meta_file, meta, problem in repository.read_metas(
                found, lambda filename: self.read_json(kind_dir + '/' + filename)):
            if problem:
                continue
            meta['s3_uri'] = self.uri(os.path.join(kind_dir, meta.get('file', meta.get('name', ''))))
            meta['location'] = 's3'
            metas.append(meta)
        metas.sort(key=lambda m: (m.get('started_at') or '', m.get('name') or ''))
        return metas

    def download_backup(self, root, meta, kind_dir='full'):
        """Fetch a backup into the local repository (temp name, checked, then renamed)."""
        filename = meta.get('file') or meta['name']
        final = os.path.join(root, kind_dir, filename)
        relpath = os.path.join(kind_dir, filename)
        keys = self.list_keys(relpath)
        if not keys:
            raise S3Error('backup %s has a .meta in S3 but no data at %s' % (meta.get('name'), self.uri(relpath)))
        tmp = fsutil.tmp_path_for(final)
        try:
            if meta.get('format') == 'directory' or meta.get('type') == 'physical':
                fsutil.ensure_dir(tmp)
                base_key = self.key(relpath) + '/'
                self._download_into(relpath, [k[len(base_key):] for k in keys if k.startswith(base_key)], tmp)
            else:
                self._call('download %s' % self.uri(relpath),
                           lambda: self.client.download_file(self.bucket, self.key(relpath), tmp,
                                                             Config=self.transfer))
            fsutil.chmod_tree(tmp)
            digest = fsutil.sha256_path(tmp)
            if meta.get('sha256') and digest != meta['sha256']:
                raise S3Error('backup %s downloaded from S3 does not match its .meta checksum: '
                              'the S3 copy is damaged, choose another backup' % meta.get('name'))
            fsutil.publish(tmp, final)
        except BaseException:
            fsutil.remove_quietly(tmp)
            raise
        meta_local = dict(meta)
        for key in ('s3_uri', 'location', 'path', 'meta_path'):
            meta_local.pop(key, None)
        meta_file = os.path.join(root, kind_dir, repository.meta_name(filename))
        if not os.path.exists(meta_file):
            fsutil.write_json_atomic(meta_file, meta_local)
        return final

    def _download_into(self, relpath, names, directory):
        """Download the objects ``relpath``/``name`` of a backup directory into ``directory``/``name``."""
        for name in names:
            target = os.path.join(directory, name)
            fsutil.ensure_dir(os.path.dirname(target))
            key = self.key(relpath + '/' + name)
            self._call('download s3://%s/%s' % (self.bucket, key), lambda k=key, t=target:
                       self.client.download_file(self.bucket, k, t, Config=self.transfer))

    def manifest_size(self, meta, kind_dir='base'):
        """Bytes a physical backup in S3 unpacks to, from its ``backup_manifest`` (None without one): what
        the restore's free-space check needs, since the stored size is the compressed one."""
        relpath = '/'.join((kind_dir, meta.get('file') or meta['name'], repository.MANIFEST))
        try:
            return repository.manifest_bytes(self.read_json(relpath))
        except (S3Error, ValueError):
            return None

    def stream_backup(self, root, meta, kind_dir, choose):
        """A physical backup to unpack straight from S3 (StreamedBackup), or None when ``choose(names, uri)``,
        given the names of its files, names no archive that can be read as a stream (then download_backup it).

        Its other files (manifest, pg_wal.tar) are fetched into a temporary directory of the repository
        that never looks like a backup; the archive itself is never stored here.
        """
        filename = meta.get('file') or meta['name']
        relpath = '/'.join((kind_dir, filename))
        names = [item['relpath'][len(relpath) + 1:] for item in self.list(relpath + '/')]
        archive = choose(names, self.uri(relpath))
        if archive is None:
            return None
        staging = fsutil.tmp_path_for(os.path.join(root, kind_dir, filename))
        fsutil.ensure_dir(staging)
        try:
            self._download_into(relpath, [name for name in names if name != archive], staging)
            return StreamedBackup(meta, staging, archive, ObjectReader(self, relpath + '/' + archive))
        except BaseException:
            fsutil.remove_quietly(staging)
            raise


class ObjectReader(object):
    """One S3 object read once from start to end as a file (``readinto``), hashed on the way.

    A response body that breaks off (reset, timeout, short read) is resumed with a ranged GET from the
    first byte not yet read, and only while the object is the one first opened (If-Match on its ETag):
    a large base backup is not downloaded again from the start, and never spliced from two versions.
    """

    def __init__(self, store, relpath):
        self.store, self.relpath = store, relpath
        self.uri = store.uri(relpath)
        self.offset = self.resumed = 0
        self.size = self._etag = self._body = None
        self._digest = hashlib.sha256()

    def _open(self):
        request = {'Bucket': self.store.bucket, 'Key': self.store.key(self.relpath)}
        if self._etag is not None:
            request.update(IfMatch=self._etag, Range='bytes=%d-' % self.offset)
        response = self.store._call('read %s' % self.uri, lambda: self.store.client.get_object(**request))
        if self._etag is None:
            self._etag, self.size = response['ETag'], int(response['ContentLength'])
        self._body = response['Body']

    def readinto(self, buffer):
        if self._body is None:
            # Opened at the first read, not before: a cluster restore stops the server in between, and an
            # unread response would sit on an idle connection meanwhile.
            self._open()
        failures = 0
        while True:
            try:
                # read(), not readinto(): Debian 12's botocore (1.29) has no StreamingBody.readinto, and one
                # copy of a chunk costs nothing beside its decompression.
                data = self._body.read(len(buffer))
                count = len(data)
                buffer[:count] = data
                break
            except botocore_errors() + (OSError,) as exc:
                if failures == len(RESUME_DELAYS_S):
                    raise S3Error('reading %s broke off at byte %d of %d and could not be resumed %d times: %s'
                                  % (self.uri, self.offset, self.size, failures, exc))
                self._close_body()
                time.sleep(RESUME_DELAYS_S[failures])
                failures += 1
                self.resumed += 1
                try:
                    self._open()
                except S3Error as reopen:
                    raise S3Error('reading %s broke off at byte %d of %d (%s) and resuming it failed (if the '
                                  'object changed meanwhile, restore again): %s'
                                  % (self.uri, self.offset, self.size, exc, reopen))
        if count:
            self._digest.update(memoryview(buffer)[:count])
            self.offset += count
        return count

    def read(self, size=-1):
        if size is None or size < 0:
            size = max(self.size - self.offset, 0)
        buffer = bytearray(size)
        return bytes(buffer[:self.readinto(buffer)]) if size else b''

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    @property
    def complete(self):
        return self.offset == self.size

    def hexdigest(self):
        return self._digest.hexdigest()

    def _close_body(self):
        try:
            self._body.close()
        except Exception:  # the connection is already broken; closing it is a courtesy
            pass

    def close(self):
        if self._body is not None:
            self._close_body()
        self._body = None


class StreamedBackup(object):
    """A physical backup unpacked while it is read from S3: ``path`` holds its other files, ``reader`` is its
    archive ``archive_name``. ``verify()``, once the archive is read to its end, checks the whole backup
    against the checksum of its ``.meta``, as download_backup does before anything uses a downloaded copy."""

    def __init__(self, meta, path, archive_name, reader):
        self.meta, self.path, self.archive_name, self.reader = meta, path, archive_name, reader

    @property
    def uri(self):
        return self.reader.uri

    def verify(self):
        if not self.reader.complete:
            raise S3Error('%s was read only to byte %d of %d: the unpacked copy is incomplete'
                          % (self.uri, self.reader.offset, self.reader.size))
        digests = fsutil.file_digests(self.path)
        digests[self.archive_name] = self.reader.hexdigest()
        expected = self.meta.get('sha256')
        if expected and fsutil.tree_digest(digests) != expected:
            raise S3Error('backup %s read from S3 does not match its .meta checksum: the S3 copy is damaged, '
                          'choose another backup' % self.meta.get('name'))

    def close(self):
        self.reader.close()
        fsutil.remove_quietly(self.path)
