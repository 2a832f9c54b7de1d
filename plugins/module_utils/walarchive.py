# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host-side WAL archive command: ``push`` for archive_command, ``fetch`` for restore_command.

This file is installed on PostgreSQL hosts by copying its own source (the
``wal_archive`` module writes it with a ``#!/usr/bin/python3`` shebang) and runs
as the ``postgres`` OS user with Debian's /usr/bin/python3.  It therefore
imports nothing from Ansible or the collection, only the standard library, and
boto3 lazily when S3 is configured.  PostgreSQL starts it once per segment, so
what it imports is part of every push: argparse, json and re (a fifth of a push,
measured) are imported only off the installed command lines' path.  It is also
importable as
``ansible_collections.modulo.pgbackup.plugins.module_utils.walarchive`` so that
modules and tests call its functions directly.

Synopsis::

    walarchive.py push  [--config FILE] [--repo DIR] [--compression auto|zstd|gzip|none] [--level N]
                        [--s3-bucket B] [--s3-prefix P] [--s3-endpoint-url U] [--aws-region R]
                        [--s3-only] WAL_PATH WAL_NAME          (archive_command: ... push %p %f)
    walarchive.py fetch [--config FILE] [--repo DIR] [S3 options] [--s3-only]
                        WAL_NAME DEST_PATH                      (restore_command: ... fetch %f %p)
    walarchive.py status [--config FILE] [--repo DIR]           (JSON on stdout)

``--config FILE`` is JSON with the same keys (``repo``, ``compression``,
``level``, ``s3_bucket``, ``s3_prefix``, ``s3_endpoint_url``, ``aws_region``,
``s3_only``), so the archive_command in postgresql.conf stays short; options
given on the command line win.  S3 is used only when a bucket is given
explicitly: the postmaster's environment is not a place to switch it on.

Layout (the repository contract)::

    <repo>/wal/archive.json                 system identifier of the one cluster allowed to archive here
    <repo>/wal/YYYYMMDD/<segment>.zst       by UTC archive date (.gz with gzip, no suffix with none)
    <repo>/wal/YYYYMMDD/<tli>.history       .history and .backup files are stored uncompressed:
    <repo>/wal/YYYYMMDD/<seg>.<off>.backup  they are tiny text files that people read during an incident
    s3://<bucket>/<prefix>wal/...           the same relative layout (prefix default ``database-backups/``)

Exit codes (PostgreSQL's rules):

* ``0``: push: the file is durable in every configured destination;
  fetch: the file was restored to DEST_PATH.
* ``1``: push: anything went wrong; PostgreSQL keeps the segment in pg_wal
  with its ``.ready`` file and retries.  fetch: the file is not in the archive
  (PostgreSQL probes for ``.history`` files that do not exist, so those are
  reported silently).
* ``2``: command-line usage error.
* ``126`` (``EXIT_FATAL``), fetch only: the archive could not be read, so we
  cannot tell whether the file exists (local permission error, S3 unreachable,
  a stored copy that fails to decompress, or a restored file that cannot be
  written).  PostgreSQL treats an exit status above 125 as fatal and aborts
  recovery; answering ``1`` instead would make it believe it reached the end of
  the archive and promote a cluster that silently misses WAL.  A streaming
  standby using this restore_command therefore stops on such an error instead
  of retrying; nothing in this collection runs one.

Durability (the model is pgBackRest's archive-push): a temporary file
``.tmp-<file>.<pid>`` is written in the date directory, fsynced, published
under its final name with link(2) (which, unlike rename, never replaces an
existing file, even when two pushes of the same segment race), then the
directory is fsynced (and ``wal/`` when the date directory was new).  Only then
does push exit 0.  A second push of a segment already archived (any date
directory, any compression) compares the SHA-256 of the uncompressed bytes:
identical is success without rewriting anything, different fails loudly and
keeps the archived copy.  Segments and ``.partial`` files carry the cluster's
system identifier in their first page header; it must match the one recorded
in ``archive.json`` (written on the first push), so neither a restored copy of
the cluster nor another cluster can write into this archive.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno
import os
import stat
import struct
import sys
import time
import zlib

# shutil, subprocess and tempfile are imported where they are used, like hashlib and gzip below:
# PostgreSQL starts this command once per WAL segment, and those three cost several milliseconds
# of every push, which needs none of them (no encryption, zstd from libzstd).

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_FATAL = 126

WAL_SEG_SIZE = 16 * 1024 * 1024
DEFAULT_S3_PREFIX = 'database-backups/'
INFO_FILE = 'archive.json'
TMP_PREFIX = '.tmp-'
DIR_MODE = 0o700
FILE_MODE = 0o600
CODECS = ('zstd', 'gzip', 'none')
SUFFIX = {'zstd': '.zst', 'gzip': '.gz', 'none': ''}
# Segments encrypted with age (encryption_recipient) carry this after the codec's suffix.
AGE_SUFFIX = '.age'
DEFAULT_LEVEL = {'zstd': 3, 'gzip': 6, 'none': None}
# zstd's program needs --ultra above 19: the in-process path keeps to the same range as the program.
LEVEL_RANGE = {'zstd': (1, 19), 'gzip': (1, 9)}
# A crashed push leaves its temporary file behind; it is removed by a later
# push of the same name once its process is gone and it is this old.
STALE_TMP_S = 3600
_CHUNK = 1024 * 1024

# XLogLongPageHeaderData (access/xlog_internal.h), little-endian on the
# platforms PostgreSQL is deployed on here: xlp_magic, xlp_info, xlp_tli,
# xlp_pageaddr, xlp_rem_len, 4 bytes of padding, xlp_sysid (offset 24),
# xlp_seg_size, xlp_xlog_blcksz.
_LONG_HEADER = struct.Struct('<HHIQI4xQII')
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


def _is_date_dir(name):
    return len(name) == 8 and name.isdigit() and name.isascii()


# Where zstd is looked for when it is not on the postmaster's PATH.
ZSTD_FALLBACK = '/usr/bin/zstd'


class WalArchiveError(Exception):
    """A push or fetch that must not report success; ``exit_code`` is what main() returns."""
    exit_code = EXIT_FAIL


class NotFound(WalArchiveError):
    pass


class Conflict(WalArchiveError):
    pass


class FatalError(WalArchiveError):
    exit_code = EXIT_FATAL


class S3Failure(WalArchiveError):
    pass


# --------------------------------------------------------------------------------------------
# WAL names and LSN arithmetic
# --------------------------------------------------------------------------------------------

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
    if len(data) < _LONG_HEADER.size:
        raise ValueError('only %d bytes: too short for a WAL segment header' % len(data))
    magic, info, tli, pageaddr, rem_len, sysid, seg_size, blcksz = _LONG_HEADER.unpack_from(data, 0)
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


# --------------------------------------------------------------------------------------------
# Durable files
# --------------------------------------------------------------------------------------------

def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _ensure_dir(path):
    """Create ``path`` 0700 if missing and make the new entry durable; True when created."""
    try:
        os.mkdir(path, DIR_MODE)
    except OSError as exc:
        if exc.errno == errno.EEXIST and os.path.isdir(path):
            return False
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    return True


def _tmp_name(directory, filename):
    return os.path.join(directory, '%s%s.%d' % (TMP_PREFIX, filename, os.getpid()))


def _publish_no_replace(tmp, final):
    """Give the fsynced ``tmp`` its final name without ever replacing an existing file.

    link(2) fails with EEXIST instead of replacing, which rename(2) would do
    silently.  Some file systems (e.g. CIFS) refuse hard links: there we check
    first and rename, a window that only matters for concurrent pushes.
    """
    try:
        os.link(tmp, final)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
        if os.path.lexists(final):
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), final)
        os.rename(tmp, final)
    else:
        os.unlink(tmp)
    fsync_dir(os.path.dirname(os.path.abspath(final)))


def _open_tmp(path):
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise
    # The name carries our pid, so on this host it can only be left over by a
    # dead process that had the same pid.
    os.unlink(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _cleanup_stale_tmp(directory, filename):
    """Remove temporary files of earlier, crashed pushes of the same file."""
    prefix = TMP_PREFIX + filename + '.'
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for entry in names:
        if not entry.startswith(prefix):
            continue
        try:
            pid = int(entry[len(prefix):])
            path = os.path.join(directory, entry)
            if time.time() - os.lstat(path).st_mtime < STALE_TMP_S:
                continue
            os.kill(pid, 0)
        except ProcessLookupError:
            _remove_quietly(path)
        except (ValueError, OSError):
            continue


# --------------------------------------------------------------------------------------------
# Compression
# --------------------------------------------------------------------------------------------

def zstd_program():
    import shutil
    return shutil.which('zstd') or (ZSTD_FALLBACK if os.access(ZSTD_FALLBACK, os.X_OK) else None)


def zstd_available():
    """libzstd (used in this process) or else the zstd program can read and write .zst files."""
    return bool(_libzstd() or zstd_program())


def resolve_codec(compression):
    """'auto' (the default) is zstd when libzstd or the zstd program exists, else gzip (stdlib)."""
    compression = compression or 'auto'
    if compression == 'auto':
        return 'zstd' if zstd_available() else 'gzip'
    if compression not in CODECS:
        raise WalArchiveError('unknown compression %r (auto, zstd, gzip or none)' % (compression,))
    if compression == 'zstd' and not zstd_available():
        raise WalArchiveError('compression zstd needs libzstd or the zstd program, neither is installed '
                              '(apt-get install zstd), or choose gzip')
    return compression


def check_level(codec, level):
    if codec == 'none':
        return None
    if level is None:
        return DEFAULT_LEVEL[codec]
    low, high = LEVEL_RANGE[codec]
    if not low <= int(level) <= high:
        raise WalArchiveError('compression level %s is out of range for %s (%d..%d)' % (level, codec, low, high))
    return int(level)


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


def _age_or_fail():
    import shutil
    program = shutil.which('age') or ('/usr/bin/age' if os.access('/usr/bin/age', os.X_OK) else None)
    if not program:
        raise WalArchiveError('encryption is configured (or the archived file is encrypted) but the age program '
                              'is not installed (apt-get install age)')
    return program


def _age_error(proc_rc, errors, what):
    errors.seek(0)
    text = errors.read().decode('utf-8', 'replace').strip()
    if 'no identity matched' in text:
        text = ('none of encryption_key_files can decrypt it: add the key it was encrypted with (%s)' % text)
    return WalArchiveError('age could not decrypt %s (exit %d): %s' % (what, proc_rc, text))


def _zstd_or_fail():
    program = zstd_program()
    if not program:
        raise WalArchiveError('libzstd or the zstd program is needed to read .zst files and neither is '
                              'installed (apt-get install zstd)')
    return program


# libzstd through ctypes (standard library): a segment compressed in this process costs no exec of
# the zstd program and no second read of 16 MB, about a fifth of a push.  The frames are the zstd
# program's own format, with the content checksum it writes by default, so `zstd -d` reads what
# this writes and the other way round.  Without the library (or with one older than 1.4, which
# lacks the calls used here) the zstd program does the work, as it did before.
_LIBZSTD_SONAME = 'libzstd.so.1'
_LIBZSTD_MIN_VERSION = 10400
_ZSTD_C_COMPRESSION_LEVEL = 100
_ZSTD_C_CHECKSUM_FLAG = 201
_ZSTD_E_CONTINUE = 0
_ZSTD_E_END = 2
_LIBZSTD = {}


def _libzstd():
    """(libzstd with the signatures used here declared, its buffer struct), or None."""
    if 'lib' in _LIBZSTD:
        return _LIBZSTD['lib']
    found = None
    try:
        import ctypes

        class Buffer(ctypes.Structure):
            # ZSTD_inBuffer and ZSTD_outBuffer: the same three fields.
            _fields_ = [('ptr', ctypes.c_void_p), ('size', ctypes.c_size_t), ('pos', ctypes.c_size_t)]

        lib = ctypes.CDLL(_LIBZSTD_SONAME)
        if lib.ZSTD_versionNumber() >= _LIBZSTD_MIN_VERSION:
            size_t, ptr, buf = ctypes.c_size_t, ctypes.c_void_p, ctypes.POINTER(Buffer)
            for name, restype, argtypes in (
                    ('ZSTD_createCCtx', ptr, []),
                    ('ZSTD_freeCCtx', size_t, [ptr]),
                    ('ZSTD_CCtx_setParameter', size_t, [ptr, ctypes.c_int, ctypes.c_int]),
                    ('ZSTD_CCtx_setPledgedSrcSize', size_t, [ptr, ctypes.c_ulonglong]),
                    ('ZSTD_compressStream2', size_t, [ptr, buf, buf, ctypes.c_int]),
                    ('ZSTD_createDCtx', ptr, []),
                    ('ZSTD_freeDCtx', size_t, [ptr]),
                    ('ZSTD_decompressStream', size_t, [ptr, buf, buf]),
                    ('ZSTD_isError', ctypes.c_uint, [size_t]),
                    ('ZSTD_getErrorName', ctypes.c_char_p, [size_t])):
                func = getattr(lib, name)
                func.restype, func.argtypes = restype, argtypes
            found = (lib, Buffer)
    except (ImportError, OSError, AttributeError):  # no ctypes, no libzstd, or a library without these calls
        found = None
    _LIBZSTD['lib'] = found
    return found


class _Borrowed(object):
    def __init__(self, handle):
        self.handle = handle

    def __enter__(self):
        return self.handle

    def __exit__(self, *exc):
        return False


def _opened(path_or_file):
    """Context manager for reading a path (closed afterwards) or an open file (left open)."""
    return open(path_or_file, 'rb') if isinstance(path_or_file, str) else _Borrowed(path_or_file)


class _ZstdStream(object):
    """Buffers libzstd reads from and writes into, reused for every chunk of one file."""

    def __init__(self, libzstd):
        import ctypes
        self.lib, self.buffer_type = libzstd
        self.input, self.output = bytearray(_CHUNK), bytearray(_CHUNK)
        # The addresses of the bytearrays, which neither move nor grow while these views exist.
        self.in_address = ctypes.addressof((ctypes.c_char * _CHUNK).from_buffer(self.input))
        self.out_address = ctypes.addressof((ctypes.c_char * _CHUNK).from_buffer(self.output))
        self.byref = ctypes.byref

    def check(self, code, what):
        if self.lib.ZSTD_isError(code):
            raise WalArchiveError('zstd could not %s: %s'
                                  % (what, self.lib.ZSTD_getErrorName(code).decode('ascii', 'replace')))
        return code

    def compress(self, src, fd, level, hasher=None):
        """Compress the open file ``src`` into ``fd`` as one frame with its content checksum (and,
        for a regular file, its size, which libzstd then also holds the input to)."""
        lib = self.lib
        cctx = lib.ZSTD_createCCtx()
        if not cctx:
            raise WalArchiveError('zstd could not allocate a compression context (out of memory?)')
        try:
            self.check(lib.ZSTD_CCtx_setParameter(cctx, _ZSTD_C_COMPRESSION_LEVEL, level), 'set the level')
            self.check(lib.ZSTD_CCtx_setParameter(cctx, _ZSTD_C_CHECKSUM_FLAG, 1), 'enable checksums')
            info = os.fstat(src.fileno())
            if stat.S_ISREG(info.st_mode):
                self.check(lib.ZSTD_CCtx_setPledgedSrcSize(cctx, info.st_size - src.tell()), 'record the size')
            while True:
                read = src.readinto(self.input)
                if hasher and read:
                    hasher.update(memoryview(self.input)[:read])
                mode = _ZSTD_E_CONTINUE if read else _ZSTD_E_END
                chunk = self.buffer_type(self.in_address, read, 0)
                while True:
                    out = self.buffer_type(self.out_address, _CHUNK, 0)
                    left = self.check(lib.ZSTD_compressStream2(cctx, self.byref(out), self.byref(chunk), mode),
                                      'compress')
                    _write_all(fd, memoryview(self.output)[:out.pos])
                    if (mode == _ZSTD_E_END and not left) or (mode == _ZSTD_E_CONTINUE and chunk.pos == read):
                        break
                if mode == _ZSTD_E_END:
                    return
        finally:
            lib.ZSTD_freeCCtx(cctx)

    def decompress(self, src, what):
        """Yield the content of the zstd file ``src`` (open) in chunks, checksums verified.  Each chunk
        is a view of a buffer the next one overwrites: use it before asking for the next."""
        lib = self.lib
        dctx = lib.ZSTD_createDCtx()
        if not dctx:
            raise WalArchiveError('zstd could not allocate a decompression context (out of memory?)')
        try:
            left, seen = 1, False
            while True:
                read = src.readinto(self.input)
                if not read:
                    break
                seen = True
                chunk = self.buffer_type(self.in_address, read, 0)
                while True:
                    out = self.buffer_type(self.out_address, _CHUNK, 0)
                    left = self.check(lib.ZSTD_decompressStream(dctx, self.byref(out), self.byref(chunk)),
                                      'decompress %s' % what)
                    if out.pos:
                        yield memoryview(self.output)[:out.pos]
                    # A full output buffer may hide more data buffered inside libzstd, unless the
                    # frame just ended (0): asking again would start waiting for another frame.
                    if chunk.pos == read and (out.pos < _CHUNK or not left):
                        break
            if left or not seen:
                raise WalArchiveError('zstd could not decompress %s: the file is truncated (no complete frame)'
                                      % what)
        finally:
            lib.ZSTD_freeDCtx(dctx)


def _sha256():
    # hashlib (OpenSSL) and gzip are imported where they are used: PostgreSQL starts this command
    # once per segment, every import is paid again each time, and a first push to a local archive
    # needs neither.
    import hashlib
    return hashlib.sha256()


def _gzip():
    import gzip
    return gzip


def _compress_into(src, fd, codec, level, encryption=None, digest=True):
    """Stream ``src`` (an open binary file) into ``fd``; returns the sha256 of the raw bytes.

    With ``digest=False`` it returns None and, for zstd, never reads ``src`` itself (zstd reads the
    file): the hash is needed only to compare with an existing copy or to record in S3.

    With ``encryption`` ({'recipient': 'age1...'}), the compressed stream goes through ``age`` on its
    way to ``fd``: nothing unencrypted is written.
    """
    if not encryption:
        return _compress_plain(src, fd, codec, level, digest)
    import subprocess
    import tempfile
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen([_age_or_fail(), '--encrypt', '--recipient', encryption['recipient']],
                                stdin=subprocess.PIPE, stdout=fd, stderr=errors)
        try:
            result = _compress_plain(src, proc.stdin.fileno(), codec, level, digest)
        except BaseException:
            proc.kill()
            _finish_filter(proc, errors, None)
            raise
        _finish_filter(proc, errors, 'age failed to encrypt')
    return result


def _finish_filter(proc, errors, failure):
    """Close a filter's input and wait for it; when ``failure`` is given and it failed, raise with its stderr."""
    if proc.stdin is not None:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
    rc = proc.wait()
    if rc and failure:
        errors.seek(0)
        raise WalArchiveError('%s (exit %d): %s' % (failure, rc, errors.read().decode('utf-8', 'replace').strip()))


def _compress_plain(src, fd, codec, level, digest=True):
    hasher = _sha256() if digest else None

    def feed(write):
        for chunk in iter(lambda: src.read(_CHUNK), b''):
            if hasher:
                hasher.update(chunk)
            write(chunk)

    libzstd = _libzstd() if codec == 'zstd' else None
    if libzstd:
        _ZstdStream(libzstd).compress(src, fd, level, hasher)
    elif codec == 'zstd':
        argv = [_zstd_or_fail(), '-q', '-c', '-%d' % level]
        if level > 19:
            argv.insert(1, '--ultra')
        # A segment PostgreSQL hands to archive_command does not change until it is archived, so
        # zstd reads the file itself (while we hash it, when a hash is wanted): no copy of every
        # byte through a pipe, which was half of the cost of a push.
        source_path = getattr(src, 'name', None)
        direct = isinstance(source_path, str) and os.path.isfile(source_path)
        if direct:
            argv += ['--', source_path]
        import subprocess
        import tempfile
        with tempfile.TemporaryFile() as errors:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL if direct else subprocess.PIPE,
                                    stdout=fd, stderr=errors)
            try:
                if hasher or not direct:
                    feed((lambda chunk: None) if direct else proc.stdin.write)
            except BrokenPipeError:
                pass  # zstd died: its exit status and stderr say why, below
            except BaseException:
                # Reading the source failed: zstd must not finish a truncated stream that looks complete.
                proc.kill()
                _finish_filter(proc, errors, None)
                raise
            _finish_filter(proc, errors, 'zstd failed')
    elif codec == 'gzip':
        with os.fdopen(os.dup(fd), 'wb') as raw:
            with _gzip().GzipFile(filename='', mode='wb', compresslevel=level, fileobj=raw, mtime=0) as gz:
                feed(gz.write)
    else:
        feed(lambda chunk: _write_all(fd, chunk))
    return hasher.hexdigest() if hasher else None


def _decompress_into(path_or_file, codec, fd, encryption=None, encrypted=False):
    """Write the raw bytes of a stored file into ``fd``; returns their sha256."""
    digest = _sha256()

    def emit(chunk):
        digest.update(chunk)
        if fd is not None:
            _write_all(fd, chunk)

    for chunk in content_chunks(path_or_file, codec, encryption, encrypted):
        emit(chunk)
    return digest.hexdigest()


def content_chunks(path_or_file, codec, encryption=None, encrypted=False):
    """The raw content of a stored file (``codec`` none, gzip or zstd), decrypted and checked, in chunks.

    The one reader of stored files: restore_command and the unpacking of base
    backups (untar) both go through it.  A chunk may be a view that the next one
    overwrites: use (or copy) it before asking for the next.
    """
    if encrypted:
        return _decrypted_chunks(path_or_file, codec, encryption)
    return _raw_chunks(path_or_file, codec)


def _decrypted_chunks(path_or_file, codec, encryption):
    """Raw content of an age-encrypted stored file: age -d, then the codec; age authenticates every chunk."""
    identities = (encryption or {}).get('identities') or []
    if not identities:
        raise WalArchiveError('the archived file is encrypted but no encryption_key_files are configured')
    argv = [_age_or_fail(), '--decrypt']
    for identity in identities:
        argv += ['--identity', identity]
    source = path_or_file if isinstance(path_or_file, str) else None
    import subprocess
    import tempfile
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(argv + ([source] if source else []), stdin=None if source else path_or_file,
                                stdout=subprocess.PIPE, stderr=errors)
        try:
            yield from _raw_chunks(proc.stdout, codec)
        except WalArchiveError:
            proc.kill()
            rc = proc.wait()
            if rc > 0:  # age failed first (authentication): that is the real cause
                raise _age_error(rc, errors, source or 'the S3 object')
            raise
        finally:
            proc.stdout.close()
        rc = proc.wait()
        if rc:
            raise _age_error(rc, errors, source or 'the S3 object')


def _raw_chunks(path_or_file, codec):
    """Uncompressed content of a stored file, in chunks; corrupt input raises WalArchiveError.

    zstd frames and gzip members carry checksums of the content, so a damaged
    copy fails here instead of yielding wrong bytes.  A chunk may be a view of a
    buffer that the next one overwrites (libzstd): use it before asking for the next.
    """
    source = path_or_file if isinstance(path_or_file, str) else None
    what = source or 'the S3 object'
    libzstd = _libzstd() if codec == 'zstd' else None
    if libzstd:
        try:
            with _opened(path_or_file) as handle:
                yield from _ZstdStream(libzstd).decompress(handle, what)
        except OSError as exc:
            raise WalArchiveError('could not read %s: %s' % (what, exc))
        return
    if codec == 'zstd':
        import subprocess
        import tempfile
        with tempfile.TemporaryFile() as errors:
            proc = subprocess.Popen([_zstd_or_fail(), '-d', '-q', '-c'] + ([source] if source else []),
                                    stdin=None if source else path_or_file, stdout=subprocess.PIPE,
                                    stderr=errors)
            try:
                yield from iter(lambda: proc.stdout.read(_CHUNK), b'')
            finally:
                proc.stdout.close()
                rc = proc.wait()
            if rc:
                errors.seek(0)
                raise WalArchiveError('zstd could not decompress %s (exit %d): %s'
                                      % (what, rc, errors.read().decode('utf-8', 'replace').strip()))
        return
    try:
        if codec == 'gzip':
            gzip = _gzip()
            handle = gzip.open(path_or_file, 'rb') if isinstance(path_or_file, str) else gzip.GzipFile(fileobj=path_or_file, mode='rb')
        else:
            handle = open(path_or_file, 'rb') if isinstance(path_or_file, str) else path_or_file
        with handle:
            yield from iter(lambda: handle.read(_CHUNK), b'')
    except (OSError, EOFError, zlib.error) as exc:
        raise WalArchiveError('could not read %s: %s' % (what, exc))


def raw_sha256(path, encryption=None):
    """sha256 of the uncompressed (decrypted) content of an archived file."""
    return _decompress_into(path, codec_of(path), None, encryption, is_encrypted(path))


def _file_sha256(path):
    digest = _sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b''):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# The local archive
