# -*- coding: utf-8 -*-
"""physical_backup: the compression argument handed to pg_basebackup."""

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import physical_backup


@pytest.mark.parametrize('codec,level,workers,expected', [
    ('zstd', None, 2, '--compress=server-zstd:workers=2'),
    ('zstd', 5, 2, '--compress=server-zstd:level=5,workers=2'),
    ('zstd', None, 1, '--compress=server-zstd'),
    ('zstd', None, None, '--compress=server-zstd'),
    ('gzip', 6, 2, '--compress=server-gzip:level=6'),      # only zstd has threads on the server
    ('lz4', None, 2, '--compress=server-lz4'),
    ('none', 3, 2, '--compress=none'),
])
def test_compress_argument(codec, level, workers, expected):
    assert physical_backup._compress_arg(codec, level, workers) == [expected]  # pylint: disable=protected-access


def test_plan_carries_the_workers(tmp_path):
    from ansible_collections.modulo.pgbackup.plugins.module_utils import repository
    planned = physical_backup.plan(repository.Repository(str(tmp_path)), 'modulo', 'zstd', None, workers=2)
    assert planned['workers'] == 2 and planned['name'].startswith('modulo_base_')
