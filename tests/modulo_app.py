#!/usr/bin/env python3
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small stand-in for the Modulo application: it writes orders into the database continuously.

It is what the emergency-recovery playbook stops and starts in the tests, in
``make demo`` and in the DR simulation: a real process holding a real database
session (one long-lived ``psql``, reconnected when the server drops it), with
a health endpoint on 127.0.0.1 that says whether the last write succeeded.

    modulo_app.py start  --pidfile P [--port N|0] [--interval S] [--journal J] [--log L] [--db NAME]
    modulo_app.py stop   --pidfile P        (SIGTERM, waits; exit 0 when it was not running)
    modulo_app.py status --pidfile P        (exit 0 running, 3 stopped; prints JSON)
    modulo_app.py run    ...                (foreground; what start runs in the background)

The database connection comes from the libpq environment (PGHOST, PGPORT,
PGUSER, PGPASSWORD or PGPASSFILE, PGDATABASE) or --host/--dbport/--user/--db;
the password is never an argument.  Each order is an INSERT into ``orders`` of
the first customer, committed on its own; with --journal every committed order
is appended as a JSON line {"id", "created_at" (database clock, UTC)}.
GET /health answers 200 while the last write is recent, else 503.
"""

import argparse
import datetime
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BINDIR = os.environ.get('PG_BINDIR', '/usr/lib/postgresql/15/bin')
MARK = '__modulo_app_done__'
APP_NAME = 'modulo-app'
NOT_RUNNING = 3  # LSB "program is not running"


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')


class Database(object):
    """One long-lived psql session, reopened when the server ends it."""

    INSERT = ("INSERT INTO orders (customer_id, status, note, created_at) "
              "SELECT id, 'new', 'modulo-app order', clock_timestamp() FROM customers ORDER BY id LIMIT 1 "
              "RETURNING id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"');")

    def __init__(self, args):
        self.argv = [os.path.join(args.pg_bindir, 'psql'), '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=0']
        self.env = dict(os.environ, PGAPPNAME=APP_NAME)
        for key, value in (('PGHOST', args.host), ('PGPORT', args.dbport), ('PGUSER', args.user),
                           ('PGDATABASE', args.db)):
            if value:
                self.env[key] = str(value)
        self.proc = None

    def _open(self):
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=self.env)

    def close(self):
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def write_order(self, timeout=10.0):
        """(id, created_at) of the committed order; raises RuntimeError with the server's words."""
        if self.proc is None or self.proc.poll() is not None:
            self.close()
            self._open()
        try:
            self.proc.stdin.write(('%s\n\\echo %s\n' % (self.INSERT, MARK)).encode())
            self.proc.stdin.flush()
        except OSError:
            self.close()
            raise RuntimeError('connection to the database lost')
        lines, buf, deadline = [], b'', time.time() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            ready = select.select([fd], [], [], max(0.0, deadline - time.time()))[0]
            if not ready:
                self.close()
                raise RuntimeError('no answer from the database within %.0f s' % timeout)
            chunk = os.read(fd, 65536)
            if not chunk:
                output = ' '.join(line.strip() for line in lines + [buf.decode('utf-8', 'replace')])
                self.close()
                raise RuntimeError('database session ended: %s' % (output.strip() or 'no message'))
            buf += chunk
            while b'\n' in buf:
                line, buf = buf.split(b'\n', 1)
                text = line.decode('utf-8', 'replace')
                if text == MARK:
                    return self._parse(lines)
                lines.append(text)

    @staticmethod
    def _parse(lines):
        rows = [line for line in lines if '|' in line and not line.startswith(('ERROR', 'psql'))]
        if len(rows) != 1:
            raise RuntimeError(' '.join(lines).strip() or 'the insert returned no order (no customers?)')
        order_id, created_at = rows[0].split('|', 1)
        return int(order_id), created_at


class App(object):
    def __init__(self, args):
        self.args = args
        self.db = Database(args)
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.state = {'orders_written': 0, 'last_order_id': None, 'last_write_at': None,
                      'last_write_monotonic': None, 'last_error': None, 'started_at': utc_now()}

    def health(self):
        with self.lock:
            state = dict(self.state)
        last = state.pop('last_write_monotonic')
        fresh = last is not None and time.monotonic() - last <= max(5.0, 5 * self.args.interval)
        state.update(status='ok' if fresh else 'failing', database=self.db.env.get('PGDATABASE'), pid=os.getpid())
        return fresh, state

    def loop(self):
        journal = open(self.args.journal, 'a') if self.args.journal else None
        try:
            while not self.stopping.is_set():
                try:
                    order_id, created_at = self.db.write_order()
                except RuntimeError as exc:
                    with self.lock:
                        self.state['last_error'] = '%s %s' % (utc_now(), exc)
                    log('write failed: %s' % exc)
                    self.stopping.wait(max(self.args.interval, 0.5))
                    continue
                with self.lock:
                    self.state.update(orders_written=self.state['orders_written'] + 1, last_order_id=order_id,
                                      last_write_at=created_at, last_write_monotonic=time.monotonic())
                if journal:
                    journal.write(json.dumps({'id': order_id, 'created_at': created_at}) + '\n')
                    journal.flush()
                self.stopping.wait(self.args.interval)
        finally:
            self.db.close()
            if journal:
                journal.close()


def log(message):
    sys.stderr.write('%s modulo-app[%d] %s\n' % (utc_now(), os.getpid(), message))
    sys.stderr.flush()


