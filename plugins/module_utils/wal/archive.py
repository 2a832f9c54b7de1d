# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The local archive: layout, listing, archive.json, and push / fetch / status (S3 through s3.py)."""

import errno
import os
import time

from .errors import Conflict, FatalError, NotFound, WalArchiveError
from .names import (INFO_FILE, LONG_HEADER, archive_info_document, parse_archive_info, codec_of, format_lsn, is_date_dir, is_encrypted,
                    iso_time, name_of_stored, parse_segment_name, read_long_header, stored_name, stored_names, wal_kind)
from .durable import (CHUNK, cleanup_stale_tmp, fsync_dir, fsync_file, open_tmp,
                      remove_quietly, tmp_name, write_all)
from .store import LocalStore, merge
from .codec import (check_level, compress_into, decompress_into, file_sha256, new_sha256, raw_sha256, resolve_codec,
                    zstd_decompress_to)

# What archive.json holds, as write_archive_info writes it: push finds the identifier by this text and
# needs no JSON parser (importing json costs a fifth of a push); any other form is parsed.
_SYSID_TEXT = '"system_identifier": "'


def _s3_archive(s3):
    """An S3Archive for the S3 settings, or None; s3.py is imported only when S3 is configured."""
    if not s3 or not s3.get('bucket'):
        return None
    from .s3 import s3_archive
    return s3_archive(s3)


def wal_dir(repo):
    return os.path.join(repo, 'wal')


def _utc_date(now=None):
    return time.strftime('%Y%m%d', time.gmtime(now if now is not None else time.time()))


def _date_dirs(repo, newest_first=True):
    """Date directories of ``wal/``; a missing ``wal/`` is an empty archive, unreadable is an error."""
    try:
        names = os.listdir(wal_dir(repo))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return []
        raise
    return sorted((n for n in names if is_date_dir(n)), reverse=newest_first)


def find_segment(repo, name):
    """Path of the archived copy of ``name`` in any date directory, or None.

    Only a definite "no such file" counts as absent: a permission error or an
    unreadable directory raises, because fetch must not mistake it for the
    end of the archive.
    """
    for date in _date_dirs(repo):
        directory = os.path.join(wal_dir(repo), date)
        for candidate in stored_names(name):
            path = os.path.join(directory, candidate)
            try:
                os.lstat(path)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                    continue
                raise
            return path
    return None


def list_archive(repo):
    """Every archived file: dicts with name, file, date, path, relpath, size, compression, kind, mtime."""
    return wal_entries(LocalStore(repo))


def wal_entries(store):
    """The archived WAL files of a store's listing (local or S3: one parser for both), by name then date.
    Temporary names, ``archive.json`` and anything that is not a WAL name are left out."""
    entries = []
    for item in store.list('wal/'):
        parts = item['relpath'].split('/')
        if len(parts) != 3 or not is_date_dir(parts[1]) or parts[2].startswith('.'):
            continue
        name = name_of_stored(parts[2])
        try:
            kind = wal_kind(name)
        except ValueError:
            continue
        entries.append(dict(item, name=name, file=parts[2], date=parts[1], compression=codec_of(parts[2]), kind=kind))
    entries.sort(key=lambda e: (e['name'], e['date']))
    return entries


def merged_archive(repo, s3archive=None):
    """The local archive and its S3 copy as one list (``store.merge``): one entry per name, by name.
    ``location`` is ``local``, ``both`` or ``s3``; an S3-only entry's ``path`` is its key, and recovery
    fetches from either. ``mtime`` is the earlier of the two copies: the segment is safe from then on."""
    def earlier(local, remote):
        local['mtime'] = min(local['mtime'], remote['mtime'])

    remote = s3archive.list_archive() if s3archive is not None else None
    return sorted(merge(list_archive(repo), remote, key=lambda e: e['name'], both=earlier), key=lambda e: e['name'])


def read_archive_info(repo):
    """Content of ``wal/archive.json`` or None when the archive has none yet."""
    path = os.path.join(wal_dir(repo), INFO_FILE)
    text = _read_info_text(path)
    return None if text is None else parse_archive_info(text, path)


def _read_info_text(path):
    try:
        with open(path) as handle:
            return handle.read()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise WalArchiveError('cannot read %s: %s' % (path, exc))


