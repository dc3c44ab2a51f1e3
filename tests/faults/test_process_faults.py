"""Faults injected into a real runner, one per test: a task that ignores SIGTERM, a task
whose grandchild daemonizes out of its process group, floods of output, bytes that are not
text, a task that closes its output early.

CI runs the small sizes; `pytest --slow` the full ones (1 GiB of output, a 100 MiB line).
The daemon tests need runner to be its tasks' subreaper (runner.reaper.enable_subreaper(),
called when `runner run` starts supervising).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from conftest import LogWatcher, Workspace, alive, output_of, started, wait_for_file

MiB = 1024 * 1024
TAIL_BYTES = 64 * 1024  # what the journal keeps of a task's output (runner.process)
LINE_PIECE = 64 * 1024  # longer lines are logged in pieces of this size
# How much runner's peak RSS may grow while a task floods it with output. runner holds a
# read buffer, a piece of a line and the tail per task (each 64 KiB); the rest is
# allocator slack.
MEMORY_BOUND_KIB = 4 * 1024


# -- helpers ------------------------------------------------------------------------


def task_runs(ws: Workspace) -> list[dict]:
    """The journal's task runs, oldest first."""
    path = ws.state / "journal.sqlite"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM task_runs ORDER BY seq").fetchall()
    return [dict(row) for row in rows]


def log_time(log: str, pattern: str) -> float:
    """When runner logged the first line matching `pattern` (seconds, from its timestamp)."""
    match = re.search(rf"^(\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}}) .*{pattern}", log, re.M)
    assert match, (pattern, log)
    return datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def read_pid(path: Path) -> int:
    return int(path.read_text().strip())


@pytest.fixture
def strays() -> Iterator[list[Path]]:
    """Pid files of daemons a test starts; whatever still runs is killed afterwards."""
    files: list[Path] = []
    yield files
    for path in files:
        with contextlib.suppress(OSError, ValueError):
            pid = read_pid(path)
            # Still our daemon, not a process that took its pid over?
            if alive(pid) and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\0"):
                os.kill(pid, signal.SIGKILL)


DAEMON = r"""
import os, signal, sys

pid_file, how, term, seconds = sys.argv[1:5]
if how == "double-fork":
    if os.fork():
        os._exit(0)  # the task's child goes at once
    os.setsid()  # the task's grandchild: a session of its own
    if os.fork():
        os._exit(0)  # the daemon is an orphan now
else:  # "setsid": leave the group, stay the task's child
    os.setsid()
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
if term == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(pid_file + ".tmp", "w") as handle:
    handle.write(str(os.getpid()))
os.rename(pid_file + ".tmp", pid_file)
os.execvp("sleep", ["sleep", seconds])
"""


def daemon(ws: Workspace, pid_file: Path, how: str = "double-fork", term: str = "obey",
           seconds: str = "1000") -> str:
    """Shell lines that start a daemon (`sleep 1000` in a session of its own, output closed)
    and wait until it wrote its pid."""
    script = ws.root / "daemon.py"
    script.write_text(DAEMON)
    background = " &" if how == "setsid" else ""
    return (f"{sys.executable} '{script}' '{pid_file}' {how} {term} {seconds}{background}\n"
            f"while [ ! -e '{pid_file}' ]; do sleep 0.01; done")


def leftover_warnings(log: str) -> list[tuple[str, int, str, str, str]]:
    """(label, pid, command, after, outcome) of each leftover runner reported."""
    found = re.findall(r"WARNING (\S+): left process (\d+) \((.*)\) behind after (\w+): (.*)$",
                       log, re.M)
    return [(label, int(pid), cmd, why, outcome) for label, pid, cmd, why, outcome in found]


# -- a task that ignores SIGTERM ----------------------------------------------------


