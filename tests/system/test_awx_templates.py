# -*- coding: utf-8 -*-
"""AWX / Automation Controller objects of extensions/awx/, tested without a controller.

- every playbook has a job template; every key of the data reaches an awx.awx module option
  through playbooks/awx-configure.yml (checked against the modules' own documentation);
- survey variables exist in the playbooks' argument specs (playbooks/meta/argument_specs.yml, or
  the roles' meta/argument_specs.yml) with the same types, defaults and choices;
- the schedules' rrules, evaluated with dateutil, give the runbook's next 12 runs;
- the emergency workflow's graph, and its chain run with set_stats artifacts passed along;
- each template's playbook runs with its survey defaults through ansible-runner against a real
  PostgreSQL 15 cluster.

Templates of playbooks that are not in this tree yet are skipped, naming the missing file.
"""

import calendar
import datetime
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import pytest
import yaml

import ansible_runner
from ansible.parsing.utils.yaml import from_yaml
from dateutil import rrule

import pgsandbox
from test_pitr import make_repo

_SPEC = importlib.util.spec_from_file_location(
    'pgbackup_harness', os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'conftest.py'))
harness = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(harness)

ROOT = harness.ROOT
CONFIG_DIR = os.path.join(ROOT, 'extensions', 'awx', 'controller')
UTC = datetime.timezone.utc
SURVEY_TYPES = {'text': str, 'textarea': str, 'password': str, 'multiplechoice': str, 'multiselect': list,
                'integer': int, 'float': float}
SPEC_TYPES = {'text': 'str', 'textarea': 'str', 'password': 'str', 'multiplechoice': 'str', 'multiselect': 'list',
              'integer': 'int', 'float': 'float'}
EMERGENCY_TAGS = ['assess', 'stop', 'restore', 'verify', 'start']
# Playbooks without a job template, and why.
NO_TEMPLATE = {'schedule.yml': 'AWX schedules replace its cron entries and timers',
               'awx-configure.yml': 'it configures the controller itself',
               'dr-simulation.yml': 'sandbox only: it breaks the database on purpose and refuses other inventories',
               'db-roles.yml': 'run once by an administrator, with the vault that holds the backup role\'s password'}


def load_config():
    """Every controller_* variable of extensions/awx/controller/, read the way include_vars reads it."""
    config = {}
    for path in sorted(glob.glob(os.path.join(CONFIG_DIR, '*.yml'))):
        with open(path) as handle:
            data = from_yaml(handle.read(), file_name=path)
        assert not set(data) & set(config), '%s defines %s twice' % (path, set(data) & set(config))
        config.update(data)
    return config


CONFIG = load_config()
TEMPLATES = {t['name']: t for t in CONFIG['controller_templates']}
WORKFLOW = CONFIG['controller_workflows'][0]


def playbook_path(template):
    return os.path.join(ROOT, template['playbook'])


def require_playbook(template):
    if not os.path.exists(playbook_path(template)):
        pytest.skip('%s is not in this tree yet: its template %r is kept, not run' % (
            template['playbook'], template['name']))


def survey_of(template):
    return template.get('survey_spec', {}).get('spec', []) if template.get('survey_enabled') else []


# --- the data and playbooks/awx-configure.yml ---------------------------------------------------

def test_every_playbook_has_a_template():
    templated = {os.path.basename(t['playbook']) for t in TEMPLATES.values()}
    playbooks = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'playbooks', '*.yml'))
                 if not os.path.islink(p)}   # playbooks/<name_with_underscores>.yml: collection names
    assert playbooks - set(NO_TEMPLATE) <= templated
    # The runbook's emergency recovery and health checks are templated under their contract names.
    assert {'emergency-recovery.yml', 'health-check.yml'} <= templated
    assert all(t['playbook'].startswith('playbooks/') for t in TEMPLATES.values())


