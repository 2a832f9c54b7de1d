# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r'''
options:
  login_user:
    description:
      - The database role to connect as.
      - Passed to the PostgreSQL client programs as C(PGUSER).
    type: str
    default: postgres
    aliases: [ login ]
  login_password:
    description:
      - Password of O(login_user).
      - Given to the client programs in the environment (C(PGPASSWORD)), never on their command line.
    type: str
  login_host:
    description:
      - Host name or IP address of the server. Empty means the local Unix socket.
    type: str
    aliases: [ host ]
  login_unix_socket:
    description:
      - Directory of the server's Unix socket, used when O(login_host) is empty.
    type: str
    aliases: [ unix_socket ]
  port:
    description:
      - Database port.
    type: int
    default: 5432
    aliases: [ login_port ]
  ssl_mode:
    description:
      - libpq C(sslmode) for the connection.
    type: str
    choices: [ disable, allow, prefer, require, verify-ca, verify-full ]
    default: prefer
  pg_bindir:
    description:
      - Directory of the PostgreSQL client programs (C(pg_dump), C(psql), ...).
      - When empty, C(pg_config --bindir) and the usual Debian and RHEL paths are tried.
    type: path
  pg_os_user:
    description:
      - The OS user the PostgreSQL server runs as (the owner of its data directory).
      - When the module runs as root (C(become) with sudo, the collection's privilege model), it acts as this user
        by itself (C(runuser)) for everything PostgreSQL would do, that is the client programs that connect over the
        Unix socket (peer authentication maps this OS user to O(login_user)), C(pg_ctl), the scratch clusters.
      - Files the module writes into the repository belong to this user, so that the WAL archive command, which
        runs as this user, can use the whole repository; a repository that root owns is handed to it.
      - Ignored when the module does not run as root (it then already is the user it runs as).
    type: str
    default: postgres
notes:
  - The PostgreSQL client programs of version 15 or newer must be installed on the host that runs the module.
  - Run the module as root (C(become=true), Ansible's default C(become_user)) or as O(pg_os_user). Connecting as a
    deploy user and becoming O(pg_os_user) with C(become_user) is not needed and, without C(setfacl) on the host,
    does not work; see the README, "Privileges on the database host".
'''
