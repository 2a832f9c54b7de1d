# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The same wal/ layout under s3://bucket/prefix; boto3 is imported only when an S3Archive is made."""

import os
import sys

from .errors import S3Failure, WalArchiveError
from .names import (DEFAULT_S3_PREFIX, INFO_FILE, archive_info_document, codec_of, is_date_dir, is_encrypted,
                    parse_archive_info, stored_names)
from .durable import CHUNK
from .codec import decompress_into, new_sha256


def _normalize_prefix(prefix):
    prefix = (prefix if prefix is not None else DEFAULT_S3_PREFIX).strip('/')
    return prefix + '/' if prefix else ''


def _add_site_packages():
    """The installed command starts with ``python3 -S`` (no site-packages, see walcommand); boto3 lives
    there (Debian's python3-boto3), so S3 adds them first."""
    if sys.flags.no_site:
        import site
        site.main()


# botocore's errors when no credentials (or half of them) were found: the host has to provide them.
CREDENTIAL_ERRORS = ('NoCredentialsError', 'PartialCredentialsError')


def no_credentials_advice(exc):
    """What to do when boto3 found no credentials: they are the host's, for root and for the server's user."""
    try:
        import pwd
        user = pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        user = 'uid %d' % os.geteuid()
    return ('%s (as OS user %s on this host). S3 credentials belong to the database host, not to the Ansible '
            'controller or AWX: give the host an instance profile, or a shared credentials file '
            '(~/.aws/credentials) for root and for the server\'s OS user, who runs the archive command; on Debian '
            'the cluster\'s /etc/postgresql/<version>/<cluster>/environment also reaches the archive command'
            % (exc, user))


def pages(client, call, action, bucket, prefix, delimiter=None):
    """The pages of one ListObjectsV2 listing, each request made through ``call(action, request)``, which
    turns botocore's errors into the caller's (the archive command's, or the collection's S3Store's)."""
    token = None
    while True:
        kwargs = {'Bucket': bucket, 'Prefix': prefix}
        if delimiter:
            kwargs['Delimiter'] = delimiter
        if token:
            kwargs['ContinuationToken'] = token
        page = call(action, lambda: client.list_objects_v2(**kwargs))
        yield page
        if not page.get('IsTruncated'):
            return
        token = page.get('NextContinuationToken')


def list_objects(client, call, bucket, prefix, relprefix=''):
    """The storage interface's ``list`` (store.py) for S3: every object under ``prefix + relprefix`` as
    ``{'relpath', 'path' (the key), 'size', 'mtime'}``, sorted by relpath."""
    found = []
    for page in pages(client, call, 'list s3://%s/%s%s' % (bucket, prefix, relprefix), bucket, prefix + relprefix):
        for obj in page.get('Contents', []):
            # LastModified is tz-aware UTC (botocore)
            found.append({'relpath': obj['Key'][len(prefix):], 'path': obj['Key'], 'size': obj['Size'],
                          'mtime': obj['LastModified'].timestamp()})
    found.sort(key=lambda item: item['relpath'])
    return found


