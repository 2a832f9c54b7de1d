# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention of the S3 mirror: the same rules as retention.py over the keys under the prefix.

The mirror has its own policy values, and its ages come from its own ``.meta``
objects and the date in each WAL key (``wal/YYYYMMDD/...``), never from
LastModified, which a re-upload or a bucket copy resets.  Keys of a base
backup (``base/<name>/...``) or a directory dump (``full/<name>.dir/...``)
form one unit, like the directory they mirror.  Deletion runs in two phases,
``.meta`` objects first, then everything else, in batches of up to 1000 keys
(the DeleteObjects limit).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible_collections.modulo.pgbackup.plugins.module_utils import retention
from ansible_collections.modulo.pgbackup.plugins.module_utils.s3store import S3Error


def inventory(store):
    """Units like retention.local_inventory, from a listing of the keys under the store's prefix."""
    units = {}
    for sub in retention.SCANNED_DIRS:
        for item in store.list(sub + '/'):
            relpath = item['relpath']
            parts = relpath.split('/')
            if parts[0] in retention.BACKUP_DIRS and len(parts) > 2:
                relpath = '/'.join(parts[:2])
            unit = units.setdefault(relpath, {'relpath': relpath, 'size': 0, 'mtime': None,
                                              'is_dir': relpath != item['relpath'], '_keys': []})
            unit['size'] += item['size']
            unit['_keys'].append(item['path'])
            # Only temporary names are ever aged by this (see retention._temp).
            unit['mtime'] = max(unit['mtime'] or 0, item['mtime'])
    return [units[k] for k in sorted(units)]


def meta_loader(store):
    def load(relpath):
        try:
            return store.read_json(relpath)
        except S3Error as exc:
            raise ValueError(str(exc))
    return load


def plan(store, now=None, full_days=7, wal_days=14, report_days=90, min_full=1):
    """The retention plan of the S3 mirror; every item gets its ``s3://`` URI as ``path``."""
    result = retention.plan_units(inventory(store), meta_loader(store), now=now,
                                  pol=retention.policy(full_days, wal_days, report_days, min_full))
    for key in ('deleted', 'kept', 'unclassified'):
        for item in result[key]:
            item['path'] = store.uri(item['relpath'])
            item['location'] = 's3'
    result['warnings'] = ['S3: %s' % w for w in result['warnings']]
    return result


def apply(store, result):
    """Delete the plan's items from S3, ``.meta`` objects first; returns (deleted items, errors)."""
    metas = [i for i in result['deleted'] if i['kind'] == 'meta']
    rest = [i for i in result['deleted'] if i['kind'] != 'meta']
    done, errors, failed_backups = [], [], set()
    refused = store.delete_keys([k for i in metas for k in i['_keys']])
    for item in metas:
        bad = [refused[k] for k in item['_keys'] if k in refused]
        if bad:
            errors.append({'path': item['path'], 'error': bad[0]})
            failed_backups.add(item.get('backup'))
        else:
            done.append(item)
    # The data of a backup whose .meta S3 refused to delete stays, so the backup stays whole.
    rest_ok = [i for i in rest if i.get('backup') is None or i['backup'] not in failed_backups]
    for item in rest:
        if item not in rest_ok:
            errors.append({'path': item['path'], 'error': 'skipped: its .meta could not be removed'})
    refused = store.delete_keys([k for i in rest_ok for k in i['_keys']])
    for item in rest_ok:
        bad = [refused[k] for k in item['_keys'] if k in refused]
        if bad:
            errors.append({'path': item['path'], 'error': bad[0]})
        else:
            done.append(item)
    return done, errors


def strip_internal(items):
    """Items as returned to the user: without the key lists used for deleting."""
    return [dict((k, v) for k, v in item.items() if not k.startswith('_')) for item in items]
