# -*- coding: utf-8 -*-
"""The monthly restore drill against real backups, and every fault the issue lists.

One archiving cluster with one logical and one physical backup is shared by
the module (the drills only read it); fault tests work on a copy of its
``full/`` directory so that a corrupted file never reaches another test.
"""

import glob
import gzip
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import tempfile
import uuid

import pytest

import pgsandbox
from ansible_collections.modulo.pgbackup.plugins.module_utils import repository, s3store
from ansible_collections.modulo.pgbackup.plugins.module_utils.drill import Drill, Request, publish_report, write_report
from conftest import flip_byte
from test_pitr import archiving_cluster, args_for, make_repo, wait_archived

# ``conftest`` is ambiguous when tests/unit runs in the same session (tests/unit has its own):
# load the harness by path for the module-scoped Ansible runner.
_SPEC = importlib.util.spec_from_file_location(
    'pgbackup_harness', os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'conftest.py'))
harness = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(harness)

MODULE = 'modulo.pgbackup.pg_restore_drill'


@pytest.fixture(scope='module')
def world(sandbox_base):
    """An archiving cluster with database modulodb, a logical and a physical backup, and WAL after them."""
    workdir = tempfile.mkdtemp(prefix='drill-ansible-', dir=sandbox_base)
    ansible = harness.AnsibleRunner(workdir)
    repo = make_repo(os.path.join(sandbox_base, 'drill-repo-%s' % uuid.uuid4().hex[:8]))
    made = []

    def new_cluster(settings=None):
        cluster = pgsandbox.Cluster(sandbox_base, name='pg-drill-%s' % uuid.uuid4().hex[:8])
        made.append(cluster)
        return cluster.init(settings).start()

    try:
        cluster = archiving_cluster(new_cluster, repo)
        cluster.psql('CREATE DATABASE modulodb')
        cluster.psql_file(harness.SCHEMA_SQL, db='modulodb')
        res = ansible.task('modulo.pgbackup.pg_backup', args_for(cluster, repo, db='modulodb'))
        assert not res.get('failed'), res.get('msg')
        logical = res['backup']['meta']
        res = ansible.task('modulo.pgbackup.pg_backup', args_for(cluster, repo, type='physical', wait_archive=60))
        assert not res.get('failed'), res.get('msg')
        physical = res['backup']['meta']
        cluster.psql("INSERT INTO customers (email, name) VALUES ('after-base@example.com', 'After Base')",
                     db='modulodb')
        wait_archived(cluster, repo)
        yield {'cluster': cluster, 'repo': repo, 'logical': logical, 'physical': physical, 'ansible': ansible,
               'base': sandbox_base}
    finally:
        for cluster in made:
            cluster.destroy()
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


def drill(world, repo=None, check=False, **extra):
    args = args_for(world['cluster'], repo or world['repo'], **extra)
    return world['ansible'].task(MODULE, args, check=check)


def drill_in_process(world, repo, **params):
    """The module's logic without an Ansible run (faults that need no module wrapper, faster)."""
    params.setdefault('pg_bindir', world['cluster'].bindir)
    repository_ = repository.Repository(repo)
    report = Drill(Request(**params), repository_).run()
    paths = write_report(repository_, report)
    return {'failed': report['status'] != 'passed', 'msg': report.get('error') or '', 'report': report,
            'report_path': paths[0]}


def assert_clean(repo):
    """No scratch directory, socket directory or server process is left behind."""
    tests_dir = os.path.join(repo, 'restore-tests')
    leftovers = [n for n in os.listdir(tests_dir) if n.startswith('.')] if os.path.isdir(tests_dir) else []
    assert not leftovers, leftovers
    proc = subprocess.run(['pgrep', '-f', os.path.join(tests_dir, '.pitr')], stdout=subprocess.PIPE, check=False)
    assert proc.stdout.strip() == b'', proc.stdout


def checks_of(report):
    return dict((c['name'], c) for c in report['checks'])