def walk(data, path=''):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from walk(value, '%s.%s' % (path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from walk(value, '%s[%d]' % (path, index))
    else:
        yield path, data


def test_no_secret_in_the_data():
    secret_words = ('password', 'secret', 'token', 'access_key')
    for path, value in walk(CONFIG):
        last = path.rsplit('.', 1)[-1].lower()
        if any(w in last for w in secret_words) and isinstance(value, str) and value:
            # Only references the controller fills in (injector templates) may appear.
            assert value.startswith('{{') and value.endswith('}}'), '%s holds a literal secret' % path
    for ctype in CONFIG['controller_credential_types']:
        for field in ctype['inputs']['fields']:
            if any(w in field['id'] for w in secret_words + ('key',)):
                assert field.get('secret'), '%s: %s is not marked secret' % (ctype['name'], field['id'])
    database = next(c for c in CONFIG['controller_credential_types'] if c['name'] == 'Modulo PostgreSQL')
    assert [f['id'] for f in database['inputs']['fields'] if f.get('secret')] == ['login_password']
    # S3 keys are the database hosts' own: injected into the execution environment they would never reach
    # the modules on the hosts (tests/production/test_fleet_over_ssh.py runs with none on the controller).
    s3 = next(c for c in CONFIG['controller_credential_types'] if c['name'] == 'Modulo S3 backup mirror')
    assert 'env' not in s3['injectors'] and not [f for f in s3['inputs']['fields'] if 'key' in f['id']]
    for cred in CONFIG['controller_credentials']:
        ctype = next(c for c in CONFIG['controller_credential_types'] if c['name'] == cred['credential_type'])
        secret_ids = {f['id'] for f in ctype['inputs']['fields'] if f.get('secret')}
        assert not secret_ids & set(cred['inputs']), cred['name']


def test_every_key_reaches_an_awx_module_option():
    """Data keys are passed by awx-configure.yml, and every argument it passes is an option of the module."""
    with open(os.path.join(ROOT, 'playbooks', 'awx-configure.yml')) as handle:
        play = yaml.safe_load(handle)[0]
    tasks = [t for t in play['tasks'] if any(k.startswith('awx.awx.') for k in t)]
    modules = sorted({k for t in tasks for k in t if k.startswith('awx.awx.')})
    proc = subprocess.run([os.path.join(harness.VENV_BIN, 'ansible-doc'), '-j'] + modules, cwd=ROOT,
                          env=harness.AnsibleRunner(ROOT).env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    options = {name: set(doc['doc']['options']) for name, doc in json.loads(proc.stdout).items()}
    applied = set()
    for task in tasks:
        module = next(k for k in task if k.startswith('awx.awx.'))
        args = set(task[module])
        assert args <= options[module], '%s: not options of %s: %s' % (task['name'], module, args - options[module])
        variable = task['loop'].strip('{} ')
        applied.add(variable)
        for item in CONFIG[variable]:
            passed = {a for a in args if ('item.%s' % a) in json.dumps(task[module][a])}
            assert set(item) <= passed, '%s %r: keys that awx-configure.yml drops: %s' % (
                variable, item['name'], set(item) - passed)
    assert applied == set(CONFIG), 'loaded but never applied: %s' % (set(CONFIG) - applied)


def test_references_between_objects_resolve():
    names = {key: {o['name'] for o in CONFIG[key]} for key in CONFIG}
    for template in TEMPLATES.values():
        assert template['inventory'] in names['controller_inventories']
        assert template['project'] in names['controller_projects']
        assert set(template['credentials']) <= names['controller_credentials']
        assert set(template['notification_templates_error']) <= names['controller_notifications']
    for schedule in CONFIG['controller_schedules']:
        assert schedule['unified_job_template'] in TEMPLATES
    for group in CONFIG['controller_groups']:
        assert group['inventory'] in names['controller_inventories']
    assert {g['name'] for g in CONFIG['controller_groups']} >= {'postgres', 'backup_scheduler'}


@pytest.mark.parametrize('name', sorted(TEMPLATES) + [WORKFLOW['name']])
def test_surveys_are_well_formed(name):
    template = WORKFLOW if name == WORKFLOW['name'] else TEMPLATES[name]
    questions = survey_of(template)
    if not template.get('survey_enabled'):
        assert 'survey_spec' not in template
        return
    assert template['survey_spec']['name'] == name
    variables = [q['variable'] for q in questions]
    assert len(variables) == len(set(variables)) and variables
    for question in questions:
        assert set(question) >= {'variable', 'question_name', 'question_description', 'type', 'required'}
        assert question['type'] in SURVEY_TYPES, question
        assert question['question_description'].strip()
        if 'default' in question:
            assert isinstance(question['default'], SURVEY_TYPES[question['type']]), question
        if question['type'] in ('multiplechoice', 'multiselect'):
            assert question['choices'] and question['default'] in question['choices'], question
        if question['type'] == 'password':
            assert not question.get('default'), 'a password survey must not carry a default'


# --- surveys against the argument specs ---------------------------------------------------------

def argument_spec_options(playbook):
    """Options of the playbook's own entry in playbooks/meta/argument_specs.yml and of the roles it runs."""
    with open(os.path.join(ROOT, 'playbooks', 'meta', 'argument_specs.yml')) as handle:
        specs = yaml.safe_load(handle)['argument_specs']
    stem = os.path.splitext(os.path.basename(playbook))[0]
    options = dict(specs.get(stem, {}).get('options', {}))
    path = os.path.join(ROOT, playbook)
    if os.path.exists(path):
        with open(path) as handle:
            plays = yaml.safe_load(handle)
        for play in plays:
            roles = [r['role'] if isinstance(r, dict) else r for r in play.get('roles', [])]
            roles += [t['ansible.builtin.include_role']['name'] for t in play.get('tasks', [])
                      if 'ansible.builtin.include_role' in t]
            for role in roles:
                name = role.split('.')[-1]
                with open(os.path.join(ROOT, 'roles', name, 'meta', 'argument_specs.yml')) as handle:
                    options.update(yaml.safe_load(handle)['argument_specs']['main']['options'])
    return options


SURVEYED = [(t['name'], t['playbook']) for t in TEMPLATES.values() if survey_of(t)]
SURVEYED.append((WORKFLOW['name'], 'playbooks/emergency-recovery.yml'))


@pytest.mark.parametrize('name,playbook', SURVEYED, ids=[s[0] for s in SURVEYED])
def test_survey_variables_match_the_argument_specs(name, playbook):
    template = WORKFLOW if name == WORKFLOW['name'] else TEMPLATES[name]
    options = argument_spec_options(playbook)
    assert options, 'no argument spec for %s' % playbook
    for question in survey_of(template):
        variable = question['variable']
        assert variable in options, '%s: %s is not in the argument specs of %s' % (name, variable, playbook)
        spec = options[variable]
        assert spec.get('type', 'str') == SPEC_TYPES[question['type']], (name, variable)
        if 'choices' in question:
            assert sorted(question['choices']) == sorted(spec.get('choices', [])), (name, variable)
        if 'default' in question:
            assert 'default' in spec, '%s: %s has a survey default but none in the spec' % (name, variable)
            assert question['default'] == spec['default'], (name, variable, question['default'], spec['default'])
        else:
            assert question['required'], '%s: %s has no default, so it must be required' % (name, variable)


@pytest.mark.parametrize('playbook,bad', [
    ('restore.yml', {'restore_jobs': 'abc'}), ('pitr.yml', {'target': 'sometime'}),
    ('verify.yml', {'expect_exact_rows': 'maybe'}), ('list-backups.yml', {'verify': 'maybe'})])
def test_playbooks_enforce_their_argument_specs(ansible, playbook, bad):
    """The specs the surveys follow are the ones the playbooks check, before they touch anything."""
    proc = ansible.playbook(playbook, extra_vars=bad)
    assert proc.returncode != 0
    assert 'Validation of arguments failed' in proc.stdout and list(bad)[0] in proc.stdout, proc.stdout[-3000:]


def test_emergency_template_and_workflow_ask_the_contract_variables():
    contract = {'restore_source', 'backup_file', 'target_time', 'target_db', 'confirm'}
    template = TEMPLATES['modulo.pgbackup emergency recovery']
    assert {q['variable'] for q in survey_of(template)} == contract
    assert {q['variable'] for q in survey_of(WORKFLOW)} == contract
    assert template['job_tags'] == 'assess'      # alone, it only assesses
    assert template['ask_tags_on_launch'] and template['ask_variables_on_launch']


# --- schedules ----------------------------------------------------------------------------------

def evaluate(rule_text):
    """The rrule as AWX stores it ("DTSTART...  RRULE:..."), evaluated by dateutil."""
    return rrule.rrulestr(rule_text.replace(' RRULE:', '\nRRULE:'), forceset=True)


def schedule_for(template_name):
    return next(s for s in CONFIG['controller_schedules'] if s['unified_job_template'] == template_name)


def first_sundays(after, count):
    """First Sunday of each month at 04:00 UTC, computed with the calendar, not with rrule."""
    found, year, month = [], after.year, after.month
    while len(found) < count:
        day = next(d for d in range(1, 8) if calendar.weekday(year, month, d) == calendar.SUNDAY)
        when = datetime.datetime(year, month, day, 4, 0, tzinfo=UTC)
        if when > after:
            found.append(when)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return found


@pytest.mark.parametrize('after', [datetime.datetime(2027, 1, 3, 4, 0, tzinfo=UTC),      # at a drill
                                   datetime.datetime(2027, 2, 28, 23, 59, tzinfo=UTC),
                                   datetime.datetime(2028, 2, 1, 0, 0, tzinfo=UTC)],      # leap year
                         ids=['at-a-drill', 'end-of-february', 'leap-year'])
def test_drill_schedule_gives_the_first_sundays_at_0400_utc(after):
    rule = evaluate(schedule_for('modulo.pgbackup restore drill')['rrule'])
    runs, when = [], after
    for _run in range(12):
        when = rule.after(when)
        runs.append(when.astimezone(UTC))
    assert runs == first_sundays(after, 12)
    assert all(r.weekday() == 6 and r.day <= 7 and (r.hour, r.minute) == (4, 0) for r in runs)


def test_drill_schedule_from_today():
    now = datetime.datetime.now(UTC)
    rule = evaluate(schedule_for('modulo.pgbackup restore drill')['rrule'])
    runs, when = [], max(now, datetime.datetime(2026, 12, 6, tzinfo=UTC))
    start = when
    for _run in range(12):
        when = rule.after(when)
        runs.append(when.astimezone(UTC))
    assert runs == first_sundays(start, 12)


def test_health_check_schedule_runs_every_hour_at_half_past():
    rule = evaluate(schedule_for('modulo.pgbackup health check')['rrule'])
    after = datetime.datetime(2027, 3, 28, 0, 45, tzinfo=UTC)
    runs, when = [], after
    for _run in range(30):
        when = rule.after(when)
        runs.append(when.astimezone(UTC))
    assert runs == [datetime.datetime(2027, 3, 28, 1, 30, tzinfo=UTC) + datetime.timedelta(hours=i) for i in range(30)]


def play_groups(playbook):
    """The inventory groups the plays of ``playbook`` target (hosts: patterns, split on ':')."""
    with open(os.path.join(ROOT, playbook)) as handle:
        plays = yaml.safe_load(handle)
    groups = set()
    for play in plays:
        for part in str(play.get('hosts', '')).split(':'):
            part = part.lstrip('!&')
            if part and part not in ('all', 'localhost'):
                groups.add(part)
    return groups


def controller_groups():
    return {str(g['name']) for g in CONFIG['controller_groups'] if g['inventory'] == 'Modulo PostgreSQL'}


def test_the_controller_inventory_has_every_group_the_templated_plays_target():
    targeted = set()
    for template in TEMPLATES.values():
        targeted |= play_groups(template['playbook'])
    assert {'postgres', 'modulo_app'} <= targeted
    assert targeted <= controller_groups(), 'groups missing from 30_inventories.yml: %s' % (
        targeted - controller_groups())
    assert all(t['inventory'] == 'Modulo PostgreSQL' for t in TEMPLATES.values())


def test_nightly_schedule_gives_every_day_at_0200_utc():
    rule = evaluate(schedule_for('modulo.pgbackup nightly backup')['rrule'])
    after = datetime.datetime(2027, 3, 27, 12, 0, tzinfo=UTC)        # across Europe's DST change
    runs, when = [], after
    for _run in range(12):
        when = rule.after(when)
        runs.append(when.astimezone(UTC))
    assert runs == [datetime.datetime(2027, 3, 28, 2, 0, tzinfo=UTC) + datetime.timedelta(days=i) for i in range(12)]


# --- the emergency workflow ----------------------------------------------------------------------

def nodes_by_id():
    nodes = {n['identifier']: n for n in WORKFLOW['workflow_nodes']}
    assert len(nodes) == len(WORKFLOW['workflow_nodes'])
    return nodes


def children(node, kind):
    return [c['identifier'] for c in node.get('related', {}).get(kind, [])]


def test_workflow_chains_assess_approval_stop_restore_verify_start():
    nodes = nodes_by_id()
    for node in nodes.values():
        for kind in ('success_nodes', 'failure_nodes', 'always_nodes'):
            assert set(children(node, kind)) <= set(nodes), node['identifier']
    parents = {c for n in nodes.values() for k in ('success_nodes', 'failure_nodes') for c in children(n, k)}
    roots = [i for i in nodes if i not in parents]
    assert roots == ['assess']
    path, current = [], 'assess'
    while current:
        path.append(current)
        assert current not in path[:-1], 'cycle at %s' % current
        following = children(nodes[current], 'success_nodes')
        assert len(following) <= 1
        current = following[0] if following else None
    assert path == ['assess', 'approve', 'stop', 'restore', 'verify', 'start']
    steps = [nodes[i] for i in path]
    assert steps[1]['unified_job_template']['type'] == 'workflow_approval'
    assert steps[1]['unified_job_template']['timeout'] > 0
    assert [n.get('job_tags') for n in steps if n['unified_job_template']['type'] == 'job_template'] == EMERGENCY_TAGS
    for node in nodes.values():
        ujt = node['unified_job_template']
        if ujt['type'] == 'job_template':
            assert ujt['name'] in TEMPLATES and TEMPLATES[ujt['name']]['ask_tags_on_launch']


def test_workflow_failure_paths():
    nodes = nodes_by_id()
    # A failed stop or restore brings the application back on the untouched database.
    for step in ('stop', 'restore'):
        recovery = [nodes[i] for i in children(nodes[step], 'failure_nodes')]
        assert [n.get('job_tags') for n in recovery] == ['start'], step
    # A failed verification must not start the application on a database that failed its checks.
    assert children(nodes['verify'], 'failure_nodes') == []
    assert WORKFLOW['notification_templates_error'] and WORKFLOW['notification_templates_approvals']


# --- running the templates' playbooks -----------------------------------------------------------

class Controller(object):
    """What AWX does for a job, done by ansible-runner: survey answers and artifacts as extra variables."""

    def __init__(self, workdir, inventory):
        self.workdir = workdir
        self.inventory = inventory
        self.collections = self.sync_project(workdir)

    @staticmethod
    def sync_project(workdir):
        """What an AWX project sync does with collections/requirements.yml: install them for the jobs."""
        path = os.path.join(workdir, 'requirements_collections')
        proc = subprocess.run([os.path.join(harness.VENV_BIN, 'ansible-galaxy'), 'collection', 'install', '--offline',
                               '-r', 'collections/requirements.yml', '-p', path], cwd=ROOT,
                              env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=path), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, universal_newlines=True, check=False)
        assert proc.returncode == 0, proc.stdout
        assert os.path.isfile(os.path.join(path, 'ansible_collections', 'modulo', 'pgbackup', 'MANIFEST.json'))
        return path

    def launch(self, template, answers=None, artifacts=None, job_tags=None):
        extravars = {q['variable']: q['default'] for q in survey_of(template) if 'default' in q}
        extravars.update(artifacts or {})
        extravars.update(answers or {})
        missing = [q['variable'] for q in survey_of(template) if q['required'] and q['variable'] not in extravars]
        assert not missing, '%s: required survey questions without an answer: %s' % (template['name'], missing)
        private = os.path.join(self.workdir, 'job-%s' % uuid.uuid4().hex[:8])
        os.makedirs(private)
        env = harness.AnsibleRunner(private).env()
        envvars = {k: env[k] for k in ('ANSIBLE_CONFIG', 'PATH', 'ANSIBLE_NOCOLOR', 'ANSIBLE_LOCAL_TEMP',
                                       'ANSIBLE_REMOTE_TEMP')}
        # As AWX runs a job: the collection from the project sync's install, not the working tree's link.
        envvars['ANSIBLE_COLLECTIONS_PATH'] = self.collections
        result = ansible_runner.run(
            private_data_dir=private, playbook=playbook_path(template), inventory=self.inventory,
            extravars=extravars, tags=job_tags or template.get('job_tags'), quiet=True, envvars=envvars)
        stats = [e for e in result.events if e.get('event') == 'playbook_on_stats']
        result.artifact_data = stats[-1]['event_data'].get('artifact_data', {}) if stats else {}
        result.output = result.stdout.read()
        return result


@pytest.fixture(scope='module')
def world(sandbox_base):
    """A PostgreSQL 15 cluster with the sample database, an inventory for it, and one nightly backup."""
    workdir = pgsandbox.make_base(tempfile.mkdtemp(prefix='awx-', dir=sandbox_base))   # postgres runs the archive command from here
    cluster = pgsandbox.Cluster(sandbox_base, name='pg-awx-%s' % uuid.uuid4().hex[:8])
    repo = make_repo(os.path.join(sandbox_base, 'awx-repo-%s' % uuid.uuid4().hex[:8]))
    app_stop = None
    try:
        cluster.init().start()
        cluster.psql('CREATE DATABASE modulodb')
        cluster.psql_file(harness.SCHEMA_SQL, db='modulodb')
        variables = dict(cluster.connection_vars(), pgbackup_backup_root=repo, pgbackup_db='modulodb',
                         pgbackup_login_password='', pgbackup_login_unix_socket='', pgbackup_pg_service='',
                         pgbackup_s3_bucket='', ansible_connection='local',
                         ansible_python_interpreter=sys.executable,
                         wal_archive_command_path=os.path.join(workdir, 'bin', 'pgbackup-wal'))
        inventory = os.path.join(workdir, 'hosts.yml')
        # The emergency workflow stops and starts the application: the test application stands in for it.
        app_cli = '%s %s' % (sys.executable, os.path.join(ROOT, 'tests', 'modulo_app.py'))
        pidfile, app_port = os.path.join(workdir, 'app.pid'), pgsandbox.free_port()
        app_stop = '%s stop --pidfile %s' % (app_cli, pidfile)
        app = {'app_services_commands': [{
            'name': 'modulo-app',
            'start': '%s start --pidfile %s --port %d --log %s --host 127.0.0.1 --dbport %d --user postgres --db modulodb'
                     % (app_cli, pidfile, app_port, os.path.join(workdir, 'app.log'), cluster.port),
            'stop': app_stop, 'status': '%s status --pidfile %s' % (app_cli, pidfile)}],
            'app_services_health_urls': ['http://127.0.0.1:%d/health' % app_port]}
        # The controller inventory's groups, and only those: a group the test made up would hide one
        # missing from extensions/awx/controller/30_inventories.yml.
        members = {'postgres': {'localhost': None}, 'backup_scheduler': {'localhost': None},
                   'modulo_app': {'modulo-app-awx': app}}
        assert set(members) <= controller_groups()
        with open(inventory, 'w') as handle:
            yaml.safe_dump({'all': {'vars': variables, 'children': dict(
                (group, {'hosts': members.get(group) or {}}) for group in sorted(controller_groups()))}}, handle)
        controller = Controller(workdir, inventory)
        nightly = controller.launch(TEMPLATES['modulo.pgbackup nightly backup'])
        yield {'cluster': cluster, 'repo': repo, 'controller': controller, 'nightly': nightly}
    finally:
        if app_stop:
            subprocess.run(app_stop, shell=True, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cluster.destroy()
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


def assert_ran(result, template):
    assert result.status == 'successful' and result.rc == 0, '%s failed:\n%s' % (template['name'], result.output[-4000:])


def newest_meta(repo, sub='full'):
    metas = sorted(glob.glob(os.path.join(repo, sub, '*.meta')))
    assert metas, 'no backup in %s/%s' % (repo, sub)
    with open(metas[-1]) as handle:
        return json.load(handle)


def ensure_archiving(world):
    if world['cluster'].psql("SELECT current_setting('archive_mode')") != 'on':
        result = world['controller'].launch(TEMPLATES['modulo.pgbackup configure PITR'])
        assert_ran(result, TEMPLATES['modulo.pgbackup configure PITR'])
        return result
    return None


def test_template_nightly_backup(world):
    assert_ran(world['nightly'], TEMPLATES['modulo.pgbackup nightly backup'])
    meta = newest_meta(world['repo'])
    assert meta['status'] == 'complete' and meta['format'] == 'plain' and meta['database'] == 'modulodb'


def test_template_configure_pitr(world):
    result = ensure_archiving(world) or world['controller'].launch(TEMPLATES['modulo.pgbackup configure PITR'])
    assert_ran(result, TEMPLATES['modulo.pgbackup configure PITR'])
    assert world['cluster'].psql("SELECT current_setting('archive_mode') || current_setting('wal_level')") == 'onreplica'


def test_template_restore(world):
    result = world['controller'].launch(TEMPLATES['modulo.pgbackup restore'])
    assert_ran(result, TEMPLATES['modulo.pgbackup restore'])
    assert harness.table_rows(world['cluster'], 'modulodb_test') == newest_meta(world['repo'])['table_rows']


def test_template_pitr(world):
    cluster = world['cluster']
    ensure_archiving(world)
    nightly = world['controller'].launch(TEMPLATES['modulo.pgbackup nightly backup'])    # now with a base backup
    assert_ran(nightly, TEMPLATES['modulo.pgbackup nightly backup'])
    assert newest_meta(world['repo'], 'base')['status'] == 'complete'
    cluster.psql('CREATE TABLE awx_marker (id int)', db='modulodb')
    cluster.psql('INSERT INTO awx_marker SELECT generate_series(1, 42)', db='modulodb')
    before = cluster.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), "
                          "pg_sleep(1.1)").split('|')[0]
    cluster.psql('DELETE FROM awx_marker', db='modulodb')
    segment = cluster.psql('SELECT pg_walfile_name(pg_switch_wal())')
    for _attempt in range(100):
        if cluster.psql("SELECT last_archived_wal >= '%s' FROM pg_stat_archiver" % segment) == 't':
            break
        time.sleep(0.2)
    # target_time is the one question without a default: answered as an operator would.
    result = world['controller'].launch(TEMPLATES['modulo.pgbackup PITR'], answers={'target_time': before})
    assert_ran(result, TEMPLATES['modulo.pgbackup PITR'])
    assert cluster.psql('SELECT count(*) FROM awx_marker', db='modulodb_recovery') == '42'
    assert cluster.psql('SELECT count(*) FROM awx_marker', db='modulodb') == '0'


def test_template_restore_drill(world):
    result = world['controller'].launch(TEMPLATES['modulo.pgbackup restore drill'])
    assert_ran(result, TEMPLATES['modulo.pgbackup restore drill'])
    reports = sorted(glob.glob(os.path.join(world['repo'], 'restore-tests', 'monthly_drill_*.json')))
    with open(reports[-1]) as handle:
        assert json.load(handle)['status'] == 'passed'


def test_template_list_backups(world):
    result = world['controller'].launch(TEMPLATES['modulo.pgbackup list backups'])
    assert_ran(result, TEMPLATES['modulo.pgbackup list backups'])
    assert newest_meta(world['repo'])['name'] in result.output


def test_template_verify_database(world):
    result = world['controller'].launch(TEMPLATES['modulo.pgbackup verify database'])
    assert_ran(result, TEMPLATES['modulo.pgbackup verify database'])
    assert 'Verify PASSED: database modulodb' in result.output


def test_template_cleanup(world):
    result = world['controller'].launch(TEMPLATES['modulo.pgbackup cleanup'])
    assert_ran(result, TEMPLATES['modulo.pgbackup cleanup'])
    assert glob.glob(os.path.join(world['repo'], 'logs', 'retention_report_*.json'))


@pytest.mark.parametrize('name', ['modulo.pgbackup health check', 'modulo.pgbackup emergency recovery'])
def test_templates_of_playbooks_built_elsewhere(world, name):
    template = TEMPLATES[name]
    require_playbook(template)
    result = world['controller'].launch(template)
    if name == 'modulo.pgbackup health check':
        # It runs to its verdict: written down, and a breach (e.g. no drill yet) fails the job as it should.
        with open(os.path.join(world['repo'], 'logs', 'health.json')) as handle:
            verdict = json.load(handle)
        assert (result.status == 'successful') == verdict['ok'], result.output[-3000:]
        if not verdict['ok']:
            assert 'backup health NOT OK: %s' % ', '.join(verdict['breached']) in result.output
        return
    assert_ran(result, template)


def test_the_runner_hands_set_stats_artifacts_to_the_next_job(world, tmp_path):
    """The chain below relies on this: what one job publishes with set_stats, the next one receives."""
    publish = tmp_path / 'publish.yml'
    publish.write_text(yaml.safe_dump([{'name': 'publish', 'hosts': 'postgres', 'gather_facts': False, 'tasks': [
        {'name': 'publish', 'ansible.builtin.set_stats': {'data': {'chosen_backup': '{{ pgbackup_db }}-x'}}}]}]))
    consume = tmp_path / 'consume.yml'
    consume.write_text(yaml.safe_dump([{'name': 'consume', 'hosts': 'postgres', 'gather_facts': False, 'tasks': [
        {'name': 'consume', 'ansible.builtin.assert': {'that': "chosen_backup == 'modulodb-x'"}}]}]))
    first = world['controller'].launch({'name': 'publish', 'playbook': str(publish)})
    assert first.status == 'successful' and first.artifact_data == {'chosen_backup': 'modulodb-x'}
    second = world['controller'].launch({'name': 'consume', 'playbook': str(consume)}, artifacts=first.artifact_data)
    assert second.status == 'successful', second.output[-2000:]


def test_emergency_workflow_chain_passes_artifacts_along(world):
    """The workflow's success path, node after node, as the controller runs it (approval granted)."""
    require_playbook(TEMPLATES['modulo.pgbackup emergency recovery'])
    nodes = nodes_by_id()
    answers = {q['variable']: q['default'] for q in survey_of(WORKFLOW) if 'default' in q}
    answers['confirm'] = answers['target_db']
    artifacts, produced, current = {}, {}, 'assess'
    while current:
        node = nodes[current]
        ujt = node['unified_job_template']
        if ujt['type'] == 'job_template':
            result = world['controller'].launch(TEMPLATES[ujt['name']], answers=answers, artifacts=artifacts,
                                                job_tags=node['job_tags'])
            assert_ran(result, TEMPLATES[ujt['name']])
            produced[current] = result.artifact_data
            artifacts.update(result.artifact_data)
        following = children(node, 'success_nodes')
        current = following[0] if following else None
    assert produced['assess'], 'the assess step publishes nothing with set_stats for the next steps'
    assert harness.table_rows(world['cluster'], 'modulodb')