def make_handler(app):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path.split('?')[0] != '/health':
                self.send_error(404)
                return
            ok, body = app.health()
            data = json.dumps(body).encode()
            self.send_response(200 if ok else 503)
            self.send_header('Content-Type', 'application/json')
            self.send_header('Content-Length', str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass
    return Handler


def state_path(pidfile):
    return pidfile + '.json'


def read_pid(pidfile):
    """The pid in the pidfile when that process is this application, else None."""
    try:
        with open(pidfile) as handle:
            pid = int(handle.read().strip())
        with open('/proc/%d/cmdline' % pid, 'rb') as handle:
            cmdline = handle.read()
    except (OSError, ValueError):
        return None
    return pid if b'modulo_app' in cmdline else None


def write_file(path, text):
    tmp = '%s.tmp-%d' % (path, os.getpid())
    with open(tmp, 'w') as handle:
        handle.write(text)
    os.rename(tmp, path)


def cmd_run(args):
    if read_pid(args.pidfile):
        log('already running (pid %d)' % read_pid(args.pidfile))
        return 1
    app = App(args)
    server = ThreadingHTTPServer(('127.0.0.1', args.port), make_handler(app))
    port = server.server_address[1]
    url = 'http://127.0.0.1:%d/health' % port
    write_file(state_path(args.pidfile), json.dumps({'pid': os.getpid(), 'port': port, 'url': url,
                                                     'database': app.db.env.get('PGDATABASE'),
                                                     'started_at': app.state['started_at']}))
    write_file(args.pidfile, '%d\n' % os.getpid())

    def on_term(_signum, _frame):
        app.stopping.set()
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    log('writing orders every %.3f s, health on %s' % (args.interval, url))
    try:
        app.loop()
    finally:
        server.shutdown()
        server.server_close()
        for path in (args.pidfile, state_path(args.pidfile)):
            try:
                os.unlink(path)
            except OSError:
                pass
        log('stopped after %d orders' % app.state['orders_written'])
    return 0


def cmd_start(args):
    if read_pid(args.pidfile):
        print(json.dumps(status_of(args.pidfile)))
        return 0
    argv = [sys.executable, os.path.abspath(__file__), 'run'] + forwarded(args)
    logfile = open(args.log, 'ab') if args.log else open(os.devnull, 'wb')
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile, start_new_session=True)
    logfile.close()
    deadline = time.time() + args.wait
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.stderr.write('modulo_app did not start (exit %s), see %s\n' % (proc.returncode, args.log or 'its log'))
            return 1
        if read_pid(args.pidfile) == proc.pid and os.path.exists(state_path(args.pidfile)):
            print(json.dumps(status_of(args.pidfile)))
            return 0
        time.sleep(0.05)
    proc.terminate()
    sys.stderr.write('modulo_app did not come up within %d s\n' % args.wait)
    return 1


def forwarded(args):
    argv = ['--pidfile', args.pidfile, '--port', str(args.port), '--interval', str(args.interval),
            '--pg-bindir', args.pg_bindir]
    for option, value in (('--journal', args.journal), ('--host', args.host), ('--dbport', args.dbport),
                          ('--user', args.user), ('--db', args.db)):
        if value:
            argv += [option, str(value)]
    return argv


def status_of(pidfile):
    pid = read_pid(pidfile)
    if not pid:
        return {'running': False}
    try:
        with open(state_path(pidfile)) as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        state = {}
    state.update(running=True, pid=pid)
    return state


def cmd_status(args):
    state = status_of(args.pidfile)
    print(json.dumps(state))
    return 0 if state['running'] else NOT_RUNNING


def cmd_stop(args):
    pid = read_pid(args.pidfile)
    if not pid:
        print(json.dumps({'running': False, 'stopped': False}))
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + args.wait
    while time.time() < deadline and os.path.exists('/proc/%d' % pid) and read_pid(args.pidfile) == pid:
        time.sleep(0.05)
    if read_pid(args.pidfile) == pid:
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    print(json.dumps({'running': False, 'stopped': True, 'pid': pid}))
    return 0


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    p.add_argument('action', choices=['start', 'stop', 'status', 'run'])
    p.add_argument('--pidfile', required=True, help='pid file; its state (port, url) is kept in <pidfile>.json')
    p.add_argument('--port', type=int, default=0, help='health endpoint port on 127.0.0.1 (0: a free one)')
    p.add_argument('--interval', type=float, default=0.05, help='seconds between orders')
    p.add_argument('--journal', help='append every committed order here as a JSON line')
    p.add_argument('--log', help='log file of the background process (start)')
    p.add_argument('--wait', type=int, default=30, help='seconds start/stop wait for the process')
    p.add_argument('--host', help='database host (default PGHOST)')
    p.add_argument('--dbport', type=int, help='database port (default PGPORT)')
    p.add_argument('--user', help='database user (default PGUSER)')
    p.add_argument('--db', help='database (default PGDATABASE)')
    p.add_argument('--pg-bindir', default=BINDIR, help='directory of psql')
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    args.pidfile = os.path.abspath(args.pidfile)
    if args.action in ('start', 'run'):
        os.makedirs(os.path.dirname(args.pidfile), exist_ok=True)
    return {'start': cmd_start, 'stop': cmd_stop, 'status': cmd_status, 'run': cmd_run}[args.action](args)


if __name__ == '__main__':
    sys.exit(main())
