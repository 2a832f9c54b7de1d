# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""WAL file names, LSN arithmetic, segment headers, the stored names (compression and encryption
suffixes) and the archive's identity record (archive.json)."""

import struct
import time

from .errors import WalArchiveError


WAL_SEG_SIZE = 16 * 1024 * 1024
INFO_FILE = 'archive.json'
DEFAULT_S3_PREFIX = 'database-backups/'
CODECS = ('zstd', 'gzip', 'none')
SUFFIX = {'zstd': '.zst', 'gzip': '.gz', 'none': ''}
# Segments encrypted with age (encryption_recipient) carry this after the codec's suffix.
AGE_SUFFIX = '.age'
DEFAULT_LEVEL = {'zstd': 3, 'gzip': 6, 'none': None}
# zstd's program needs --ultra above 19: the in-process path keeps to the same range as the program.
LEVEL_RANGE = {'zstd': (1, 19), 'gzip': (1, 9)}

# XLogLongPageHeaderData (access/xlog_internal.h), little-endian on the
# platforms PostgreSQL is deployed on here: xlp_magic, xlp_info, xlp_tli,
# xlp_pageaddr, xlp_rem_len, 4 bytes of padding, xlp_sysid (offset 24),
# xlp_seg_size, xlp_xlog_blcksz.
LONG_HEADER = struct.Struct('<HHIQI4xQII')
XLP_LONG_HEADER = 0x0002
# XLOG_PAGE_MAGIC of released versions, to name the version in messages.
KNOWN_MAGIC = {0xD097: 10, 0xD098: 11, 0xD101: 12, 0xD106: 13, 0xD10D: 14, 0xD110: 15,
               0xD113: 16, 0xD116: 17}

# Names are checked without the re module: importing it (and json, argparse) cost a fifth of a
# segment's push, measured; see _is_hex, _fast_args and _loads.
_UPPER_HEX = frozenset('0123456789ABCDEF')
_ANY_HEX = frozenset('0123456789ABCDEFabcdef')


def _is_hex(text, length, digits=_UPPER_HEX):
    return len(text) == length and not set(text) - digits


def is_date_dir(name):
    return len(name) == 8 and name.isdigit() and name.isascii()


def parse_lsn(text):
    """'0/2000028' -> 33554472 (the 64-bit position); an int is returned unchanged."""
    if isinstance(text, int):
        return text
    high, slash, low = str(text).strip().partition('/')
    if not (slash and 1 <= len(high) <= 8 and 1 <= len(low) <= 8 and _is_hex(high, len(high), _ANY_HEX)
            and _is_hex(low, len(low), _ANY_HEX)):
        raise ValueError('not an LSN: %r (expected e.g. 0/2000028)' % (text,))
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn):
    return '%X/%X' % (lsn >> 32, lsn & 0xFFFFFFFF)


def _segs_per_xlogid(seg_size):
    if seg_size <= 0 or seg_size & (seg_size - 1) or not 1 << 20 <= seg_size <= 1 << 30:
        raise ValueError('invalid WAL segment size %r (a power of two from 1 MiB to 1 GiB)' % (seg_size,))
    return 0x100000000 // seg_size


