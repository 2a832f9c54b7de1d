# -*- coding: utf-8 -*-
"""The collection as users get it, not the working tree.

- ``ansible-galaxy collection build`` of this tree, installed offline into an empty collections path,
  runs its playbooks by their collection names (``modulo.pgbackup.nightly_backup``) from a directory
  without this repository's ansible.cfg, against a real PostgreSQL 15 cluster;
- an AWX project sync (``collections/requirements.yml``, installed from a copy of the checkout without
  ``.collections/``) gives the same collection;
- the names users type from the repository root (``ansible-playbook emergency-recovery.yml``) work;
- ``ansible-builder create`` makes a build context of execution-environment.yml, and
  ``ansible-builder introspect`` reads the collection's own requirements (building the image needs a
  container engine, which the test machines do not have).
"""

import glob
import json
import os
import shutil
import subprocess
import tarfile

import pytest
import yaml

from conftest import ROOT, VENV_BIN

PLAYBOOKS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'playbooks', '*.yml'))
                   if not os.path.islink(p))


def galaxy_version():
    with open(os.path.join(ROOT, 'galaxy.yml')) as handle:
        return yaml.safe_load(handle)['version']


def run(argv, cwd, env=None, check=True):
    full_env = dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ.get('PATH', ''), ANSIBLE_NOCOLOR='1')
    full_env.pop('ANSIBLE_CONFIG', None)
    full_env.update(env or {})
    proc = subprocess.run(argv, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, check=False)
    if check:
        assert proc.returncode == 0, '%s failed:\n%s' % (' '.join(argv), proc.stdout[-4000:])
    return proc


@pytest.fixture(scope='module')
def artifact(tmp_path_factory):
    """The built tarball and an empty collections path it was installed into, offline."""
    base = tmp_path_factory.mktemp('artifact')
    dist, installed = str(base / 'dist'), str(base / 'collections')
    run(['ansible-galaxy', 'collection', 'build', '--output-path', dist, ROOT], cwd=str(base))
    tarball = os.path.join(dist, 'modulo-pgbackup-%s.tar.gz' % galaxy_version())
    run(['ansible-galaxy', 'collection', 'install', '--offline', '-p', installed, tarball], cwd=str(base),
        env={'ANSIBLE_COLLECTIONS_PATH': installed})
    return {'tarball': tarball, 'path': installed, 'base': str(base),
            'root': os.path.join(installed, 'ansible_collections', 'modulo', 'pgbackup')}


def test_the_tarball_holds_every_playbook_under_its_collection_name_and_no_local_state(artifact):
    with tarfile.open(artifact['tarball']) as tar:
        members = dict((m.name, m) for m in tar.getmembers())
        manifest = json.load(tar.extractfile('MANIFEST.json'))
    assert manifest['collection_info']['version'] == galaxy_version()
    assert len(PLAYBOOKS) >= 13
    for playbook in PLAYBOOKS:
        assert 'playbooks/' + playbook in members
        alias = playbook.replace('-', '_')
        if alias != playbook:
            # ansible-playbook modulo.pgbackup.<name> needs a name without dashes: a link to the playbook
            assert members['playbooks/' + alias].issym() and members['playbooks/' + alias].linkname == playbook
    top = set(name.split('/', 1)[0] for name in members)
    assert not top & {'.venv', '.collections', '.cache', '.sandbox', 'collections', 'dist'}, top
    assert 'meta/execution-environment.yml' in members and 'bindep.txt' in members


def test_collection_playbooks_run_from_the_installed_artifact(artifact, pg, modulo_db, backup_root, tmp_path):
    """Outside the checkout: no ansible.cfg, no roles path, no .collections; only the installed tarball."""
    inventory = str(tmp_path / 'hosts.yml')
    with open(inventory, 'w') as handle:
        yaml.safe_dump({'all': {'vars': {
            'ansible_connection': 'local', 'ansible_python_interpreter': os.path.join(VENV_BIN, 'python'),
            'pgbackup_backup_root': backup_root, 'pgbackup_db': modulo_db, 'pgbackup_s3_bucket': '',
            'pgbackup_login_host': '127.0.0.1', 'pgbackup_port': pg.port, 'pgbackup_login_user': 'postgres',
            'pgbackup_login_password': '', 'pgbackup_pg_bindir': pg.bindir},
            'children': {'postgres': {'hosts': {'localhost': None}}}}}, handle)
    env = {'ANSIBLE_COLLECTIONS_PATH': artifact['path'], 'ANSIBLE_ROLES_PATH': str(tmp_path / 'no-roles'),
           'ANSIBLE_LOCAL_TEMP': str(tmp_path / 'tmp')}
    for name in ('nightly_backup', 'list_backups'):
        proc = run(['ansible-playbook', '-i', inventory, 'modulo.pgbackup.' + name], cwd=str(tmp_path), env=env)
        assert 'failed=0' in proc.stdout, proc.stdout[-3000:]
    metas = glob.glob(os.path.join(backup_root, 'full', '*.sql.gz.meta'))
    assert len(metas) == 1
    with open(metas[0]) as handle:
        meta = json.load(handle)
    assert meta['status'] == 'complete' and meta['database'] == modulo_db
    # list_backups listed it: the roles, modules and module_utils all came from the artifact
    assert meta['name'] in proc.stdout
    assert ROOT not in proc.stdout


