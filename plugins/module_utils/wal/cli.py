# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The WAL archive command PostgreSQL runs: ``push`` for archive_command, ``fetch`` for restore_command.

The package ``wal/`` is installed on the database host by ``wal_archive`` (walcommand.py) and runs there as
the server's OS user with the system Python 3, so it imports only the standard library (boto3 lazily, when S3
is configured); the collection imports the same files. PostgreSQL starts the command once per segment, so
what it imports and parses is part of every push.

Installed command lines (settings compiled with the package, nothing parsed per call)::

    <command> push %p %f        archive_command
    <command> fetch %f %p       restore_command
    <command> status            JSON summary of the archive

The launcher ``<command>`` imports the generated settings module and calls ``main(argv, settings)``. By hand
(or with no generated settings), the same commands take options instead::

    cli.py push  [--config FILE] [--repo DIR] [--compression auto|zstd|gzip|none] [--level N]
                 [--s3-bucket B] [--s3-prefix P] [--s3-endpoint-url U] [--aws-region R] [--s3-only] WAL_PATH WAL_NAME
    cli.py fetch [--config FILE] [--repo DIR] [S3 options] [--s3-only] WAL_NAME DEST_PATH
    cli.py status [--config FILE] [--repo DIR]

``--config FILE`` is JSON with the keys of ``SETTINGS_KEYS``; options given on the command line win. S3 is
used only when a bucket is given explicitly: the postmaster's environment is not a place to switch it on.

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
``.tmp-<file>.<pid>.<thread>`` is written in the date directory, fsynced, published
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

import sys

from .errors import EXIT_FAIL, EXIT_FATAL, EXIT_OK, NotFound, WalArchiveError
from .names import CODECS, DEFAULT_S3_PREFIX

SETTINGS_KEYS = ('repo', 'compression', 'level', 's3_bucket', 's3_prefix', 's3_endpoint_url', 'aws_region', 's3_only',
                 's3_sse', 'encryption_recipient', 'encryption_key_files', 'archive_async', 'async_workers',
                 'async_queue_max')


