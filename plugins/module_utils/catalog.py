# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What backups exist (locally and in S3) and whether they are intact (health: see health.py)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import subprocess
import time

from ansible_collections.modulo.pgbackup.plugins.module_utils import compression, encryption, fsutil, pipeline, repository
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import archive as walarchive

KIND_DIRS = {'logical': 'full', 'physical': 'base'}


def list_backups(repo, kinds=('logical',), s3=None):
    """Backups oldest first; one entry per name, ``location`` local, s3 or both."""
    backups, problems = [], []
    for kind in kinds:
        entries, found = repo.scan(KIND_DIRS[kind])
        problems.extend(found)
        backups.extend(repository.with_s3(entries, s3, KIND_DIRS[kind]))
    backups.sort(key=lambda m: (m.get('started_at') or '', m.get('name') or ''))
    return backups, problems


def verify(meta, pg_restore=None, keys=None):
    """Recompute the sha256 and decompress (and decrypt) everything; return a dict of findings."""
    path = meta.get('path')
    result = {'name': meta.get('name'), 'checksum_ok': None, 'decompress_ok': None, 'errors': []}
    if not path or not os.path.exists(path):
        result['errors'].append('not present locally (location %s): fetch it to verify' % meta.get('location'))
        result['ok'] = False
        return result
    digest = fsutil.sha256_path(path)
    result['checksum_ok'] = digest == meta.get('sha256')
    if not result['checksum_ok']:
        result['errors'].append('sha256 %s does not match the .meta (%s)' % (digest, meta.get('sha256')))
    result['decompress_ok'], error = decompress_test(meta, path, pg_restore, keys)
    if error:
        result['errors'].append(error)
    result['ok'] = bool(result['checksum_ok'] and result['decompress_ok'])
    return result


def decompress_test(meta, path, pg_restore=None, keys=None):
    """Read the whole backup the way a restore would, without writing anything.

    Encrypted backups are decrypted on the way (age authenticates every chunk, so a damaged or
    truncated file fails here), then decompressed.
    """
    fmt = meta.get('format', 'plain')
    if os.path.isdir(path):
        files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.startswith('base.tar'))
        if fmt != 'tar' or not files:
            return _decompress_test_one(meta, path, fmt, pg_restore, keys)
        for name in files:
            ok, error = _decompress_test_one(meta, name, 'tar', pg_restore, keys)
            if not ok:
                return ok, error
        return True, None
    return _decompress_test_one(meta, path, fmt, pg_restore, keys)


def _decompress_test_one(meta, path, fmt, pg_restore, keys):
    codec = compression.codec_of_path(path) if fmt != 'directory' else 'none'
    try:
        if encryption.is_encrypted(path):
            stages, _stdin = compression.read_stages(path, keys)
            if fmt == 'custom' and codec == 'none' and pg_restore:
                stages.append([pg_restore, '-f', '/dev/null'])
            pipeline.run(stages, stdout_path=None)
            return True, None
        if codec != 'none':
            argv = compression.test_argv(codec, path)
            proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
            if proc.returncode:
                return False, '%s reports a damaged file: %s' % (' '.join(argv[:2]), proc.stderr.decode().strip())
        if fmt in ('custom', 'directory') and codec == 'none' and pg_restore:
            # pg_restore reads every block (and inflates pg_dump's own compression) to write the script.
            proc = subprocess.run([pg_restore, '-f', '/dev/null', path], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, check=False)
            if proc.returncode:
                return False, 'pg_restore cannot read the archive: %s' % proc.stderr.decode().strip()[-500:]
    except (compression.CompressionError, encryption.EncryptionError) as exc:
        return False, str(exc)
    except pipeline.PipelineError as exc:
        return False, encryption.explain(exc.stderr, meta) if exc.stage == 'age' else str(exc)
    return True, None


def recovery_window(backups, repo_root, chain=None):
    """The points a restore can reach now: the newest logical snapshot and the PITR range.

    A logical backup recovers the moment its dump snapshot was taken (its start);
    PITR reaches from the end of the oldest complete base backup to the newest
    WAL segment in the local archive (archived at most archive_timeout after its
    last write).  ``newest_point`` is the later of the two.  ``chain`` (health's
    check from the oldest base backup whose WAL is continuous) moves the start of the
    PITR range to that base backup, or, when even the newest base backup has a gap
    after it, the end back to the last segment before the gap.
    """
    complete = [b for b in backups if repository.is_complete(b)]
    logical = [b for b in complete if b.get('type') == 'logical']
    bases = [b for b in complete if b.get('type') == 'physical']
    window = {'logical': None, 'pitr': None, 'newest_point': None, 'newest_method': None}
    if logical:
        newest = logical[-1]
        window['logical'] = {'backup': newest['name'], 'database': newest.get('database'),
                             'point': newest.get('started_at')}
    archive = None
    try:
        if os.path.isdir(walarchive.wal_dir(repo_root)):
            archive = walarchive.status(repo_root)
    except OSError as exc:
        # A listing must not fail over the archive (e.g. wal/ readable only by the server's OS user).
        window['archive_error'] = 'cannot read the WAL archive: %s' % exc
    if bases and archive and archive.get('last_archived_at'):
        # The chain check names the oldest base backup recovery can start from (a gap before it shortens the window).
        window['pitr'] = {'from': (chain or {}).get('base_finished_at') or bases[0].get('finished_at'),
                          'to': archive['last_archived_at'], 'base_backups': len(bases),
                          'newest_segment': archive.get('newest_segment')}
        if chain is not None and not chain.get('ok'):
            reachable = chain.get('reachable')
            path = walarchive.find_segment(repo_root, reachable) if reachable else None
            window['pitr'].update(gap=(chain.get('missing') or [None])[0], problem=chain.get('problem'),
                                  newest_segment=reachable,
                                  to=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(os.stat(path).st_mtime))
                                  if path else window['pitr']['from'])
    candidates = [(window['pitr']['to'], 'pitr')] if window['pitr'] else []
    if window['logical'] and window['logical']['point']:
        candidates.append((window['logical']['point'], 'logical'))
    if candidates:
        window['newest_point'], window['newest_method'] = max(candidates)
    return window
