# -*- coding: utf-8 -*-
"""The modulo.pgbackup.s3_prefix filter (controller side; s3store.cluster_prefix has the rule)."""

import pytest

from ansible.errors import AnsibleFilterError

from ansible_collections.modulo.pgbackup.plugins.filter.s3_prefix import FilterModule


def test_the_s3_prefix_filter_takes_inventory_booleans_and_explains_a_bad_host():
    s3_prefix = FilterModule().filters()['s3_prefix']
    assert s3_prefix('', 'db3') == 'database-backups/db3/'
    assert s3_prefix('database-backups/', 'db3', 'false') == 'database-backups/'
    with pytest.raises(AnsibleFilterError) as info:
        s3_prefix('database-backups/', 'db3', 'maybe')
    assert 'modulo.pgbackup.s3_prefix' in str(info.value)
    with pytest.raises(AnsibleFilterError):
        s3_prefix('database-backups/', 'a/b')
