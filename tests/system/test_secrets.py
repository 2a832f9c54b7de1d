# -*- coding: utf-8 -*-
"""No password is ever visible, at any verbosity: the playbooks that connect hand it to the modules as a
no_log option (the modules give it to libpq in the child's environment only), never to a task's
environment, which Ansible prints from -vvv on."""

import os

import pytest

SECRET = 'Modulo-secret-8c1f2e'
BACKUP_ROLE_SECRET = 'Modulo-role-secret-77aa'


@pytest.fixture
def shop(pg, modulo_db, backup_root, ansible):
    extra = dict(pg.connection_vars(), pgbackup_backup_root=backup_root, pgbackup_db=modulo_db,
                 pgbackup_login_password=SECRET, pgbackup_s3_bucket='', pgbackup_pg_service='')
    res = ansible.task('modulo.pgbackup.pg_backup', {'backup_root': backup_root, 'db': modulo_db,
                                                     'login_host': '127.0.0.1', 'port': pg.port,
                                                     'pg_bindir': pg.bindir, 'login_password': SECRET})
    assert not res.get('failed'), res.get('msg')
    assert SECRET not in res['_output']
    return extra


def run(ansible, playbook, extra, **kwargs):
    env = {'ANSIBLE_VERBOSITY': '4'}
    proc = ansible.playbook(playbook, extra_vars=extra, env=env, **kwargs)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert '<127.0.0.1>' in proc.stdout or 'ESTABLISH LOCAL CONNECTION' in proc.stdout   # -vvvv really applied
    return proc.stdout


def test_emergency_assessment_never_shows_the_password(ansible, shop):
    out = run(ansible, 'emergency-recovery.yml', shop, tags='assess')
    assert SECRET not in out


def test_db_roles_never_shows_either_password(ansible, shop, pg):
    out = run(ansible, 'db-roles.yml', dict(shop, db_roles_backup_role='modulo_secret_test',
                                            db_roles_backup_password=BACKUP_ROLE_SECRET))
    try:
        assert SECRET not in out and BACKUP_ROLE_SECRET not in out
        assert pg.psql("SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = 'modulo_secret_test'") == 't'
    finally:
        pg.psql('DROP ROLE IF EXISTS modulo_secret_test', check=False)


def test_nightly_backup_and_list_never_show_the_password(ansible, shop):
    for playbook in ('nightly-backup.yml', 'list-backups.yml', 'verify.yml'):
        assert SECRET not in run(ansible, playbook, dict(shop, pgbackup_nightly_physical=False)), playbook
    assert not any(SECRET in line for line in open(os.path.join(shop['pgbackup_backup_root'], 'logs', 'audit.log')))
