# -*- coding: utf-8 -*-
"""pipeline.run with real processes: every stage's status counts, not only the last one's."""

import os
import signal
import stat
import time
import uuid

import pytest

from ansible_collections.modulo.pgbackup.plugins.module_utils import compression, pipeline
from ansible_collections.modulo.pgbackup.plugins.module_utils.pgclient import CommandLog


def processes_with_argv(marker):
    """pids of live processes whose argv contains ``marker`` (read from /proc)."""
    found = []
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as handle:
                argv = handle.read().split(b'\0')
            with open('/proc/%s/stat' % pid) as handle:
                state = handle.read().rsplit(')', 1)[1].split()[0]
        except (IOError, OSError):
            continue
        if marker.encode() in argv and state != 'Z':
            found.append(int(pid))
    return found


def test_processes_with_argv_sees_a_live_process():
    import subprocess
    marker = '27.%06d' % (uuid.uuid4().int % 1000000)
    proc = subprocess.Popen(['sleep', marker])
    try:
        # Popen (vfork) resumes the parent when execve has switched memory, before the kernel has
        # set the new argv: under load /proc/<pid>/cmdline reads empty for a moment (seen in CI, and
        # 193 times in 500 with both cores busy). Poll, as a reader of a just-started process must.
        deadline = time.time() + 5
        while processes_with_argv(marker) != [proc.pid] and time.time() < deadline:
            time.sleep(0.05)
        assert processes_with_argv(marker) == [proc.pid]
    finally:
        proc.kill()
        proc.wait()
    assert processes_with_argv(marker) == []


def test_success_returns_each_stage_stderr_and_writes_stdout(tmp_path):
    out = str(tmp_path / 'out')
    texts = pipeline.run([['sh', '-c', 'echo hello; echo one >&2'],
                          ['sh', '-c', 'tr a-z A-Z; echo two >&2']], stdout_path=out)
    assert texts == ['one\n', 'two\n']
    with open(out, 'rb') as handle:
        assert handle.read() == b'HELLO\n'


def test_real_compression_pipeline_round_trip(tmp_path):
    src = str(tmp_path / 'src')
    data = os.urandom(300000) + b'abc' * 100000
    with open(src, 'wb') as handle:
        handle.write(data)
    packed = str(tmp_path / 'src.zst')
    log = CommandLog()
    pipeline.run([['cat'], compression.compress_argv('zstd', 3)], stdin_path=src, stdout_path=packed, log=log)
    assert log.commands == [['cat'], compression.compress_argv('zstd', 3)]
    back = str(tmp_path / 'back')
    pipeline.run([compression.decompress_argv('zstd', packed)], stdout_path=back)
    with open(back, 'rb') as handle:
        assert handle.read() == data


def test_failing_first_stage_with_succeeding_last_stage_raises(tmp_path):
    """The ``pg_dump | gzip`` hazard: gzip exits 0 on a truncated input."""
    out = str(tmp_path / 'dump.sql.gz')
    with pytest.raises(pipeline.PipelineError) as info:
        pipeline.run([['sh', '-c', 'echo partial; echo "pg_dump: error: connection lost" >&2; exit 3'],
                      compression.compress_argv('gzip', 6)], stdout_path=out)
    error = info.value
    assert error.stage == 'sh'
    assert error.returncode == 3
    assert 'connection lost' in error.stderr
    assert str(error).startswith('sh failed (exit code 3): pg_dump: error: connection lost')
    assert os.path.getsize(out) > 0  # gzip did write a valid, truncated file: only the status tells


def test_stage_killed_by_a_signal_is_named(tmp_path):
    with pytest.raises(pipeline.PipelineError) as info:
        pipeline.run([['sh', '-c', 'kill -9 $$'], ['cat']])
    assert info.value.returncode == -signal.SIGKILL
    assert info.value.stage == 'sh'
    assert 'killed by signal SIGKILL' in str(info.value)

    with pytest.raises(pipeline.PipelineError) as info:
        pipeline.run([['cat'], ['sh', '-c', 'kill -TERM $$']])
    assert 'sh failed (killed by signal SIGTERM)' in str(info.value)


def test_single_stage_failure():
    with pytest.raises(pipeline.PipelineError) as info:
        pipeline.run([['sh', '-c', 'echo "No space left on device" >&2; exit 1']])
    assert str(info.value) == 'sh failed (exit code 1): No space left on device'