# --------------------------------------------------------------------------------------------

def wal_dir(repo):
    return os.path.join(repo, 'wal')


def _utc_date(now=None):
    return time.strftime('%Y%m%d', time.gmtime(now if now is not None else time.time()))


def _iso(ts):
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(ts))


def _date_dirs(repo, newest_first=True):
    """Date directories of ``wal/``; a missing ``wal/`` is an empty archive, unreadable is an error."""
    try:
        names = os.listdir(wal_dir(repo))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return []
        raise
    return sorted((n for n in names if _is_date_dir(n)), reverse=newest_first)


def _stored_names(name):
    """File names ``name`` may be stored under: any codec, so a changed setting still finds it."""
    plain = [name + SUFFIX['zstd'], name + SUFFIX['gzip'], name]
    return plain + [n + AGE_SUFFIX for n in plain]


def find_segment(repo, name):
    """Path of the archived copy of ``name`` in any date directory, or None.

    Only a definite "no such file" counts as absent: a permission error or an
    unreadable directory raises, because fetch must not mistake it for the
    end of the archive.
    """
    for date in _date_dirs(repo):
        directory = os.path.join(wal_dir(repo), date)
        for candidate in _stored_names(name):
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
    """Every archived file: dicts with name, file, date, path, size, compression, kind, mtime."""
    entries = []
    for date in _date_dirs(repo, newest_first=False):
        directory = os.path.join(wal_dir(repo), date)
        try:
            files = os.listdir(directory)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                continue
            raise
        for filename in files:
            if filename.startswith('.'):
                continue
            name = name_of_stored(filename)
            try:
                kind = wal_kind(name)
            except ValueError:
                continue
            path = os.path.join(directory, filename)
            st = os.lstat(path)
            entries.append({'name': name, 'file': filename, 'date': date, 'path': path,
                            'relpath': 'wal/%s/%s' % (date, filename), 'size': st.st_size,
                            'compression': codec_of(filename), 'kind': kind, 'mtime': st.st_mtime})
    entries.sort(key=lambda e: (e['name'], e['date']))
    return entries


