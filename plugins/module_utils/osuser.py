# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who a module runs as, and how it acts as the server's OS user.

The privilege model (README, "Privileges on the database host"): the controller connects as a deploy
user and becomes root with sudo, Ansible's default. Root is what service control (systemctl), the
archive command's directory and a repository under /var/backups need. Everything PostgreSQL itself
would do runs as the server's OS user (option ``pg_os_user``, default ``postgres``), which the module
becomes by itself with ``runuser``: the client programs over the Unix socket (peer authentication maps
the OS user to the database role), pg_ctl, the scratch clusters of drills and PITR. Files written into
the repository are given to that user too (fsutil.inherit_owner), because the archive command runs as
it and must be able to use the whole repository. Run as the server's OS user itself (no become), a
module already is that user and runs everything directly; only service control then needs root.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import grp
import os
import pwd

from ansible_collections.modulo.pgbackup.plugins.module_utils import errors


class OsUserError(errors.PgBackupError):
    pass


def is_root():
    return os.geteuid() == 0


def current_user():
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def switches_to(os_user):
    """Whether commands for ``os_user`` must switch user: only root does, and only to someone else."""
    return is_root() and bool(os_user) and os_user != 'root'


def run_as(os_user):
    """argv prefix that runs a command as ``os_user`` (PostgreSQL refuses root; peer auth wants the name).

    ``runuser`` needs no password and no terminal, unlike ``su`` and ``sudo``; the command's
    environment is kept (PGPASSWORD and friends), HOME becomes the user's own.
    """
    if switches_to(os_user):
        return ['runuser', '-u', os_user, '--']
    return []


def lookup(os_user):
    """(uid, gid, group ids) of ``os_user``; OsUserError naming the option when it does not exist."""
    try:
        pw = pwd.getpwnam(os_user)
    except KeyError:
        raise OsUserError('OS user %s does not exist on this host: set pg_os_user to the user the PostgreSQL '
                          'server runs as (the owner of its data directory)' % os_user)
    groups = set([pw.pw_gid] + [g.gr_gid for g in grp.getgrall() if os_user in g.gr_mem])
    return pw.pw_uid, pw.pw_gid, groups


def ids(os_user):
    """(uid, gid) that files made for ``os_user`` must get, or (None, None) when they are ours already."""
    if switches_to(os_user):
        uid, gid, _groups = lookup(os_user)
        return uid, gid
    return None, None


def chown_tree(path, uid, gid):
    """Give ``path`` and everything below it (symlinks themselves, not their targets) to uid/gid."""
    os.lchown(path, uid, gid)
    if os.path.isdir(path) and not os.path.islink(path):
        for base, dirs, files in os.walk(path):
            for name in dirs + files:
                os.lchown(os.path.join(base, name), uid, gid)


def give_to(path, os_user):
    """As root, hand ``path`` (a tree) to ``os_user``; nothing to do otherwise."""
    uid, gid = ids(os_user)
    if uid is not None:
        chown_tree(path, uid, gid)