def fault_repo(world):
    """A repository holding a copy of the shared logical backup, free to damage."""
    repo = make_repo(os.path.join(world['base'], 'drill-fault-%s' % uuid.uuid4().hex[:8]))
    shutil.copytree(os.path.join(world['repo'], 'full'), os.path.join(repo, 'full'))
    subprocess.run(['chown', '-R', '%d:%d' % (os.stat(repo).st_uid, os.stat(repo).st_gid), repo], check=True)
    return repo


def rewrite_sha(repo, meta, path):
    with open(path, 'rb') as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    meta_path = os.path.join(repo, 'full', meta['file'] + '.meta')
    with open(meta_path) as handle:
        doc = json.load(handle)
    doc['sha256'] = digest
    with open(meta_path, 'w') as handle:
        json.dump(doc, handle)


def backup_file(repo, meta):
    return os.path.join(repo, 'full', meta['file'])


def assert_failed_report(res, repo, words):
    assert res.get('failed'), res.get('msg')
    report = res['report']
    assert report['status'] == 'failed'
    assert words in res['msg'], res['msg']
    assert os.path.exists(res['report_path'])
    with open(res['report_path']) as handle:
        assert json.load(handle)['status'] == 'failed'
    assert_clean(repo)
    return report


def test_logical_drill_passes(world):
    smoke = [{'name': 'customers', 'sql': 'SELECT count(*) FROM customers', 'expect': 1000},
             {'name': 'some orders', 'sql': 'SELECT id FROM orders LIMIT 5', 'min_rows': 1, 'max_rows': 5}]
    res = drill(world, smoke_queries=smoke)
    assert not res.get('failed'), res.get('msg')
    report = res['report']
    assert report['status'] == 'passed' and report['kind'] == 'logical'
    assert report['backup']['name'] == world['logical']['name'] and report['host']
    checks = checks_of(report)
    for name in ('checksum', 'scratch_cluster', 'restore', 'table_rows', 'amcheck', 'smoke: customers',
                 'smoke: some orders', 'rto'):
        assert checks[name]['passed'], (name, checks.get(name))
    assert 'equal to the .meta' in checks['table_rows']['detail']
    assert 'heapallindexed' in checks['amcheck']['detail']
    assert any('pg_amcheck' in ' '.join(c) for c in res['executed_commands'])
    for key in ('checksum_s', 'restore_s', 'checks_s', 'total_s'):
        assert key in report['timings'], key
    assert report['rto']['passed'] and report['rto']['target_s'] == 1800
    assert report['rpo']['measured_s'] is not None and report['rpo']['enforced'] is False
    # Both of the runbook's commands find the newest report.
    name = os.path.basename(res['report_path'])
    assert name.startswith('monthly_drill_') and name.endswith('.json')
    found = subprocess.run(['find', os.path.join(world['repo'], 'restore-tests'), '-name', 'monthly_drill_*.json'],
                           stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
    assert res['report_path'] in found
    assert os.path.exists(os.path.join(world['repo'], 'logs', name))
    assert os.stat(res['report_path']).st_uid == os.stat(world['repo']).st_uid
    assert_clean(world['repo'])
    # production was never touched: no amcheck extension there
    assert world['cluster'].psql("SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'", db='modulodb') == '0'


def test_physical_drill_passes(world):
    res = drill(world, kind='physical', db='modulodb')
    assert not res.get('failed'), res.get('msg')
    report = res['report']
    checks = checks_of(report)
    assert report['status'] == 'passed' and report['backup']['name'] == world['physical']['name']
    for name in ('checksum', 'pg_verifybackup', 'restore', 'cluster_started', 'amcheck', 'rto'):
        assert checks[name]['passed'], (name, checks.get(name))
    assert any('pg_verifybackup' in ' '.join(c) and '--no-parse-wal' in c for c in res['executed_commands'])
    assert report['reached']['timeline'] == 2
    assert_clean(world['repo'])


def test_pitr_drill_passes_and_reports_the_reached_point(world):
    sql = "SELECT name FROM customers WHERE email = 'after-base@example.com'"
    res = drill(world, kind='pitr', db='modulodb', smoke_queries=[
        {'name': 'row written after the base backup', 'sql': sql, 'expect': 'After Base'}])
    assert not res.get('failed'), res.get('msg')
    report = res['report']
    checks = checks_of(report)
    for name in ('checksum', 'pg_verifybackup', 'recovery', 'amcheck', 'rto', 'rpo',
                 'smoke: row written after the base backup'):
        assert checks[name]['passed'], (name, checks.get(name))
    reached = report['reached']
    assert reached['last_replayed_transaction'] and reached['redo_done_at'] and reached['timeline'] == 2
    assert report['rpo']['enforced'] and report['rpo']['measured_s'] < 600
    assert_clean(world['repo'])


def test_check_mode_restores_nothing(world):
    before = sorted(os.listdir(os.path.join(world['repo'], 'restore-tests')))
    res = drill(world, check=True)
    assert not res.get('failed'), res.get('msg')
    assert res['plan']['backup'] == world['logical']['name'] and 'report' not in res
    assert sorted(os.listdir(os.path.join(world['repo'], 'restore-tests'))) == before


def test_flipped_byte_fails_on_the_checksum(world):
    repo = fault_repo(world)
    flip_byte(backup_file(repo, world['logical']))
    report = assert_failed_report(drill(world, repo=repo), repo, 'checksum')
    assert checks_of(report)['checksum']['passed'] is False and 'corrupt' in report['error']
    assert 'restore' not in checks_of(report)


def test_truncated_backup_fails_the_restore(world):
    repo = fault_repo(world)
    path = backup_file(repo, world['logical'])
    with open(path, 'r+b') as handle:
        handle.truncate(os.path.getsize(path) // 2)
    rewrite_sha(repo, world['logical'], path)
    report = assert_failed_report(drill_in_process(world, repo), repo, 'restore')
    assert checks_of(report)['checksum']['passed'] and not checks_of(report)['restore']['passed']


def test_restore_that_breaks_half_way_fails(world):
    repo = fault_repo(world)
    path = backup_file(repo, world['logical'])
    with gzip.open(path, 'rb') as handle:
        sql = handle.read()
    middle = sql.index(b'\nCOPY ', len(sql) // 3)
    broken = sql[:middle] + b'\nSELECT drill_fault_no_such_function();\n' + sql[middle:]
    with gzip.open(path, 'wb') as handle:
        handle.write(broken)
    rewrite_sha(repo, world['logical'], path)
    report = assert_failed_report(drill_in_process(world, repo), repo, 'restore')
    assert 'drill_fault_no_such_function' in checks_of(report)['restore']['detail']


def test_no_backup_at_all(world):
    repo = make_repo(os.path.join(world['base'], 'drill-empty-%s' % uuid.uuid4().hex[:8]))
    report = assert_failed_report(drill(world, repo=repo), repo, 'no backup')
    assert report['backup'] is None
    # the same for physical drills, without another Ansible run
    runner = Drill(Request(kind='pitr', pg_bindir=world['cluster'].bindir), repository.Repository(repo))
    report = runner.run()
    assert report['status'] == 'failed' and 'no backup' in report['error']
    assert runner.report['checks'][0]['name'] == 'backup_selected'


def test_scratch_port_in_use(world):
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        res = drill(world, scratch_port=port)
    report = assert_failed_report(res, world['repo'], 'scratch port %d is in use' % port)
    assert checks_of(report)['scratch_port']['passed'] is False


def test_smoke_query_that_errors(world):
    res = drill(world, smoke_queries=[{'name': 'fine', 'sql': 'SELECT 1', 'expect': 1},
                                      {'name': 'broken query', 'sql': 'SELECT * FROM no_such_table'},
                                      {'name': 'wrong count', 'sql': 'SELECT count(*) FROM products',
                                       'expect': 12345}])
    report = assert_failed_report(res, world['repo'], 'smoke: broken query')
    checks = checks_of(report)
    assert checks['smoke: fine']['passed'] and checks['amcheck']['passed']
    assert 'no_such_table' in checks['smoke: broken query']['detail']
    assert not checks['smoke: wrong count']['passed'] and "expected '12345'" in checks['smoke: wrong count']['detail']


def test_restore_drill_playbook(world):
    extra = dict(world['cluster'].connection_vars(), pgbackup_backup_root=world['repo'], pgbackup_db='modulodb',
                 restore_drill_smoke_queries=[{'name': 'products', 'sql': 'SELECT count(*) FROM products',
                                               'min_rows': 1}])
    proc = world['ansible'].playbook('restore-drill.yml', extra_vars=extra)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert 'PASSED' in proc.stdout and 'smoke: products' in proc.stdout and 'RTO' in proc.stdout
    reports = glob.glob(os.path.join(world['repo'], 'restore-tests', 'monthly_drill_*.json'))
    assert reports
    # a failing drill fails the play, after printing its summary
    proc = world['ansible'].playbook('restore-drill.yml', extra_vars=dict(
        extra, restore_drill_smoke_queries=[{'name': 'impossible', 'sql': 'SELECT 1', 'expect': 2}]))
    assert proc.returncode != 0 and 'FAILED' in proc.stdout and 'impossible' in proc.stdout
    assert_clean(world['repo'])


def test_backup_only_in_s3_is_fetched_and_checked(world, s3_bucket):
    from ansible_collections.modulo.pgbackup.plugins.module_utils.s3store import S3Store
    store = S3Store(s3_bucket['name'], endpoint_url=s3_bucket['url'], region='us-east-1')
    meta = world['logical']
    store.upload_backup(world['repo'], backup_file(world['repo'], meta),
                        os.path.join(world['repo'], 'full', meta['file'] + '.meta'))
    repo = make_repo(os.path.join(world['base'], 'drill-s3-%s' % uuid.uuid4().hex[:8]))
    res = drill(world, repo=repo, s3_bucket=s3_bucket['name'], s3_endpoint_url=s3_bucket['url'],
                aws_region='us-east-1')
    assert not res.get('failed'), res.get('msg')
    report = res['report']
    assert report['backup']['fetched_from_s3'] and report['backup']['name'] == meta['name']
    assert checks_of(report)['checksum']['passed'] and checks_of(report)['table_rows']['passed']
    assert 'fetch_s' in report['timings']
    assert os.path.exists(os.path.join(repo, 'full', meta['file']))
    assert_clean(repo)


def test_a_drill_report_goes_to_the_mirror_and_a_failed_copy_is_a_warning_not_a_lost_report(tmp_path, s3_bucket):
    repo = repository.Repository(str(tmp_path / 'repo'))
    repo.ensure()
    report = {'report': 'restore_drill', 'status': 'passed', 'kind': 'logical',
              'started_at': '2026-12-04T04:00:00Z', 'checks': []}
    store = s3store.S3Store(s3_bucket['name'], prefix='database-backups/db1/', endpoint_url=s3_bucket['url'])
    paths, uri, warning = publish_report(repo, report, s3=store)
    assert warning is None and uri == 's3://%s/database-backups/db1/restore-tests/%s' % (
        s3_bucket['name'], os.path.basename(paths[0]))
    body = s3_bucket['client'].get_object(Bucket=s3_bucket['name'], Key=uri.split('/', 3)[3])['Body'].read()
    with open(paths[0], 'rb') as handle:
        assert json.loads(body) == json.loads(handle.read()) == report

    missing = s3store.S3Store('modulo-absent-%s' % uuid.uuid4().hex[:8], endpoint_url=s3_bucket['url'])
    paths, uri, warning = publish_report(repo, report, s3=missing)
    assert uri is None and 'does not exist' in warning and 'copy %s there by hand' % paths[0] in warning
    assert all(os.path.isfile(p) for p in paths) and len(paths) == 2
