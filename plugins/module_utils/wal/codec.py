# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compression (libzstd through ctypes, the zstd program, gzip) and age encryption of stored files:
the one writer and the one reader of their content."""

import os
import stat
import zlib

from .errors import WalArchiveError
from .names import CODECS, DEFAULT_LEVEL, LEVEL_RANGE, codec_of, is_encrypted
from .durable import CHUNK, write_all


# shutil, subprocess and tempfile are imported where they are used, like hashlib and gzip:
# PostgreSQL starts this command once per WAL segment, and those three cost several milliseconds
# of every push, which needs none of them (no encryption, zstd from libzstd).

# Where zstd is looked for when it is not on the postmaster's PATH.
ZSTD_FALLBACK = '/usr/bin/zstd'


def zstd_program():
    import shutil
    return shutil.which('zstd') or (ZSTD_FALLBACK if os.access(ZSTD_FALLBACK, os.X_OK) else None)


def zstd_available():
    """libzstd (used in this process) or else the zstd program can read and write .zst files."""
    return bool(_libzstd() or zstd_program())


def libzstd_available():
    """zstd is read in this process (libzstd), so from any file object, not only from a file descriptor."""
    return bool(_libzstd())


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
        self.input, self.output = bytearray(CHUNK), bytearray(CHUNK)
        # The addresses of the bytearrays, which neither move nor grow while these views exist.
        self.in_address = ctypes.addressof((ctypes.c_char * CHUNK).from_buffer(self.input))
        self.out_address = ctypes.addressof((ctypes.c_char * CHUNK).from_buffer(self.output))
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
                    out = self.buffer_type(self.out_address, CHUNK, 0)
                    left = self.check(lib.ZSTD_compressStream2(cctx, self.byref(out), self.byref(chunk), mode),
                                      'compress')
                    write_all(fd, memoryview(self.output)[:out.pos])
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
                    out = self.buffer_type(self.out_address, CHUNK, 0)
                    left = self.check(lib.ZSTD_decompressStream(dctx, self.byref(out), self.byref(chunk)),
                                      'decompress %s' % what)
                    if out.pos:
                        yield memoryview(self.output)[:out.pos]
                    # A full output buffer may hide more data buffered inside libzstd, unless the
                    # frame just ended (0): asking again would start waiting for another frame.
                    if chunk.pos == read and (out.pos < CHUNK or not left):
                        break
            if left or not seen:
                raise WalArchiveError('zstd could not decompress %s: the file is truncated (no complete frame)'
                                      % what)
        finally:
            lib.ZSTD_freeDCtx(dctx)


def new_sha256():
    # hashlib (OpenSSL) and gzip are imported where they are used: PostgreSQL starts this command
    # once per segment, every import is paid again each time, and a first push to a local archive
    # needs neither.
    import hashlib
    return hashlib.sha256()


def _gzip():
    import gzip
    return gzip


def compress_into(src, fd, codec, level, encryption=None, digest=True):
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
    hasher = new_sha256() if digest else None

    def feed(write):
        for chunk in iter(lambda: src.read(CHUNK), b''):
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
        feed(lambda chunk: write_all(fd, chunk))
    return hasher.hexdigest() if hasher else None


def decompress_into(path_or_file, codec, fd, encryption=None, encrypted=False):
    """Write the raw bytes of a stored file into ``fd``; returns their sha256."""
    digest = new_sha256()

    def emit(chunk):
        digest.update(chunk)
        if fd is not None:
            write_all(fd, chunk)

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
    feeder = None if source or _has_fileno(path_or_file) else _Feeder(path_or_file)
    import subprocess
    import tempfile
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(argv + ([source] if source else []),
                                    stdin=feeder.read_fd if feeder else (None if source else path_or_file),
                                    stdout=subprocess.PIPE, stderr=errors)
        finally:
            if feeder:
                feeder.started()
        try:
            yield from _raw_chunks(proc.stdout, codec)
        except WalArchiveError:
            proc.kill()
            rc = proc.wait()
            if feeder:
                feeder.raise_failure()
            if rc > 0:  # age failed first (authentication): that is the real cause
                raise _age_error(rc, errors, source or 'the S3 object')
            raise
        finally:
            proc.stdout.close()
        rc = proc.wait()
        if feeder:
            feeder.raise_failure()
        if rc:
            raise _age_error(rc, errors, source or 'the S3 object')


def _has_fileno(handle):
    try:
        handle.fileno()
        return True
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both of the last two
        return False


class _Feeder(object):
    """Copies a file object that has no descriptor (an object read from S3 as a stream) into a pipe for age.

    When reading it fails, age only sees its input end: ``raise_failure`` raises the reading's own error,
    the real cause, in the consumer's thread.
    """

    def __init__(self, src):
        import threading
        self.src, self.failure = src, None
        self.read_fd, self.write_fd = os.pipe()
        self.thread = threading.Thread(target=self._run, name='age-feeder', daemon=True)

    def started(self):
        """The child has its copy of the reading end (or never started): start copying."""
        os.close(self.read_fd)
        self.thread.start()

    def _run(self):
        buffer = bytearray(CHUNK)
        try:
            for count in iter(lambda: self.src.readinto(buffer), 0):
                write_all(self.write_fd, memoryview(buffer)[:count])
        except BrokenPipeError:
            pass  # age stopped reading: its own error (or the consumer's) says why
        except Exception as exc:  # handed to the consumer's thread by raise_failure
            self.failure = exc
        finally:
            os.close(self.write_fd)

    def raise_failure(self):
        self.thread.join()
        if self.failure is not None:
            raise self.failure


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
                yield from iter(lambda: proc.stdout.read(CHUNK), b'')
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
            yield from iter(lambda: handle.read(CHUNK), b'')
    except (OSError, EOFError, zlib.error) as exc:
        raise WalArchiveError('could not read %s: %s' % (what, exc))


def raw_sha256(path, encryption=None):
    """sha256 of the uncompressed (decrypted) content of an archived file."""
    return decompress_into(path, codec_of(path), None, encryption, is_encrypted(path))


def file_sha256(path):
    digest = new_sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b''):
            digest.update(chunk)
    return digest.hexdigest()


def zstd_decompress_to(source, fd):
    """Decompress a .zst ``source`` (path or open file) into ``fd``: with libzstd in this process,
    else the zstd program writes straight into ``fd`` (recovery waits for every fetch, and a copy
    of 16 MB through Python is most of one).  Either checks the frames' content checksums, so a
    damaged archive fails here instead of yielding wrong bytes."""
    if _libzstd():
        for chunk in _raw_chunks(source, 'zstd'):
            write_all(fd, chunk)
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
