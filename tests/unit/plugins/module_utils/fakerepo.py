# -*- coding: utf-8 -*-
"""Fake backup repositories made of real files, for the unit tests (no server needed)."""

import json
import os


def make_meta(name, started_at, finished_at=None, status='complete', database='modulodb',
              kind='logical', size_bytes=1000, duration_s=60.0, file_suffix='.sql.gz', **extra):
    meta = {
        'format_version': 1, 'name': name, 'file': name + file_suffix, 'type': kind,
        'database': database, 'format': 'plain', 'compression': 'gzip',
        'started_at': started_at, 'finished_at': finished_at or started_at,
        'duration_s': duration_s, 'size_bytes': size_bytes, 'sha256': '0' * 64,
        'server_version': '15.8', 'system_identifier': '7000000000000000001', 'status': status,
    }
    meta.update(extra)
    return meta


def write_backup(directory, meta, data=b'-- dump\n', with_meta=True, legacy_meta_name=False):
    """Write a data file and (optionally) its .meta the way a finished backup looks: named as the runbook
    names it (the backup file's name + .meta), or as earlier releases did (the backup name + .meta)."""
    if not os.path.isdir(directory):
        os.makedirs(directory)
    data_path = os.path.join(directory, meta['file'])
    with open(data_path, 'wb') as handle:
        handle.write(data)
    if with_meta:
        with open(os.path.join(directory, (meta['name'] if legacy_meta_name else meta['file']) + '.meta'), 'w') as handle:
            json.dump(meta, handle)
    return data_path