def merged_archive(repo, s3archive=None):
    """The one merge of the local archive with its S3 copy: one entry per name, local first (``location``
    ``local``), the S3-only ones with ``location`` ``s3`` and their key as ``path``; recovery fetches from
    either. Each entry carries ``archived_at`` (mtime), the earlier of its copies: safe from then on."""
    by_name = {}
    for entry in list_archive(repo):
        by_name[entry['name']] = dict(entry, location='local')
    if s3archive is not None:
        for entry in s3archive.list_archive():
            local = by_name.get(entry['name'])
            if local is None:
                by_name[entry['name']] = dict(entry, location='s3')
            else:
                local['mtime'] = min(local['mtime'], entry['mtime'])
    return sorted(by_name.values(), key=lambda e: e['name'])


def read_archive_info(repo):
    """Content of ``wal/archive.json`` or None when the archive has none yet."""
    path = os.path.join(wal_dir(repo), INFO_FILE)
    try:
        with open(path) as handle:
            info = _loads(handle.read())
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise WalArchiveError('cannot read %s: %s' % (path, exc))
    except ValueError as exc:
        raise WalArchiveError('%s is not valid JSON (%s): fix or restore it before archiving' % (path, exc))
    if not isinstance(info, dict) or not info.get('system_identifier'):
        raise WalArchiveError('%s has no system_identifier: fix or restore it before archiving' % path)
    return info