def test_sigterm_ignoring_task_is_killed_after_kill_grace_and_gone_before_the_next_try(ws):
    pids, report = ws.root / "pids", ws.root / "report"
    ws.task("a", f"""
        if [ "$RUNNER_TRY" = 1 ]; then
            trap '' TERM
            (exec sleep 300) &
            echo $$ $! > '{pids}'
            while :; do sleep 0.05; done
        fi
        for pid in $(cat '{pids}'); do
            if kill -0 "$pid" 2>/dev/null; then echo "$pid there"; else echo "$pid gone"; fi
        done > '{report}'
    """)
    ws.config(max_time=0.5, kill_grace=1, max_tries=2)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    log = proc.stderr
    assert started(log) == ["a", "a"]
    match = re.search(r"WARNING a: TIMEOUT \(signal 9\) after (\d+\.\d+)s", log)
    assert match, log
    assert 1.4 <= float(match[1]) < 5, log  # max_time + kill_grace: SIGTERM did nothing
    # Try 2 starts only once the group is gone (a zombie would still answer kill -0).
    leader, child = (int(pid) for pid in pids.read_text().split())
    assert report.read_text().split("\n")[:2] == [f"{leader} gone", f"{child} gone"]
    first = log_time(log, r"a: starting \(try 1/2")
    second = log_time(log, r"a: starting \(try 2/2")
    assert second - first >= 1.4, log
    assert not leftover_warnings(log)  # all of it was in the group: nothing escaped


# -- a task whose grandchild daemonizes ------------------------------------------------


@pytest.mark.parametrize(("how", "term", "outcome"), [
    ("double-fork", "obey", "killed"),
    ("setsid", "obey", "killed"),
    pytest.param("double-fork", "ignore", "killed (SIGKILL after kill_grace)",
                 marks=pytest.mark.slow),
], ids=["double-fork", "setsid-child", "ignoring-sigterm"])
def test_daemon_escaping_the_group_is_killed_and_reported_on_timeout(ws, strays, how, term,
                                                                      outcome):
    pid_file = ws.root / "daemon.pid"
    strays.append(pid_file)
    ws.task("a", f"""
        {daemon(ws, pid_file, how, term)}
        sleep 300
    """)
    ws.config(max_time=1.2, kill_grace=0.5, max_tries=1)
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr
    assert "a: TIMEOUT" in proc.stderr
    pid = read_pid(pid_file)
    assert leftover_warnings(proc.stderr) == [("a", pid, "sleep 1000", "TIMEOUT", outcome)]
    assert not alive(pid)  # gone, and reaped: runner is its subreaper


def test_daemon_escaping_the_group_is_killed_and_reported_on_stop(ws, strays):
    pid_file, ready = ws.root / "daemon.pid", ws.root / "ready"
    strays.append(pid_file)
    ws.task("a", f"""
        {daemon(ws, pid_file, "double-fork", "ignore")}
        touch '{ready}'
        sleep 300
    """)
    ws.config(kill_grace=0.5)
    with LogWatcher(ws.start("-n", "1")) as runner:
        wait_for_file(ready)
        runner.proc.terminate()
        assert runner.finish() == 143, runner.text()
        log = runner.text()
    pid = read_pid(pid_file)
    assert "a: STOPPED" in log
    assert leftover_warnings(log) == [
        ("a", pid, "sleep 1000", "STOPPED", "killed (SIGKILL after kill_grace)")]
    assert not alive(pid)


def test_daemon_of_a_task_that_exits_ok_is_left_running(ws, strays):
    """That is how a task starts a worker (README): even a later timeout leaves it alone."""
    pid_file = ws.root / "worker.pid"
    strays.append(pid_file)
    ws.task("10-start-worker", daemon(ws, pid_file))
    ws.task("20-hangs", "sleep 300")
    ws.config(max_time=0.5, kill_grace=0.5, max_tries=1)
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr
    assert "10-start-worker: OK" in proc.stderr
    assert "20-hangs: TIMEOUT" in proc.stderr
    assert not leftover_warnings(proc.stderr)
    assert alive(read_pid(pid_file))


