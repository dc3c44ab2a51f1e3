"""A task's output when logging is slow: runner's stderr is a pipe that its reader stops
reading for 3 s and then reads slowly (a stalled journald), with one task, with 20 in
parallel, with a SIGTERM in the middle of a flood; and the output of a background process
that keeps the task's pipe open after the task exits.

Nothing is lost, which the tests prove by counting: the lines a task wrote (known in
advance, or counted by the task itself) = the lines runner logged for it, in order and
before its end line = what the journal's tail holds (its last 64 KiB, byte for byte).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import LogWatcher, Workspace, alive, output_of, wait_for, wait_for_file
from test_process_faults import TAIL_BYTES, task_runs

STALL_S = 3.0  # how long runner's stderr is not read at all


class SlowStderr:
    """Reads runner's stderr as a stalled log consumer would: nothing for `stall`
    seconds, then `chunk` bytes every `pause` seconds. Writes block runner meanwhile."""

    def __init__(self, proc, stall: float = STALL_S, chunk: int = 4096,
                 pause: float = 0.005) -> None:
        self.proc = proc
        self.fd = proc.stderr.fileno()
        self.stall, self.chunk, self.pause = stall, chunk, pause
        self.data = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        time.sleep(self.stall)
        while block := os.read(self.fd, self.chunk):
            with self._lock:
                self.data += block
            time.sleep(self.pause)

    def text(self) -> str:
        with self._lock:
            return self.data.decode(errors="backslashreplace")

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        """runner's exit status and its whole log."""
        status = self.proc.wait(timeout)
        self._thread.join(timeout)
        self.proc.stderr.close()
        self.proc.stdout.close()
        return status, self.text()


def numbered(count: int, width: int = 60, prefix: str = "") -> list[str]:
    """`count` distinct lines of `width` characters: line i starts with i."""
    return [f"{prefix}{i:07d} ".ljust(width, "abcdefghij"[i % 10]) for i in range(count)]


def write_lines_task(ws: Workspace, name: str, count: int, width: int = 60) -> bytes:
    """A task that writes numbered lines and exits 0; the bytes it writes."""
    ws.task(name, f"""
        import os
        for i in range({count}):
            os.write(1, (f"{{i:07d}} ".ljust({width}, "abcdefghij"[i % 10]) + "\\n").encode())
    """, shebang=f"#!{sys.executable}")
    return "".join(line + "\n" for line in numbered(count, width)).encode()


def end_line(log: str, task: str, state: str = "OK") -> int:
    """Where runner logged the end of `task` (an offset into the log)."""
    match = re.search(rf"^\S+ \S+ [A-Z]+ {re.escape(task)}: {state} ", log, re.M)
    assert match, (task, state, log[-3000:])
    return match.start()


def last_output_line(log: str, task: str) -> int:
    """Where runner logged the last line of `task`'s own output."""
    starts = [m.start() for m in re.finditer(rf"^.*\[{re.escape(task)}\] ", log, re.M)]
    assert starts, task
    return starts[-1]


def assert_all_logged_then_journaled(log: str, task: str, written: bytes,
                                     state: str = "OK") -> None:
    """lines written = lines logged (in order, before the end line) = the journal tail."""
    lines = written.decode().splitlines()
    logged = output_of(log, task)
    print(f"{task}: {len(lines)} lines written, {len(logged)} logged")
    assert len(logged) == len(lines), (task, len(logged), len(lines))
    assert logged == lines
    assert last_output_line(log, task) < end_line(log, task, state)


def journal_output(ws: Workspace, task: str) -> bytes:
    [run] = [r for r in task_runs(ws) if r["task"] == task]
    return run["output"]


# -- (a) one task, a stalled log --------------------------------------------------------


@pytest.mark.slow
def test_a_stalled_log_loses_no_line_of_a_task_and_its_tail_is_exact(ws):
    written = write_lines_task(ws, "t", 5000, width=20)  # 100 KB: more than the tail
    ws.config(max_tries=1)
    status, log = SlowStderr(ws.start("-n", "1"), pause=0.04).finish()  # 100 KiB/s
    assert status == 0, log[-3000:]
    assert_all_logged_then_journaled(log, "t", written)
    assert journal_output(ws, "t") == written[-TAIL_BYTES:]


# -- (b) many tasks in parallel, a stalled log ------------------------------------------


@pytest.mark.slow
def test_a_stalled_log_loses_no_line_of_20_parallel_tasks(ws):
    names = [f"t{i:02d}" for i in range(20)]
    written = {name: write_lines_task(ws, name, 2000, width=40) for name in names}
    ws.config(max_tries=1, max_parallel=20)
    # 1 MB/s: what the 20 pipes hold when the tasks exit takes more than a second to log.
    status, log = SlowStderr(ws.start("-n", "1"), chunk=32768, pause=0.032).finish()
    assert status == 0, log[-3000:]
    total = sum(len(output_of(log, name)) for name in names)
    print(f"20 parallel tasks: {20 * 2000} lines written, {total} logged")
    for name in names:
        assert_all_logged_then_journaled(log, name, written[name])
        assert journal_output(ws, name) == written[name][-TAIL_BYTES:]