def archive_info_document(sysid, seg_size=None):
    info = {'format_version': 1, 'system_identifier': str(sysid), 'created_at': _iso(time.time()),
            'created_by': 'walarchive push'}
    if seg_size:
        info['wal_segment_size'] = seg_size
    return info


def write_archive_info(repo, sysid, seg_size=None):
    """Record the cluster this archive belongs to; never replaces an existing record."""
    directory = wal_dir(repo)
    _ensure_dir(directory)
    final = os.path.join(directory, INFO_FILE)
    tmp = _tmp_name(directory, INFO_FILE)
    import json
    data = (json.dumps(archive_info_document(sysid, seg_size), indent=2, sort_keys=True) + '\n').encode('utf-8')
    fd = _open_tmp(tmp)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        _publish_no_replace(tmp, final)
    except BaseException:
        _remove_quietly(tmp)
        raise
    return final


def _refuse_sysid(name, found, recorded, where):
    raise WalArchiveError(
        'REFUSED %s: its system identifier %s differs from %s recorded for this archive in %s. '
        'A restored copy of the cluster or another cluster must not archive here: give it its own '
        'backup_root (or archive_mode=off on restored copies). Nothing was written.'
        % (name, found, recorded, where))


# --------------------------------------------------------------------------------------------
# S3
# --------------------------------------------------------------------------------------------

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
        keys, prefixes, token = [], [], None
        while True:
            kwargs = {'Bucket': self.bucket, 'Prefix': prefix}
            if delimiter:
                kwargs['Delimiter'] = delimiter
            if token:
                kwargs['ContinuationToken'] = token
            page = self._call('list %s' % self.uri(prefix), lambda: self.client.list_objects_v2(**kwargs))
            keys.extend(obj['Key'] for obj in page.get('Contents', []))
            prefixes.extend(p['Prefix'] for p in page.get('CommonPrefixes', []))
            if not page.get('IsTruncated'):
                return keys, prefixes
            token = page.get('NextContinuationToken')

    def find(self, name):
        """Key of the archived copy of ``name`` under any date prefix, or None.

        One listing of the date "directories", then one listing per date
        restricted to the name: cheaper than listing every archived key.
        """
        base = self.key('wal/')
        _keys, dates = self._list(base, delimiter='/')
        wanted = set(_stored_names(name))
        for date_prefix in sorted(dates, reverse=True):
            if not _is_date_dir(date_prefix[len(base):].rstrip('/')):
                continue
            keys, _prefixes = self._list(date_prefix + name)
            for key in keys:
                if key[len(date_prefix):] in wanted:
                    return key
        return None

    def list_archive(self):
        """Every archived object, in the shape of the local ``list_archive`` (``path`` is the key)."""
        base = self.key('wal/')
        entries = []
        token = None
        while True:
            kwargs = {'Bucket': self.bucket, 'Prefix': base}
            if token:
                kwargs['ContinuationToken'] = token
            page = self._call('list %s' % self.uri(base), lambda: self.client.list_objects_v2(**kwargs))
            for obj in page.get('Contents', []):
                parts = obj['Key'][len(base):].split('/')
                if len(parts) != 2 or not _is_date_dir(parts[0]) or parts[1].startswith('.'):
                    continue
                name = name_of_stored(parts[1])
                try:
                    kind = wal_kind(name)
                except ValueError:
                    continue
                entries.append({'name': name, 'file': parts[1], 'date': parts[0], 'path': obj['Key'],
                                'relpath': 'wal/%s/%s' % (parts[0], parts[1]), 'size': obj['Size'],
                                'compression': codec_of(parts[1]), 'kind': kind,
                                'mtime': int(obj['LastModified'].timestamp())})  # botocore: tz-aware UTC
            if not page.get('IsTruncated'):
                break
            token = page.get('NextContinuationToken')
        entries.sort(key=lambda e: (e['name'], e['date']))
        return entries

    def read_text(self, key):
        obj = self._call('read %s' % self.uri(key), lambda: self.client.get_object(Bucket=self.bucket, Key=key))
        return obj['Body'].read().decode('utf-8')

    def read_info(self):
        key = self.key('wal/' + INFO_FILE)
        obj = self._call('read %s' % self.uri(key),
                         lambda: self.client.get_object(Bucket=self.bucket, Key=key), missing_ok=True)
        if obj is None:
            return None
        try:
            info = _loads(obj['Body'].read().decode('utf-8'))
        except ValueError as exc:
            raise WalArchiveError('%s is not valid JSON (%s)' % (self.uri(key), exc))
        if not isinstance(info, dict) or not info.get('system_identifier'):
            raise WalArchiveError('%s has no system_identifier' % self.uri(key))
        return info

    def write_info(self, sysid, seg_size=None):
        key = self.key('wal/' + INFO_FILE)
        import json
        body = (json.dumps(archive_info_document(sysid, seg_size), indent=2, sort_keys=True) + '\n').encode('utf-8')
        self._call('write %s' % self.uri(key), lambda: self.client.put_object(
            Bucket=self.bucket, Key=key, Body=body, ContentType='application/json', **self.sse))

    def head(self, key):
        return self._call('check %s' % self.uri(key),
                          lambda: self.client.head_object(Bucket=self.bucket, Key=key))

    def upload(self, fileobj, key, size, sha256, raw_sha):
        """PUT with SSE and checksums in metadata, then HEAD: done only when both agree."""
        fileobj.seek(0)
        self._call('upload %s' % self.uri(key), lambda: self.client.put_object(
            Bucket=self.bucket, Key=key, Body=fileobj, ContentLength=size,
            Metadata={'sha256': sha256, 'raw-sha256': raw_sha}, **self.sse))
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
            for chunk in iter(lambda: body.read(_CHUNK), b''):
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
            return _decompress_into(handle, codec_of(key), None, encryption, is_encrypted(key))