def segment_name(timeline, lsn, seg_size=WAL_SEG_SIZE, prev=False):
    """Name of the segment holding ``lsn`` on ``timeline``.

    ``prev=True`` gives the segment holding the byte just before ``lsn`` (what
    pg_walfile_name() does), which is the right one for a backup's stop LSN
    that falls exactly on a segment boundary.
    """
    per_id = _segs_per_xlogid(seg_size)
    lsn = parse_lsn(lsn)
    segno = ((lsn - 1) if prev and lsn else lsn) // seg_size
    return '%08X%08X%08X' % (timeline, segno // per_id, segno % per_id)


def parse_segment_name(name, seg_size=WAL_SEG_SIZE):
    """(timeline, segment number) of a segment name (a ``.partial`` suffix is ignored)."""
    base = name[:-len('.partial')] if name.endswith('.partial') else name
    if not _is_hex(base, 24):
        raise ValueError('not a WAL segment name: %r' % (name,))
    per_id = _segs_per_xlogid(seg_size)
    log, seg = int(base[8:16], 16), int(base[16:24], 16)
    if seg >= per_id:
        raise ValueError('segment %r is impossible with %d-byte segments' % (name, seg_size))
    return int(base[:8], 16), log * per_id + seg


def wal_range(start_name, stop_name, seg_size=WAL_SEG_SIZE):
    """Every segment name from ``start_name`` to ``stop_name``, both included, on one timeline."""
    tli, first = parse_segment_name(start_name, seg_size)
    stop_tli, last = parse_segment_name(stop_name, seg_size)
    if stop_tli != tli:
        raise ValueError('%s and %s are on different timelines: no single range joins them'
                         % (start_name, stop_name))
    if last < first:
        raise ValueError('%s comes before %s' % (stop_name, start_name))
    per_id = _segs_per_xlogid(seg_size)
    return ['%08X%08X%08X' % (tli, n // per_id, n % per_id) for n in range(first, last + 1)]


def wal_kind(name):
    """'segment', 'partial', 'backup' or 'history'; anything else is refused (never a path)."""
    if _is_hex(name, 24):
        return 'segment'
    if name.endswith('.partial') and _is_hex(name[:-8], 24):
        return 'partial'
    if name.endswith('.history') and _is_hex(name[:-8], 8):
        return 'history'
    if name.endswith('.backup') and name[24:25] == '.' and _is_hex(name[:24], 24) and _is_hex(name[25:-7], 8):
        return 'backup'
    raise ValueError('not a WAL file name PostgreSQL archives: %r' % (name,))


def read_long_header(data):
    """The fields of XLogLongPageHeaderData at the start of a segment (bytes, >= 40)."""
    if len(data) < LONG_HEADER.size:
        raise ValueError('only %d bytes: too short for a WAL segment header' % len(data))
    magic, info, tli, pageaddr, rem_len, sysid, seg_size, blcksz = LONG_HEADER.unpack_from(data, 0)
    # Every release since 9.x uses a magic of the form 0xD0xx/0xD1xx; the check
    # is there to reject files that are not WAL, not to pin one version.
    if magic >> 9 != 0xD000 >> 9:
        raise ValueError('bad xlp_magic 0x%04X: not a PostgreSQL WAL segment' % magic)
    if not info & XLP_LONG_HEADER:
        raise ValueError('first page has no long header (xlp_info 0x%04X): not the start of a segment' % info)
    return {'magic': magic, 'pg_version': KNOWN_MAGIC.get(magic), 'info': info, 'timeline': tli,
            'pageaddr': pageaddr, 'rem_len': rem_len, 'system_identifier': sysid,
            'seg_size': seg_size, 'blcksz': blcksz}


def read_sysid(segment_bytes):
    """System identifier from a segment's first page (little-endian uint64 at offset 24)."""
    return read_long_header(segment_bytes)['system_identifier']


# Every compression suffix a stored file may carry (lz4 only for backups), innermost first after .age.
STORED_SUFFIXES = (('.zst', 'zstd'), ('.gz', 'gzip'), ('.lz4', 'lz4'))


def split_stored_name(filename):
    """(name, codec, encrypted) of a file as stored: ``X.partial.zst.age`` -> ``('X.partial', 'zstd', True)``.

    The one parser of the repository's suffixes: the archive, retention, health, drills and the backup
    readers all go through it, so they agree on every combination of ``.age``, ``.zst``/``.gz``/``.lz4``
    and the names PostgreSQL gives (``.partial``, ``.history``, ``.backup``).
    """
    encrypted = filename.endswith(AGE_SUFFIX)
    if encrypted:
        filename = filename[:-len(AGE_SUFFIX)]
    for suffix, codec in STORED_SUFFIXES:
        if filename.endswith(suffix):
            return filename[:-len(suffix)], codec, encrypted
    return filename, 'none', encrypted


def codec_of(filename):
    return split_stored_name(filename)[1]


def name_of_stored(filename):
    """The name a stored file holds (its WAL or backup name), without compression and encryption suffixes."""
    return split_stored_name(filename)[0]


def is_encrypted(filename):
    return filename.endswith(AGE_SUFFIX)


def iso_time(ts):
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(ts))


def stored_names(name):
    """File names ``name`` may be stored under: any codec, so a changed setting still finds it."""
    plain = [name + SUFFIX['zstd'], name + SUFFIX['gzip'], name]
    return plain + [n + AGE_SUFFIX for n in plain]


def archive_info_document(sysid, seg_size=None):
    info = {'format_version': 1, 'system_identifier': str(sysid), 'created_at': iso_time(time.time()),
            'created_by': 'walarchive push'}
    if seg_size:
        info['wal_segment_size'] = seg_size
    return info


def stored_name(name, codec, encryption=None):
    """File name of an archived segment: codec suffix, then ``.age`` when encrypted."""
    return name + SUFFIX[codec] + (AGE_SUFFIX if encryption and encryption.get('recipient') else '')


def parse_archive_info(text, where):
    """archive.json's content (from ``where``, a path or a URI), checked to name a cluster."""
    import json
    try:
        info = json.loads(text)
    except ValueError as exc:
        raise WalArchiveError('%s is not valid JSON (%s): fix or restore it before archiving' % (where, exc))
    if not isinstance(info, dict) or not info.get('system_identifier'):
        raise WalArchiveError('%s has no system_identifier: fix or restore it before archiving' % where)
    return info