def settings_source(settings):
    """The generated settings module for ``settings`` (a dict of SETTINGS_KEYS): Python, compiled with the
    package when installed, so the command reads them without parsing anything."""
    unknown = sorted(k for k in settings if k not in SETTINGS_KEYS)
    if unknown:
        raise WalArchiveError('the archive command does not know the settings %s (known: %s)'
                              % (', '.join(unknown), ', '.join(SETTINGS_KEYS)))
    lines = ['# modulo.pgbackup WAL archive command settings, generated by wal_archive: edits here are overwritten.',
             'SETTINGS = {']
    for key in SETTINGS_KEYS:
        value = settings.get(key)
        if not (value is None or isinstance(value, (str, int, bool))
                or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            raise WalArchiveError('setting %s must be text, a number, true/false or a list of text, not %r'
                                  % (key, value))
        lines.append('    %r: %r,' % (key, value))
    lines.append('}')
    return '\n'.join(lines) + '\n'


def _parser():
    import argparse
    parser = argparse.ArgumentParser(prog='pgbackup-wal', description='PostgreSQL WAL archive command '
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


def _from_options(args, settings):
    """Settings for a command given options: the generated ones (if any), a --config file over them, then
    the options over both."""
    merged = dict(settings or {})
    if getattr(args, 'config', None):
        import json
        try:
            with open(args.config) as handle:
                config = json.load(handle)
        except (OSError, ValueError) as exc:
            raise WalArchiveError('cannot read config %s: %s' % (args.config, exc))
        if not isinstance(config, dict):
            raise WalArchiveError('config %s must be a JSON object' % args.config)
        unknown = sorted(k for k in config if k not in SETTINGS_KEYS and not k.startswith('_'))
        if unknown:
            raise WalArchiveError('config %s has unknown keys %s (known: %s)'
                                  % (args.config, ', '.join(unknown), ', '.join(SETTINGS_KEYS)))
        merged.update((k, v) for k, v in config.items() if k in SETTINGS_KEYS)
    for key in SETTINGS_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            merged[key] = value
    return merged


def s3_settings(settings):
    """The S3 part of the settings as push and fetch take it, or None."""
    if not settings.get('s3_bucket'):
        return None
    return {'bucket': settings['s3_bucket'], 'prefix': settings.get('s3_prefix'),
            'endpoint_url': settings.get('s3_endpoint_url'), 'region': settings.get('aws_region'),
            'sse': settings.get('s3_sse') is not False}


def _encryption(settings):
    if not (settings.get('encryption_recipient') or settings.get('encryption_key_files')):
        return None
    return {'recipient': settings.get('encryption_recipient'), 'identities': settings.get('encryption_key_files') or []}


def _say(message):
    sys.stderr.write('pgbackup-wal: %s\n' % message)
    sys.stderr.flush()


def _async(settings):
    """The spool's keyword arguments from the settings (its own defaults where they are unset)."""
    return dict((arg, settings[key]) for arg, key in (('workers', 'async_workers'), ('queue_max', 'async_queue_max'))
                if settings.get(key))


class _One(object):
    """One push or fetch with these settings; the background processes of archive_async call them from several
    threads, which share one S3 client made by ``prepare`` before they start."""

    def __init__(self, settings):
        self.settings = settings
        self.s3archive = None

    def prepare(self):
        s3 = s3_settings(self.settings)
        if s3:
            from .s3 import s3_archive
            self.s3archive = s3_archive(s3)

    def push(self, path, name):
        # Imported here: with archive_async, most calls only acknowledge what the pusher did (spool.py) and
        # never need the archive code, codecs or the store.
        from .archive import push
        settings = self.settings
        return push(path, name, repo=settings.get('repo'), compression=settings.get('compression') or 'auto',
                    level=settings.get('level'), s3=s3_settings(settings), s3_only=bool(settings.get('s3_only')),
                    encryption=_encryption(settings), s3archive=self.s3archive)

    def fetch(self, name, dest):
        from .archive import fetch
        settings = self.settings
        return fetch(name, dest, repo=settings.get('repo'), s3=s3_settings(settings),
                     s3_only=bool(settings.get('s3_only')), encryption=_encryption(settings), s3archive=self.s3archive)


class _Call(object):
    """One call: the command, its two arguments (``wal_name`` is the WAL file's name for push and fetch)."""

    def __init__(self, command, first=None, second=None):
        self.command = command
        self.wal_name = first if command == 'fetch' else second
        self.first, self.second = first, second


def main(argv=None, settings=None):
    """Run one command; returns the exit status PostgreSQL reads (see the module's docstring).

    ``settings``: the generated settings of an installed command. With them, the installed lines
    (``push %p %f``, ``fetch %f %p``, ``status``) are taken as they are; anything else goes to argparse.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if settings is not None and ((len(argv) == 3 and argv[0] in ('push', 'fetch')) or argv == ['status']) \
            and not any(arg.startswith('-') for arg in argv[1:]):
        call = _Call(*argv)
    else:
        args = _parser().parse_args(argv)
        settings = _from_options(args, settings)
        first, second = {'push': ('wal_path', 'wal_name'), 'fetch': ('wal_name', 'dest_path')}.get(args.command, ('', ''))
        call = _Call(args.command, getattr(args, first, None), getattr(args, second, None))
    fatal = EXIT_FATAL if call.command == 'fetch' else EXIT_FAIL
    try:
        if call.command == 'push':
            one = _One(settings)
            if settings.get('archive_async'):
                from .spool import push_async
                result = push_async(call.first, call.second, one.push, prepare=one.prepare, **_async(settings))
            else:
                result = one.push(call.first, call.second)
            if 'duplicate' in (result['status'], result['s3_status']):
                _say('%s was already archived with identical content (%s); nothing rewritten'
                     % (call.wal_name, result['path'] or result['s3_uri']))
        elif call.command == 'fetch':
            one = _One(settings)
            if settings.get('archive_async'):
                from .spool import fetch_prefetch
                fetch_prefetch(call.first, call.second, one.fetch, prepare=one.prepare, **_async(settings))
            else:
                one.fetch(call.first, call.second)
        else:
            if not settings.get('repo'):
                raise WalArchiveError('status needs --repo')
            import json
            from .archive import status
            sys.stdout.write(json.dumps(status(settings['repo']), indent=2, sort_keys=True) + '\n')
        return EXIT_OK
    except NotFound as exc:
        # PostgreSQL asks for history files of timelines that do not exist
        # every time it chooses a timeline: not worth a line in the log.
        if not (call.wal_name or '').endswith('.history'):
            _say(str(exc))
        return EXIT_FAIL
    except WalArchiveError as exc:
        _say('ERROR: %s' % exc)
        return fatal if call.command == 'fetch' else exc.exit_code
    except OSError as exc:
        # e.g. a full or read-only file system, a directory made unwritable.
        _say('ERROR: %s %s: %s' % (call.command, call.wal_name or '', exc))
        return fatal
    except Exception as exc:  # pylint: disable=broad-except
        # Unknown failure: push must not report success; fetch cannot tell
        # "missing" from "unreadable", so it stops recovery (see EXIT_FATAL).
        _say('ERROR: %s %s failed unexpectedly: %s: %s'
             % (call.command, call.wal_name or '', type(exc).__name__, exc))
        return fatal