def recorded_sysid(repo):
    """The system identifier (text) archive.json records, or None when the archive has none yet."""
    path = os.path.join(wal_dir(repo), INFO_FILE)
    text = _read_info_text(path)
    if text is None:
        return None
    start = text.find(_SYSID_TEXT)
    if start >= 0 and text.count('"system_identifier"') == 1:
        start += len(_SYSID_TEXT)
        end = text.find('"', start)
        if end > start and text[start:end].isdigit():
            return text[start:end]
    return str(parse_archive_info(text, path)['system_identifier'])


def write_archive_info(repo, sysid, seg_size=None):
    """Record the cluster this archive belongs to; never replaces an existing record (FileExistsError)."""
    import json
    data = (json.dumps(archive_info_document(sysid, seg_size), indent=2, sort_keys=True) + '\n').encode('utf-8')
    return LocalStore(repo).write('wal/' + INFO_FILE, lambda fd: write_all(fd, data))[0]


def _refuse_sysid(name, found, recorded, where):
    raise WalArchiveError(
        'REFUSED %s: its system identifier %s differs from %s recorded for this archive in %s. '
        'A restored copy of the cluster or another cluster must not archive here: give it its own '
        'backup_root (or archive_mode=off on restored copies). Nothing was written.'
        % (name, found, recorded, where))


def _check_source(path, name, kind):
    """Header of a segment or .partial (validated against its name), else None; opens nothing else."""
    if kind not in ('segment', 'partial'):
        return None
    try:
        with open(path, 'rb') as handle:
            first = handle.read(LONG_HEADER.size)
        size = os.path.getsize(path)
    except OSError as exc:
        raise WalArchiveError('cannot read %s: %s' % (path, exc))
    try:
        header = read_long_header(first)
        segno = parse_segment_name(name, header['seg_size'])[1]
    except ValueError as exc:
        raise WalArchiveError('%s (%s) is not a valid WAL segment: %s' % (path, name, exc))
    # Archived segments are always complete; a short file, or one whose first
    # page belongs to another position, would poison every later recovery.
    if size != header['seg_size']:
        raise WalArchiveError('%s is %d bytes but its header says segments are %d bytes: refusing a '
                              'truncated segment' % (path, size, header['seg_size']))
    if header['pageaddr'] != segno * header['seg_size']:
        raise WalArchiveError('%s holds WAL from %s, not the start of %s: wrong file for this name'
                              % (path, format_lsn(header['pageaddr']), name))
    return header


def _check_sysid(name, header, repo_local, s3):
    """Refuse WAL from another cluster; record the identifier where the archive has none yet."""
    sysid = header['system_identifier']
    local_sysid = recorded_sysid(repo_local) if repo_local else None
    s3_info = s3.read_info() if s3 else None
    if local_sysid and int(local_sysid) != sysid:
        _refuse_sysid(name, sysid, local_sysid, os.path.join(wal_dir(repo_local), INFO_FILE))
    if s3_info and int(str(s3_info['system_identifier'])) != sysid:
        _refuse_sysid(name, sysid, s3_info['system_identifier'], s3.uri(s3.key('wal/' + INFO_FILE)))
    if repo_local and local_sysid is None:
        try:
            write_archive_info(repo_local, sysid, header['seg_size'])
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
            # Another push recorded it first: check against that one.
            recorded = recorded_sysid(repo_local)
            if int(recorded) != sysid:
                _refuse_sysid(name, sysid, recorded, os.path.join(wal_dir(repo_local), INFO_FILE))
    if s3 and s3_info is None:
        s3.write_info(sysid, header['seg_size'])


def _source_sha256(path):
    try:
        return file_sha256(path)
    except OSError as exc:
        raise WalArchiveError('cannot read %s: %s' % (path, exc))


def _conflict(name, where, existing_sha, new_sha):
    raise Conflict(
        'CONFLICT %s: a different file with this name is already archived at %s (sha256 %s, the new '
        'one is %s). The archived copy is kept untouched and this push fails: find out why the '
        'cluster produced a different %s (a restored copy or a second primary?) before anything '
        'else archives here.' % (name, where, existing_sha, new_sha, name))


def _compare_local(existing, name, new_sha, encryption=None):
    try:
        existing_sha = raw_sha256(existing, encryption)
    except (WalArchiveError, OSError) as exc:
        raise Conflict('CONFLICT %s: %s is already archived but cannot be read (%s); it is kept '
                       'untouched and this push fails' % (name, existing, exc))
    if existing_sha != new_sha:
        _conflict(name, existing, existing_sha, new_sha)
    # A copy from a push that crashed between rename and directory fsync may
    # not be durable yet: make it so before calling this push a success.
    fsync_file(existing)
    fsync_dir(os.path.dirname(existing))