class S3Archive(object):
    """The same ``wal/`` layout under ``s3://bucket/prefix``; boto3 is imported only here."""

    def __init__(self, bucket, prefix=None, endpoint_url=None, region=None, sse=True):
        _add_site_packages()
        try:
            import boto3
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError, ClientError
        except ImportError:
            raise WalArchiveError(
                'S3 is configured (bucket %s) but boto3 is not installed for %s: install '
                'python3-boto3 (Debian) or remove the S3 settings' % (bucket, sys.executable))
        self._errors = (BotoCoreError, ClientError)
        self._client_error = ClientError
        self.bucket = bucket
        self.prefix = _normalize_prefix(prefix)
        # s3_server_side_encryption: false (a store that refuses the header) reaches the WAL copies too.
        self.sse = {'ServerSideEncryption': 'AES256'} if sse is not False else {}
        # Few, short retries: the archiver retries a failed push by itself, and
        # a push that hangs holds back every later segment.
        config = Config(retries={'mode': 'standard', 'max_attempts': 3}, connect_timeout=5, read_timeout=60)
        self.client = boto3.client(
            's3', config=config,
            endpoint_url=endpoint_url or os.environ.get('AWS_ENDPOINT_URL') or None,
            region_name=region or os.environ.get('AWS_REGION') or os.environ.get('AWS_DEFAULT_REGION') or 'us-east-1')

    def key(self, relpath):
        return self.prefix + relpath

    def uri(self, key):
        return 's3://%s/%s' % (self.bucket, key)

    def _call(self, action, func, missing_ok=False):
        try:
            return func()
        except self._errors as exc:
            code = ''
            if isinstance(exc, self._client_error):
                code = exc.response.get('Error', {}).get('Code', '')
            if missing_ok and code in ('NoSuchKey', '404', 'NotFound'):
                return None
            if type(exc).__name__ in CREDENTIAL_ERRORS:
                raise S3Failure('S3 %s failed: %s' % (action, no_credentials_advice(exc)))
            raise S3Failure('S3 %s failed: %s' % (action, exc))

    def _list(self, prefix, delimiter=None):
        keys, prefixes = [], []
        for page in pages(self.client, self._call, 'list %s' % self.uri(prefix), self.bucket, prefix, delimiter):
            keys.extend(obj['Key'] for obj in page.get('Contents', []))
            prefixes.extend(p['Prefix'] for p in page.get('CommonPrefixes', []))
        return keys, prefixes

    def find(self, name):
        """Key of the archived copy of ``name`` under any date prefix, or None.

        One listing of the date "directories", then one listing per date
        restricted to the name: cheaper than listing every archived key.
        """
        base = self.key('wal/')
        _keys, dates = self._list(base, delimiter='/')
        wanted = set(stored_names(name))
        for date_prefix in sorted(dates, reverse=True):
            if not is_date_dir(date_prefix[len(base):].rstrip('/')):
                continue
            keys, _prefixes = self._list(date_prefix + name)
            for key in keys:
                if key[len(date_prefix):] in wanted:
                    return key
        return None

    def list(self, relprefix=''):
        """The storage interface's listing (see store.py): ``path`` is the key."""
        return list_objects(self.client, self._call, self.bucket, self.prefix, relprefix)

    def open(self, relpath):
        key = self.key(relpath)
        return self._call('read %s' % self.uri(key), lambda: self.client.get_object(Bucket=self.bucket, Key=key))['Body']

    def put(self, relpath, fileobj):
        """One PUT (S3 shows an object only once whole) with its sha256, checked by HEAD afterwards."""
        fileobj.seek(0)
        digest = new_sha256()
        for chunk in iter(lambda: fileobj.read(CHUNK), b''):
            digest.update(chunk)
        size = fileobj.tell()
        return self.upload(fileobj, self.key(relpath), size, digest.hexdigest())

    def delete(self, relpath):
        key = self.key(relpath)
        self._call('delete %s' % self.uri(key), lambda: self.client.delete_object(Bucket=self.bucket, Key=key))

    def list_archive(self):
        """Every archived object, in the shape of the local ``list_archive`` (``path`` is the key)."""
        from .archive import wal_entries
        return wal_entries(self)

    def read_text(self, key):
        obj = self._call('read %s' % self.uri(key), lambda: self.client.get_object(Bucket=self.bucket, Key=key))
        return obj['Body'].read().decode('utf-8')

    def read_info(self):
        key = self.key('wal/' + INFO_FILE)
        obj = self._call('read %s' % self.uri(key),
                         lambda: self.client.get_object(Bucket=self.bucket, Key=key), missing_ok=True)
        if obj is None:
            return None
        return parse_archive_info(obj['Body'].read().decode('utf-8'), self.uri(key))

    def write_info(self, sysid, seg_size=None):
        key = self.key('wal/' + INFO_FILE)
        import json
        body = (json.dumps(archive_info_document(sysid, seg_size), indent=2, sort_keys=True) + '\n').encode('utf-8')
        self._call('write %s' % self.uri(key), lambda: self.client.put_object(
            Bucket=self.bucket, Key=key, Body=body, ContentType='application/json', **self.sse))

    def head(self, key):
        return self._call('check %s' % self.uri(key),
                          lambda: self.client.head_object(Bucket=self.bucket, Key=key))

    def upload(self, fileobj, key, size, sha256, raw_sha=None):
        """PUT with SSE and checksums in metadata, then HEAD: done only when both agree."""
        fileobj.seek(0)
        metadata = {'sha256': sha256}
        if raw_sha:
            metadata['raw-sha256'] = raw_sha
        self._call('upload %s' % self.uri(key), lambda: self.client.put_object(
            Bucket=self.bucket, Key=key, Body=fileobj, ContentLength=size, Metadata=metadata, **self.sse))
        head = self.head(key)
        meta = head.get('Metadata', {})
        if head.get('ContentLength') != size or meta.get('sha256') != sha256:
            raise S3Failure('%s does not match what was uploaded (size %s, expected %d): not trusted'
                            % (self.uri(key), head.get('ContentLength'), size))
        return self.uri(key)

    def download(self, key, fileobj):
        obj = self._call('download %s' % self.uri(key), lambda: self.client.get_object(Bucket=self.bucket, Key=key))
        body = obj['Body']
        try:
            for chunk in iter(lambda: body.read(CHUNK), b''):
                fileobj.write(chunk)
        except self._errors as exc:
            raise S3Failure('S3 download of %s failed: %s' % (self.uri(key), exc))
        fileobj.flush()
        fileobj.seek(0)

    def raw_sha256(self, key, encryption=None):
        """sha256 of the uncompressed object: from its metadata, or by downloading it."""
        meta = self.head(key).get('Metadata', {})
        if meta.get('raw-sha256'):
            return meta['raw-sha256']
        import tempfile
        with tempfile.TemporaryFile() as handle:
            self.download(key, handle)
            return decompress_into(handle, codec_of(key), None, encryption, is_encrypted(key))


def s3_archive(s3):
    """An S3Archive from a settings dict (bucket, prefix, endpoint_url, region, sse), or None."""
    if not s3 or not s3.get('bucket'):
        return None
    return S3Archive(s3['bucket'], prefix=s3.get('prefix'), endpoint_url=s3.get('endpoint_url'),
                     region=s3.get('region'), sse=s3.get('sse', True))
