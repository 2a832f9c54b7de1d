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


@pytest.mark.parametrize('text,expected', [
    (None, None), ('', None), ('32', 32), ('32k', 32), ('500k', 500), ('100M', 102400), ('1024M', 1048576),
    (' 64M ', 65536), (2048, 2048),
])
def test_max_rate_in_kilobytes(text, expected):
    assert physical_backup.max_rate_kb(text) == expected


@pytest.mark.parametrize('text', ['31', '16k', '1025M', '1G', '10MB', '-5M', '1.5M', 'fast', '50 M'])
def test_max_rate_outside_what_pg_basebackup_takes_is_refused(text):
    with pytest.raises(physical_backup.PhysicalBackupError, match='from 32k to 1024M'):
        physical_backup.max_rate_kb(text)


def test_plan_refuses_an_unknown_checkpoint(tmp_path):
    from ansible_collections.modulo.pgbackup.plugins.module_utils import repository
    repo = repository.Repository(str(tmp_path))
    with pytest.raises(physical_backup.PhysicalBackupError, match='checkpoint must be fast or spread'):
        physical_backup.plan(repo, 'modulo', checkpoint='immediate')
    planned = physical_backup.plan(repo, 'modulo', checkpoint='spread', max_rate='50M')
    assert planned['checkpoint'] == 'spread' and planned['max_rate_kb'] == 51200