def _push_local(path, name, repo, codec, level, now, encryption=None, want_sha=True):
    """Store the file under wal/<date>/; returns (status, final path, raw sha256).

    With ``want_sha=False`` (no S3 mirror to record it in) a new segment is not hashed: the sha256
    is None, and computed only if another copy turns up to compare with.
    """
    existing = find_segment(repo, name)
    if existing:
        new_sha = _source_sha256(path)
        _compare_local(existing, name, new_sha, encryption)
        return 'duplicate', existing, new_sha
    # LocalStore.write creates wal/ and the date directory durably (their parents fsynced), and publishes
    # by link(2): a concurrent push of the same name cannot be replaced.
    store = LocalStore(repo)
    filename = stored_name(name, codec, encryption)
    relpath = 'wal/%s/%s' % (_utc_date(now), filename)
    cleanup_stale_tmp(os.path.dirname(store.path(relpath)), filename)

    def fill(fd):
        with open(path, 'rb') as src:
            return compress_into(src, fd, codec, level, encryption, digest=want_sha)

    try:
        final, new_sha = store.write(relpath, fill)
    except FileExistsError as exc:
        # A concurrent push of the same name won the race: same rule as a duplicate.
        new_sha = _source_sha256(path)
        _compare_local(exc.filename, name, new_sha, encryption)
        return 'duplicate', exc.filename, new_sha
    return 'archived', final, new_sha


def _push_s3(s3, path, name, relpath, local_final, codec, level, raw_sha, encryption=None):
    """Mirror to S3 under ``relpath``; returns (status, uri)."""
    existing = s3.find(name)
    if existing:
        new_sha = raw_sha or _source_sha256(path)
        existing_sha = s3.raw_sha256(existing, encryption)
        if existing_sha != new_sha:
            _conflict(name, s3.uri(existing), existing_sha, new_sha)
        return 'duplicate', s3.uri(existing)
    key = s3.key(relpath)
    if local_final:
        with open(local_final, 'rb') as handle:
            return 'archived', s3.upload(handle, key, os.path.getsize(local_final), file_sha256(local_final),
                                         raw_sha or raw_sha256(local_final, encryption))
    # --s3-only: compress into an anonymous temporary file, never into the repository.
    import tempfile
    with tempfile.TemporaryFile() as handle:
        with open(path, 'rb') as src:
            raw_sha = compress_into(src, handle.fileno(), codec, level, encryption)
        handle.seek(0)
        digest = new_sha256()
        for chunk in iter(lambda: handle.read(CHUNK), b''):
            digest.update(chunk)
        size = handle.tell()
        return 'archived', s3.upload(handle, key, size, digest.hexdigest(), raw_sha)


def push(path, name, repo=None, compression='auto', level=None, s3=None, s3_only=False, now=None, encryption=None,
         s3archive=None):
    """Archive ``path`` as ``name`` (archive_command's %p and %f).

    ``s3`` is a dict (bucket, prefix, endpoint_url, region) or None; ``encryption`` a dict
    (recipient: the age public key segments are encrypted for; identities: key files that
    decrypt, for comparing a re-pushed segment) or None; ``s3archive`` an S3Archive for those
    settings made once for many pushes (the background pusher's threads share one client).  Returns
    a dict (name, status, path, relpath, s3_uri, s3_status); raises
    WalArchiveError (Conflict for a different file under the same name) when
    the file is not durable in every configured destination.
    """
    try:
        kind = wal_kind(name)
    except ValueError as exc:
        raise WalArchiveError(str(exc))
    if s3_only and not (s3 and s3.get('bucket')):
        raise WalArchiveError('--s3-only needs an S3 bucket')
    local = bool(repo) and not s3_only
    if not local and not (s3 and s3.get('bucket')):
        raise WalArchiveError('no destination: give --repo and/or an S3 bucket')
    if local and not os.path.isdir(repo):
        # Creating it would archive onto whatever is below an unmounted mount point.
        raise WalArchiveError('repository %s does not exist (not mounted?); create it before archiving' % repo)
    header = _check_source(path, name, kind)
    if header is None and not os.path.isfile(path):
        raise WalArchiveError('cannot read %s: no such file' % path)
    codec = resolve_codec(compression) if header else 'none'
    level = check_level(codec, level)
    # Only segments carry data; .history and .backup files (timeline and LSN bookkeeping) stay readable.
    encryption = encryption if header and encryption and encryption.get('recipient') else None
    store = s3archive or _s3_archive(s3)
    if header:
        _check_sysid(name, header, repo if local else None, store)
    result = {'name': name, 'kind': kind, 'status': None, 'path': None, 'relpath': None,
              's3_uri': None, 's3_status': None}
    raw_sha = None
    if local:
        status, final, raw_sha = _push_local(path, name, repo, codec, level, now, encryption, want_sha=bool(store))
        result.update(status=status, path=final, relpath=os.path.relpath(final, repo).replace(os.sep, '/'))
    if store:
        relpath = result['relpath'] or 'wal/%s/%s' % (_utc_date(now), stored_name(name, codec, encryption))
        s3_status, uri = _push_s3(store, path, name, relpath, result['path'], codec, level, raw_sha, encryption)
        result.update(s3_status=s3_status, s3_uri=uri)
        if not local:
            result.update(status=s3_status, relpath=relpath)
    return result


