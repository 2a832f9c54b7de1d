#!/usr/bin/env bash
# The collection has a role named wal_archive as well: as a role target, "wal_archive" would run that
# role, so this target runs its tasks from a playbook, with the inventory and the
# integration_config.yml that ansible-test prepares (role targets get that file by themselves).
set -eux
ansible-playbook -i "${INVENTORY_PATH}" -e @../../integration_config.yml runme.yml "$@"