def s3_archive(s3):
    """An S3Archive from a settings dict (bucket, prefix, endpoint_url, region, sse), or None."""
    if not s3 or not s3.get('bucket'):
        return None
    return S3Archive(s3['bucket'], prefix=s3.get('prefix'), endpoint_url=s3.get('endpoint_url'),
                     region=s3.get('region'), sse=s3.get('sse', True))


# --------------------------------------------------------------------------------------------
# push
# --------------------------------------------------------------------------------------------

def _check_source(path, name, kind):
    """Header of a segment or .partial (validated against its name), else None; opens nothing else."""
    if kind not in ('segment', 'partial'):
        return None
    try:
        with open(path, 'rb') as handle:
            first = handle.read(_LONG_HEADER.size)
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
    local_info = read_archive_info(repo_local) if repo_local else None
    s3_info = s3.read_info() if s3 else None
    if local_info and int(str(local_info['system_identifier'])) != sysid:
        _refuse_sysid(name, sysid, local_info['system_identifier'],
                      os.path.join(wal_dir(repo_local), INFO_FILE))
    if s3_info and int(str(s3_info['system_identifier'])) != sysid:
        _refuse_sysid(name, sysid, s3_info['system_identifier'], s3.uri(s3.key('wal/' + INFO_FILE)))
    if repo_local and local_info is None:
        try:
            write_archive_info(repo_local, sysid, header['seg_size'])
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
            # Another push recorded it first: check against that one.
            info = read_archive_info(repo_local)
            if int(str(info['system_identifier'])) != sysid:
                _refuse_sysid(name, sysid, info['system_identifier'], os.path.join(wal_dir(repo_local), INFO_FILE))
    if s3 and s3_info is None:
        s3.write_info(sysid, header['seg_size'])


