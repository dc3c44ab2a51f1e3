"""The live progress line of `runner run`, on a real pseudo-terminal: the real runner
runs with its stderr on the pty's slave side; what the terminal received is read back.
It appears and moves (elapsed time, the next task, the backoff counting down), it is
cleared before every log line so that no log line holds any of it, and it is absent when
stderr is a pipe and with --no-progress."""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time

import pytest
from conftest import Workspace

CLEAR = "\r\x1b[K"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) ")
RUNNING = re.compile(r"^runner: iteration (\d+), try (\d+)/(\d+), task (\d+)/(\d+) (\S+) "
                     r"(\d+\.\d)s/(\d+)s$")
WAITING = re.compile(r"^runner: iteration 1, try 1/3 failed at 20-flaky\.sh, retrying in "
                     r"(\d+\.\d)s \(try 2/3 next\)$")
FLAKY = """
    if [ -e "$RUNNER_STATE_DIR/flaky-ran" ]; then exit 0; fi
    touch "$RUNNER_STATE_DIR/flaky-ran"
    exit 1
"""


def on_pty(ws: Workspace, *args: str, columns: int = 200) -> tuple[int, str]:
    """Run `runner -c CFG ARGS TASKDIR` with stderr on a pseudo-terminal `columns` wide;
    (exit status, what the terminal received, its CR LF read as LF)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "TERM")}
    proc = subprocess.Popen(ws.command(*args), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=slave, cwd=ws.root,
                            env={**env, "TERM": "xterm"})
    os.close(slave)
    received = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer of the slave side is gone
                break
            if not data:
                break
            received += data
        elif proc.poll() is not None:
            break
    os.close(master)
    status = proc.wait(timeout=10)
    return status, received.decode("utf-8", "replace").replace("\r\n", "\n")


def progress_texts(received: str) -> list[str]:
    """Every progress line drawn, in order (each is drawn after a CLEAR)."""
    texts = []
    for line in received.split("\n"):
        texts += [part for part in line.split(CLEAR)[1:] if part.startswith("runner: ")]
    return texts


def slow_flaky_chain(ws: Workspace) -> None:
    ws.task("10-slow.sh", "sleep 2")
    ws.task("20-flaky.sh", FLAKY)
    ws.config(sleep_time="1.2", max_tries="3", max_time="30")


@pytest.mark.slow
def test_the_line_appears_moves_and_counts_the_backoff_down(ws):
    slow_flaky_chain(ws)
    status, received = on_pty(ws, "-n", "1")
    assert status == 0, received
    texts = progress_texts(received)
    running = [m.groups() for m in map(RUNNING.match, texts) if m]
    # The slow task, seen at several elapsed times against its max_time, on both tries.
    slow = [r for r in running if r[5] == "10-slow.sh"]
    assert {r[1] for r in slow} == {"1", "2"}
    assert all(r[3:5] == ("1", "2") and r[7] == "30" and r[2] == "3" for r in slow)
    elapsed = [float(r[6]) for r in slow if r[1] == "1"]
    assert len(set(elapsed)) >= 3 and elapsed == sorted(elapsed), elapsed
    # The backoff counts down.
    left = [float(m.group(1)) for m in map(WAITING.match, texts) if m]
    assert len(left) >= 2 and left == sorted(left, reverse=True) and left[0] > left[-1]
    # At most about 4 redraws a second: 5.4 s of run (2 + 1.4 of backoff + 2).
    assert len(texts) <= 4 * 7


@pytest.mark.slow
def test_log_lines_never_hold_any_of_the_line_and_it_is_gone_at_the_end(ws):
    ws.task("10-talk.sh", 'for i in $(seq 30); do echo "line $i"; sleep 0.03; done')
    ws.task("20-slow.sh", "sleep 0.8")
    status, received = on_pty(ws, "-n", "1")
    assert status == 0, received
    lines = received.split("\n")
    assert lines[-1] in ("", CLEAR)  # nothing left drawn after runner's last word
    logged = [line.split(CLEAR)[-1] for line in lines[:-1]]
    assert logged and all(LOG_LINE.match(line) for line in logged), logged
    assert not any("runner: iteration" in line for line in logged)
    assert [f"line {i}" for i in range(1, 31)] == re.findall(r"\[10-talk\.sh\] (line \d+)",
                                                            received)
    assert progress_texts(received)  # and it was drawn


def test_a_narrow_terminal_gets_one_cut_line(ws):
    ws.task("10-a-task-with-a-long-name-to-cut.sh", "sleep 0.8")
    status, received = on_pty(ws, "-n", "1", columns=40)
    assert status == 0, received
    texts = progress_texts(received)
    assert texts and all(len(t) < 40 for t in texts) and texts[0].endswith("...")


@pytest.mark.slow
def test_no_line_with_no_progress_or_when_stderr_is_a_pipe(ws):
    slow_flaky_chain(ws)
    status, received = on_pty(ws, "-n", "1", "--no-progress")
    assert status == 0, received
    assert "\x1b" not in received and "runner: iteration" not in received
    assert "10-slow.sh: OK" in received
    (ws.state / "flaky-ran").unlink()
    proc = ws.run("-n", "1")  # stderr a pipe
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stderr and "\r" not in proc.stderr
    assert "runner: iteration" not in proc.stderr and "10-slow.sh: OK" in proc.stderr


def test_tasks_running_side_by_side_are_each_on_the_line(ws):
    ws.task("10-a.sh", "sleep 0.9")
    ws.task("20-b.sh", "sleep 0.9")
    ws.config(max_parallel="2")
    status, received = on_pty(ws, "-n", "1")
    assert status == 0, received
    both = [t for t in progress_texts(received) if " | " in t]
    assert both, progress_texts(received)
    first, second = both[0].split(" | ")
    assert "task 1/2 10-a.sh" in first and re.fullmatch(r"task 2/2 20-b\.sh \d+\.\ds/600s",
                                                        second)