def test_root_cause_is_named_before_the_sigpipe_victim():
    """gzip failing (disk full) kills pg_dump upstream with SIGPIPE: report gzip first."""
    with pytest.raises(pipeline.PipelineError) as info:
        pipeline.run([['yes'], ['sh', '-c', 'head -c 10 >/dev/null; echo "disk full" >&2; exit 4']])
    error = info.value
    assert error.stage == 'sh'
    assert error.returncode == 4
    message = str(error)
    assert message.startswith('sh failed (exit code 4): disk full; yes failed')
    assert 'output pipe closed' in message or 'Broken pipe' in message


def test_consumer_that_stops_early_still_fails_the_pipeline():
    """``head`` exits 0 after a few bytes; the producer was cut short, so the run failed."""
    with pytest.raises(pipeline.PipelineError) as info:
        pipeline.run([['yes'], ['head', '-c', '5']])
    assert info.value.stage == 'yes'
    assert 'yes failed' in str(info.value)


def test_stdout_path_is_created_0600_and_never_reused(tmp_path):
    out = str(tmp_path / 'dump')
    old = os.umask(0)
    try:
        pipeline.run([['echo', 'x']], stdout_path=out)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600

    existing = str(tmp_path / 'existing')
    with open(existing, 'wb') as handle:
        handle.write(b'precious')
    with pytest.raises(FileExistsError):
        pipeline.run([['echo', 'overwritten']], stdout_path=existing)
    with open(existing, 'rb') as handle:
        assert handle.read() == b'precious'

    link = str(tmp_path / 'link')
    os.symlink(str(tmp_path / 'target'), link)
    with pytest.raises(FileExistsError):
        pipeline.run([['echo', 'x']], stdout_path=link)
    assert not os.path.exists(str(tmp_path / 'target'))


def test_stdout_mode_is_honoured(tmp_path):
    out = str(tmp_path / 'dump')
    pipeline.run([['true']], stdout_path=out, stdout_mode=0o640)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o640


def test_started_callback_runs_while_stages_run(tmp_path):
    seen = {}

    def started(procs):
        seen['count'] = len(procs)
        seen['running'] = [p.poll() is None for p in procs]

    out = str(tmp_path / 'out')
    pipeline.run([['sh', '-c', 'sleep 0.5; echo done'], ['cat']], stdout_path=out, started=started)
    assert seen == {'count': 2, 'running': [True, True]}
    with open(out, 'rb') as handle:
        assert handle.read() == b'done\n'


def test_exception_in_started_kills_the_stages():
    marker = '29.%06d' % (uuid.uuid4().int % 1000000)
    captured = []

    def started(procs):
        captured.extend(procs)
        raise RuntimeError('counting rows failed')

    begin = time.time()
    with pytest.raises(RuntimeError, match='counting rows failed'):
        pipeline.run([['sleep', marker], ['cat']], started=started)
    assert time.time() - begin < 10
    assert len(captured) == 2
    assert captured[0].returncode == -signal.SIGKILL
    # cat may see EOF and exit 0 before its own SIGKILL arrives; either way it is gone and reaped
    assert captured[1].returncode in (0, -signal.SIGKILL)
    assert processes_with_argv(marker) == []


def test_a_stage_that_cannot_start_does_not_leave_earlier_stages_running(tmp_path):
    marker = '28.%06d' % (uuid.uuid4().int % 1000000)
    with pytest.raises(OSError):
        pipeline.run([['sleep', marker], [str(tmp_path / 'no-such-program')]])
    assert processes_with_argv(marker) == []


def test_stdin_path_feeds_the_first_stage(tmp_path):
    src = str(tmp_path / 'in')
    with open(src, 'wb') as handle:
        handle.write(b'line1\nline2\nline3\n')
    out = str(tmp_path / 'out')
    pipeline.run([['wc', '-l']], stdin_path=src, stdout_path=out)
    with open(out) as handle:
        assert handle.read().strip() == '3'


def test_without_stdin_path_the_first_stage_reads_nothing(tmp_path):
    out = str(tmp_path / 'out')
    pipeline.run([['wc', '-c']], stdout_path=out)
    with open(out) as handle:
        assert handle.read().strip() == '0'


def test_env_is_passed_to_every_stage(tmp_path):
    out = str(tmp_path / 'out')
    env = dict(os.environ, MODULO_TEST_VALUE='seen')
    texts = pipeline.run([['sh', '-c', 'echo $MODULO_TEST_VALUE'],
                          ['sh', '-c', 'cat; echo $MODULO_TEST_VALUE >&2']], env=env, stdout_path=out)
    assert texts[1] == 'seen\n'
    with open(out) as handle:
        assert handle.read() == 'seen\n'
