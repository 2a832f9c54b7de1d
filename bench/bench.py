# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Side-by-side benchmark: the collection versus the runbook's commands and pgBackRest.

One run creates a pgbench database of ``--scale`` and measures every method on
that same data, in the same run, so the ratios compare like with like:

* logical backup: ``pg_dump | gzip`` (the runbook) vs ``pg_backup`` defaults and other formats;
* logical restore: ``gunzip | psql`` vs ``backup_restore`` (parallel where the format allows);
* physical: ``pg_backup type=physical`` and ``backup_restore mode=cluster`` to a running
  server vs pgBackRest full backup and restore (process-max=2, compress-type=zst);
* PITR to a target 60 s into a pgbench run, start to promoted server, vs pgBackRest;
* WAL archiving: per-segment push cost over real segments (cp, the collection's archive
  command as wal_archive installs it, ``pgbackrest archive-push``) and the ``.ready``
  backlog under ``pgbench -c 4`` load;
* emergency recovery end to end: ``playbooks/emergency-recovery.yml`` on the same database with
  the test application writing orders (stop, PITR of the cluster to the newest point, verify, start);
* peak RSS and CPU seconds of the processes each method runs.

The collection is measured through its real code paths: its modules run in
ansible-playbook tasks, the archive command is the one wal_archive installs.

    bench.py [--scale 100] [--results bench/results] [--smoke]
    bench.py check RESULTS.json      (what ``make bench-smoke`` asserts)
"""

import argparse
import collections
import datetime
import hashlib
import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, 'tools'))
sys.path.insert(0, os.path.join(ROOT, 'tests'))
sys.path.insert(0, os.path.join(ROOT, '.collections'))

import pgsandbox  # noqa: E402

from ansible_collections.modulo.pgbackup.plugins.module_utils import walcommand  # noqa: E402
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import archive as walarchive  # noqa: E402

STANZA = 'bench'
MB = 1024.0 * 1024.0


# ---------------------------------------------------------------------------------------------
# Measuring: wall time, and peak RSS / CPU of the processes a method runs
# ---------------------------------------------------------------------------------------------

def _proc_table():
    """pid -> (ppid, name, rss_bytes, cpu_s, cmdline) of every process we can read."""
    table = {}
    tick = os.sysconf('SC_CLK_TCK')
    page = os.sysconf('SC_PAGE_SIZE')
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry) as handle:
                stat = handle.read()
            with open('/proc/%s/cmdline' % entry, 'rb') as handle:
                cmdline = handle.read().replace(b'\0', b' ').decode('utf-8', 'replace')
        except OSError:
            continue
        name = stat[stat.index('(') + 1:stat.rindex(')')]
        fields = stat[stat.rindex(')') + 2:].split()
        table[int(entry)] = (int(fields[1]), name, int(fields[21]) * page,
                             (int(fields[11]) + int(fields[12])) / float(tick), cmdline)
    return table


def _descendants(table, roots):
    children = {}
    for pid, row in table.items():
        children.setdefault(row[0], []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        for child in children.get(pid, ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _label(name, cmdline):
    if 'ansible-playbook' in cmdline or name == 'ansible-playboo':
        return 'ansible-playbook (controller)'
    if 'AnsiballZ' in cmdline:
        return 'module (python)'
    if 'walarchive' in cmdline or 'pgbackup-wal' in cmdline:
        return 'archive command (python)'
    if name.startswith('postgres'):
        return 'postgres server'
    if 'moto_server' in cmdline or 'DomainDispatcherApplication' in cmdline:
        return 'S3 server (moto)'
    return name


class Sampler(object):
    """Samples this process's descendants and the server's processes every ``interval`` s.

    Reports the peak of the summed RSS of the method's own processes (the
    Ansible controller apart: it is the same for every module), and CPU seconds
    per program, the server included: a cheap profile of where the time went.
    """

    def __init__(self, server_pids=None, interval=0.1):
        # A callable: restores start new servers while they are measured.
        self.server_pids = server_pids or (lambda: [])
        self.interval = interval
        self.peak_rss = 0
        self.peak_rss_controller = 0
        self.peak_by_program = {}
        self.cpu_last = {}
        self.cpu_base = {}
        self._stop = threading.Event()
        self._thread = None

    def _sample(self, first=False):
        table = _proc_table()
        mine = _descendants(table, [os.getpid()])
        postmasters = [pid for pid in self.server_pids() if pid in table]
        server = (_descendants(table, postmasters) | set(postmasters)) - mine
        # archive_async's pusher and prefetcher leave their parent (the command PostgreSQL ran) behind and
        # live on their own: found by what they run.
        detached = set(pid for pid, row in table.items() if 'pgbackup-wal' in row[4]) - mine - server
        total = controller = 0
        for pid in mine | server | detached:
            _ppid, name, rss, cpu, cmdline = table[pid]
            label = _label(name, cmdline) + (', background' if pid in detached else '')
            if first:
                self.cpu_base[pid] = cpu
            self.cpu_last[pid] = (label, cpu)
            if (pid in server and label == 'postgres server') or label == 'S3 server (moto)':
                continue  # the servers' memory is not the tool's; their CPU is reported
            if label == 'ansible-playbook (controller)':
                controller += rss
            else:
                total += rss
                self.peak_by_program[label] = max(self.peak_by_program.get(label, 0), rss)
        self.peak_rss = max(self.peak_rss, total)
        self.peak_rss_controller = max(self.peak_rss_controller, controller)

    def _loop(self):
        while not self._stop.wait(self.interval):
            try:
                self._sample()
            except (OSError, ValueError, KeyError):
                pass

    def __enter__(self):
        self._sample(first=True)
        self._thread = threading.Thread(target=self._loop)
        self._thread.daemon = True
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self):
        cpu = {}
        for pid, (label, value) in self.cpu_last.items():
            cpu[label] = cpu.get(label, 0.0) + max(0.0, value - self.cpu_base.get(pid, 0.0))
        return {
            'peak_rss_mb': round(self.peak_rss / MB, 1),
            'peak_rss_controller_mb': round(self.peak_rss_controller / MB, 1),
            'peak_rss_by_program_mb': dict((k, round(v / MB, 1)) for k, v in sorted(self.peak_by_program.items())),
            'cpu_s_by_program': dict((k, round(v, 2)) for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])
                                     if v >= 0.01),
        }


def merge_usage(usages, add_cpu=False):
    """One Sampler summary for several runs: the first's, with the peaks of all of them, and with the
    CPU seconds of all added up when the runs are parts of one measurement (``add_cpu``)."""
    merged = dict(usages[0])
    for key in ('peak_rss_mb', 'peak_rss_controller_mb'):
        merged[key] = max(u.get(key, 0.0) for u in usages)
    by_program, cpu = {}, {}
    for usage in usages:
        for label, value in usage.get('peak_rss_by_program_mb', {}).items():
            by_program[label] = max(by_program.get(label, 0.0), value)
        for label, value in usage.get('cpu_s_by_program', {}).items():
            cpu[label] = cpu.get(label, 0.0) + value
    merged['peak_rss_by_program_mb'] = dict(sorted(by_program.items()))
    if add_cpu:
        merged['cpu_s_by_program'] = dict((k, round(v, 2)) for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
    return merged


# ---------------------------------------------------------------------------------------------
# The environment: one cluster with the pgbench database, pgBackRest, the collection's repository
# ---------------------------------------------------------------------------------------------

def chown_to_server_user(*paths):
    if os.geteuid() == 0:
        pw = pwd.getpwnam(pgsandbox.RUN_AS)
        for path in paths:
            os.chown(path, pw.pw_uid, pw.pw_gid)


def server_dir(path, mode=0o700):
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)
    chown_to_server_user(path)
    return path


def run(argv, env=None, as_server=False, check=True, stdout=subprocess.PIPE):
    if as_server:
        argv = pgsandbox.as_server_user(argv)
    proc = subprocess.run(argv, env=env, stdout=stdout, stderr=subprocess.STDOUT, check=False)
    if check and proc.returncode:
        out = proc.stdout.decode('utf-8', 'replace')[-3000:] if proc.stdout else ''
        raise RuntimeError('%s failed (%d): %s' % (' '.join(argv), proc.returncode, out))
    return proc.stdout.decode('utf-8', 'replace') if proc.stdout else ''


def shell(script, env=None, as_server=False):
    """A shell pipeline with pipefail, as an operator would type it."""
    return run(['bash', '-o', 'pipefail', '-c', script], env=env, as_server=as_server)


def size_of(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(base, name))
                   for base, _dirs, files in os.walk(path) for name in files)
    return os.path.getsize(path)


def utc_parse(text):
    """An ISO time of the incident report or the application's journal ('Z' or an offset) as an aware datetime."""
    return datetime.datetime.fromisoformat(text.replace('Z', '+00:00'))


def utc_iso(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec='milliseconds')


