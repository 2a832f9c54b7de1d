#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
---
module: wal_archive
short_description: Set up continuous WAL archiving of a PostgreSQL server into a backup repository
version_added: 0.1.0
description:
  - Installs the collection's WAL archive command on the PostgreSQL host (O(command_path), run by the server as
    C(/usr/bin/python3 -S <command_path> push %p %f)) with its settings compiled next to it, and
    points the server at it, which is what point-in-time recovery needs (the runbook's C(archive_mode = on),
    C(archive_command), C(wal_level = replica)).
  - The command stores each WAL file durably in C(<backup_root>/wal/YYYYMMDD/), compressed, optionally mirrored to
    S3; it never overwrites an archived file and refuses WAL of any other cluster.
  - Creates C(<backup_root>) (when missing) and C(<backup_root>/wal/), mode 0700, owned by O(pg_os_user) (the
    repository has one owner, the server's OS user, because the server itself writes the archive); an existing
    C(<backup_root>) keeps its mode, and anything in C(wal/) owned by another user is given to O(pg_os_user).
    Records the server's system identifier in C(wal/archive.json); fails when the archive already belongs to
    another cluster.
  - Refuses up front what would make every archive attempt fail, such as a directory on the way to the
    repository or the command that O(pg_os_user) cannot traverse, C(zstd) requested but not installed, S3
    configured without boto3 for C(/usr/bin/python3), or an C(archive_library) already set.
  - Changes C(wal_level) (only from C(minimal) to C(replica); C(logical) is kept), C(archive_mode),
    C(archive_command) and C(archive_timeout) with C(ALTER SYSTEM), only where they differ, then reloads the
    configuration. RV(restart_required) says when a restart is needed for them to take effect; with
    O(restart=true) the module then restarts PostgreSQL itself, through the service manager O(service_control)
    chooses (systemd, C(pg_ctlcluster) or C(pg_ctl) with the server's own C(config_file)), and waits until it
    accepts connections again. When that restart fails, the task fails saying what is written, what the server runs
    with, and the command that finishes the change.
  - With O(verify=true) and no restart pending (or after the restart), switches to a new WAL segment and waits until
    that segment is in the archive, failing with the archiver's last failure when it is not.
  - O(state=absent) turns archiving off (C(archive_mode=off), C(archive_command) reset) and keeps the archive and the
    command file; archived WAL is never deleted by this module.
author:
  - modulo.pgbackup contributors (@modulo)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - modulo.pgbackup.connection
  - modulo.pgbackup.repository
  - modulo.pgbackup.s3
  - modulo.pgbackup.encryption
  - modulo.pgbackup.service
options:
  restart:
    description:
      - Restart PostgreSQL when C(archive_mode) or C(wal_level) changed (or a change of them is pending), so the
        configuration takes effect now. The role C(modulo.pgbackup.wal_archive) sets it.
      - With C(false) nothing is restarted and RV(restart_required) tells the caller to do it.
    type: bool
    default: false
  state:
    description:
      - C(present) configures archiving into O(backup_root).
      - C(absent) sets C(archive_mode=off) (effective after a restart), resets C(archive_command) (and
        C(archive_timeout) when this module set it). Until the restart the server keeps its WAL in C(pg_wal),
        archiving nothing. The archive, the command and its settings are kept.
    type: str
    choices: [ present, absent ]
    default: present
  archive_timeout:
    description:
      - Seconds after which PostgreSQL switches to a new WAL segment even when it is not full, which bounds how
        much committed work a lost server can take with it (the recovery point objective). C(0) disables it.
      - Each switch archives a whole segment (16 MiB, compressed to little when mostly empty).
    type: int
    default: 60
  compression:
    description:
      - Compression of archived segments. C(auto) uses C(zstd) when libzstd (package C(libzstd1), used in the
        command's own process) or the C(zstd) program is installed when a segment is archived, else C(gzip).
        C(.history) and C(.backup) files are always stored uncompressed.
    type: str
    choices: [ auto, zstd, gzip, none ]
    default: auto
  compression_level:
    description:
      - Codec level (zstd 1-22, gzip 1-9); the codec's default when unset.
    type: int
  upload:
    description:
      - Mirror archived WAL to S3 when a bucket is configured (O(s3_bucket) or C(BACKUP_S3_BUCKET)); a segment
        then counts as archived only once it is in both places.
      - The command on the host needs boto3 for C(/usr/bin/python3) (Debian's C(python3-boto3)); the module
        checks that before configuring the server. AWS credentials must be available to the server's OS user
        (environment of the service, or an instance profile); they are never written to the config.
    type: bool
    default: true
  verify:
    description:
      - Switch WAL (C(pg_switch_wal())) and wait until that segment is archived, failing when the archiver
        reports a new failure or O(verify_timeout) passes.
      - Skipped with a warning when a restart is still needed, in check mode, and on a standby.
    type: bool
    default: true
  verify_timeout:
    description:
      - Seconds to wait for the segment to appear in the archive.
    type: int
    default: 60
  archive_async:
    description:
      - Archive asynchronously, ahead of PostgreSQL. The call for a segment starts a background pusher (a child of
        the command, as the server's OS user) that pushes every C(.ready) file with O(archive_async_workers)
        threads, and acknowledges the segment only once it is durable in every destination, as a synchronous push
        does. A pusher that dies loses nothing; the call then pushes the segment itself.
      - The same setting makes C(fetch) (restore_command) prefetch the next O(archive_async_queue_max) segments
        during recovery, into C(pg_wal/pgbackup/in/), which takes up to that many segments of disk beside C(pg_wal).
      - The spool is C(pg_wal/pgbackup/), which base backups leave out. Nothing is ever dropped when the archive
        falls behind; watch the C(.ready) backlog instead.
    type: bool
    default: false
  archive_async_workers:
    description:
      - Pushes (or prefetches) running at once with O(archive_async=true), 1 to 32. Compression runs in them,
        so more than the host's free cores gains nothing locally; S3 uploads gain from more.
    type: int
    default: 4
  archive_async_queue_max:
    description:
      - How far ahead of PostgreSQL the background pusher goes (segments durable but not yet acknowledged,
        plus pushes running), and how many segments the prefetcher keeps ready, 1 to 1024.
    type: int
    default: 16
  command_path:
    description:
      - Where the archive command is installed (mode 0755; missing parent directories are created 0755).
      - The command is a short launcher; its code is the collection's C(wal) package (as C(pgbackup_wal)) and
        its settings (repository, compression, S3, encryption key files; no secrets) a generated Python module
        C(pgbackup_wal_settings.py), both in the directory O(command_path) with C(.lib) appended and compiled at
        install time by C(/usr/bin/python3) into their C(__pycache__), because PostgreSQL starts the command once
        per WAL segment and compiling or parsing anything each time would cost more than compressing the segment.
      - Each cluster needs its own O(command_path), since the settings name its repository.
      - The server's OS user must be able to read it; it is run with C(/usr/bin/python3), never with the Python
        that runs Ansible, so it imports nothing from a virtualenv.
    type: path
    default: /usr/local/lib/modulo-pgbackup/pgbackup-wal
attributes:
  check_mode:
    support: full
    details: Reports the files and settings it would change and whether a restart would follow; writes nothing,
      changes no setting, restarts nothing and makes no WAL switch.
  diff_mode:
    support: partial
    details: Shows the PostgreSQL settings before and after; changed files are listed in RV(files_changed).
  platform:
    platforms: posix
notes:
  - Needs a superuser connection (C(ALTER SYSTEM), C(pg_switch_wal())) and must run on the PostgreSQL host itself,
    as root (become) or as O(pg_os_user); a restart through systemd needs root.
  - The archive command always asks S3 for server-side encryption (C(AES256)), whatever
    O(s3_server_side_encryption) says.
  - C(restore_command) for recovery is returned as RV(restore_command); restores in this collection set it themselves.
seealso:
  - module: modulo.pgbackup.backup_restore
  - module: modulo.pgbackup.backup_retention
  - name: Continuous archiving and point-in-time recovery
    description: PostgreSQL 15 documentation.
    link: https://www.postgresql.org/docs/15/continuous-archiving.html
'''

EXAMPLES = r'''
- name: Archive WAL into the backup repository, restart if needed, prove a segment reaches the archive
  modulo.pgbackup.wal_archive:
    backup_root: /var/backups/postgresql
    login_unix_socket: /var/run/postgresql
    restart: true
    verify: true
  become: true

- name: Only configure; the restart is left to a maintenance window (restart_required says whether)
  modulo.pgbackup.wal_archive:
    backup_root: /var/backups/postgresql
    verify: false
  register: pitr

- name: Archive to the repository and to S3, with one segment per 5 minutes at most
  modulo.pgbackup.wal_archive:
    backup_root: /var/backups/postgresql
    archive_timeout: 300
    s3_bucket: modulo-backups
    aws_region: eu-west-1

- name: A busy primary archiving to S3, pushing up to 8 segments at once ahead of the archiver
  modulo.pgbackup.wal_archive:
    backup_root: /var/backups/postgresql
    s3_bucket: modulo-backups
    archive_async: true
    archive_async_workers: 8

- name: Turn archiving off (the archive is kept)
  modulo.pgbackup.wal_archive:
    backup_root: /var/backups/postgresql
    state: absent
'''

RETURN = r'''
restart_required:
  description: Whether PostgreSQL must restart for the configuration to take effect (C(archive_mode) or C(wal_level)
    changed, or a change of them is still pending).
  returned: always
  type: bool
  sample: true
restarted:
  description: Whether the module restarted PostgreSQL (O(restart=true) and a restart was required).
  returned: always
  type: bool
  sample: true
service_control:
  description: How PostgreSQL was (or would be) restarted, e.g. C(pg_ctlcluster 15 main) or C(systemd unit postgresql@15-main).
  returned: when a restart was required and O(restart=true)
  type: str
archive_command:
  description: The C(archive_command) this module sets (for O(state=present)).
  returned: always
  type: str
  sample: /usr/bin/python3 -S /usr/local/lib/modulo-pgbackup/pgbackup-wal push %p %f
restore_command:
  description: The matching C(restore_command) for recovery from this archive.
  returned: always
  type: str
  sample: /usr/bin/python3 -S /usr/local/lib/modulo-pgbackup/pgbackup-wal fetch %f %p
archiver:
  description: The server's C(pg_stat_archiver) row (after verification when it ran).
  returned: success
  type: dict
  sample: {"archived_count": 12, "last_archived_wal": "000000010000000000000010", "failed_count": 0,
           "last_failed_wal": null, "last_archived_time": "2026-11-24T02:00:01.123+00:00"}
settings_changed:
  description: Settings changed with C(ALTER SYSTEM) (or that would be, in check mode).
  returned: always
  type: list
  elements: str
  sample: [wal_level, archive_mode, archive_command, archive_timeout]
files_changed:
  description: Files and directories created or changed (or that would be, in check mode).
  returned: always
  type: list
  elements: str
  sample: [/usr/local/lib/modulo-pgbackup/pgbackup-wal, /var/backups/postgresql/wal]
command_path:
  description: Path of the installed archive command.
  returned: always
  type: str
settings_path:
  description: Path of the command's generated settings module (O(command_path) with C(.lib/pgbackup_wal_settings.py)).
  returned: always
  type: str
system_identifier:
  description: The server's system identifier, recorded in C(wal/archive.json).
  returned: success
  type: str
  sample: "7312345678901234567"
verified:
  description: Whether a WAL switch was made and its segment found in the archive.
  returned: always
  type: bool
segment:
  description: The segment verified to be archived.
  returned: when verified
  type: str
  sample: "000000010000000000000010"
os_user:
  description: The OS user the module ran as.
  returned: always
  type: str
  sample: root
executed_commands:
  description:
    - External commands run, in order (C(psql) with the SQL it ran); passwords are never part of them.
    - Each is the argv list of one program, as it was run.
  returned: always
  type: list
  elements: list
  sample: [["/usr/lib/postgresql/15/bin/psql", "-X", "-q", "-A", "-t", "..."]]
'''

import os


from ansible_collections.modulo.pgbackup.plugins.module_utils import archiving, common, liveserver
from ansible_collections.modulo.pgbackup.plugins.module_utils.module_base import EXPLAINED_ERRORS, PgBackupModule
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import Connection


def _control(conn, p, log):
    """How to restart this server, from its own word on its layout (checked before anything changes)."""
    layout = liveserver.read_layout(conn, log=log)
    if p['pgdata'] and os.path.realpath(p['pgdata']) != os.path.realpath(layout['data_directory']):
        raise archiving.ArchivingError(
            'pgdata %s is not the data directory of the server on port %s (%s): correct pgdata (pgbackup_pgdata) or '
            'the port' % (p['pgdata'], p['port'], layout['data_directory']))
    return liveserver.choose(layout, method=p['service_control'], unit=p['pg_service'], bindir=conn.bindir,
                             os_user=p['pg_os_user'], log=log)


def main():
    module = PgBackupModule(
        argument_spec=common.full_argspec(
            with_encryption=True,
            state=dict(type='str', default='present', choices=['present', 'absent']),
            archive_timeout=dict(type='int', default=60),
            compression=dict(type='str', default='auto', choices=['auto', 'zstd', 'gzip', 'none']),
            compression_level=dict(type='int'),
            upload=dict(type='bool', default=True),
            verify=dict(type='bool', default=True),
            verify_timeout=dict(type='int', default=60),
            archive_async=dict(type='bool', default=False),
            archive_async_workers=dict(type='int', default=archiving.ASYNC_WORKERS),
            archive_async_queue_max=dict(type='int', default=archiving.ASYNC_QUEUE_MAX),
            command_path=dict(type='path', default=archiving.DEFAULT_COMMAND_PATH),
            restart=dict(type='bool', default=False),
            **common.service_argspec()
        ),
        supports_check_mode=True,
    )
    p = module.params
    log = module.command_log
    result = module.result
    module.audit(p['backup_root'], 'wal_archive_%s' % p['state'], 'cluster', db_user=p['login_user'])
    command_path = os.path.abspath(p['command_path'])
    try:
        result = archiving.new_result(command_path, log=log)
        conn = Connection.from_params(p, db='postgres')
        s3 = common.s3_settings(p) if p['upload'] else None
        control = _control(conn, p, log) if p['restart'] else None
        request = archiving.Request(
            p['backup_root'], state=p['state'], archive_timeout=p['archive_timeout'], compression=p['compression'],
            compression_level=p['compression_level'], verify=p['verify'], verify_timeout=p['verify_timeout'],
            pg_os_user=p['pg_os_user'], key_file=p['encryption_key_file'], old_key_files=p['encryption_old_key_files'],
            key_env=p['encryption_key_env'], archive_async=p['archive_async'], async_workers=p['archive_async_workers'],
            async_queue_max=p['archive_async_queue_max'])
        archiving.run(conn, request, result, s3=s3, check_mode=module.check_mode, log=log, warn=module.warn,
                      control=control)
    except EXPLAINED_ERRORS as exc:
        result.pop('diff', None)
        module.fail_json(msg=str(exc), **result)
    except OSError as exc:
        result.pop('diff', None)
        module.fail_json(msg='%s: %s (is the disk full or read-only, or the path not writable by %s?)'
                             % (exc.filename or 'file system', exc.strerror or exc, result.get('os_user')), **result)
    diff = result.pop('diff', None)
    if module._diff and diff:
        result['diff'] = diff
    pending = ' (restart PostgreSQL to apply)' if result['restart_required'] and not result['restarted'] else ''
    if result['restarted']:
        pending = ' (PostgreSQL restarted through %s)' % result['service_control']
    if p['state'] == 'absent':
        result['msg'] = 'archiving %s%s' % ('turned off' if result['changed'] else 'already off', pending)
    elif result['verified']:
        result['msg'] = 'segment %s archived into %s' % (result['segment'], p['backup_root'])
    else:
        result['msg'] = 'archiving configured%s' % pending
    module.exit_json(**result)


if __name__ == '__main__':
    main()