def test_daemon_of_an_ok_task_that_exits_later_does_not_stay_a_zombie(ws, strays):
    """runner adopted it (subreaper): when it exits, runner reaps it, after the task then
    running ends at the latest."""
    pid_file, state = ws.root / "worker.pid", ws.root / "worker.state"
    strays.append(pid_file)
    ws.task("10-start-worker", daemon(ws, pid_file, seconds="0.2"))
    ws.task("20-meanwhile", f"""
        pid=$(cat '{pid_file}')  # wait until it has exited: a zombie, or reaped already
        while [ -e /proc/$pid ] && [ "$(cut -d' ' -f3 /proc/$pid/stat)" != Z ]; do
            sleep 0.02
        done
    """)
    ws.task("30-look", f"""
        pid=$(cat '{pid_file}')
        if [ -e /proc/$pid ]; then cut -d' ' -f3 /proc/$pid/stat; else echo gone; fi > '{state}'
    """)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert state.read_text() == "gone\n"


def test_parallel_tasks_leftovers_are_told_apart(ws, strays):
    """Two daemons are runner's orphans at once: only the one of the task that timed out
    is killed (the other task exited OK while it ran)."""
    a_pid, b_pid, both = ws.root / "a.pid", ws.root / "b.pid", ws.root / "both"
    strays.extend([a_pid, b_pid])
    ws.task("a", f"""
        {daemon(ws, a_pid)}
        while [ ! -e '{b_pid}' ]; do sleep 0.01; done
        touch '{both}'
        sleep 300
    """)
    ws.task("b", f"""
        while [ ! -e '{a_pid}' ]; do sleep 0.01; done
        {daemon(ws, b_pid)}
    """)
    ws.config("[a]\nmax_time = 1.5\n", max_parallel=2, kill_grace=0.5, max_tries=1)
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr
    assert "b: OK" in proc.stderr and "a: TIMEOUT" in proc.stderr
    assert both.exists()  # both daemons ran when a timed out
    a, b = read_pid(a_pid), read_pid(b_pid)
    assert leftover_warnings(proc.stderr) == [("a", a, "sleep 1000", "TIMEOUT", "killed")]
    assert not alive(a)
    assert alive(b)


# -- floods of output ---------------------------------------------------------------

BLOCK = 65521  # a prime: line pieces and tail never line up with the blocks

GENERATOR = r"""
BLOCK = 65521


def block(i, line, last):
    # Block i of the output: a counter, then one letter; a newline every `line` bytes of
    # the whole output (line 0: one single line, ended by the last byte of the output).
    head = b"<%010d>" % i
    data = bytearray(head + bytes([97 + i % 26]) * (BLOCK - len(head)))
    if line:
        first = (line - 1 - i * BLOCK) % line
        data[first::line] = b"\n" * len(range(first, BLOCK, line))
    if last:
        data[-1:] = b"\n"
    return bytes(data)
"""


def generator_task(blocks: int, line: int) -> str:
    return GENERATOR + f"""
import sys
out = sys.stdout.buffer
for i in range({blocks}):
    out.write(block(i, {line}, i == {blocks} - 1))
out.flush()
"""


def generated(blocks: int, line: int) -> tuple[bytes, str]:
    """The last 64 KiB of the generated output and the sha256 of all of it."""
    scope: dict = {}
    exec(GENERATOR, scope)
    digest = hashlib.sha256()
    tail = b""
    for i in range(blocks):
        data = scope["block"](i, line, i == blocks - 1)
        digest.update(data)
        tail = (tail + data)[-TAIL_BYTES:]
    return tail, digest.hexdigest()


def run_logged(ws: Workspace, *args: str, timeout: float) -> tuple[subprocess.CompletedProcess,
                                                                  str]:
    """Run runner with its log in a file (never a pipe that could fill up); the log."""
    path = ws.root / "runner.log"
    with open(path, "wb") as log:
        proc = subprocess.run(ws.command(*args), stdout=log, stderr=subprocess.STDOUT,
                              timeout=timeout, cwd=ws.root)
    return proc, path.read_text(errors="backslashreplace")


def peak_memory_tasks(ws: Workspace) -> None:
    """Tasks before and after the others that record runner's (their parent's) VmHWM."""
    record = 'grep VmHWM /proc/$PPID/status > "$RUNNER_STATE_DIR/hwm.$RUNNER_TASK"'
    ws.task("00-before", record)
    ws.task("zz-after", record)


