# -*- coding: utf-8 -*-
# Copyright: (c) 2026, modulo.pgbackup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run ``a | b | c > file`` without a shell, and fail if *any* stage failed.

A shell pipeline's status is its last command's: ``pg_dump | gzip`` reports
success when pg_dump dies half way and gzip closes a valid, truncated file.
That is exactly the silent partial backup this collection must never write.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import signal
import subprocess
import tempfile

from ansible_collections.modulo.pgbackup.plugins.module_utils import errors, fsutil


class PipelineError(errors.PgBackupError):
    def __init__(self, message, stage=None, returncode=None, stderr=''):
        super(PipelineError, self).__init__(message)
        self.stage = stage
        self.returncode = returncode
        self.stderr = stderr


def program(argv):
    """The program a stage runs, past a ``runuser -u USER --`` prefix (osuser.run_as)."""
    if argv and os.path.basename(argv[0]) == 'runuser' and '--' in argv:
        argv = argv[argv.index('--') + 1:]
    return os.path.basename(argv[0]) if argv else ''


def _describe_rc(rc):
    if rc < 0:
        try:
            return 'killed by signal %s' % signal.Signals(-rc).name
        except ValueError:
            return 'killed by signal %d' % -rc
    return 'exit code %d' % rc


def run(stages, env=None, stdin_path=None, stdout_path=None, stdout_mode=0o600, log=None,
        started=None):
    """Run ``stages`` (a list of argv) connected by pipes.

    ``started`` is called with the list of Popen objects once all run, so a
    caller can do work concurrently (count rows in the dump's snapshot).
    Returns the stderr text of every stage. The stages run in ``/``: a stage run as the server's OS
    user (osuser.run_as) may not enter the directory Ansible started the module in.
    """
    procs, errs = [], []
    stdin = open(stdin_path, 'rb') if stdin_path else subprocess.DEVNULL
    stdout_fd = None
    try:
        if stdout_path:
            stdout_fd = os.open(stdout_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stdout_mode)
            fsutil.inherit_owner(stdout_path)
        try:
            prev = stdin
            for index, argv in enumerate(stages):
                if log is not None:
                    log.add(argv)
                last = index == len(stages) - 1
                err = tempfile.TemporaryFile()
                errs.append(err)
                out = (stdout_fd if stdout_fd is not None else subprocess.DEVNULL) if last else subprocess.PIPE
                proc = subprocess.Popen(argv, stdin=prev, stdout=out, stderr=err, env=env, cwd='/')
                if index > 0 and prev is not None:
                    prev.close()  # so the upstream stage gets SIGPIPE if we die
                prev = proc.stdout if not last else None
                procs.append(proc)
            if started is not None:
                started(procs)
        except BaseException:
            # A stage that could not start (or a failing ``started``) must not
            # leave the earlier stages running, blocked on a pipe nobody reads.
            _kill(procs)
            raise
        codes = [p.wait() for p in procs]
        if stdout_fd is not None:
            os.fsync(stdout_fd)
        texts = []
        for err in errs:
            err.seek(0)
            texts.append(err.read().decode('utf-8', 'replace'))
    finally:
        if stdin_path:
            stdin.close()
        if stdout_fd is not None:
            os.close(stdout_fd)
        for err in errs:
            err.close()
    failed = [index for index, code in enumerate(codes) if code != 0]
    if failed:
        raise _failure(stages, codes, texts, failed)
    return texts


def _is_pipe_victim(code, text):
    """Did this stage die only because a later stage stopped reading its output?"""
    return code == -signal.SIGPIPE or 'Broken pipe' in text


def _failure(stages, codes, texts, failed):
    """One error naming the root cause first.

    When ``gzip`` fails (disk full), ``pg_dump`` upstream dies of SIGPIPE with
    nothing on stderr; reporting that first would hide the real reason.
    """
    causes = [i for i in failed if not _is_pipe_victim(codes[i], texts[i])] or failed
    first = causes[0]
    parts = []
    for index in [first] + [i for i in failed if i != first]:
        name = program(stages[index])
        text = texts[index].strip()[-1500:]
        part = '%s failed (%s)' % (name, _describe_rc(codes[index]))
        if text:
            part += ': ' + text
        elif index != first and _is_pipe_victim(codes[index], texts[index]):
            part += ' because its output pipe closed'
        parts.append(part)
    name = program(stages[first])
    return PipelineError('; '.join(parts), stage=name, returncode=codes[first], stderr=texts[first])


def _kill(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        proc.wait()