def _source_sha256(path):
    try:
        return _file_sha256(path)
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
    # _ensure_dir fsyncs the parent of a directory it creates: wal/ in the
    # repository, the date directory in wal/.
    base = wal_dir(repo)
    _ensure_dir(base)
    directory = os.path.join(base, _utc_date(now))
    _ensure_dir(directory)
    filename = stored_name(name, codec, encryption)
    final = os.path.join(directory, filename)
    _cleanup_stale_tmp(directory, filename)
    tmp = _tmp_name(directory, filename)
    fd = _open_tmp(tmp)
    try:
        try:
            with open(path, 'rb') as src:
                new_sha = _compress_into(src, fd, codec, level, encryption, digest=want_sha)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            _publish_no_replace(tmp, final)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
            # A concurrent push of the same name won the race: same rule as a duplicate.
            _remove_quietly(tmp)
            new_sha = new_sha or _source_sha256(path)
            _compare_local(final, name, new_sha, encryption)
            return 'duplicate', final, new_sha
    except BaseException:
        _remove_quietly(tmp)
        raise
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
            return 'archived', s3.upload(handle, key, os.path.getsize(local_final), _file_sha256(local_final),
                                         raw_sha or raw_sha256(local_final, encryption))
    # --s3-only: compress into an anonymous temporary file, never into the repository.
    import tempfile
    with tempfile.TemporaryFile() as handle:
        with open(path, 'rb') as src:
            raw_sha = _compress_into(src, handle.fileno(), codec, level, encryption)
        handle.seek(0)
        digest = _sha256()
        for chunk in iter(lambda: handle.read(_CHUNK), b''):
            digest.update(chunk)
        size = handle.tell()
        return 'archived', s3.upload(handle, key, size, digest.hexdigest(), raw_sha)