def test_an_awx_project_sync_installs_the_collection_from_the_checkout(tmp_path):
    """AWX runs `ansible-galaxy collection install -r collections/requirements.yml` in the project
    checkout; a checkout has no .collections/ (git-ignored), so this is what resolves modulo.pgbackup."""
    project = str(tmp_path / 'project')
    ignored = shutil.ignore_patterns('.venv', '.collections', '.cache', '.sandbox', 'dist', 'tests', 'bench',
                                     '__pycache__', '.git')
    shutil.copytree(ROOT, project, ignore=ignored, symlinks=True)
    path = str(tmp_path / 'requirements_collections')
    run(['ansible-galaxy', 'collection', 'install', '--offline', '-r', 'collections/requirements.yml', '-p', path],
        cwd=project, env={'ANSIBLE_COLLECTIONS_PATH': path})
    installed = os.path.join(path, 'ansible_collections', 'modulo', 'pgbackup')
    assert os.path.isfile(os.path.join(installed, 'MANIFEST.json'))
    assert os.path.isfile(os.path.join(installed, 'plugins', 'modules', 'pg_backup.py'))
    listed = run(['ansible-doc', '-t', 'module', '-l', 'modulo.pgbackup'], cwd=project,
                 env={'ANSIBLE_COLLECTIONS_PATH': path, 'ANSIBLE_CONFIG': os.path.join(project, 'ansible.cfg')})
    assert 'modulo.pgbackup.pg_backup' in listed.stdout and 'modulo.pgbackup.backup_restore' in listed.stdout


def test_every_playbook_runs_by_its_name_from_the_repository_root(tmp_path):
    for playbook in PLAYBOOKS:
        with open(os.path.join(ROOT, playbook)) as handle:
            plays = yaml.safe_load(handle)
        assert plays == [{'name': 'Run playbooks/%s' % playbook,
                          'ansible.builtin.import_playbook': 'playbooks/%s' % playbook}], playbook
    env = {'ANSIBLE_CONFIG': os.path.join(ROOT, 'ansible.cfg'), 'ANSIBLE_LOCAL_TEMP': str(tmp_path / 'tmp')}
    for playbook in PLAYBOOKS:
        proc = run(['ansible-playbook', '--syntax-check', playbook], cwd=ROOT, env=env, check=False)
        assert proc.returncode == 0, '%s: %s' % (playbook, proc.stdout[-2000:])
    # and one for real: the file lookups of playbooks/ (meta/argument_specs.yml) still resolve
    repo = str(tmp_path / 'repo')
    os.makedirs(os.path.join(repo, 'full'))
    inventory = str(tmp_path / 'hosts.yml')
    with open(inventory, 'w') as handle:
        yaml.safe_dump({'all': {'vars': {
            'ansible_connection': 'local', 'ansible_python_interpreter': os.path.join(VENV_BIN, 'python'),
            'pgbackup_backup_root': repo, 'pgbackup_s3_bucket': ''},
            'children': {'postgres': {'hosts': {'localhost': None}}}}}, handle)
    proc = run(['ansible-playbook', '-i', inventory, 'list-backups.yml'], cwd=ROOT, env=env)
    assert 'failed=0' in proc.stdout and 'no complete backup at all' in proc.stdout, proc.stdout[-3000:]


def test_ansible_builder_makes_a_build_context_with_the_collection_and_its_requirements(artifact, tmp_path):
    version = galaxy_version()
    with open(os.path.join(ROOT, 'execution-environment.yml')) as handle:
        ee = yaml.safe_load(handle)
    assert ee['version'] == 3
    assert ee['additional_build_files'][0]['src'] == 'dist/modulo-pgbackup-%s.tar.gz' % version
    assert ee['dependencies']['galaxy']['collections'][0]['name'].endswith('modulo-pgbackup-%s.tar.gz' % version)
    # ansible-builder copies the build files relative to the definition: a copy of it beside the tarball
    defdir = str(tmp_path / 'def')
    os.makedirs(os.path.join(defdir, 'dist'))
    shutil.copy(os.path.join(ROOT, 'execution-environment.yml'), defdir)
    shutil.copy(artifact['tarball'], os.path.join(defdir, 'dist'))
    context = str(tmp_path / 'context')
    run(['ansible-builder', 'create', '-f', 'execution-environment.yml', '-c', context], cwd=defdir)
    containerfile = open(glob.glob(os.path.join(context, '*file'))[0]).read()
    assert 'ansible-core==2.19.14' in containerfile and 'ansible-galaxy collection install' in containerfile
    assert os.path.isfile(os.path.join(context, '_build', 'collections', 'modulo-pgbackup-%s.tar.gz' % version))
    with open(os.path.join(context, '_build', 'requirements.yml')) as handle:
        assert yaml.safe_load(handle)['collections'][0]['type'] == 'file'
    # what the image build will add for the collection, read from the installed artifact
    deps = yaml.safe_load(run(['ansible-builder', 'introspect', '--sanitize', artifact['path']], cwd=defdir).stdout)
    assert any(line.startswith('boto3==') for line in deps['python']), deps
    assert not any(line.startswith('ansible-core') for line in deps['python']), deps
    assert any(line.startswith('openssh-clients [platform:rpm]') for line in deps['system']), deps
