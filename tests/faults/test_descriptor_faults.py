"""File descriptors at their limit (issue: EMFILE at ~205 running tasks ended runner with
exit 70, orphaned 200 tasks, and the journal said CONFIG). runner raises its soft
RLIMIT_NOFILE as far as max_parallel needs, runs no more at once than the limit allows,
and an internal error never leaves a task running."""

from __future__ import annotations

import os
import resource
import signal
import sqlite3
import subprocess
import time

import pytest
from conftest import alive, wait_for

from runner import fdlimit

pytestmark = pytest.mark.slow


def with_nofile(limit: int):
    """preexec_fn for the runner under test (the test process has no threads then)."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def run_result(ws) -> str:
    conn = sqlite3.connect(f"file:{ws.state / 'journal.sqlite'}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT result FROM runs").fetchone()[0]
    finally:
        conn.close()


def test_max_parallel_past_the_descriptor_limit_is_capped_not_a_crash(ws):
    limit = 256
    cap = fdlimit.tasks_for(limit)
    tasks = 3 * cap
    for n in range(tasks):
        ws.task(f"t{n:03d}.sh", """
            echo x > "$RUNNER_STATE_DIR/running.$$"
            ls "$RUNNER_STATE_DIR" | grep -c '^running\\.' > "$RUNNER_STATE_DIR/seen.$$"
            sleep 0.3
            rm "$RUNNER_STATE_DIR/running.$$"
        """)
    ws.config(max_parallel=tasks)
    proc = subprocess.run(ws.command("-n", "1"), capture_output=True, text=True, timeout=180,
                          preexec_fn=with_nofile(limit), cwd=ws.root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"allows {cap} tasks at once" in proc.stderr
    assert "EMFILE" not in proc.stderr and "Too many open files" not in proc.stderr
    seen = [int(p.read_text()) for p in ws.state.glob("seen.*")]
    assert len(seen) == tasks  # every task ran
    assert max(seen) <= cap  # never more at once than the descriptors allow
    assert run_result(ws) == "DONE"


def test_runner_raises_its_soft_limit_as_far_as_max_parallel_needs(ws):
    ws.task("10-limit.sh", 'ulimit -Sn > "$RUNNER_STATE_DIR/soft"')
    ws.config(max_parallel=300)
    soft, hard = 256, fdlimit.needed(300) + 100

    def limits():
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    proc = subprocess.run(ws.command("-n", "1"), capture_output=True, text=True, timeout=60,
                          preexec_fn=limits, cwd=ws.root)
    assert proc.returncode == 0, proc.stderr
    assert int((ws.state / "soft").read_text()) == fdlimit.needed(300)  # raised, not to hard
    assert "max_parallel" not in proc.stderr  # no warning: the hard limit allows it


def test_runner_check_warns_when_the_hard_limit_holds_max_parallel_back(ws):
    ws.task("10-a.sh")
    ws.config(max_parallel=1000)
    proc = subprocess.run(ws.command("check"), capture_output=True, text=True, timeout=60,
                          preexec_fn=with_nofile(512), cwd=ws.root)
    assert proc.returncode == 0, proc.stderr
    assert f"allows {fdlimit.tasks_for(512)} tasks at once" in proc.stderr


def test_an_internal_error_stops_every_running_task_and_the_journal_says_internal(ws):
    ws.task("10-long.sh", 'echo $$ > "$RUNNER_STATE_DIR/pid"; exec sleep 60')
    ws.task("20-long.sh", 'echo $$ > "$RUNNER_STATE_DIR/pid2"; exec sleep 60')
    ws.config(max_parallel=2)
    proc = ws.start("-n", "1")
    try:
        wait_for(lambda: (ws.state / "pid").exists() and (ws.state / "pid2").exists(),
                 what="both tasks running")
        pids = [int((ws.state / name).read_text()) for name in ("pid", "pid2")]
        # No descriptor left to open: the main loop's next wake-up (epoll_create) fails
        # with EMFILE, an error runner does not expect.
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (3, 3))
        os.kill(proc.pid, signal.SIGHUP)
        _out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 70, err
    assert "internal error" in err
    assert "Traceback" not in err
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids), "a task outlived runner's internal error"
    assert run_result(ws) == "INTERNAL"