class Bench(object):
    def __init__(self, args):
        self.args = args
        self.scale = args.scale
        self.base = pgsandbox.make_base(tempfile.mkdtemp(prefix='modulo-bench-', dir=args.workdir))
        self.bindir = pgsandbox.BINDIR
        self.cluster = None
        self.targets = []
        from conftest import AnsibleRunner  # the harness of the integration tests
        self.ansible = AnsibleRunner(os.path.join(self.base, 'ansible'))
        os.makedirs(self.ansible.workdir)
        self.repo = server_dir(os.path.join(self.base, 'repo'))
        self.command_path = os.path.join(self.base, 'bin', 'modulo-walarchive')
        self.results = {'scale': self.scale, 'repeats': args.repeats, 'drop_caches': args.drop_caches,
                        'started_at': utc_iso(time.time()),
                        'host': self.host_facts(),
                        'measurements': {}, 'notes': []}
        self.pgbr_conf = os.path.join(self.base, 'pgbackrest', 'pgbackrest.conf')

    # -- helpers ------------------------------------------------------------------------------
    def bin(self, name):
        return os.path.join(self.bindir, name)

    def psql(self, sql, db='postgres', cluster=None):
        return (cluster or self.cluster).psql(sql, db=db)

    def record(self, key, **values):
        self.results['measurements'][key] = values
        shown = dict((k, v) for k, v in values.items() if not isinstance(v, dict))
        print('bench: %-28s %s' % (key, json.dumps(shown, sort_keys=True)), flush=True)
        return values

    def conn_args(self, cluster=None, **extra):
        cluster = cluster or self.cluster
        args = {'login_host': '127.0.0.1', 'port': cluster.port, 'login_user': 'postgres',
                'pg_bindir': self.bindir, 'backup_root': self.repo}
        args.update(extra)
        return args

    def task(self, module, args):
        """Run one of the collection's modules through ansible-playbook; time and sample it."""
        with Sampler(self.server_pids) as sampler:
            start = time.time()
            result = self.ansible.task('modulo.pgbackup.%s' % module, args, alone=True)
            elapsed = time.time() - start
        if result.get('failed'):
            raise RuntimeError('%s failed: %s\n%s' % (module, result.get('msg'), result.get('_output', '')[-3000:]))
        return result, elapsed, sampler.summary()

    def net_ratio(self, elapsed, reference):
        """The ratio once the start-up of ansible-playbook (measured on an empty task) is taken off."""
        return round(max(0.0, elapsed - self.results['ansible_task_overhead_s']) / reference, 2)

    def timed(self, func):
        with Sampler(self.server_pids) as sampler:
            start = time.time()
            value = func()
            elapsed = time.time() - start
        return value, elapsed, sampler.summary()

    def interleaved(self, *runs):
        """Run each callable (returning (value, elapsed, memory)) ``--repeats`` times, in turns (a, b,
        a, b, ...) so that a machine that slows down or speeds up during the run weighs on all of them
        alike.  For each: the run with the median time, with the peak memory of all its runs and
        every time in ``times_s``."""
        attempts = [[] for _run in runs]
        for _round in range(self.args.repeats):
            for index, func in enumerate(runs):
                self.cold_cache()
                attempts[index].append(func())
        chosen = []
        for tries in attempts:
            value, elapsed, mem = sorted(tries, key=lambda t: t[1])[(len(tries) - 1) // 2]
            mem = dict(merge_usage([mem] + [t[2] for t in tries]), times_s=[round(t[1], 2) for t in tries])
            chosen.append((value, elapsed, mem))
        return chosen

    def cold_cache(self):
        """With --drop-caches: write back and drop the page cache, so that each run of a pair starts from
        the same memory. At scale 1000 the 15 GB source and the previous run's files otherwise fill the
        cache, and the next run pays the kernel's reclaim in its own time (a restore measured 19 s in one
        run and 37 to 52 s in the next)."""
        if not self.args.drop_caches:
            return
        os.sync()
        with open('/proc/sys/vm/drop_caches', 'w') as handle:
            handle.write('3\n')

    def in_rounds(self, names, loops):
        """Time each (label, command with $f) over all ``names``, in turns: a ``--repeats``-th of the
        segments at a time, so that every method meets the same moments of the machine's load.
        Returns {label: (total time, memory and CPU of all rounds)}, in the order given."""
        rounds = max(1, min(self.args.repeats, len(names)))
        runs = collections.OrderedDict((label, []) for label, _c in loops)
        for chunk in (names[i::rounds] for i in range(rounds)):
            for label, command in loops:
                script = 'for f in %s; do %s || exit 1; done' % (' '.join(chunk), command)
                _o, elapsed, mem = self.timed(lambda: shell(script, as_server=True))
                runs[label].append((elapsed, mem))
        return collections.OrderedDict((label, (sum(r[0] for r in parts), merge_usage([r[1] for r in parts],
                                                                                      add_cpu=True)))
                                       for label, parts in runs.items())

    def server_pids(self):
        """Postmasters of every cluster under the work directory, restored ones included."""
        pids = []
        for entry in os.listdir(self.base):
            try:
                with open(os.path.join(self.base, entry, 'data', 'postmaster.pid')) as handle:
                    pids.append(int(handle.readline()))
            except (OSError, ValueError):
                pass
        return pids

    def pgbackrest(self, *argv):
        return run(['pgbackrest', '--config=%s' % self.pgbr_conf, '--stanza=%s' % STANZA] + list(argv),
                   as_server=True)

    def ready_count(self):
        status = os.path.join(self.cluster.pgdata, 'pg_wal', 'archive_status')
        return sum(1 for name in os.listdir(status) if name.endswith('.ready'))

    def wait_archived(self, timeout=600):
        """Close the current segment and wait until nothing waits for the archiver."""
        self.psql('SELECT pg_switch_wal()')
        deadline = time.time() + timeout
        while self.ready_count():
            if time.time() > deadline:
                raise RuntimeError('the archiver did not catch up within %d s' % timeout)
            time.sleep(0.2)

    def set_archive_command(self, command):
        self.psql("ALTER SYSTEM SET archive_command = '%s'" % command.replace("'", "''"))
        self.psql('SELECT pg_reload_conf()')
        time.sleep(0.5)

    def host_facts(self):
        facts = {'cpus': os.cpu_count()}
        try:
            facts['loadavg_at_start'] = [round(x, 2) for x in os.getloadavg()]
            facts['pgbackrest'] = subprocess.check_output(['pgbackrest', 'version']).decode().strip()
        except (OSError, subprocess.CalledProcessError):
            facts['pgbackrest'] = None
        return facts

    def new_target(self, name):
        """An empty running cluster for restores 'to a running server' (its own port and settings)."""
        cluster = pgsandbox.Cluster(self.base, name=name)
        cluster.init({'log_min_duration_statement': 1000}).start()
        self.targets.append(cluster)
        return cluster

    def drop_target(self, cluster):
        cluster.destroy()
        for entry in os.listdir(cluster.dir) if os.path.isdir(cluster.dir) else []:
            shutil.rmtree(os.path.join(cluster.dir, entry), ignore_errors=True)
        shutil.rmtree(cluster.dir, ignore_errors=True)
        self.targets.remove(cluster)

    def server_log_offset(self, cluster=None):
        try:
            return os.path.getsize((cluster or self.cluster).log)
        except OSError:
            return 0

    def slow_statements(self, offset, cluster=None, top=5):
        """PostgreSQL's own timings (log_min_duration_statement) logged since ``offset``."""
        found = []
        try:
            with open((cluster or self.cluster).log, 'rb') as handle:
                handle.seek(offset)
                for line in handle.read().decode('utf-8', 'replace').splitlines():
                    if 'duration:' in line and ' ms' in line:
                        text = line.split('duration:', 1)[1].strip()
                        ms, _sep, rest = text.partition(' ms')
                        try:
                            found.append((float(ms), rest.strip()[:120]))
                        except ValueError:
                            continue
        except OSError:
            return []
        found.sort(reverse=True)
        return [{'ms': round(ms, 1), 'statement': text} for ms, text in found[:top]]

    # -- phases ---------------------------------------------------------------------------------
    def setup(self):
        self.cluster = pgsandbox.Cluster(self.base, name='pg')
        self.cluster.init({'max_wal_size': "'1GB'", 'checkpoint_timeout': "'15min'",
                           'shared_buffers': "'128MB'", 'log_min_duration_statement': 1000,
                           'log_checkpoints': 'off'}).start()
        self.psql('CREATE DATABASE modulodb')
        _out, elapsed, _mem = self.timed(lambda: run(
            [self.bin('pgbench'), '-i', '-q', '-s', str(self.scale), 'modulodb'], env=self.cluster.env()))
        self.psql('CHECKPOINT')
        size = int(self.psql("SELECT pg_database_size('modulodb')"))
        self.results['database'] = {'name': 'modulodb', 'size_bytes': size, 'create_s': round(elapsed, 1),
                                    'pgbench_accounts': int(self.psql('SELECT count(*) FROM pgbench_accounts',
                                                                      db='modulodb'))}
        print('bench: database of scale %d: %.0f MB in %.1f s' % (self.scale, size / MB, elapsed), flush=True)
        [(_res, elapsed, mem)] = self.interleaved(lambda: self.task('backup_info', self.conn_args(select='all')))
        self.results['ansible_task_overhead_s'] = round(elapsed, 2)
        self.results['ansible_task_overhead_times_s'] = mem['times_s']

    def logical_backup(self):
        scratch = server_dir(os.path.join(self.base, 'runbook'), 0o755)
        dump = os.path.join(scratch, 'modulodb.sql.gz')
        env = self.cluster.env('modulodb')

        def runbook():
            return self.timed(lambda: shell('%s modulodb | gzip > %s' % (self.bin('pg_dump'), dump), env=env))

        def default():
            return self.task('pg_backup', self.conn_args(db='modulodb'))

        (_o, elapsed, mem), default_run = self.interleaved(runbook, default)
        ref = self.record('logical_backup.pg_dump_gzip', method='pg_dump | gzip (runbook)', time_s=round(elapsed, 2),
                          size_bytes=size_of(dump), reference=True, **mem)
        self.runbook_dump = dump
        self.backups = {}
        variants = [('default', {})] + [('%s_%s' % v, {'format': v[0], 'compression': v[1]})
                                        for v in (('plain', 'gzip'), ('plain', 'zstd'), ('custom', 'zstd'),
                                                  ('directory', 'gzip'))]
        for label, extra in variants:
            if label != 'default' and self.args.smoke and label == 'directory_gzip':
                continue
            result, elapsed, mem = default_run if label == 'default' else self.task(
                'pg_backup', self.conn_args(db='modulodb', **extra))
            meta = result['backup']['meta']
            if label != 'default' and (meta['format'], meta['compression']) == (
                    self.backups['default']['format'], self.backups['default']['compression']):
                continue  # the default again
            self.backups[label] = meta
            self.record('logical_backup.pg_backup_%s' % label,
                        method='pg_backup %s' % ('defaults (%s, %s)' % (meta['format'], meta['compression'])
                                                 if label == 'default' else 'format=%s compression=%s'
                                                 % (meta['format'], meta['compression'])),
                        time_s=round(elapsed, 2), module_duration_s=meta['duration_s'],
                        size_bytes=meta['size_bytes'], time_ratio=round(elapsed / ref['time_s'], 2),
                        time_ratio_without_ansible=self.net_ratio(elapsed, ref['time_s']),
                        size_ratio=round(meta['size_bytes'] / float(ref['size_bytes']), 3), **mem)

    def logical_restore(self):
        def runbook():
            env = self.cluster.env('bench_runbook')
            self.psql('CREATE DATABASE bench_runbook')
            offset = self.server_log_offset()
            _o, elapsed, mem = self.timed(lambda: shell('gunzip -c %s | %s -q -o /dev/null -d bench_runbook' % (
                self.runbook_dump, self.bin('psql')), env=env))
            rows = int(self.psql('SELECT count(*) FROM pgbench_accounts', db='bench_runbook'))
            self.psql('DROP DATABASE bench_runbook')
            return (rows == self.scale * 100000, self.slow_statements(offset)), elapsed, mem

        def restore(meta):
            offset = self.server_log_offset()
            result, elapsed, mem = self.task('backup_restore', self.conn_args(
                backup=meta['name'], db='modulodb', target_db='bench_restored', jobs=2))
            rows = int(self.psql('SELECT count(*) FROM pgbench_accounts', db='bench_restored'))
            self.psql('DROP DATABASE bench_restored WITH (FORCE)')
            return (rows == self.scale * 100000 and result['changed'], self.slow_statements(offset)), elapsed, mem

        ((rows_ok, slow), elapsed, mem), default_run = self.interleaved(
            runbook, lambda: restore(self.backups['default']))
        ref = self.record('logical_restore.gunzip_psql', method='gunzip | psql (runbook)', time_s=round(elapsed, 2),
                          reference=True, rows_ok=rows_ok, pg_slow_statements=slow, **mem)
        for label in ('default', 'custom_zstd', 'directory_gzip', 'plain_zstd'):
            meta = self.backups.get(label)
            if meta is None:
                continue
            (rows_ok, slow), elapsed, mem = default_run if label == 'default' else restore(meta)
            self.record('logical_restore.backup_restore_%s' % label,
                        method='backup_restore jobs=2 of %s %s%s' % (
                            meta['format'], meta['compression'], ' (default backup)' if label == 'default' else ''),
                        time_s=round(elapsed, 2), time_ratio=round(elapsed / ref['time_s'], 2),
                        time_ratio_without_ansible=self.net_ratio(elapsed, ref['time_s']),
                        rows_ok=rows_ok, pg_slow_statements=slow, **mem)
            if label == 'default' and self.args.smoke:
                break

    def configure_archiving(self):
        """wal_archive as a user runs it (then the restart it asks for), and a pgBackRest stanza."""
        result, elapsed, _mem = self.task('wal_archive', self.conn_args(command_path=self.command_path, verify=False))
        if result.get('restart_required'):
            self.cluster.stop()
            self.cluster.start()
        self.task('wal_archive', self.conn_args(command_path=self.command_path, verify=True))
        self.project_archive_command = result['archive_command']
        self.project_restore_command = result['restore_command']
        conf_dir = server_dir(os.path.dirname(self.pgbr_conf))
        for sub in ('repo', 'log', 'lock', 'spool'):
            server_dir(os.path.join(conf_dir, sub))
        conf = ('[global]\nrepo1-path=%(d)s/repo\nlog-path=%(d)s/log\nlock-path=%(d)s/lock\nspool-path=%(d)s/spool\n'
                'process-max=2\ncompress-type=zst\nstart-fast=y\nrepo1-retention-full=99\n'
                'log-level-console=warn\nlog-level-file=off\narchive-async=n\n\n'
                '[%(s)s]\npg1-path=%(pg)s\npg1-port=%(port)d\npg1-socket-path=%(sock)s\npg1-user=postgres\n'
                % {'d': conf_dir, 's': STANZA, 'pg': self.cluster.pgdata, 'port': self.cluster.port,
                   'sock': self.cluster.socket_dir})
        with open(self.pgbr_conf, 'w') as handle:
            handle.write(conf)
        os.chmod(self.pgbr_conf, 0o644)
        self.pgbackrest('stanza-create')
        self.pgbr_archive_command = 'pgbackrest --config=%s --stanza=%s archive-push %%p' % (self.pgbr_conf, STANZA)
        # Both archives receive every segment from here on, so either tool can restore and
        # recover from the same WAL; each backup is measured with the archiver caught up.
        self.set_archive_command('%s && %s' % (self.project_archive_command, self.pgbr_archive_command))
        self.wait_archived()
        self.results['archive_commands'] = {'project': self.project_archive_command,
                                            'pgbackrest': self.pgbr_archive_command}

    def physical(self):
        def ours():
            self.wait_archived()
            return self.task('pg_backup', self.conn_args(type='physical'))

        def pgbackrest():
            self.wait_archived()    # its figure is its own, not the archiver's catching up
            return self.timed(lambda: self.pgbackrest('--type=full', 'backup'))

        (result, elapsed, mem), (_o, ref_elapsed, ref_mem) = self.interleaved(ours, pgbackrest)
        meta = result['backup']['meta']
        info = json.loads(self.pgbackrest('--output=json', 'info'))
        last = info[0]['backup'][-1]
        ref_size = last['info']['repository']['delta']
        self.record('physical_backup.pgbackrest', method='pgbackrest backup --type=full (process-max=2, zst)',
                    time_s=round(ref_elapsed, 2), size_bytes=ref_size, reference=True, **ref_mem)
        self.record('physical_backup.pg_backup', method='pg_backup type=physical (server-side zstd)',
                    time_s=round(elapsed, 2), module_duration_s=meta['duration_s'], size_bytes=meta['size_bytes'],
                    time_ratio=round(elapsed / ref_elapsed, 2),
                    time_ratio_without_ansible=self.net_ratio(elapsed, ref_elapsed), size_ratio=round(meta['size_bytes'] / float(ref_size), 3), **mem)

        # Restore to a running server: the collection replaces a live cluster's data directory.
        def restore_ours():
            target = self.new_target('target-project')
            _result, took, used = self.task('backup_restore', self.conn_args(
                target, mode='cluster', target='immediate', pgdata=target.pgdata, confirm=target.pgdata))
            rows = int(self.psql('SELECT count(*) FROM pgbench_accounts', db='modulodb', cluster=target))
            self.drop_target(target)
            return rows, took, used

        def restore_pgbackrest():
            took, used, rows = self.pgbackrest_restore('target-pgbackrest', '--type=immediate')
            return rows, took, used

        (rows_project, elapsed, mem), (rows_ref, ref_elapsed, ref_mem) = self.interleaved(
            restore_ours, restore_pgbackrest)
        self.record('physical_restore.pgbackrest', method='pgbackrest restore --type=immediate + start to promoted',
                    time_s=round(ref_elapsed, 2), reference=True, rows_ok=rows_ref == self.scale * 100000, **ref_mem)
        self.record('physical_restore.backup_restore', method='backup_restore mode=cluster target=immediate',
                    time_s=round(elapsed, 2), time_ratio=round(elapsed / ref_elapsed, 2),
                    time_ratio_without_ansible=self.net_ratio(elapsed, ref_elapsed),
                    rows_ok=rows_project == self.scale * 100000, **mem)

    def delta_restore(self):
        """A cluster restored from a base backup, then changed a little (under 5 % of pgbench_accounts) and
        restored again from the same backup: with delta (only what differs is rewritten) against a full
        restore (everything unpacked again), the same target, the same backup."""
        self.wait_archived()
        self.task('pg_backup', self.conn_args(type='physical'))
        target = self.new_target('delta-target')
        args = self.conn_args(target, mode='cluster', target='immediate', pgdata=target.pgdata, confirm=target.pgdata)
        self.task('backup_restore', args)
        accounts = self.scale * 100000
        expected = self.psql('SELECT sum(abalance) FROM pgbench_accounts', db='modulodb', cluster=target)

        def change():
            # 2 % of the accounts, one range of them (what a delta can gain from: the pages of scattered
            # updates are nearly all touched), and a checkpoint to write them.
            self.psql('UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= %d' % (accounts // 50),
                      db='modulodb', cluster=target)
            self.psql('CHECKPOINT', cluster=target)

        def restore(delta):
            change()
            started = time.time()
            if delta:
                # A delta restore wants the server stopped first (the full one stops it itself): counted in.
                target.stop()
            result, took, used = self.task('backup_restore', dict(args, delta=delta))
            took = time.time() - started
            ok = self.psql('SELECT sum(abalance) FROM pgbench_accounts', db='modulodb', cluster=target) == expected
            return (ok, result.get('restore', {}).get('delta')), took, used

        ((full_ok, _none), full_s, full_mem), ((delta_ok, counts), delta_s, delta_mem) = self.interleaved(
            lambda: restore(False), lambda: restore(True))
        self.drop_target(target)
        self.record('delta_restore.full', method='backup_restore mode=cluster target=immediate after a 2 %% change '
                    '(%d rows)' % (accounts // 50), time_s=round(full_s, 2), reference=True, rows_ok=full_ok, **full_mem)
        self.record('delta_restore.delta', method='the same with delta=true: matching files kept',
                    time_s=round(delta_s, 2), time_ratio=round(delta_s / full_s, 2),
                    time_ratio_without_ansible=self.net_ratio(delta_s, full_s), rows_ok=delta_ok, delta=counts,
                    **delta_mem)

    def pgbackrest_restore(self, name, *options, **kwargs):
        """pgbackrest restore into an empty directory, then start it and wait for promotion (``conf``: another
        configuration than the bench's)."""
        conf = kwargs.get('conf', self.pgbr_conf)
        target = pgsandbox.Cluster(self.base, name=name)
        server_dir(target.dir, 0o755)
        server_dir(target.socket_dir, 0o755)
        server_dir(target.pgdata)
        self.targets.append(target)
        query = kwargs.get('query', 'SELECT count(*) FROM pgbench_accounts')

        def restore_and_start():
            run(['pgbackrest', '--config=%s' % conf, '--stanza=%s' % STANZA, '--pg1-path=%s' % target.pgdata,
                 '--archive-mode=off', '--target-action=promote'] + list(options) + ['restore'], as_server=True)
            run([self.bin('pg_ctl'), '-D', target.pgdata, '-l', target.log, '-w', '-t', '3600',
                 '-o', '-p %d -k %s' % (target.port, target.socket_dir), 'start'], as_server=True)
            wait_promoted(target)
        _o, elapsed, mem = self.timed(restore_and_start)
        rows = int(self.psql(query, db='modulodb', cluster=target))
        self.drop_target(target)
        return elapsed, mem, rows

    def pitr(self):
        offset_s = self.args.pitr_offset
        self.wait_archived()
        self.task('pg_backup', self.conn_args(type='physical'))
        self.wait_archived()
        self.pgbackrest('--type=full', 'backup')
        start = time.time()
        run([self.bin('pgbench'), '-n', '-c', '4', '-j', '2', '-T', str(offset_s + max(5, offset_s // 4)),
             'modulodb'], env=self.cluster.env())
        # A form both tools read: pgBackRest wants a blank, not 'T', between date and time.
        target_time = utc_iso(start + offset_s).replace('T', ' ')
        self.wait_archived()
        query = "SELECT count(*) FROM pgbench_history WHERE mtime <= '%s'" % target_time
        ref_elapsed, ref_mem, rows_ref = self.pgbackrest_restore(
            'pitr-pgbackrest', '--type=time', '--target=%s' % target_time, query=query)
        target = self.new_target('pitr-project')
        result, elapsed, mem = self.task('backup_restore', self.conn_args(
            target, mode='cluster', target_time=target_time, pgdata=target.pgdata, confirm=target.pgdata))
        rows_project = int(self.psql('SELECT count(*) FROM pgbench_history', db='modulodb', cluster=target))
        rows_ref_all = rows_ref
        self.drop_target(target)
        self.record('pitr.pgbackrest', method='pgbackrest restore --type=time, start to promoted',
                    target_time=target_time, time_s=round(ref_elapsed, 2), reference=True,
                    history_rows=rows_ref_all, **ref_mem)
        self.record('pitr.backup_restore', method='backup_restore mode=cluster target_time, to promoted',
                    target_time=target_time, time_s=round(elapsed, 2),
                    time_ratio=round(elapsed / ref_elapsed, 2),
                    time_ratio_without_ansible=self.net_ratio(elapsed, ref_elapsed), history_rows=rows_project,
                    rows_match_pgbackrest=rows_project == rows_ref_all,
                    stopped=(result.get('restore') or {}).get('recovery', {}).get('stop'), **mem)

    def start_s3(self):
        """moto's S3 on loopback over TLS (pgBackRest speaks only HTTPS to S3), with a certificate of its own
        that both tools verify; returns the endpoint URL."""
        if getattr(self, 's3', None):
            return self.s3.url
        s3dir = server_dir(os.path.join(self.base, 's3'), 0o755)
        cert, key = os.path.join(s3dir, 'cert.pem'), os.path.join(s3dir, 'key.pem')
        run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=127.0.0.1',
             '-addext', 'subjectAltName=IP:127.0.0.1,DNS:127.0.0.1', '-keyout', key, '-out', cert])
        os.chmod(cert, 0o644)
        self.s3 = pgsandbox.S3Server(s3dir, tls=(cert, key)).start()
        self.s3_cert = cert
        # The collection's modules and the servers they start (restore_command) read these.
        os.environ.update(self.s3.env())
        os.environ['AWS_CA_BUNDLE'] = cert
        return self.s3.url

    def pitr_s3(self):
        """PITR with the base backup and every WAL segment fetched from S3 (moto over TLS on loopback): the
        collection (an empty local repository: all of it from S3, WAL prefetched) against pgBackRest
        restoring from its own S3 repository, same target, same server."""
        url = self.start_s3()
        client = self.s3.client()
        for bucket in ('bench-project', 'bench-pgbackrest'):
            client.create_bucket(Bucket=bucket)
        s3 = {'s3_bucket': 'bench-project', 's3_endpoint_url': url, 'aws_region': 'us-east-1', 's3_prefix': 'bench/'}
        project = self.project_command_for(self.project_archive_command, self.repo, s3_bucket='bench-project',
                                           s3_prefix='bench/', s3_endpoint_url=url, aws_region='us-east-1')
        conf_dir = server_dir(os.path.join(self.base, 'pgbackrest-s3'), 0o755)
        for sub in ('log', 'lock', 'spool'):
            server_dir(os.path.join(conf_dir, sub))
        conf = os.path.join(conf_dir, 'pgbackrest.conf')
        with open(conf, 'w') as handle:
            handle.write(
                '[global]\nrepo1-type=s3\nrepo1-s3-endpoint=127.0.0.1\nrepo1-storage-port=%d\nrepo1-s3-uri-style=path\n'
                'repo1-storage-ca-file=%s\nrepo1-s3-bucket=bench-pgbackrest\nrepo1-s3-key=testing\n'
                'repo1-s3-key-secret=testing\nrepo1-s3-region=us-east-1\nrepo1-path=/bench\nlog-path=%s/log\n'
                'lock-path=%s/lock\nprocess-max=2\ncompress-type=zst\nstart-fast=y\nrepo1-retention-full=99\n'
                # its restore_command prefetches too (archive-get with archive-async), as the collection's does
                'archive-async=y\nspool-path=%s/spool\n'
                'log-level-console=warn\nlog-level-file=off\n\n[%s]\npg1-path=%s\npg1-port=%d\npg1-socket-path=%s\n'
                'pg1-user=postgres\n' % (self.s3.port, self.s3_cert, conf_dir, conf_dir, conf_dir, STANZA, self.cluster.pgdata,
                                         self.cluster.port, self.cluster.socket_dir))
        os.chmod(conf, 0o644)
        pgbr = ['pgbackrest', '--config=%s' % conf, '--stanza=%s' % STANZA]
        run(pgbr + ['stanza-create'], as_server=True)
        # The server started before S3 was: its archive command gets the credentials (and the certificate to
        # trust) in its own line, as a host's environment file would give them.
        creds = ' '.join('%s=%s' % (k, shlex.quote(os.environ[k]))
                         for k in ('AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_CA_BUNDLE'))
        self.set_archive_command('env %s %s && %s archive-push %%p' % (creds, project, ' '.join(pgbr)))
        self.wait_archived()
        self.task('pg_backup', self.conn_args(type='physical', **s3))
        self.wait_archived()
        run(pgbr + ['--type=full', 'backup'], as_server=True)
        offset_s = self.args.pitr_offset
        start = time.time()
        run([self.bin('pgbench'), '-n', '-c', '4', '-j', '2', '-T', str(offset_s + max(5, offset_s // 4)),
             'modulodb'], env=self.cluster.env())
        target_time = utc_iso(start + offset_s).replace('T', ' ')
        self.wait_archived()
        self.set_archive_command('%s && %s' % (self.project_archive_command, self.pgbr_archive_command))
        query = "SELECT count(*) FROM pgbench_history WHERE mtime <= '%s'" % target_time
        ref_elapsed, ref_mem, rows_ref = self.pgbackrest_restore('pitr-s3-pgbackrest', '--type=time',
                                                                 '--target=%s' % target_time, query=query, conf=conf)
        target = self.new_target('pitr-s3-project')
        empty = server_dir(os.path.join(self.base, 'repo-from-s3'))
        args = dict(self.conn_args(target, mode='cluster', target_time=target_time, pgdata=target.pgdata,
                                   confirm=target.pgdata), backup_root=empty, **s3)
        result, elapsed, mem = self.task('backup_restore', args)
        rows = int(self.psql('SELECT count(*) FROM pgbench_history', db='modulodb', cluster=target))
        self.drop_target(target)
        self.record('pitr_s3.pgbackrest', method='pgbackrest restore --type=time from its S3 repository, start to promoted',
                    target_time=target_time, time_s=round(ref_elapsed, 2), reference=True, history_rows=rows_ref, **ref_mem)
        self.record('pitr_s3.backup_restore', method='backup_restore mode=cluster target_time, base and WAL from S3, '
                    'to promoted', target_time=target_time, time_s=round(elapsed, 2),
                    time_ratio=round(elapsed / ref_elapsed, 2),
                    time_ratio_without_ansible=self.net_ratio(elapsed, ref_elapsed), history_rows=rows,
                    rows_match_pgbackrest=rows == rows_ref,
                    base_from=(result.get('backup') or {}).get('location'), **mem)

    def archive_load(self, label, command, clients):
        """pgbench -c ``clients`` with ``command`` archiving: the .ready backlog watched, the archiver's counts."""
        self.set_archive_command(command)
        self.wait_archived()
        failed_before = int(self.psql('SELECT failed_count FROM pg_stat_archiver'))
        archived_before = int(self.psql('SELECT archived_count FROM pg_stat_archiver'))
        peak = [0]
        done = threading.Event()

        def watch():
            while not done.wait(0.25):
                try:
                    peak[0] = max(peak[0], self.ready_count())
                except OSError:
                    pass
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            run([self.bin('pgbench'), '-n', '-c', str(clients), '-j', '2', '-T', str(self.args.load_seconds),
                 'modulodb'], env=self.cluster.env())
        finally:
            done.set()
            watcher.join()
        at_end = self.ready_count()
        self.wait_archived()  # and the segment in progress, so every run archives at least one
        stats = self.psql('SELECT archived_count, failed_count FROM pg_stat_archiver').split('|')
        return dict(ready_backlog_peak=peak[0], ready_backlog_at_end=at_end,
                    segments_archived=int(stats[0]) - archived_before, failures=int(stats[1]) - failed_before)

    def archive_under_load(self):
        for label, command in (('project', self.project_archive_command), ('pgbackrest', self.pgbr_archive_command)):
            entry = self.archive_load(label, command, clients=4)
            self.record('archive_load.%s' % label, method='%s under pgbench -c 4 -T %d' % (
                'the collection\'s archive command' if label == 'project' else 'pgbackrest archive-push',
                self.args.load_seconds), reference=label == 'pgbackrest', **entry)
        self.set_archive_command('%s && %s' % (self.project_archive_command, self.pgbr_archive_command))

    def real_segments(self, wanted):
        """The names of ``wanted`` real segments of this cluster, restored into ``<base>/segments`` (0755)."""
        names = sorted(name for name, _date in _archived_segments(self.repo))
        rows, first, rounds = self.scale * 100000, 1, 0
        while len(names) < wanted and rounds < wanted:
            # Not enough WAL yet: update accounts in batches (row versions, index entries and
            # full-page images, as OLTP writes them), until the archive has enough segments.
            self.psql('UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN %d AND %d'
                      % (first, first + 249999), db='modulodb')
            first = first + 250000 if first + 250000 <= rows else 1
            rounds += 1
            if rounds % 4 == 0 or first == 1:
                self.wait_archived()
                names = sorted(name for name, _date in _archived_segments(self.repo))
        self.wait_archived()
        names = sorted(name for name, _date in _archived_segments(self.repo))
        names = names[-wanted:]
        seg_dir = server_dir(os.path.join(self.base, 'segments'), 0o755)
        # The project's command exactly as PostgreSQL runs it (wal_archive's archive_command and
        # restore_command), given a copy of its configuration that points at this measurement's own
        # directory: the command line keeps the installed shape, which the command reads fastest.
        fetch = self.project_command_for(self.project_restore_command, self.repo).replace('%f %p', '$f %s/$f' % seg_dir)
        missing = [n for n in names if not os.path.exists(os.path.join(seg_dir, n))]
        if missing:
            shell('cd %s && for f in %s; do %s || exit 1; done' % (seg_dir, ' '.join(missing), fetch), as_server=True)
        return names, seg_dir

    def archive_push_cost(self):
        """Sequential pushes of the same real segments, one process per segment as PostgreSQL runs them."""
        names, seg_dir = self.real_segments(self.args.segments)
        methods = [
            ('cp', 'cp (runbook)', 'cp %s/$f {dest}/$f' % seg_dir, None),
            ('project', 'the collection\'s archive command (wal_archive install, compression auto)',
             '{project}', 'project'),
            ('pgbackrest', 'pgbackrest archive-push (sync, zst)',
             'pgbackrest --config={conf} --stanza=%s archive-push %s/$f' % (STANZA, seg_dir), 'pgbackrest'),
        ]
        loops = []
        for label, method, template, kind in methods:
            dest = server_dir(os.path.join(self.base, 'push-%s' % label))
            conf = self.pgbr_conf
            if kind == 'pgbackrest':
                conf = os.path.join(dest, 'pgbackrest.conf')
                with open(self.pgbr_conf) as handle:
                    text = handle.read().replace('repo1-path=%s/repo' % os.path.dirname(self.pgbr_conf),
                                                 'repo1-path=%s/repo' % dest)
                with open(conf, 'w') as handle:
                    handle.write(text)
                os.chmod(conf, 0o644)
                server_dir(os.path.join(dest, 'repo'))
                run(['pgbackrest', '--config=%s' % conf, '--stanza=%s' % STANZA, 'stanza-create'], as_server=True)
            project = None
            if kind == 'project':
                project = self.project_command_for(self.project_archive_command, dest).replace(
                    '%p %f', '%s/$f $f' % seg_dir)
            loops.append((label, template.format(dest=dest, conf=conf, project=project)))
        for label, (elapsed, mem) in self.in_rounds(names, loops).items():
            rate = len(names) / elapsed
            self.record('archive_push.%s' % label, method=dict((m[0], m[1]) for m in methods)[label],
                        segments=len(names), time_s=round(elapsed, 2), segments_per_s=round(rate, 1),
                        ms_per_segment=round(1000.0 * elapsed / len(names), 1),
                        size_bytes=size_of(os.path.join(self.base, 'push-%s' % label)), **mem)
        ref_rate = self.results['measurements']['archive_push.pgbackrest']['segments_per_s']
        for label in ('cp', 'project'):
            entry = self.results['measurements']['archive_push.%s' % label]
            entry['rate_ratio'] = round(entry['segments_per_s'] / ref_rate, 2)
        self.results['measurements']['archive_push.pgbackrest']['reference'] = True
        # The other half of a PITR's cost: restore_command once per segment replayed.
        fetches = [
            ('cp', 'cp (runbook)', 'cp {dest}/$f {out}/$f'),
            ('project', 'the collection\'s restore_command (fetch)', '{project}'),
            ('pgbackrest', 'pgbackrest archive-get', 'pgbackrest --config={dest}/pgbackrest.conf --stanza=%s '
                                                     'archive-get $f {out}/$f' % STANZA),
        ]
        loops = []
        for label, _method, template in fetches:
            out = os.path.join(self.base, 'fetched-%s' % label)
            shutil.rmtree(out, ignore_errors=True)
            server_dir(out)
            dest = os.path.join(self.base, 'push-%s' % label)
            project = None
            if label == 'project':
                project = self.project_command_for(self.project_restore_command, dest).replace('%f %p', '$f %s/$f' % out)
            loops.append((label, template.format(dest=dest, out=out, project=project)))
        for label, (elapsed, mem) in self.in_rounds(names, loops).items():
            out = os.path.join(self.base, 'fetched-%s' % label)
            same = all(_same_file(os.path.join(seg_dir, name), os.path.join(out, name)) for name in names[:3])
            rate = len(names) / elapsed
            self.record('archive_fetch.%s' % label, method=dict((m[0], m[1]) for m in fetches)[label],
                        segments=len(names), time_s=round(elapsed, 2), segments_per_s=round(rate, 1),
                        ms_per_segment=round(1000.0 * elapsed / len(names), 1),
                        identical=same, reference=label == 'pgbackrest', **mem)
            shutil.rmtree(out, ignore_errors=True)
        ref_rate = self.results['measurements']['archive_fetch.pgbackrest']['segments_per_s']
        for label in ('cp', 'project'):
            entry = self.results['measurements']['archive_fetch.%s' % label]
            entry['rate_ratio'] = round(entry['segments_per_s'] / ref_rate, 2)

    def async_settings(self):
        return {'archive_async': True, 'async_workers': self.args.async_workers, 'async_queue_max': 16}

    def pgbackrest_async_conf(self, dest, pg_path):
        """A copy of the bench's pgBackRest configuration: archive-async with its own repository and spool."""
        conf = os.path.join(dest, 'pgbackrest.conf')
        with open(self.pgbr_conf) as handle:
            text = handle.read()
        text = text.replace('repo1-path=%s/repo' % os.path.dirname(self.pgbr_conf), 'repo1-path=%s/repo' % dest)
        text = text.replace('spool-path=%s/spool' % os.path.dirname(self.pgbr_conf), 'spool-path=%s/spool' % dest)
        text = text.replace('archive-async=n', 'archive-async=y')
        text = text.replace('pg1-path=%s' % self.cluster.pgdata, 'pg1-path=%s' % pg_path)
        with open(conf, 'w') as handle:
            handle.write(text)
        os.chmod(conf, 0o644)
        for sub in ('repo', 'spool'):
            server_dir(os.path.join(dest, sub))
        return conf

    def archive_async(self):
        """Asynchronous archiving against pgBackRest's archive-async, both driven the way PostgreSQL's archiver
        drives them: offline over the same real segments (a pg_wal with every one ready, the archiver's loop:
        the oldest .ready, then .done on success), then live under pgbench -c 8 on the bench's cluster."""
        names, seg_dir = self.real_segments(self.args.async_segments)
        loops = []
        for label in ('project', 'pgbackrest'):
            dest = server_dir(os.path.join(self.base, 'async-%s' % label), 0o755)
            data = server_dir(os.path.join(dest, 'data'))
            wal = server_dir(os.path.join(data, 'pg_wal'))
            status = server_dir(os.path.join(wal, 'archive_status'))
            for name in names:
                os.link(os.path.join(seg_dir, name), os.path.join(wal, name))
                open(os.path.join(status, name + '.ready'), 'w').close()
            chown_to_server_user(*[os.path.join(status, n + '.ready') for n in names])
            if label == 'project':
                command = self.project_command_for(self.project_archive_command, server_dir(os.path.join(dest, 'repo')),
                                                   **self.async_settings())
            else:
                # pgBackRest reads the cluster's pg_control from pg1-path before it pushes.
                global_dir = server_dir(os.path.join(data, 'global'))
                shutil.copy(os.path.join(self.cluster.pgdata, 'global', 'pg_control'), global_dir)
                chown_to_server_user(os.path.join(global_dir, 'pg_control'))
                conf = self.pgbackrest_async_conf(dest, data)
                # The stanza is made against the real cluster (it asks the server); archive-push only reads pg_wal.
                run(['pgbackrest', '--config=%s' % conf, '--stanza=%s' % STANZA, '--pg1-path=%s' % self.cluster.pgdata,
                     'stanza-create'], as_server=True)
                command = 'pgbackrest --config=%s --stanza=%s archive-push %%p' % (conf, STANZA)
            step = command.replace('%p', 'pg_wal/$f').replace('%f', '$f')
            script = ('cd %s && for f in %s; do %s || exit 1; mv pg_wal/archive_status/$f.ready '
                      'pg_wal/archive_status/$f.done; done' % (data, ' '.join(names), step))
            loops.append((label, dest, script))
        for label, dest, script in loops:
            _o, elapsed, mem = self.timed(lambda: shell(script, as_server=True))
            self.record('archive_async_push.%s' % label,
                        method='%s, archiver loop over %d ready segments' % (
                            'the collection\'s archive command, archive_async (workers %d)' % self.args.async_workers
                            if label == 'project' else 'pgbackrest archive-push, archive-async=y process-max=2',
                            len(names)),
                        segments=len(names), time_s=round(elapsed, 2), segments_per_s=round(len(names) / elapsed, 1),
                        reference=label == 'pgbackrest', **mem)
        ref = self.results['measurements']['archive_async_push.pgbackrest']['segments_per_s']
        entry = self.results['measurements']['archive_async_push.project']
        entry['rate_ratio'] = round(entry['segments_per_s'] / ref, 2)
        archived = sorted(n for n, _d in _archived_segments(os.path.join(self.base, 'async-project', 'repo')))
        entry['all_archived'] = archived == names
        for label in ('project', 'pgbackrest'):
            shutil.rmtree(os.path.join(self.base, 'async-%s' % label, 'data', 'pg_wal'), ignore_errors=True)

        # Live: the bench's cluster under pgbench -c 8, each command in turn.
        project = self.project_command_for(self.project_archive_command, self.repo, **self.async_settings())
        conf = self.pgbackrest_async_conf(server_dir(os.path.join(self.base, 'async-live'), 0o755), self.cluster.pgdata)
        # The same stanza's repository as the synchronous command: pgBackRest then has every segment so far.
        with open(conf) as handle:
            text = handle.read().replace('repo1-path=%s/repo' % os.path.join(self.base, 'async-live'),
                                         'repo1-path=%s/repo' % os.path.dirname(self.pgbr_conf))
        with open(conf, 'w') as handle:
            handle.write(text)
        pgbr = 'pgbackrest --config=%s --stanza=%s archive-push %%p' % (conf, STANZA)
        for label, command in (('project', project), ('pgbackrest', pgbr)):
            self.set_archive_command(command)
            entry = self.archive_load(label, command, clients=8)
            self.record('archive_async_load.%s' % label, method='%s under pgbench -c 8 -T %d' % (
                'archive_async' if label == 'project' else 'pgbackrest archive-async', self.args.load_seconds),
                reference=label == 'pgbackrest', **entry)
        self.set_archive_command('%s && %s' % (self.project_archive_command, self.pgbr_archive_command))

    def project_command_for(self, command, repo, **settings):
        """The installed command line, for a copy of the installed command whose settings name ``repo``
        (and ``settings`` over the installed ones).

        The copy is installed by the same code as wal_archive's (walcommand.install), with the installed
        settings but the repository, so the line keeps its shape and the command its start-up cost."""
        installed = shlex.split(command)[2]
        key = json.dumps([repo, settings], sort_keys=True)
        copy = os.path.join(self.base, 'wal-command-%s' % hashlib.sha256(key.encode()).hexdigest()[:12], 'pgbackup-wal')
        if not os.path.exists(copy):
            walcommand.install(copy, dict(walcommand.installed_settings(installed), repo=repo, **settings))
            os.chmod(os.path.dirname(copy), 0o755)
        return command.replace(shlex.quote(installed), shlex.quote(copy), 1)

    def emergency_inventory(self, app):
        """The bench's own inventory: its cluster as the database server, the test application as modulo_app."""
        db_host = dict(self.cluster.connection_vars(), pgbackup_backup_root=self.repo, pgbackup_db='modulodb',
                       ansible_connection='local', ansible_python_interpreter=sys.executable)
        path = os.path.join(self.base, 'emergency-inventory.json')
        with open(path, 'w') as handle:
            json.dump({'all': {'children': {'postgres': {'hosts': {'localhost': db_host}},
                                            'modulo_app': {'hosts': {'bench-app': app.host_vars()}}}}}, handle)
        return path

    def emergency_recovery(self):
        """playbooks/emergency-recovery.yml end to end on the bench's database, the test application writing.

        The incident: the cluster has to be rebuilt from the backups up to the newest point (a lost or
        damaged data directory), so restore_source=pitr pitr_mode=cluster target=latest, from a base backup
        taken once the application's tables exist and the WAL the application wrote since. The playbook
        stops the application, restores, verifies and starts it; the orders it had committed must all be
        back, and it must write again.
        """
        from conftest import SCHEMA_SQL, ModuloApp
        db = 'modulodb'
        self.cluster.psql_file(SCHEMA_SQL, db=db)
        seed_orders = int(self.psql('SELECT count(*) FROM orders', db=db))
        app_dir = os.path.join(self.base, 'app')
        os.makedirs(app_dir)
        app = ModuloApp(app_dir, self.cluster, db)
        try:
            app.start()
            app.wait_for_orders(5)
            self.wait_archived()
            base, _elapsed, _mem = self.task('pg_backup', self.conn_args(type='physical'))
            base = base['backup']['meta']
            # WAL written by the application after the base backup: the recovery replays it.
            app.wait_for_orders(20, after=base['finished_at'])
            timeline = self.timeline()
            incident_id = 'bench_%s' % datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%d_%H%M%S')
            extra = {'restore_source': 'pitr', 'pitr_mode': 'cluster', 'target': 'latest',
                     'confirm': self.cluster.pgdata, 'incident_id': incident_id}
            with Sampler(self.server_pids) as sampler:
                start = time.time()
                proc = self.ansible.playbook('emergency-recovery.yml', extra_vars=extra,
                                             inventory=self.emergency_inventory(app))
                elapsed = time.time() - start
            values = {'method': 'playbooks/emergency-recovery.yml restore_source=pitr pitr_mode=cluster target=latest '
                                '(stop the application, recover, verify, start)',
                      'time_s': round(elapsed, 2), 'ok': proc.returncode == 0, 'target_s': 60,
                      'base_backup': base['name']}
            values.update(self.emergency_outcome(app, incident_id, seed_orders))
            # A recovery that really ran: the server is on a new timeline, the replaced directory kept aside.
            values.update(timeline_before=timeline, timeline_after=self.timeline())
            values['ok'] = values['ok'] and (values['timeline_after'] or 0) > timeline and \
                os.path.isdir(values.get('old_pgdata') or '')
            if not values['ok']:
                values['output_tail'] = proc.stdout[-3000:]
            values.update(sampler.summary())
            self.record('emergency_recovery', **values)
        finally:
            app.stop()

    def timeline(self):
        """The timeline the server writes WAL on now (None when it does not answer)."""
        try:
            return int(self.psql('SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)'), 16)
        except (RuntimeError, ValueError):
            return None

    def emergency_outcome(self, app, incident_id, seed_orders):
        """What the recovery left: the incident report's timings, the rows, the application writing again."""
        try:
            with open(os.path.join(self.repo, 'logs', 'incident_%s.json' % incident_id)) as handle:
                report = json.load(handle)
        except (OSError, ValueError):
            return {'ok': False, 'rows_ok': False, 'app_writes_again': False, 'error': 'no incident report'}
        steps = dict(((s['step'], (s.get('details') or {}).get('part')), s) for s in report['steps'])
        found = {'incident_status': report['status'], 'outage_s': (report.get('rto') or {}).get('measured_s'),
                 'recovered_to': report.get('recovered_to'),
                 'step_s': dict(('%s%s' % (step, ' (%s)' % part if part else ''), s['duration_s'])
                                for (step, part), s in steps.items())}
        found['old_pgdata'] = (steps.get(('restore', None), {}).get('details') or {}).get('old_pgdata')
        stop, start = steps.get(('stop', 'application')), steps.get(('start', None))
        if report['status'] != 'recovered' or not stop or not start:
            found.update(ok=False, rows_ok=False, app_writes_again=False)
            return found
        stopped, restarted = utc_parse(stop['finished_at']), utc_parse(start['started_at'])
        # The application committed these before it was stopped: target=latest must bring back every one.
        committed = [o for o in app.journal() if utc_parse(o['created_at']) < restarted]
        during = [o for o in committed if utc_parse(o['created_at']) > stopped]
        before = "created_at < '%s'" % restarted.isoformat()
        accounts = int(self.psql('SELECT count(*) FROM pgbench_accounts', db='modulodb'))
        orders, last_id = self.psql('SELECT count(*), max(id) FROM orders WHERE %s' % before, db='modulodb').split('|')
        expected = seed_orders + len(committed)
        try:
            after = app.wait_for_orders(3, after=start['started_at'], timeout=30)
            written_after = int(self.psql("SELECT count(*) FROM orders WHERE id IN (%s)"
                                          % ', '.join(str(o['id']) for o in after), db='modulodb'))
        except AssertionError:
            after, written_after = [], 0
        found.update(pgbench_accounts=accounts, orders_recovered=int(orders), orders_expected=expected,
                     orders_written_before_stop=len(committed), orders_written_during_outage=len(during),
                     app_orders_after_restart=written_after,
                     rows_ok=accounts == self.scale * 100000 and int(orders) == expected and not during
                     and bool(committed) and int(last_id) == committed[-1]['id'],
                     app_writes_again=written_after >= 3 and written_after == len(after))
        return found

    # -- the run ------------------------------------------------------------------------------------
    def run(self):
        phases = [getattr(self, name) for name in phases_to_run(self.args.only)]
        try:
            for phase in phases:
                started = time.time()
                phase()
                self.results.setdefault('phase_s', {})[phase.__name__] = round(time.time() - started, 1)
        finally:
            self.results['finished_at'] = utc_iso(time.time())
            self.results['host']['loadavg_at_end'] = [round(x, 2) for x in os.getloadavg()]
            for cluster in list(self.targets):
                cluster.destroy()
            if self.cluster is not None:
                self.cluster.destroy()
            if getattr(self, 's3', None) is not None:
                self.s3.stop()
            if not self.args.keep:
                shutil.rmtree(self.base, ignore_errors=True)
        return self.results


def _archived_segments(repo):
    return [(name, date) for name, date in
            ((entry['name'], entry.get('date')) for entry in walarchive.list_archive(repo))
            if len(name) == 24]


def _same_file(first, second):
    with open(first, 'rb') as one, open(second, 'rb') as two:
        return one.read() == two.read()


def wait_promoted(cluster, timeout=3600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if cluster.psql('SELECT pg_is_in_recovery()') == 'f':
                return
        except RuntimeError:
            pass
        time.sleep(0.1)
    raise RuntimeError('%s was not promoted within %d s' % (cluster.pgdata, timeout))


# ---------------------------------------------------------------------------------------------
# Results: JSON and a Markdown table, and the smoke check
# ---------------------------------------------------------------------------------------------

PHASES = ('logical_backup', 'logical_restore', 'physical', 'delta_restore', 'pitr', 'pitr_s3', 'archive_under_load',
          'archive_push_cost', 'archive_async', 'emergency_recovery')
# What a phase needs run before it: the restores use the logical phase's backups, the rest WAL archiving.
PREREQUISITES = dict([('logical_restore', 'logical_backup')] + [
    (phase, 'configure_archiving')
    for phase in ('physical', 'delta_restore', 'pitr', 'pitr_s3', 'archive_under_load', 'archive_push_cost',
                  'archive_async', 'emergency_recovery')])


def phases_to_run(only=None):
    """The Bench methods to run, in order: all, or ``only`` those plus what they need set up first."""
    order = ['setup', 'logical_backup', 'logical_restore', 'configure_archiving', 'physical', 'delta_restore', 'pitr',
             'pitr_s3', 'archive_under_load', 'archive_push_cost', 'archive_async', 'emergency_recovery']
    if not only:
        return order
    wanted = set(only) | {'setup'}
    wanted |= set(PREREQUISITES[name] for name in only if name in PREREQUISITES)
    return [name for name in order if name in wanted]


TARGETS = [
    ('logical_backup.pg_backup_default', 'time_ratio', 0.8, '<='),
    ('logical_backup.pg_backup_default', 'size_ratio', 0.5, '<='),
    ('logical_restore.backup_restore_default', 'time_ratio', 0.5, '<='),
    ('logical_restore.backup_restore_default', 'time_ratio', 0.9, '<='),
    ('physical_backup.pg_backup', 'time_ratio', 1.1, '<='),
    ('physical_restore.backup_restore', 'time_ratio', 1.2, '<='),
    ('archive_push.project', 'rate_ratio', 1.0, '>='),
    ('archive_load.project', 'ready_backlog_peak', 2, '<='),
    ('archive_async_push.project', 'rate_ratio', 1.5, '>='),
    ('archive_async_load.project', 'ready_backlog_peak', 2, '<='),
    ('pitr.backup_restore', 'time_ratio', 1.2, '<='),
    ('delta_restore.delta', 'time_ratio', 0.5, '<='),
    ('pitr_s3.backup_restore', 'time_ratio', 1.0, '<='),
    ('emergency_recovery', 'time_s', 60, '<='),
]


def evaluate_targets(results):
    verdicts = []
    for key, field, limit, op in TARGETS:
        entry = results['measurements'].get(key) or {}
        value = entry.get(field)
        met = None if value is None else (value <= limit if op == '<=' else value >= limit)
        verdicts.append({'measurement': key, 'field': field, 'target': '%s %s' % (op, limit),
                         'value': value, 'met': met})
    return verdicts


def _fmt(value, unit=''):
    if value is None or value == '':
        return ''
    if isinstance(value, float):
        return '%.2f%s' % (value, unit)
    return '%s%s' % (value, unit)


def markdown(results):
    lines = ['# Benchmark, pgbench scale %d (%s)' % (results['scale'], results['started_at'][:10]), '',
             'Database %.0f MB; %d CPUs; load average %s at start, %s at end (other processes share the '
             'machine). Ratios are to the row marked *ref* of the same group, measured in the same run. '
             'Each target\'s pair (reference and collection) ran %d times in turns and shows its median run '
             '(every time below)%s; WAL push and fetch ran in %d rounds, in turns.'
             % (results['database']['size_bytes'] / MB, results['host']['cpus'],
                results['host'].get('loadavg_at_start'), results['host'].get('loadavg_at_end'),
                results.get('repeats', 1),
                ', the page cache dropped before each run' if results.get('drop_caches') else '',
                results.get('repeats', 1)), '',
             '| measurement | method | time s | size MB | MB/s | ratio (time) | ratio w/o Ansible start | '
             'ratio (size) | peak RSS MB |',
             '|---|---|---:|---:|---:|---:|---:|---:|---:|']
    db_mb = results['database']['size_bytes'] / MB
    for key, entry in results['measurements'].items():
        if 'skipped' in entry:
            lines.append('| %s | skipped: %s | | | | | | | |' % (key, entry['skipped']))
            continue
        time_s = entry.get('time_s')
        size = entry.get('size_bytes')
        throughput = ''
        if time_s and key.split('.')[0] in ('logical_backup', 'logical_restore', 'physical_backup',
                                            'physical_restore'):
            throughput = _fmt(db_mb / time_s)
        elif 'segments_per_s' in entry:
            throughput = '%s seg/s' % entry['segments_per_s']
        ratio = entry.get('time_ratio', entry.get('rate_ratio'))
        if entry.get('reference'):
            ratio = 'ref'
        lines.append('| %s | %s | %s | %s | %s | %s | %s | %s | %s |' % (
            key, entry.get('method', '').replace('|', '\\|'), _fmt(time_s), _fmt(size / MB if size else None), throughput,
            _fmt(ratio), _fmt(entry.get('time_ratio_without_ansible')), _fmt(entry.get('size_ratio')), _fmt(entry.get('peak_rss_mb'))))
    load = [(k, v) for k, v in results['measurements'].items() if k.startswith(('archive_load.', 'archive_async_load.'))]
    if load:
        lines += ['', '| archiving under load | segments archived | peak .ready backlog | .ready at end | failures |',
                  '|---|---:|---:|---:|---:|']
        for key, entry in load:
            lines.append('| %s | %s | %s | %s | %s |' % (key, entry['segments_archived'], entry['ready_backlog_peak'],
                                                         entry['ready_backlog_at_end'], entry['failures']))
    emergency = results['measurements'].get('emergency_recovery') or {}
    if 'ok' in emergency:
        lines += ['', 'Emergency recovery: %s; outage %s s (incident report, application stopped to started), '
                  'steps %s; pgbench_accounts %s rows; orders %s of %s expected (the %s the application committed before '
                  'the stop included), %s written during the outage; the application wrote %s orders again after '
                  'the restart.' % (
                      'recovered' if emergency['ok'] else 'FAILED', _fmt(emergency.get('outage_s')),
                      ', '.join('%s %s s' % kv for kv in (emergency.get('step_s') or {}).items()) or '-',
                      emergency.get('pgbench_accounts'), emergency.get('orders_recovered'),
                      emergency.get('orders_expected'), emergency.get('orders_written_before_stop'),
                      emergency.get('orders_written_during_outage'),
                      emergency.get('app_orders_after_restart'))]
    lines += ['', '| target | value | met |', '|---|---:|---|']
    for verdict in results.get('targets', []):
        met = {True: 'yes', False: 'NO', None: 'not measured'}[verdict['met']]
        lines.append('| %s %s %s | %s | %s |' % (verdict['measurement'], verdict['field'], verdict['target'],
                                                 _fmt(verdict['value']), met))
    lines += ['', 'Phase times (s): %s' % ', '.join('%s %s' % kv for kv in results.get('phase_s', {}).items()),
              'Ansible task overhead (an empty backup_info run): %s s (runs: %s), included in every '
              'pg_backup/backup_restore time above.' % (results.get('ansible_task_overhead_s'),
                                                        results.get('ansible_task_overhead_times_s')),
              'Every run of the repeated pairs (s): %s' % '; '.join(
                  '%s %s' % (key, '/'.join('%.2f' % t for t in entry['times_s']))
                  for key, entry in results['measurements'].items() if len(entry.get('times_s') or []) > 1), '']
    return '\n'.join(lines)


def write_results(results, out_dir):
    results['targets'] = evaluate_targets(results)
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, results['started_at'][:10])
    with open(stem + '.json', 'w') as handle:
        json.dump(results, handle, indent=2, sort_keys=False)
        handle.write('\n')
    with open(stem + '.md', 'w') as handle:
        handle.write(markdown(results))
    return stem + '.json', stem + '.md'


REQUIRED = ('logical_backup.pg_dump_gzip', 'logical_backup.pg_backup_default', 'logical_restore.gunzip_psql',
            'logical_restore.backup_restore_default', 'physical_backup.pgbackrest', 'physical_backup.pg_backup',
            'physical_restore.pgbackrest', 'physical_restore.backup_restore', 'delta_restore.full',
            'delta_restore.delta', 'pitr.pgbackrest', 'pitr.backup_restore', 'pitr_s3.pgbackrest',
            'pitr_s3.backup_restore', 'archive_push.cp', 'archive_push.project', 'archive_push.pgbackrest',
            'archive_fetch.cp', 'archive_fetch.project', 'archive_fetch.pgbackrest',
            'archive_load.project', 'archive_load.pgbackrest', 'archive_async_push.project',
            'archive_async_push.pgbackrest', 'archive_async_load.project', 'archive_async_load.pgbackrest',
            'emergency_recovery')


def check(json_path):
    """The smoke test: every measurement present with real figures, restores correct, Markdown written."""
    with open(json_path) as handle:
        results = json.load(handle)
    problems = []
    measurements = results.get('measurements', {})
    for key in REQUIRED:
        entry = measurements.get(key)
        if not entry:
            problems.append('%s missing' % key)
            continue
        if not key.startswith(('archive_load.', 'archive_async_load.')) and not (entry.get('time_s') or 0) > 0:
            problems.append('%s has no positive time_s' % key)
        if entry.get('identical') is False:
            problems.append('%s fetched a segment that differs from the original' % key)
        if key.startswith(('logical_backup.', 'physical_backup.', 'archive_push.')) and not entry.get('size_bytes'):
            problems.append('%s has no size' % key)
        if entry.get('rows_ok') is False:
            problems.append('%s restored the wrong number of rows' % key)
        if key.startswith(('logical_backup.pg_backup', 'logical_restore.backup_restore', 'physical_')) and \
                not entry.get('reference') and not (entry.get('peak_rss_mb') or 0) > 0:
            problems.append('%s has no peak RSS' % key)
        if key.startswith(('archive_load.', 'archive_async_load.')) and (entry.get('segments_archived') or 0) < 1:
            problems.append('%s archived no segment' % key)
    emergency = measurements.get('emergency_recovery') or {}
    if 'skipped' in emergency:
        problems.append('emergency_recovery was skipped: %s' % emergency['skipped'])
    elif emergency:
        for field, what in (('ok', 'the playbook did not recover (ok is not true)'),
                            ('rows_ok', 'the data after the recovery is not pgbench_accounts and every committed order'),
                            ('app_writes_again', 'the application does not write again after the recovery')):
            if emergency.get(field) is not True:
                problems.append('emergency_recovery: %s' % what)
        if not (emergency.get('peak_rss_mb') or 0) > 0:
            problems.append('emergency_recovery has no peak RSS')
    for key in ('pitr.backup_restore', 'pitr_s3.backup_restore'):
        if measurements.get(key, {}).get('rows_match_pgbackrest') is False:
            problems.append('%s: the two PITRs to the same time recovered different pgbench_history rows' % key)
    md_path = json_path[:-len('.json')] + '.md'
    if not os.path.exists(md_path):
        problems.append('%s missing' % md_path)
    else:
        with open(md_path) as handle:
            text = handle.read()
        for key in REQUIRED:
            if '| %s |' % key not in text:
                problems.append('%s has no row %s' % (md_path, key))
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    sub = parser.add_subparsers(dest='action')
    check_p = sub.add_parser('check', help='check a results file (what make bench-smoke asserts)')
    check_p.add_argument('json_path')
    parser.add_argument('--scale', type=int, default=int(os.environ.get('BENCH_SCALE', '100')))
    parser.add_argument('--results', default=os.path.join(HERE, 'results'))
    parser.add_argument('--workdir', default=os.environ.get('BENCH_WORKDIR', '/var/tmp'),
                        help='where the clusters and repositories live (the postgres user must reach it)')
    parser.add_argument('--pitr-offset', type=int, default=60, help='PITR target, seconds into a pgbench run')
    parser.add_argument('--load-seconds', type=int, default=120, help='length of the archiving load test')
    parser.add_argument('--segments', type=int, default=300, help='WAL segments pushed by each method')
    parser.add_argument('--async-segments', type=int, default=600, help='ready segments for the asynchronous push')
    parser.add_argument('--async-workers', type=int, default=4, help='archive_async_workers of the collection')
    parser.add_argument('--repeats', type=int, default=3,
                        help='runs of each compared pair (in turns; the median counts), and rounds of the WAL push')
    parser.add_argument('--smoke', action='store_true', help='short run: fewer variants, short loads')
    parser.add_argument('--keep', action='store_true', help='keep the work directory (for a post-mortem)')
    parser.add_argument('--drop-caches', action='store_true',
                        help='write back and drop the page cache before each run of a compared pair (root only): '
                        'for large scales, where what the previous run left in memory weighs on the next')
    parser.add_argument('--only', type=lambda text: text.split(','), metavar='PHASE[,PHASE]',
                        help='measure only these phases (%s); the others show as not measured. For working on '
                        'one target; use --results elsewhere to keep the dated results of a whole run'
                        % ', '.join(PHASES))
    args = parser.parse_args(argv)
    if args.action == 'check':
        problems = check(args.json_path)
        for problem in problems:
            print('bench check: %s' % problem)
        print('bench check: %s' % ('FAILED' if problems else 'ok, %s' % args.json_path))
        return 1 if problems else 0
    if args.drop_caches and os.geteuid() != 0:
        parser.error('--drop-caches writes /proc/sys/vm/drop_caches: run as root, or without it')
    unknown = sorted(set(args.only or ()) - set(PHASES))
    if unknown:
        parser.error('unknown phase(s) %s for --only (phases: %s)' % (', '.join(unknown), ', '.join(PHASES)))
    if args.smoke:
        args.pitr_offset, args.load_seconds, args.segments = min(args.pitr_offset, 5), min(args.load_seconds, 5), \
            min(args.segments, 12)
        args.async_segments = min(args.async_segments, 24)
        args.repeats = min(args.repeats, 2)
    if shutil.which('pgbackrest') is None:
        print('bench: pgbackrest is not installed (make bootstrap installs it)', file=sys.stderr)
        return 2
    results = Bench(args).run()
    json_path, md_path = write_results(results, args.results)
    print(markdown(results))
    print('bench: wrote %s and %s' % (json_path, md_path))
    return 0


if __name__ == '__main__':
    sys.exit(main())
