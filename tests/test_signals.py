"""Signals: SIGTERM/SIGINT stop runner and its task, SIGHUP reloads the config (SPEC §7)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import LogWatcher, alive, output_of, started, wait_for, wait_for_file


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_stop_signal_terminates_the_task_group_and_starts_nothing_more(ws, signum, status):
    ready, got, child_pid = ws.root / "ready", ws.root / "got", ws.root / "child.pid"
    after = ws.root / "b-ran"
    ws.task("halt.sh", f"touch '{ws.root}/halt-ran'")
    ws.task("a", f"""
        trap 'echo TERM > "{got}"; exit 143' TERM
        sleep 300 &
        echo $! > '{child_pid}'
        touch '{ready}'
        while :; do sleep 0.05; done
    """)
    ws.task("b", f"touch '{after}'")
    ws.config(max_tries=3)
    with LogWatcher(ws.start("-n", "0")) as runner:
        wait_for_file(ready)
        runner.proc.send_signal(signum)
        assert runner.finish() == status, runner.text()
        log = runner.text()
    assert got.read_text() == "TERM\n"  # the task got SIGTERM, whatever runner got
    assert started(log) == ["a"]
    assert "a: STOPPED" in log
    assert not after.exists()
    assert not (ws.root / "halt-ran").exists()
    pid = int(child_pid.read_text())
    wait_for(lambda: not alive(pid), 5, "the task's background child to be gone")


def sigterm_ignoring_task(ws) -> tuple[Path, Path]:
    """Task `a` ignores SIGTERM; returns (marker written once it runs, its pid file)."""
    ready, pid_file = ws.root / "ready", ws.root / "task.pid"
    ws.task("a", f"""
        trap '' TERM
        echo $$ > '{pid_file}'
        touch '{ready}'
        while :; do sleep 0.05; done
    """)
    return ready, pid_file


def test_stop_waits_kill_grace_then_kills_a_task_ignoring_sigterm(ws):
    ready, pid_file = sigterm_ignoring_task(ws)
    ws.config(kill_grace=1)
    with LogWatcher(ws.start("-n", "1")) as runner:
        wait_for_file(ready)
        begin = time.monotonic()
        runner.proc.terminate()
        assert runner.finish() == 143, runner.text()
        elapsed = time.monotonic() - begin
    assert 0.9 <= elapsed < 5, elapsed
    assert "a: STOPPED (signal 9)" in runner.text()
    assert not alive(int(pid_file.read_text()))


def test_second_sigterm_kills_a_task_ignoring_sigterm_at_once(ws):
    ready, pid_file = sigterm_ignoring_task(ws)
    ws.config(kill_grace=30)
    with LogWatcher(ws.start("-n", "1")) as runner:
        wait_for_file(ready)
        runner.proc.terminate()
        # The first signal alone waits for kill_grace (30 s): runner is still there.
        with pytest.raises(subprocess.TimeoutExpired):
            runner.proc.wait(0.5)
        begin = time.monotonic()
        runner.proc.terminate()
        assert runner.finish() == 143, runner.text()
        assert time.monotonic() - begin < 5
    assert "a: STOPPED (signal 9)" in runner.text()
    assert not alive(int(pid_file.read_text()))


def test_sigterm_during_the_backoff_pause_exits_promptly(ws):
    ws.task("a", "exit 1")
    ws.config(sleep_time=30, max_tries=3)
    with LogWatcher(ws.start("-n", "1")) as runner:
        runner.wait_for(r"retrying in 34\.2s")  # 30 * backoff 1.14
        begin = time.monotonic()
        runner.proc.terminate()
        assert runner.finish() == 143, runner.text()
        assert time.monotonic() - begin < 5
    assert started(runner.text()) == ["a"]


def test_sigint_between_iterations_exits_130(ws):
    ws.task("a", f"touch '{ws.root}/ran'")
    ws.config(sleep_time=30)  # iterations start at least sleep_time apart
    with LogWatcher(ws.start("-n", "0")) as runner:
        runner.wait_for(r"a: OK")
        runner.proc.send_signal(signal.SIGINT)
        assert runner.finish() == 130, runner.text()
    assert started(runner.text()) == ["a"]


def hup_chain(ws) -> tuple[Path, Path]:
    """Task 1 waits for `go`; task 2 prints [demo] value as runner-config sees it."""
    ready, go = ws.root / "ready", ws.root / "go"
    ws.task("1-wait", f"""
        touch '{ready}'
        while [ ! -e '{go}' ]; do sleep 0.02; done
    """)
    ws.task("2-print", '$RUNNER_CONFIG_CMD -g demo.value\necho "env=$DEMO"')
    return ready, go


def test_sighup_reloads_the_config_before_the_next_task(ws):
    ready, go = hup_chain(ws)
    ws.config("[demo]\nvalue = old\n[env]\nDEMO = old-env\n")
    with LogWatcher(ws.start("-n", "1")) as runner:
        wait_for_file(ready)
        ws.config("[demo]\nvalue = new\n[env]\nDEMO = new-env\n")
        runner.proc.send_signal(signal.SIGHUP)
        go.touch()
        assert runner.finish() == 0, runner.text()
        log = runner.text()
    assert "SIGHUP: configuration reloaded" in log
    assert output_of(log, "2-print") == ["new", "env=new-env"]
    assert started(log) == ["1-wait", "2-print"]


def test_sighup_reload_applies_new_task_settings(ws):
    ready, go = hup_chain(ws)
    ws.config("[demo]\nvalue = x\n")
    with LogWatcher(ws.start("-n", "1")) as runner:
        wait_for_file(ready)
        ws.config("[demo]\nvalue = x\n[print]\nmax_tries = 9\n")
        runner.proc.send_signal(signal.SIGHUP)
        go.touch()
        assert runner.finish() == 0, runner.text()
    assert "2-print: starting (try 1/9" in runner.text()


def test_sighup_with_a_broken_config_keeps_the_old_one(ws):
    ready, go = hup_chain(ws)
    ws.config("[demo]\nvalue = old\n")
    with LogWatcher(ws.start("-n", "1")) as runner:
        wait_for_file(ready)
        ws.config("[demo]\nvalue = new\n", max_tries="five")
        runner.proc.send_signal(signal.SIGHUP)
        go.touch()
        assert runner.finish() == 0, runner.text()
        log = runner.text()
    assert "Traceback" not in log
    error = next(line for line in log.splitlines() if "SIGHUP" in line)
    assert " ERROR " in error and "keeping the old one" in error
    assert "max_tries" in error and "five" in error
    assert output_of(log, "2-print") == ["old", "env="]