# -- (c) a background process keeps the output open --------------------------------------


@pytest.fixture
def background_pids() -> list[Path]:
    """Pid files of background processes a test starts; whatever still runs is killed."""
    files: list[Path] = []
    yield files
    for path in files:
        if path.exists():
            pid = int(path.read_text())
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_output_of_a_background_process_is_logged_after_the_tasks_prompt_result(
        ws, background_pids):
    go, done, pid_file = ws.root / "go", ws.root / "done", ws.root / "bg.pid"
    background_pids.append(pid_file)
    # The background process writes only when the test says so, which it does once it
    # saw a's result: a result that waited for the output to end could never come.
    ws.task("a", f"""
        (
            sh -c 'echo $PPID' > '{pid_file}'
            while [ ! -e '{go}' ]; do sleep 0.01; done
            i=0; while [ $i -lt 1000 ]; do echo "late $i"; i=$((i + 1)); done
            touch '{done}'
            exec sleep 1000
        ) &
        echo own
    """)
    ws.task("b", f"while [ ! -e '{done}' ]; do sleep 0.01; done")
    ws.config(max_tries=1)
    with LogWatcher(ws.start("-n", "1")) as runner:
        runner.wait_for(r"INFO a: OK ")
        go.touch()
        status = runner.finish(timeout=30)
        log = runner.text()
    assert status == 0, log[-3000:]
    assert output_of(log, "a") == ["own"]
    late = re.findall(r"\[a background\] (.*)$", log, re.M)
    assert late == [f"late {i}" for i in range(1000)]  # runner ends: read to the last line
    assert log.index("[a background] late 0") > end_line(log, "a")
    assert journal_output(ws, "a") == b"own\n"  # the run's own output, not what came after


def test_a_background_process_flooding_the_output_delays_neither_result_nor_exit(
        ws, background_pids):
    pid_file = ws.root / "bg.pid"
    background_pids.append(pid_file)
    ws.task("a", f"""
        sh -c 'echo $$ > "{pid_file}"; i=0; while :; do echo "bg $i"; i=$((i + 1)); done' &
        while [ ! -s '{pid_file}' ]; do sleep 0.01; done
        echo own
    """)
    ws.task("b", "echo next")
    ws.config(max_tries=1)
    proc = ws.run("-n", "1", timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr
    assert "own" in output_of(log, "a") and output_of(log, "b") == ["next"]
    # What the flood wrote before a exited is a's; the rest is marked background; the
    # two together are the flood's lines with no gap, up to when runner ended.
    flood = [line for line in output_of(log, "a") if line.startswith("bg ")]
    flood += re.findall(r"\[a background\] (.*)$", log, re.M)
    assert flood == [f"bg {i}" for i in range(len(flood))]
    assert len(flood) > 0
    wait_for(lambda: not alive(int(pid_file.read_text())), 10,
             "the flood to end once runner closed its output")


@pytest.mark.slow
def test_many_tasks_leaving_a_process_on_their_output_all_end_at_once(ws):
    """A race between the task's end and the reader would leave a task waiting for an
    end of output that a `sleep` holds off for 100 s."""
    names = [f"t{i:02d}" for i in range(30)]
    for name in names:
        ws.task(name, f"""
            sh -c 'echo $$ > "$RUNNER_STATE_DIR/{name}.pid"; exec sleep 100' &
            echo {name}
        """)
    ws.config(max_tries=1, max_parallel=10)
    try:
        proc = ws.run("-n", "1", timeout=30)
    finally:
        for name in names:
            pid_file = ws.state / f"{name}.pid"
            if pid_file.exists() and alive(pid := int(pid_file.read_text())):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in names:
        assert output_of(proc.stderr, name) == [name]
        assert f"INFO {name}: OK " in proc.stderr


# -- (d) SIGTERM in the middle of a flood, a stalled log ------------------------------------


FLOOD = r"""
import os, signal, sys
written = 0
def stop(signum, frame):
    with open(sys.argv[1], "w") as out:
        out.write(str(written))
    os._exit(143)
signal.signal(signal.SIGTERM, stop)
while True:
    os.write(1, (f"{written:07d} ".ljust(60, "abcdefghij"[written % 10]) + "\n").encode())
    written += 1
    if written == 500:
        open(sys.argv[1] + ".started", "w").close()
"""


@pytest.mark.slow
def test_sigterm_during_a_flood_with_a_stalled_log_logs_every_line_written(ws):
    count_file = ws.root / "written"
    script = ws.root / "flood.py"
    script.write_text(FLOOD)
    ws.task("t", f"exec {sys.executable} '{script}' '{count_file}'")
    ws.config(max_tries=1)
    slow = SlowStderr(ws.start("-n", "1"))
    wait_for_file(Path(f"{count_file}.started"), timeout=30)
    slow.proc.send_signal(signal.SIGTERM)
    status, log = slow.finish()
    assert status == 143, log[-3000:]
    count = int(count_file.read_text())
    written = "".join(line + "\n" for line in numbered(count)).encode()
    assert_all_logged_then_journaled(log, "t", written, state="STOPPED")
    assert journal_output(ws, "t") == written[-TAIL_BYTES:]
