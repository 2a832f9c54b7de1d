# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r'''
options:
  pgdata:
    description:
      - Data directory of the live server.
      - When the server runs it says where its data directory and configuration files are (C(data_directory),
        C(config_file)), and a different O(pgdata) is refused as a mistake; when it is down, O(pgdata) is required
        and a Debian cluster's configuration is found in C(/etc/postgresql/*/*/postgresql.conf) by its
        C(data_directory).
    type: path
  pg_service:
    description:
      - systemd unit of the live server, such as C(postgresql@15-main) (Debian) or C(postgresql-15) (RHEL/PGDG).
      - When empty, the unit the running server belongs to is found from its process; without one, a Debian cluster
        is controlled with C(pg_ctlcluster) and any other with C(pg_ctl) (see O(service_control)).
    type: str
  service_control:
    description:
      - How the live server is stopped, started and restarted.
      - C(auto) uses systemd when O(pg_service) is set or the server runs under a systemd unit, then
        C(pg_ctlcluster) for a Debian cluster, then C(pg_ctl) on the data directory, run as O(pg_os_user) and given
        the server's C(config_file) when the configuration lives outside the data directory.
      - systemd needs root (C(become=true)); C(pg_ctlcluster) and C(pg_ctl) also work as O(pg_os_user).
    type: str
    choices: [ auto, systemd, pg_ctlcluster, pg_ctl ]
    default: auto
'''