def peak_growth_kib(ws: Workspace) -> int:
    def hwm(task: str) -> int:
        return int((ws.state / f"hwm.{task}").read_text().split()[1])
    return hwm("zz-after") - hwm("00-before")


def test_gigabyte_of_output_keeps_memory_bounded_and_the_tail_exact(ws, slow):
    size = 1024 * MiB if slow else 64 * MiB
    blocks = size // BLOCK
    peak_memory_tasks(ws)
    ws.task("50-flood", generator_task(blocks, 4000), shebang=f"#!{sys.executable}")
    ws.config(max_time=0)
    proc, text = run_logged(ws, "-q", "-n", "1", timeout=600 if slow else 60)
    assert proc.returncode == 0, text
    growth = peak_growth_kib(ws)
    print(f"{size // MiB} MiB in lines of 4000 bytes: peak RSS grew {growth} KiB")
    assert growth < MEMORY_BOUND_KIB, growth
    tail, _digest = generated(blocks, 4000)
    [run] = [r for r in task_runs(ws) if r["task"] == "50-flood"]
    assert run["result"] == "OK"
    assert run["output"] == tail


def test_single_huge_line_is_logged_in_pieces_without_loss(ws, slow):
    size = 100 * MiB if slow else 8 * MiB
    blocks = size // BLOCK
    peak_memory_tasks(ws)
    ws.task("50-line", generator_task(blocks, 0), shebang=f"#!{sys.executable}")
    ws.config(max_time=0)
    proc, text = run_logged(ws, "-n", "1", timeout=600 if slow else 60)
    assert proc.returncode == 0, text[-2000:]
    growth = peak_growth_kib(ws)
    print(f"one line of {size // MiB} MiB: peak RSS grew {growth} KiB")
    assert growth < MEMORY_BOUND_KIB, growth
    tail, digest = generated(blocks, 0)
    pieces = output_of(text, "50-line")
    assert len(pieces) == -(-blocks * BLOCK // LINE_PIECE)  # 64 KiB pieces, the last shorter
    assert hashlib.sha256("".join(pieces).encode() + b"\n").hexdigest() == digest
    [run] = [r for r in task_runs(ws) if r["task"] == "50-line"]
    assert run["output"] == tail


# -- bytes that are not text ------------------------------------------------------------


def test_invalid_utf8_and_nul_bytes_are_logged_escaped_and_kept_raw(ws):
    raw = (b"bad \xff\xfe bytes\n"
           b"nul \x00 here\x00\n"
           b"lone \x80 continuation, cut \xe2\x82\n"
           + "valid: gr\u00fc\u00dfe \u20ac\n".encode()
           + b"no newline \xc3")
    data = ws.root / "data"
    data.write_bytes(raw)
    ws.task("a", f"cat '{data}'")
    ws.task("b", "echo next")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert output_of(proc.stderr, "a") == [
        r"bad \xff\xfe bytes",
        r"nul \x00 here\x00",
        r"lone \x80 continuation, cut \xe2\x82",
        "valid: gr\u00fc\u00dfe \u20ac",
        r"no newline \xc3",
    ]
    assert output_of(proc.stderr, "b") == ["next"]
    [run] = [r for r in task_runs(ws) if r["task"] == "a"]
    assert run["output"] == raw  # the journal keeps the bytes as they were


# -- a task that closes its output early -------------------------------------------------


@pytest.mark.parametrize(("closing", "after"), [
    ("exec >&- 2>&-", []),
    ("exec >&-", ["after, on stderr"]),
], ids=["stdout-and-stderr", "stdout-only"])
def test_task_closing_its_output_early_is_waited_for(ws, closing, after):
    ws.task("a", f"""
        echo before
        {closing}
        sleep 1
        echo 'after, on stderr' >&2
        exit 0
    """)
    ws.task("b", "echo next")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert output_of(proc.stderr, "a") == ["before", *after]
    assert re.search(r"INFO a: OK after 1\.\d\ds", proc.stderr), proc.stderr
    assert started(proc.stderr) == ["a", "b"]
    [run] = [r for r in task_runs(ws) if r["task"] == "a"]
    assert run["result"] == "OK" and run["exit_code"] == 0
    assert run["duration_s"] >= 1.0