def _restore(source, codec, dest, encryption=None, encrypted=False):
    """Decompress (decrypt) ``source`` (path or file object) into a temp file next to ``dest``, then rename.

    No fsync: PostgreSQL reads a restored file once, right away, and after a crash it asks
    restore_command for the segment again instead of trusting what it left in pg_wal (pgBackRest's
    archive-get skips the syncs for the same reason).  Syncing 16 MB per segment slowed every PITR.
    """
    directory = os.path.dirname(os.path.abspath(dest))
    tmp = tmp_name(directory, os.path.basename(dest))
    try:
        fd = open_tmp(tmp)
        try:
            if encrypted:
                decompress_into(source, codec, fd, encryption, encrypted)
            elif codec == 'zstd':
                zstd_decompress_to(source, fd)
            else:
                decompress_into(source, codec, fd)
        finally:
            os.close(fd)
        os.rename(tmp, dest)
    except BaseException:
        remove_quietly(tmp)
        raise


def fetch(name, dest, repo=None, s3=None, s3_only=False, encryption=None, s3archive=None):
    """Restore the archived ``name`` to ``dest`` (restore_command's %f and %p).

    Returns 'local' or 's3' (where it came from).  Raises NotFound when no
    configured location has it, FatalError when a location could not be read
    (see the exit codes in the module documentation).
    """
    try:
        wal_kind(name)
    except ValueError as exc:
        raise NotFound(str(exc))
    try:
        if repo and not s3_only:
            found = find_segment(repo, name)
            if found:
                _restore(found, codec_of(found), dest, encryption, is_encrypted(found))
                return 'local'
        store = s3archive or _s3_archive(s3)
        if store:
            key = store.find(name)
            if key:
                import tempfile
                with tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(dest))) as handle:
                    store.download(key, handle)
                    _restore(handle, codec_of(key), dest, encryption, is_encrypted(key))
                return 's3'
    except NotFound:
        raise
    except (WalArchiveError, OSError) as exc:
        raise FatalError('cannot fetch %s: %s' % (name, exc))
    raise NotFound('%s is not in the archive' % name)


def status(repo):
    """Summary for health checks: counts, newest segment and when it was archived, system identifier."""
    entries = list_archive(repo)
    info = read_archive_info(repo)
    segments = [e for e in entries if e['kind'] == 'segment']
    newest = max(segments, key=lambda e: e['name']) if segments else None
    last = max(entries, key=lambda e: e['mtime']) if entries else None
    return {
        'repo': repo,
        'system_identifier': info['system_identifier'] if info else None,
        'segments': len(segments),
        'partial': sum(1 for e in entries if e['kind'] == 'partial'),
        'history': sum(1 for e in entries if e['kind'] == 'history'),
        'backup_labels': sum(1 for e in entries if e['kind'] == 'backup'),
        'files': len(entries),
        'bytes': sum(e['size'] for e in entries),
        'date_dirs': _date_dirs(repo, newest_first=False),
        'oldest_segment': min(segments, key=lambda e: e['name'])['name'] if segments else None,
        'newest_segment': newest['name'] if newest else None,
        'newest_segment_archived_at': iso_time(newest['mtime']) if newest else None,
        'last_archived_file': last['name'] if last else None,
        'last_archived_at': iso_time(last['mtime']) if last else None,
    }