def stored_name(name, codec, encryption=None):
    """File name of an archived segment: codec suffix, then ``.age`` when encrypted."""
    return name + SUFFIX[codec] + (AGE_SUFFIX if encryption and encryption.get('recipient') else '')


def push(path, name, repo=None, compression='auto', level=None, s3=None, s3_only=False, now=None, encryption=None):
    """Archive ``path`` as ``name`` (archive_command's %p and %f).

    ``s3`` is a dict (bucket, prefix, endpoint_url, region) or None; ``encryption`` a dict
    (recipient: the age public key segments are encrypted for; identities: key files that
    decrypt, for comparing a re-pushed segment) or None.  Returns
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
    store = s3_archive(s3)
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


# --------------------------------------------------------------------------------------------
# fetch
# --------------------------------------------------------------------------------------------

def _restore(source, codec, dest, encryption=None, encrypted=False):
    """Decompress (decrypt) ``source`` (path or file object) into a temp file next to ``dest``, then rename.

    No fsync: PostgreSQL reads a restored file once, right away, and after a crash it asks
    restore_command for the segment again instead of trusting what it left in pg_wal (pgBackRest's
    archive-get skips the syncs for the same reason).  Syncing 16 MB per segment slowed every PITR.
    """
    directory = os.path.dirname(os.path.abspath(dest))
    tmp = _tmp_name(directory, os.path.basename(dest))
    try:
        fd = _open_tmp(tmp)
        try:
            if encrypted:
                _decompress_into(source, codec, fd, encryption, encrypted)
            elif codec == 'zstd':
                _zstd_decompress_to(source, fd)
            else:
                _decompress_into(source, codec, fd)
        finally:
            os.close(fd)
        os.rename(tmp, dest)
    except BaseException:
        _remove_quietly(tmp)
        raise


def _zstd_decompress_to(source, fd):
    """Decompress a .zst ``source`` (path or open file) into ``fd``: with libzstd in this process,
    else the zstd program writes straight into ``fd`` (recovery waits for every fetch, and a copy
    of 16 MB through Python is most of one).  Either checks the frames' content checksums, so a
    damaged archive fails here instead of yielding wrong bytes."""
    if _libzstd():
        for chunk in _raw_chunks(source, 'zstd'):
            _write_all(fd, chunk)
        return
    path = source if isinstance(source, str) else None
    import subprocess
    import tempfile
    with tempfile.TemporaryFile() as errors:
        rc = subprocess.call([_zstd_or_fail(), '-d', '-q', '-c'] + (['--', path] if path else []),
                             stdin=None if path else source, stdout=fd, stderr=errors)
        if rc:
            errors.seek(0)
            raise WalArchiveError('zstd could not decompress %s (exit %d): %s'
                                  % (path or 'the S3 object', rc, errors.read().decode('utf-8', 'replace').strip()))


def fetch(name, dest, repo=None, s3=None, s3_only=False, encryption=None):
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
        store = s3_archive(s3)
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


# --------------------------------------------------------------------------------------------
# status
# --------------------------------------------------------------------------------------------

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
        'newest_segment_archived_at': _iso(newest['mtime']) if newest else None,
        'last_archived_file': last['name'] if last else None,
        'last_archived_at': _iso(last['mtime']) if last else None,
    }


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

CONFIG_KEYS = ('repo', 'compression', 'level', 's3_bucket', 's3_prefix', 's3_endpoint_url', 'aws_region', 's3_only',
               's3_sse', 'encryption_recipient', 'encryption_key_files')


def _parser():
    import argparse
    parser = argparse.ArgumentParser(prog='walarchive', description='PostgreSQL WAL archive command '
                                     '(push for archive_command, fetch for restore_command).')
    sub = parser.add_subparsers(dest='command')
    sub.required = True

    def common(p, s3=True):
        p.add_argument('--config', help='JSON file with the same keys as these options')
        p.add_argument('--repo', help='backup_root; WAL goes to <repo>/wal/YYYYMMDD/')
        if s3:
            p.add_argument('--s3-bucket')
            p.add_argument('--s3-prefix', help='default %s' % DEFAULT_S3_PREFIX)
            p.add_argument('--s3-endpoint-url')
            p.add_argument('--aws-region')
            p.add_argument('--s3-only', action='store_const', const=True, default=None,
                           help='use only S3, no local copy')

    p = sub.add_parser('push', help='archive one WAL file (archive_command: push %%p %%f)')
    common(p)
    p.add_argument('--compression', choices=('auto',) + CODECS)
    p.add_argument('--level', type=int)
    p.add_argument('wal_path')
    p.add_argument('wal_name')
    p = sub.add_parser('fetch', help='restore one WAL file (restore_command: fetch %%f %%p)')
    common(p)
    p.add_argument('wal_name')
    p.add_argument('dest_path')
    p = sub.add_parser('status', help='JSON summary of the archive')
    common(p, s3=False)
    return parser


def _settings(args):
    config = {}
    if args.config:
        try:
            with open(args.config) as handle:
                config = _loads(handle.read())
        except (OSError, ValueError) as exc:
            raise WalArchiveError('cannot read config %s: %s' % (args.config, exc))
        if not isinstance(config, dict):
            raise WalArchiveError('config %s must be a JSON object' % args.config)
        unknown = sorted(k for k in config if k not in CONFIG_KEYS and not k.startswith('_'))
        if unknown:
            raise WalArchiveError('config %s has unknown keys %s (known: %s)'
                                  % (args.config, ', '.join(unknown), ', '.join(CONFIG_KEYS)))
    merged = {}
    for key in CONFIG_KEYS:
        value = getattr(args, key, None)
        merged[key] = value if value is not None else config.get(key)
    s3 = None
    if merged['s3_bucket']:
        s3 = {'bucket': merged['s3_bucket'], 'prefix': merged['s3_prefix'],
              'endpoint_url': merged['s3_endpoint_url'], 'region': merged['aws_region'],
              'sse': merged['s3_sse'] is not False}
    return merged, s3


def _encryption(settings):
    if not (settings.get('encryption_recipient') or settings.get('encryption_key_files')):
        return None
    return {'recipient': settings.get('encryption_recipient'), 'identities': settings.get('encryption_key_files') or []}


def _say(message):
    sys.stderr.write('walarchive: %s\n' % message)
    sys.stderr.flush()


class _Args(object):
    """What argparse would return for the command lines wal_archive installs."""

    def __init__(self, command, config, first, second):
        self.command, self.config = command, config
        self.repo = self.s3_bucket = self.s3_prefix = self.s3_endpoint_url = self.aws_region = None
        self.s3_only = self.compression = self.level = None
        if command == 'push':
            self.wal_path, self.wal_name = first, second
        else:
            self.wal_name, self.dest_path = first, second


def _fast_args(argv):
    """``push --config F %p %f`` and ``fetch --config F %f %p`` (the installed lines) without argparse.

    Anything else, a help request or a mistake included, goes to argparse and its messages.
    """
    if (len(argv) == 5 and argv[0] in ('push', 'fetch') and argv[1] == '--config'
            and not any(arg.startswith('-') for arg in argv[2:])):
        return _Args(argv[0], argv[2], argv[3], argv[4])
    return None


def _loads(text):
    """json.loads for the small documents this command reads (its config, archive.json).

    Objects, arrays, strings, integers, true, false and null are read here; anything
    else (floats, odd escapes, broken text) goes to the json module, which gives
    the same result or the same ValueError.
    """
    try:
        value, end = _JsonReader(text).value(0)
        if text[end:].strip(_JsonReader.WHITE):
            raise _NotSimple()
        return value
    except (_NotSimple, IndexError):
        import json
        return json.loads(text)


class _NotSimple(Exception):
    pass


class _JsonReader(object):
    WHITE = ' \t\n\r'     # JSON's whitespace, no more
    _ESCAPES = {'"': '"', '\\': '\\', '/': '/', 'b': '\b', 'f': '\f', 'n': '\n', 'r': '\r', 't': '\t'}
    _DIGITS = frozenset('0123456789')

    def __init__(self, text):
        self.text = text

    def skip(self, pos):
        while self.text[pos] in self.WHITE:
            pos += 1
        return pos

    def value(self, pos):
        text = self.text
        pos = self.skip(pos)
        char = text[pos]
        if char == '{':
            return self.obj(pos + 1)
        if char == '[':
            return self.array(pos + 1)
        if char == '"':
            return self.string(pos + 1)
        for word, value in (('true', True), ('false', False), ('null', None)):
            if text.startswith(word, pos):
                return value, pos + len(word)
        end = pos + (char == '-')
        while end < len(text) and text[end] in self._DIGITS:
            end += 1
        digits = text[pos + (char == '-'):end]
        if not digits or (len(digits) > 1 and digits[0] == '0') or text[end:end + 1] in ('.', 'e', 'E'):
            raise _NotSimple()
        return int(text[pos:end]), end

    def obj(self, pos):
        return self.items(pos, '}', {}, self.member)

    def array(self, pos):
        return self.items(pos, ']', [], self.element)

    def items(self, pos, close, result, read_item):
        """The members or elements up to ``close``, separated by commas, each added by ``read_item``."""
        pos = self.skip(pos)
        if self.text[pos] == close:
            return result, pos + 1
        while True:
            pos = self.skip(read_item(result, pos))
            if self.text[pos] == close:
                return result, pos + 1
            if self.text[pos] != ',':
                raise _NotSimple()
            pos += 1

    def member(self, result, pos):
        pos = self.skip(pos)
        if self.text[pos] != '"':
            raise _NotSimple()
        key, pos = self.string(pos + 1)
        pos = self.skip(pos)
        if self.text[pos] != ':':
            raise _NotSimple()
        result[key], pos = self.value(pos + 1)
        return pos

    def element(self, result, pos):
        item, pos = self.value(pos)
        result.append(item)
        return pos

    def string(self, pos):
        text, parts = self.text, []
        while True:
            end = pos
            while text[end] not in '"\\' and text[end] >= ' ':
                end += 1
            parts.append(text[pos:end])
            char = text[end]
            if char == '"':
                return ''.join(parts), end + 1
            if char != '\\' or text[end + 1] not in self._ESCAPES:
                raise _NotSimple()      # a control character, \uXXXX: json decides
            parts.append(self._ESCAPES[text[end + 1]])
            pos = end + 2


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _fast_args(argv) or _parser().parse_args(argv)
    fatal = EXIT_FATAL if args.command == 'fetch' else EXIT_FAIL
    try:
        settings, s3 = _settings(args)
        if args.command == 'push':
            result = push(args.wal_path, args.wal_name, repo=settings['repo'],
                          compression=settings['compression'] or 'auto', level=settings['level'],
                          s3=s3, s3_only=bool(settings['s3_only']),
                          encryption=_encryption(settings))
            if 'duplicate' in (result['status'], result['s3_status']):
                _say('%s was already archived with identical content (%s); nothing rewritten'
                     % (args.wal_name, result['path'] or result['s3_uri']))
        elif args.command == 'fetch':
            fetch(args.wal_name, args.dest_path, repo=settings['repo'], s3=s3, s3_only=bool(settings['s3_only']),
                  encryption=_encryption(settings))
        else:
            if not settings['repo']:
                raise WalArchiveError('status needs --repo')
            import json
            sys.stdout.write(json.dumps(status(settings['repo']), indent=2, sort_keys=True) + '\n')
        return EXIT_OK
    except NotFound as exc:
        # PostgreSQL asks for history files of timelines that do not exist
        # every time it chooses a timeline: not worth a line in the log.
        if not args.wal_name.endswith('.history'):
            _say(str(exc))
        return EXIT_FAIL
    except WalArchiveError as exc:
        _say('ERROR: %s' % exc)
        return fatal if args.command == 'fetch' else exc.exit_code
    except OSError as exc:
        # e.g. a full or read-only file system, a directory made unwritable.
        _say('ERROR: %s %s: %s' % (args.command, getattr(args, 'wal_name', ''), exc))
        return fatal
    except Exception as exc:  # pylint: disable=broad-except
        # Unknown failure: push must not report success; fetch cannot tell
        # "missing" from "unreadable", so it stops recovery (see EXIT_FATAL).
        _say('ERROR: %s %s failed unexpectedly: %s: %s'
             % (args.command, getattr(args, 'wal_name', ''), type(exc).__name__, exc))
        return fatal


if __name__ == '__main__':
    raise SystemExit(main())
