"""sd_notify protocol against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import re
import socket
import threading

import pytest


class NotifySocket:
    """A datagram socket like systemd's; collects every message runner sends."""

    def __init__(self, path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> list[str]:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        return self.messages


@pytest.fixture
def notify(tmp_path):
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def run_notified(ws, notify, *args, **env_extra):
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
    env = {**inherited, "NOTIFY_SOCKET": notify.path, **env_extra}
    proc = ws.run("-n", "1", *args, env=env)
    return proc, notify.close()


def index(messages: list[str], pattern: str) -> int:
    for number, message in enumerate(messages):
        if re.search(pattern, message, re.M):
            return number
    raise AssertionError(f"{pattern!r} not among {messages}")


def test_ready_at_start_then_status_per_task_then_stopping(ws, notify):
    ws.task("10-a.sh")
    ws.task("20-b.sh")
    proc, messages = run_notified(ws, notify)
    assert proc.returncode == 0, proc.stderr
    ready = index(messages, r"^READY=1$")
    a = index(messages, r"^STATUS=iteration 1, try 1/5: running task 10-a\.sh$")
    b = index(messages, r"^STATUS=iteration 1, try 1/5: running task 20-b\.sh$")
    stopping = index(messages, r"^STOPPING=1$")
    assert ready < a < b < stopping == len(messages) - 1
    assert "STATUS=exiting with status 0" in messages[-1]


def test_ready_after_the_named_task_succeeds(ws, notify):
    ws.task("10-a.sh")
    ws.task("20-mount.sh")
    ws.task("30-c.sh")
    ws.config(notify_ready="task:mount")
    proc, messages = run_notified(ws, notify)
    assert proc.returncode == 0, proc.stderr
    ready = index(messages, r"^READY=1$")
    assert index(messages, r"running task 20-mount\.sh") < ready
    assert ready < index(messages, r"running task 30-c\.sh")


def test_ready_after_the_first_pass_and_start_timeout_extended_before_it(ws, notify):
    ws.task("10-a.sh")
    ws.task("20-b.sh")
    ws.config(notify_ready="pass", max_time=5, kill_grace=1)
    proc, messages = run_notified(ws, notify)
    assert proc.returncode == 0, proc.stderr
    ready = index(messages, r"^READY=1$")
    assert index(messages, r"running task 20-b\.sh") < ready
    # max_time + kill_grace + 30 s margin, in microseconds, while starting up.
    assert "EXTEND_TIMEOUT_USEC=36000000" in messages[index(messages, r"running task 10-a")]


def test_status_names_the_retry_and_the_backoff(ws, notify):
    ws.task("10-flaky.sh", '[ "$RUNNER_TRY" -ge 2 ]')
    ws.config(sleep_time=0.1)
    proc, messages = run_notified(ws, notify)
    assert proc.returncode == 0, proc.stderr
    backoff = index(messages, r"^STATUS=iteration 1: backoff after 10-flaky\.sh, retrying in")
    assert backoff < index(messages, r"try 2/5: running task 10-flaky\.sh")


@pytest.mark.slow
def test_watchdog_pings_continue_while_a_long_task_runs(ws, notify):
    ws.task("10-long.sh", "sleep 1.2")
    proc, messages = run_notified(ws, notify, WATCHDOG_USEC="200000")
    assert proc.returncode == 0, proc.stderr
    start = index(messages, r"running task 10-long\.sh")
    pings = [m for m in messages[start:] if m == "WATCHDOG=1"]
    # Every 0.1 s for 1.2 s: at least half of the 12 expected, allowing for a busy machine.
    assert len(pings) >= 6, messages


def test_watchdog_for_another_pid_is_not_ours(ws, notify):
    ws.task("10-long.sh", "sleep 0.5")
    proc, messages = run_notified(ws, notify, WATCHDOG_USEC="100000", WATCHDOG_PID="1")
    assert proc.returncode == 0, proc.stderr
    assert "WATCHDOG=1" not in messages


def test_nothing_is_sent_without_notify_socket(ws, notify):
    ws.task("10-a.sh")
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    # The socket exists but runner is not told about it: it must stay silent.
    proc = ws.run("-n", "1", env={**env, "WATCHDOG_USEC": "100000"})
    assert proc.returncode == 0, proc.stderr
    assert notify.close() == []


def test_heartbeat_is_unhealthy_only_when_the_loop_overslept_its_promise():
    from runner.notify import Heartbeat

    beat = Heartbeat(slack=5)
    assert beat.healthy(now=100.0)  # no promise yet: waiting without a deadline
    beat.expect_wake_by(100.0)
    assert beat.healthy(now=104.9)
    assert not beat.healthy(now=105.1)
    beat.expect_wake_by(None)
    assert beat.healthy(now=1e9)
