"""The start log (runner.startlog): a task's start is written there before its process
starts and committed to the journal while it runs; a runner killed in between leaves the
start in the log, and the next start puts it in the journal."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from conftest import Workspace, journal_rows, wait_for, wait_for_file

from runner import journalfile, startlog
from runner.identity import RunIdentity

JOURNAL = "journal.sqlite"


def test_a_start_the_journal_could_not_take_before_runner_died_is_put_back(ws):
    # 10 waits until the test holds the journal's write lock; 20 then starts while
    # runner cannot commit its row (SQLite is busy), and runner is SIGKILLed.
    ws.task("10-first.sh", f"""
        touch '{ws.root}/first-started'
        while [ ! -e '{ws.root}/locked' ]; do sleep 0.02; done
    """)
    ws.task("20-second.sh", "sleep 60")
    proc = ws.start("-n", "1")
    try:
        wait_for_file(ws.root / "first-started")
        journal = ws.state / JOURNAL
        # The start of 10 was committed while it ran (the process started, runner waits).
        wait_for(lambda: [r["task"] for r in journal_rows(journal, "SELECT task FROM "
                                                          "task_runs")] == ["10-first.sh"],
                 what="the row of 10 in the journal")
        holder = sqlite3.connect(journal, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # runner's next commit waits on this lock
        (ws.root / "locked").touch()
        starts = Path(startlog.path_of(str(journal)))
        wait_for(lambda: b"20-second.sh" in starts.read_bytes(), what="the start of 20")
        wait_for(lambda: _running(ws, "20-second.sh"), what="20's process")
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        holder.execute("ROLLBACK")
        holder.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        _kill_task(ws, "20-second.sh")
    rows = journal_rows(journal, "SELECT task FROM task_runs ORDER BY seq")
    assert [r["task"] for r in rows] == ["10-first.sh"]  # what the kill left committed

    for task in ws.tasks.iterdir():
        task.unlink()
    again = ws.run("-n", "1")
    assert again.returncode == 0, again.stderr
    rows = journal_rows(journal, "SELECT run_id, seq, task, result FROM task_runs "
                                 "ORDER BY started_at, seq")
    killed = [r for r in rows if r["run_id"] == rows[0]["run_id"]]
    # 20 started: it has its row. 10's end was kept back with 20's start: lost with it.
    assert [(r["seq"], r["task"], r["result"]) for r in killed] == [
        (1, "10-first.sh", "INTERRUPTED"), (2, "20-second.sh", "INTERRUPTED")]
    assert starts.stat().st_size == 0  # emptied once the rows were in

    starts.write_bytes(b'\n["cut short by a full disk",')  # no start at all
    assert ws.run("-n", "1").returncode == 0
    assert starts.stat().st_size == 0  # emptied at the start all the same


def _running(ws: Workspace, task: str) -> bool:
    return any(task.encode() in _cmdline(pid) for pid in _pids())


def _kill_task(ws: Workspace, task: str) -> None:
    for pid in _pids():
        if task.encode() in _cmdline(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # its group: the sleep too


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_only_starts_past_the_journals_last_row_of_a_dead_run_are_put_back(tmp_path):
    path = str(tmp_path / JOURNAL)
    conn = journalfile.connect(path)
    dead = RunIdentity(run_id="dead", host="h", boot_id="b", pid=2 ** 22 + 7, pid_start=1)
    conn.execute("INSERT INTO runs (run_id, host, boot_id, pid, pid_start, started_at, "
                 "result) VALUES ('dead', 'h', 'b', ?, 1, '2026-11-26T00:00:00Z', "
                 "'RUNNING')", (dead.pid,))

    def start(seq: int, task: str) -> dict:
        return {"run_id": "dead", "seq": seq, "host": "h", "boot_id": "b", "iteration": 1,
                "try_num": 1, "max_tries": 1, "task": task, "kind": "task",
                "result": "RUNNING", "started_at": f"2026-11-26T00:00:0{seq}Z"}

    for seq in (1, 3):  # 2 was trimmed by journal_max_mb (or refused by SQLite)
        row = start(seq, f"{seq}0-task")
        conn.execute(*journalfile.insert("task_runs", {**row, "result": "OK"}))
    log = startlog.StartLog(path)
    log.open()
    for seq in (1, 2, 3, 4, 5):
        assert log.append(start(seq, f"{seq}0-task"))
    os.write(log.fd, b'\n["dead",6,"h","b",1,1,1,"60-task","task","RUN')  # cut by a crash
    log.close()
    log = startlog.StartLog(path)
    lost = log.open()
    assert [row["seq"] for row in lost] == [1, 2, 3, 4, 5]  # the cut line is no start
    me = RunIdentity(run_id="me", host="h", boot_id="b", pid=os.getpid(), pid_start=0)
    assert journalfile.recover_interrupted(conn, me, lost) == ["dead"]
    found = [(r["seq"], r["result"]) for r in conn.execute(
        "SELECT seq, result FROM task_runs ORDER BY seq")]
    assert found == [(1, "OK"), (3, "OK"), (4, "INTERRUPTED"), (5, "INTERRUPTED")]
    log.close()


def test_lines_that_are_no_start_row_are_skipped(tmp_path):
    good = ["r", 1, "h", None, 1, 1, 3, "10-a", "task", "RUNNING", "2026-11-26T00:00:00Z"]
    lines = [
        json.dumps(good),
        json.dumps(good[:-1]),  # a column short
        json.dumps({"run_id": "r"}),  # not the list of values
        json.dumps([*good[:7], ["nested"], *good[8:]]),  # a value SQLite cannot bind
        json.dumps(["r", "1", *good[2:]]),  # seq not a number
        "\x00\xff garbage",
        "",
    ]
    rows = startlog.parse("\n".join(lines).encode("utf-8", "surrogateescape"))
    assert rows == [dict(zip(startlog.COLUMNS, good, strict=True))]


def test_after_a_run_the_start_log_is_empty_and_private(ws):
    for number in range(5):
        ws.task(f"{number}0-task.sh")
    proc = ws.run("-n", "2")
    assert proc.returncode == 0, proc.stderr
    starts = ws.state / (JOURNAL + startlog.SUFFIX)
    assert starts.stat().st_size == 0
    assert starts.stat().st_mode & 0o777 == 0o600
    rows = journal_rows(ws.state / JOURNAL, "SELECT result FROM task_runs")
    assert [r["result"] for r in rows] == ["OK"] * 10


def test_a_symlink_put_in_place_of_the_start_log_is_not_followed(ws):
    ws.task("10-task.sh")
    ws.state.mkdir()
    target = ws.root / "elsewhere"
    target.write_text("untouched\n")
    (ws.state / (JOURNAL + startlog.SUFFIX)).symlink_to(target)
    proc = ws.run("-n", "3")
    assert proc.returncode == 0, proc.stderr
    assert target.read_text() == "untouched\n"
    rows = journal_rows(ws.state / JOURNAL, "SELECT result FROM task_runs")
    assert [r["result"] for r in rows] == ["OK"] * 3  # committed before each start then


def test_a_long_chain_keeps_the_start_log_small(ws):
    for number in range(1000):  # about 150 bytes of start log each
        ws.task(f"{number:04d}-task.sh")
    starts = ws.state / (JOURNAL + startlog.SUFFIX)
    sizes = []
    log = ws.root / "log"
    with log.open("w") as out:  # not a pipe: nobody reads it while runner runs
        proc = subprocess.Popen(ws.command("-n", "1"), stdout=out, stderr=out, cwd="/")
        while proc.poll() is None:
            with contextlib.suppress(FileNotFoundError):
                sizes.append(starts.stat().st_size)
            time.sleep(0.002)
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert max(sizes) <= startlog.CLEAR_BYTES + 512, max(sizes)
    assert any(later < earlier for earlier, later in itertools.pairwise(sizes))  # emptied
    assert starts.stat().st_size == 0
    rows = journal_rows(ws.state / JOURNAL, "SELECT count(*) AS n FROM task_runs")
    assert rows[0]["n"] == 1000


def test_a_damaged_journal_goes_aside_with_its_start_log_and_the_new_one_is_used(ws):
    for number in range(1, 4):
        ws.task(f"{number}0-task.sh")
    ws.state.mkdir()
    (ws.state / JOURNAL).write_bytes(b"not a database, and long enough for a header" * 4)
    old_starts = b'\n["gone",1,"h",null,1,1,1,"10-old","task","RUNNING","2026-11-25T00:00:00Z"]'
    starts = ws.state / (JOURNAL + startlog.SUFFIX)
    starts.write_bytes(old_starts)
    starts.chmod(0o600)
    proc = ws.run("-n", "2")
    assert proc.returncode == 0, proc.stderr
    [moved] = [p for p in ws.state.iterdir() if ".damaged-" in p.name
               and p.name.endswith(startlog.SUFFIX)]
    assert moved.read_bytes() == old_starts  # kept as it was: nothing of this run in it
    assert starts.exists() and starts.stat().st_size == 0
    rows = journal_rows(ws.state / JOURNAL, "SELECT task, result FROM task_runs")
    assert sorted((r["task"], r["result"]) for r in rows) == sorted(
        [(f"{n}0-task.sh", "OK") for n in (1, 2, 3)] * 2)
