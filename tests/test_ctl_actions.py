"""`runner ctl` against a real running runner: retry-now, skip, pause/resume, halt."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time

from conftest import Workspace, started, wait_for
from test_notify import NotifySocket


def ctl(ws: Workspace, *words: str):
    return ws.run("ctl", *words, tasks=False)


def socket_up(ws: Workspace) -> bool:
    return (ws.root / "run" / "control.sock").exists()


def history(ws: Workspace) -> list[tuple[str, str]]:
    proc = ws.run("history", "--json", tasks=False)
    return [(r["task"], r["result"]) for r in json.loads(proc.stdout or "[]")]


def test_retry_now_ends_a_long_backoff_at_once(ws):
    ws.task("10-flaky.sh", """
        [ -e "$RUNNER_STATE_DIR/seen" ] && exit 0
        touch "$RUNNER_STATE_DIR/seen"; exit 1
    """)
    ws.config(sleep_time=300)
    proc = ws.start("-n", "1")
    try:
        wait_for(lambda: (ws.state / "seen").exists() and socket_up(ws), what="first try")
        refused_early = None
        for _ in range(50):  # the backoff starts right after the failure is recorded
            answer = ctl(ws, "retry-now")
            if answer.returncode == 0:
                break
            refused_early = answer
            time.sleep(0.1)
        assert answer.returncode == 0, (answer.stderr, refused_early)
        assert "next try" in answer.stdout
        _out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert started(err) == ["10-flaky.sh", "10-flaky.sh"]


def test_retry_now_is_refused_when_runner_is_not_pausing(ws):
    ws.task("10-slow.sh", "exec sleep 30")
    proc = ws.start("-n", "1")
    try:
        wait_for(lambda: socket_up(ws) and (ws.state / "journal.sqlite").exists(), what="start")
        answer = ctl(ws, "retry-now")
        assert answer.returncode == 1 and "not pausing" in answer.stderr
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_skip_stops_a_hanging_task_and_the_chain_goes_on(ws):
    ws.task("10-hangs.sh", 'echo $$ > "$RUNNER_STATE_DIR/pid"; exec sleep 30')
    ws.task("20-after.sh", "echo after ran")
    proc = ws.start("-n", "1")
    wait_for(lambda: (ws.state / "pid").exists() and socket_up(ws), what="hanging task")
    answer = ctl(ws, "skip", "hangs")
    assert answer.returncode == 0 and "counts as SKIPPED" in answer.stdout
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "after ran" in err
    assert history(ws) == [("10-hangs.sh", "SKIPPED"), ("20-after.sh", "OK")]


def test_skip_of_a_pending_task_skips_it_once_and_an_unknown_task_is_refused(ws):
    ws.task("10-wait.sh", 'while [ ! -e "$RUNNER_STATE_DIR/go" ]; do sleep 0.05; done')
    ws.task("20-skipped.sh", "echo should not run")
    proc = ws.start("-n", "2")
    wait_for(lambda: socket_up(ws), what="control socket")
    assert ctl(ws, "skip", "nosuch").returncode == 1
    answer = ctl(ws, "skip", "20-skipped.sh")
    assert answer.returncode == 0 and "when its turn comes" in answer.stdout
    (ws.state / "go").touch()
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert err.count("should not run") == 1  # skipped in iteration 1 only
    assert [r for t, r in history(ws) if t == "20-skipped.sh"] == ["SKIPPED", "OK"]


def status_state(ws) -> str | None:
    """The live status file's state; None before runner wrote it (its control socket is
    up a moment before)."""
    try:
        return json.loads((ws.root / "run" / "status.json").read_text())["state"]
    except FileNotFoundError:
        return None


def test_pause_holds_the_next_task_until_resume(ws):
    ws.task("10-first.sh", 'while [ ! -e "$RUNNER_STATE_DIR/go" ]; do sleep 0.05; done')
    ws.task("20-second.sh", 'touch "$RUNNER_STATE_DIR/second-ran"')
    proc = ws.start("-n", "1")
    try:
        wait_for(lambda: socket_up(ws), what="control socket")
        assert ctl(ws, "pause").returncode == 0
        (ws.state / "go").touch()
        wait_for(lambda: status_state(ws) == "paused", what="runner to pause")
        time.sleep(0.5)
        assert not (ws.state / "second-ran").exists()
        status = ws.run("status", tasks=False).stdout
        assert "paused by runner ctl (since " in status
        assert "waiting until" not in status  # a pause has no end time to show
        assert ctl(ws, "resume").returncode == 0
        _out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert (ws.state / "second-ran").exists()


def test_halt_runs_the_halt_task_after_the_current_task_and_exits_2(ws):
    ws.task("10-first.sh", 'while [ ! -e "$RUNNER_STATE_DIR/go" ]; do sleep 0.05; done')
    ws.task("20-never.sh", "echo never")
    ws.task("halt.sh", "echo halting now")
    proc = ws.start("-n", "1")
    wait_for(lambda: socket_up(ws), what="control socket")
    assert ctl(ws, "halt").returncode == 0
    (ws.state / "go").touch()
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2, err
    assert "halting now" in err and "never" not in err
    assert not socket_up(ws)  # removed on the way out


def test_halt_in_parallel_mode_waits_for_running_tasks(ws):
    ws.task("a.sh", 'while [ ! -e "$RUNNER_STATE_DIR/go" ]; do sleep 0.05; done; echo a done')
    ws.task("b.sh", "echo b done")
    ws.task("c.sh", "echo c ran")
    ws.config("[c]\ndepends_on = a.sh\n", max_parallel=2)
    ws.task("halt.sh", "echo halting now")
    proc = ws.start("-n", "1")
    wait_for(lambda: socket_up(ws) and "b done" in ws.run("log", "b.sh", tasks=False).stdout,
             what="b to finish")
    assert ctl(ws, "halt").returncode == 0
    (ws.state / "go").touch()
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2, err
    assert "a done" in err and "c ran" not in err and "halting now" in err


def test_systemd_status_says_paused_not_retrying_while_paused(ws, tmp_path):
    ws.task("10-first.sh", 'while [ ! -e "$RUNNER_STATE_DIR/go" ]; do sleep 0.05; done')
    ws.task("20-second.sh")
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = ws.start("-n", "1", env={**os.environ, "NOTIFY_SOCKET": notify.path})
    try:
        wait_for(lambda: socket_up(ws), what="control socket")
        assert ctl(ws, "pause").returncode == 0
        (ws.state / "go").touch()
        wait_for(lambda: any("paused by runner ctl" in m for m in notify.messages),
                 what="STATUS saying paused")
        assert ctl(ws, "resume").returncode == 0
        _out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        messages = notify.close()
    assert proc.returncode == 0, err
    paused = [m for m in messages if "paused by runner ctl" in m]
    assert paused == ["STATUS=iteration 1: paused by runner ctl (runner ctl resume goes on)"]
    assert not any("retrying in" in m for m in messages)
    assert messages.index(paused[0]) < next(
        n for n, m in enumerate(messages) if "running task 20-second.sh" in m)


def test_a_skip_while_the_start_hook_runs_keeps_the_task_from_running(ws):
    ws.task("10-first.sh")
    ws.task("20-skipped.sh", "echo should not run")
    waiting, go = ws.state / "hook-waiting", ws.state / "go"
    hook = ws.root / "hook.py"
    hook.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, pathlib, sys, time
        stats = json.loads(sys.argv[-1])
        if stats["task"] == "20-skipped.sh" and stats["result"] == "RUNNING":
            pathlib.Path({str(waiting)!r}).touch()
            while not pathlib.Path({str(go)!r}).exists():
                time.sleep(0.05)
    """))
    hook.chmod(0o755)
    ws.config(task_hook=str(hook))
    proc = ws.start("-n", "1")
    try:
        wait_for(lambda: waiting.exists() and socket_up(ws), what="the start hook of 20")
        answer = ctl(ws, "skip", "20-skipped.sh")
        assert answer.returncode == 0 and "counts as SKIPPED" in answer.stdout, answer
        go.touch()
        _out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "should not run" not in err
    assert "20-skipped.sh: SKIPPED (skipped by runner ctl)" in err
    assert history(ws) == [("10-first.sh", "OK"), ("20-skipped.sh", "SKIPPED")]
