# -*- coding: utf-8 -*-
"""Fixtures of the unit tests."""

import pytest


@pytest.fixture
def repo(tmp_path):
    from ansible_collections.modulo.pgbackup.plugins.module_utils import repository
    return repository.Repository(str(tmp_path / 'repo')).ensure()
