# -*- coding: utf-8 -*-
"""Every module documents itself completely through ansible-doc (users' first stop)."""

import json
import os
import subprocess

import pytest

from conftest import ROOT, VENV_BIN

MODULES = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, 'plugins', 'modules'))
                 if f.endswith('.py') and not f.startswith('_'))


@pytest.mark.parametrize('module', MODULES)
def test_ansible_doc_is_complete(module):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'))
    proc = subprocess.run([os.path.join(VENV_BIN, 'ansible-doc'), '--json', 'modulo.pgbackup.' + module],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    doc = json.loads(proc.stdout)['modulo.pgbackup.' + module]
    assert doc['doc']['short_description']
    assert doc['examples'].strip()
    assert doc['return'] and 'executed_commands' in doc['return']
    options = doc['doc']['options']
    for shared in ('login_user', 'login_password', 'port', 'backup_root', 's3_bucket', 's3_endpoint_url'):
        assert shared in options, shared
    assert all(opt.get('description') for opt in options.values())
    assert doc['doc']['attributes']['check_mode']['support'] in ('full', 'partial', 'none')


def test_action_group_lists_every_module():
    import yaml
    with open(os.path.join(ROOT, 'meta', 'runtime.yml')) as handle:
        runtime = yaml.safe_load(handle)
    assert sorted(runtime['action_groups']['pgbackup']) == MODULES


def test_roles_ask_for_the_ansible_the_collection_requires():
    import yaml
    with open(os.path.join(ROOT, 'meta', 'runtime.yml')) as handle:
        required = yaml.safe_load(handle)['requires_ansible']
    minimum = required.lstrip('>=').rsplit('.0', 1)[0] if required.endswith('.0') else required.lstrip('>=')
    roles = sorted(os.listdir(os.path.join(ROOT, 'roles')))
    assert roles
    for role in roles:
        with open(os.path.join(ROOT, 'roles', role, 'meta', 'main.yml')) as handle:
            meta = yaml.safe_load(handle)
        assert str(meta['galaxy_info']['min_ansible_version']) == minimum, (role, required)
