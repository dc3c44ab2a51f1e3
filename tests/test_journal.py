"""The local journal: what a run leaves in state_dir/journal.sqlite, and that it survives
SIGKILL, a full disk and a read-only state_dir without ever stopping a task."""

from __future__ import annotations

import json
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import RUNNER, Workspace, run_in_mount_namespace, skip_unless, wait_for

from runner import journalfile


def db(ws: Workspace) -> sqlite3.Connection:
    conn = sqlite3.connect(ws.state / "journal.sqlite")
    conn.row_factory = sqlite3.Row
    return conn


def rows(ws: Workspace, sql: str, params: tuple = ()) -> list[dict]:
    with db(ws) as conn:
        return [dict(row) for row in conn.execute(sql, params)]


def task_runs(ws: Workspace) -> list[dict]:
    return rows(ws, "SELECT * FROM task_runs ORDER BY started_at, seq")


def recorded_runs(ws: Workspace) -> int:
    try:
        return rows(ws, "SELECT count(*) AS n FROM runs")[0]["n"]
    except sqlite3.OperationalError:  # not created or not migrated yet
        return 0


def running(ws: Workspace, task: str | None = None) -> bool:
    """Whether the journal shows `task` (any task) RUNNING; False before it exists."""
    try:
        records = task_runs(ws)
    except sqlite3.OperationalError:  # not created or not migrated yet
        return False
    return any(r["result"] == "RUNNING" and task in (None, r["task"]) for r in records)


def running_only(ws: Workspace, task: str) -> bool:
    """Whether `task` is the one task run the journal shows RUNNING."""
    try:
        records = task_runs(ws)
    except sqlite3.OperationalError:
        return False
    return [r["task"] for r in records if r["result"] == "RUNNING"] == [task]


def test_a_passing_chain_records_one_run_one_try_and_every_task_with_its_output(ws):
    ws.task("10-first.sh", "echo first says hi")
    ws.task("20-second.sh", "echo second says hi >&2")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    [run] = rows(ws, "SELECT * FROM runs")
    assert run["result"] == "DONE" and run["exit_status"] == 0
    assert run["host"] == socket.gethostname() and run["pid"] > 0 and run["ended_at"]
    assert run["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    [attempt] = rows(ws, "SELECT * FROM tries")
    assert (attempt["iteration"], attempt["try_num"], attempt["result"]) == (1, 1, "OK")
    first, second = task_runs(ws)
    assert [first["task"], second["task"]] == ["10-first.sh", "20-second.sh"]
    for record in (first, second):
        assert record["run_id"] == run["run_id"]
        assert (record["result"], record["exit_code"], record["kind"]) == ("OK", 0, "task")
        assert record["started_at"].endswith("Z") and record["ended_at"] >= record["started_at"]
        assert record["duration_s"] is not None and record["duration_s"] >= 0
    assert first["output"] == b"first says hi\n"
    assert second["output"] == b"second says hi\n"


def test_a_retried_chain_records_each_try_and_which_task_failed_it(ws):
    ws.task("10-ok.sh")
    ws.task("20-flaky.sh", """
        if [ ! -e "$RUNNER_STATE_DIR/seen" ]; then touch "$RUNNER_STATE_DIR/seen"; exit 9; fi
    """)
    assert ws.run("-n", "1").returncode == 0
    tries = rows(ws, "SELECT * FROM tries ORDER BY try_num")
    assert [(t["try_num"], t["result"], t["failed_task"]) for t in tries] == [
        (1, "RETRY", "20-flaky.sh"), (2, "OK", None),
    ]
    assert [(r["task"], r["try_num"], r["result"], r["exit_code"]) for r in task_runs(ws)] == [
        ("10-ok.sh", 1, "OK", 0), ("20-flaky.sh", 1, "RETRY", 9),
        ("10-ok.sh", 2, "OK", 0), ("20-flaky.sh", 2, "OK", 0),
    ]


def test_a_halt_records_the_halting_task_and_the_halt_task_run(ws):
    ws.task("10-broken.sh", "echo beyond repair; exit 2")
    ws.task("halt.sh", "echo halting")
    assert ws.run("-n", "1").returncode == 2
    [run] = rows(ws, "SELECT * FROM runs")
    assert (run["result"], run["exit_status"]) == ("HALTED", 2)
    assert [(r["task"], r["kind"], r["result"]) for r in task_runs(ws)] == [
        ("10-broken.sh", "task", "HALT"), ("halt.sh", "halt", "OK"),
    ]
    assert rows(ws, "SELECT result, failed_task FROM tries") == [
        {"result": "HALT", "failed_task": "10-broken.sh"},
    ]


def test_no_fsync_per_event_but_everything_is_on_disk_before_the_halt_task(ws):
    """Commits are NORMAL (safe against a killed runner, tested below) with no fsync per
    task; before a halt task, which may cut the power, one FULL commit makes all of it
    durable. Watched with strace: fsyncs of the WAL file against the tasks' execs."""
    skip_unless(shutil.which("strace") is not None, "strace is not installed")
    for i in range(1, 9):
        ws.task(f"1{i}-ok.sh", "exit 0")
    ws.task("20-broken.sh", "exit 2")
    ws.task("halt.sh", "echo halting")
    trace = ws.root / "strace.txt"
    proc = subprocess.run(
        ["strace", "-f", "-y", "-qq", "-e", "trace=execve,fsync,fdatasync", "-o", str(trace),
         *ws.command("-n", "1")], capture_output=True, text=True, timeout=60, cwd=ws.root)
    assert proc.returncode == 2, proc.stderr
    events = []
    for line in trace.read_text().splitlines():
        if "execve(" in line and "= 0" in line and str(ws.tasks) + "/" in line:
            events.append(Path(line.split('execve("', 1)[1].split('"', 1)[0]).name)
        elif "sync(" in line and "journal.sqlite-wal>" in line:
            events.append("fsync")
    first_task = events.index("11-ok.sh")
    assert "fsync" not in events[first_task:events.index("20-broken.sh")], events
    halt = events.index("halt.sh")
    assert events[halt - 1] == "fsync", events
    assert "fsync" in events[halt + 1:], events  # the run's end


def test_giving_up_records_every_failed_try_and_the_run_result(ws):
    ws.task("10-always-fails.sh", "exit 1")
    ws.config(max_tries=3)
    assert ws.run("-n", "1").returncode == 1
    [run] = rows(ws, "SELECT * FROM runs")
    assert (run["result"], run["exit_status"]) == ("GAVE_UP", 1)
    assert [r["result"] for r in rows(ws, "SELECT * FROM tries ORDER BY try_num")] == [
        "RETRY"] * 3


def test_a_timeout_records_the_signal_and_a_duration_past_max_time(ws):
    ws.task("10-hangs.sh", "echo waiting forever; exec sleep 30")
    ws.config("[hangs]\nmax_time = 0.5\nmax_tries = 1\n")
    assert ws.run("-n", "1").returncode == 1
    [record] = [r for r in task_runs(ws) if r["task"] == "10-hangs.sh"]
    assert record["result"] == "TIMEOUT"
    assert record["signal"] == signal.SIGTERM and record["exit_code"] is None
    assert 0.5 <= record["duration_s"] < 5
    assert record["output"] == b"waiting forever\n"


def test_the_journal_is_private_and_in_wal_mode(ws):
    ws.task("10-ok.sh")
    assert ws.run("-n", "1").returncode == 0
    path = ws.state / "journal.sqlite"
    assert path.stat().st_mode & 0o777 == 0o600
    with db(ws) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == journalfile.SCHEMA_VERSION


def test_task_runs_are_written_as_they_happen_not_at_exit(ws):
    ws.task("10-quick.sh")
    ws.task("20-slow.sh", "exec sleep 30")
    proc = ws.start("-n", "1")
    try:
        wait_for(lambda: running(ws, "20-slow.sh"), what="20-slow.sh RUNNING")
        assert [(r["task"], r["result"]) for r in task_runs(ws)] == [
            ("10-quick.sh", "OK"), ("20-slow.sh", "RUNNING"),
        ]
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    assert [r["result"] for r in task_runs(ws)] == ["OK", "STOPPED"]
    assert rows(ws, "SELECT result, exit_status FROM runs") == [
        {"result": "SIGTERM", "exit_status": 143},
    ]



def result_of(ws: Workspace, task: str) -> str | None:
    try:
        found = rows(ws, "SELECT result FROM task_runs WHERE task = ?", (task,))
    except sqlite3.OperationalError:  # not created or not migrated yet
        return None
    return found[-1]["result"] if found else None


@pytest.mark.parametrize("waits_for", ["another task", "a check", "a hook"])
def test_a_task_that_ended_is_in_the_journal_before_runner_waits_for_anything(ws, waits_for):
    """The end of a short task is written together with the next task's start (one commit
    per task); whenever runner waits instead (for a task still running, a check, a hook),
    it is written first: a finished task never shows RUNNING for longer than that."""
    release = ws.root / "release"
    hold = f'while [ ! -e {release} ]; do sleep 0.05; done'
    ws.task("10-quick.sh")
    if waits_for == "another task":
        ws.task("20-slow.sh", hold)
        ws.config(max_parallel=2)
    elif waits_for == "a check":
        ws.task("20-checked.sh")
        ws.config(text=f"[checked]\ncheck = /bin/sh -c '{hold}; exit 0'\n")
    else:
        hook = ws.root / "hook.sh"
        hook.write_text(f"#!/bin/sh\ncase \"$1\" in *'\"OK\"'*) {hold};; esac\n")
        hook.chmod(0o755)
        ws.config(task_hook=str(hook))
    proc = ws.start("-n", "1")
    try:
        wait_for(lambda: result_of(ws, "10-quick.sh") == "OK", timeout=10,
                 what="10-quick.sh OK in the journal while runner waits")
    finally:
        release.touch()
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert {r["result"] for r in task_runs(ws)} <= {"OK", "SKIPPED"}  # the check passed


# -- SIGKILL --------------------------------------------------------------------

def kill_while_running(ws: Workspace, task: str) -> None:
    proc = ws.start("-n", "1")
    # Until runner waits for it: the end of the task before is written right after its
    # start (runner.journal), and a kill in between leaves that one INTERRUPTED too.
    wait_for(lambda: running_only(ws, task), what=f"{task} running, alone")
    proc.kill()
    proc.communicate(timeout=10)


def test_sigkill_mid_task_then_a_restart_marks_the_run_interrupted_and_keeps_earlier_rows(ws):
    ws.task("10-done-before.sh", "echo i finished")
    ws.task("20-killed-during.sh", """
        [ -e "$RUNNER_STATE_DIR/second-boot" ] && exit 0
        touch "$RUNNER_STATE_DIR/second-boot"; exec sleep 30
    """)
    kill_while_running(ws, "20-killed-during.sh")
    subprocess.run(["pkill", "-f", "sleep 30"], check=False)
    before = task_runs(ws)
    assert [r["result"] for r in before] == ["OK", "RUNNING"]

    # Until a runner starts again, `runner status` already tells the truth.
    status = json.loads(ws.run("status", "--json", tasks=False).stdout)
    assert status["running"] is False and status["last_run"]["result"] == "INTERRUPTED"

    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert "marked INTERRUPTED" in proc.stderr
    after = task_runs(ws)
    assert after[0] == before[0]  # the finished row is untouched
    assert after[1]["result"] == "INTERRUPTED" and after[1]["output"] is None
    assert [r["result"] for r in after[2:]] == ["OK", "OK"]
    runs = rows(ws, "SELECT result FROM runs ORDER BY started_at")
    assert [r["result"] for r in runs] == ["INTERRUPTED", "DONE"]
    assert rows(ws, "SELECT result FROM tries ORDER BY started_at")[0]["result"] == "INTERRUPTED"
    with db(ws) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_live_runner_is_not_marked_interrupted_by_a_second_one(ws):
    ws.task("10-slow.sh", "exec sleep 30")
    first = ws.start("-n", "1")
    try:
        wait_for(lambda: running(ws), what="first running")
        (ws.root / "empty").mkdir()
        # One runner per state_dir: the second is refused before it opens the journal.
        other = ws.run("-n", "1", "-D", f"runner.task_dir={ws.root / 'empty'}", tasks=False)
        assert other.returncode == 75, other.stderr
        assert f"running with pid {first.pid}" in other.stderr
        assert "marked INTERRUPTED" not in other.stderr
        assert [r["result"] for r in rows(ws, "SELECT result FROM runs WHERE pid = ?",
                                          (first.pid,))] == ["RUNNING"]
    finally:
        first.terminate()
        first.communicate(timeout=20)


@pytest.mark.slow
def test_sigkill_at_random_moments_never_corrupts_the_journal_or_loses_finished_rows(ws):
    for number in range(6):
        ws.task(f"{number:02d}-step.sh", "echo step")
    finished_before: list[dict] = []
    rng = random.Random(1234)
    for _ in range(12):
        runs_before = recorded_runs(ws)
        proc = ws.start("-n", "3")
        # From the moment the run is in the journal: a loaded machine can take longer
        # than the whole random window to start Python, and a kill before runner writes
        # anything tests nothing.
        wait_for(lambda before=runs_before: recorded_runs(ws) > before,
                 what="the run's row")
        time.sleep(rng.uniform(0.0, 0.4))
        proc.kill()
        proc.communicate(timeout=10)
        try:
            now = [r for r in task_runs(ws) if r["result"] not in ("RUNNING", "INTERRUPTED")]
        except sqlite3.OperationalError:
            continue
        # Every row that was finished stays exactly as it was.
        assert now[: len(finished_before)] == finished_before
        finished_before = now
    assert ws.run("-n", "1").returncode == 0
    with db(ws) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert not rows(ws, "SELECT * FROM task_runs WHERE result = 'RUNNING'")
    assert not rows(ws, "SELECT * FROM runs WHERE result = 'RUNNING'")
    assert len(finished_before) > 0


# -- a journal that cannot be written -----------------------------------------

def run_on_small_disk(ws: Workspace, script: str, *args: str,
                      size: str = "1m") -> subprocess.CompletedProcess:
    """Run runner with state_dir on a tmpfs of its own (`size`); `script` prepares it
    first. The journal is copied to ws.root/journal-copy.sqlite afterwards."""
    ws.state.mkdir(exist_ok=True)
    return run_in_mount_namespace(
        ws, f"mount -t tmpfs -o size={size} tmpfs '{ws.state}' && {script}", *args,
        # With its WAL: a checkpoint may have copied part of it into the file already.
        after=f"for f in '{ws.state}'/journal.sqlite*; do "
              f"cp \"$f\" '{ws.root}'/journal-copy\"${{f##*/journal}}\"; done",
    )


def journal_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "journal" in line and "WARNING" in line]


@pytest.mark.root
def test_a_read_only_state_dir_warns_once_and_every_task_still_runs(ws):
    for number in range(4):
        ws.task(f"{number}0-task.sh", f"echo task {number} ran")
    # While runner runs, ask it what it knows (runner status from inside a task).
    ws.task("50-ask.sh", ws.until_live("50-ask.sh")
            + f"'{RUNNER}' -c '{ws.cfg}' status > '{ws.root}/status.txt' 2>&1")
    proc = run_on_small_disk(ws, f"mount -o remount,ro '{ws.state}'", "-n", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("ran") == 8  # 4 tasks x 2 iterations
    status = (ws.root / "status.txt").read_text()
    assert "running 50-ask.sh" in status
    assert "journal: NOT WRITABLE" in status and "Read-only file system" in status
    [warning] = journal_warnings(proc.stderr)
    assert "cannot write" in warning and "tasks keep running" in warning
    assert "Traceback" not in proc.stderr
    live = json.loads((ws.root / "run" / "status.json").read_text())
    assert live["journal"]["ok"] is False and live["journal"]["error"]
    assert live["exit_status"] == 0


@pytest.mark.root
def test_a_full_disk_warns_once_holds_records_and_writes_them_when_space_returns(ws):
    # 10 fills the disk, 20 and 30 run while nothing can be written, 40 frees the space.
    ws.task("10-fill.sh", 'dd if=/dev/zero of="$RUNNER_STATE_DIR/filler" bs=64k 2>/dev/null; '
            "echo filled")
    ws.task("20-while-full.sh", "echo running on a full disk")
    ws.task("30-still-full.sh", "echo still running")
    ws.task("40-free.sh", 'rm -f "$RUNNER_STATE_DIR/filler"; echo freed')
    ws.task("50-after.sh", "echo after")
    proc = run_on_small_disk(ws, "true", "-n", "1")
    assert proc.returncode == 0, proc.stderr
    for text in ("filled", "running on a full disk", "still running", "freed", "after"):
        assert text in proc.stderr
    warnings = journal_warnings(proc.stderr)
    assert any("cannot write" in w for w in warnings), proc.stderr
    assert sum("cannot write" in w for w in warnings) == 1
    assert any("writable again" in w for w in warnings)
    conn = sqlite3.connect(ws.root / "journal-copy.sqlite")
    results = conn.execute("SELECT task, result FROM task_runs ORDER BY seq").fetchall()
    assert results == [
        ("10-fill.sh", "OK"), ("20-while-full.sh", "OK"), ("30-still-full.sh", "OK"),
        ("40-free.sh", "OK"), ("50-after.sh", "OK"),
    ]
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.root
def test_a_full_disk_recovers_with_room_for_a_batch_not_for_everything_it_held(ws):
    """While the disk is full, 24 task runs (~13 KiB of output each, ~330 KiB in all)
    are held; then only 480 KiB is freed: room for them in the file and a batch of
    them in the WAL, not for all of them in one transaction (which WAL mode writes
    once to the WAL and again to the file). Written in one, they were never written."""
    reserve_kb = 480  # one transaction for all needed more than 560 (and 660 passed)
    ws.config(journal_max_mb=1)  # checkpoints every 128 KiB of WAL (retention.bound_wal)
    ws.task("05-reserve.sh", f'dd if=/dev/zero of="$RUNNER_STATE_DIR/reserve" bs=1k '
            f"count={reserve_kb} 2>/dev/null")
    ws.task("10-fill.sh", 'dd if=/dev/zero of="$RUNNER_STATE_DIR/filler" bs=4k 2>/dev/null; '
            "echo filled")
    outputs = [f"{n}-output.sh" for n in range(20, 44)]
    for name in outputs:
        ws.task(name, f'for i in $(seq 160); do echo "{name} line $i: {"x" * 60}"; done')
    ws.task("90-free.sh", 'rm -f "$RUNNER_STATE_DIR/reserve"; echo freed')
    ws.task("95-after.sh", "echo after")
    proc = run_on_small_disk(ws, "true", "-n", "1", size="2m")
    assert proc.returncode == 0, proc.stderr
    warnings = journal_warnings(proc.stderr)
    assert sum("cannot write" in w for w in warnings) == 1, proc.stderr
    assert any("writable again" in w for w in warnings), proc.stderr
    conn = sqlite3.connect(ws.root / "journal-copy.sqlite")
    results = conn.execute("SELECT task, result, length(output) FROM task_runs "
                           "ORDER BY seq").fetchall()
    names = [r[0] for r in results]
    assert names == ["05-reserve.sh", "10-fill.sh", *outputs, "90-free.sh", "95-after.sh"]
    assert {r[1] for r in results} == {"OK"}
    assert all(size > 10_000 for name, _, size in results if name in outputs)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.parametrize("command", ["history", "blame"])
def test_a_journal_from_a_newer_runner_is_refused_with_one_line(ws, command):
    ws.task("10-ok.sh")
    assert ws.run("-n", "1").returncode == 0
    with db(ws) as conn:
        conn.execute("PRAGMA user_version = 99")
    proc = ws.run(command, tasks=False)
    assert proc.returncode == 1
    assert "newer than this runner" in proc.stderr and "Traceback" not in proc.stderr


def test_one_run_id_ties_the_journal_the_hook_json_and_the_task_environment(ws):
    hook = ws.root / "hook.sh"
    hook.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> "{ws.root}/hook.log"\n')
    hook.chmod(0o755)
    ws.task("10-env.sh", f'echo "$RUNNER_RUN_ID" > "{ws.root}/env-run-id"')
    ws.config(task_hook=str(hook))
    assert ws.run("-n", "1").returncode == 0
    [run] = rows(ws, "SELECT run_id FROM runs")
    assert len(run["run_id"]) == 32
    assert (ws.root / "env-run-id").read_text().strip() == run["run_id"]
    hook_calls = [json.loads(line) for line in (ws.root / "hook.log").read_text().splitlines()]
    assert [call["run_id"] for call in hook_calls] == [run["run_id"]] * 2
    assert {r["run_id"] for r in task_runs(ws)} == {run["run_id"]}


def test_the_readers_room_holds_the_writers_definitions():
    """runner.journalread is what `runner status` and `history` import; runner.journalfile
    writes with the very same schema, names and results."""
    from runner import journalread
    from runner.states import TaskState

    assert journalread.RUNNING == TaskState.RUNNING.value
    assert journalread.INTERRUPTED == TaskState.INTERRUPTED.value
    for name in ("MIGRATIONS", "SCHEMA_VERSION", "RUN_ORDER", "FILE_NAME", "JournalError",
                 "DamagedJournal", "journal_path", "moved_aside_files", "RUNNING"):
        assert getattr(journalfile, name) is getattr(journalread, name), name


def test_moved_aside_files_lists_the_damaged_journals_oldest_first(tmp_path):
    path = str(tmp_path / journalfile.FILE_NAME)
    names = ["journal.sqlite.damaged-20261123T100000Z",
             "journal.sqlite.damaged-20261123T100000Z.2",
             "journal.sqlite.damaged-20261122T090000Z", "journal.sqlite.damaged-[x]*?"]
    others = ["journal.sqlite", "journal.sqlite-wal", "other.damaged-20261123T100000Z",
              "journal.sqlite.damaged-20261123T100000Z-wal",
              "journal.sqlite.damaged-20261123T100000Z-shm"]
    for name in names + others:
        (tmp_path / name).write_bytes(b"")
    assert journalfile.moved_aside_files(path) == sorted(str(tmp_path / n) for n in names)
    assert journalfile.moved_aside_files(str(tmp_path / "gone" / "journal.sqlite")) == []


def test_a_read_only_connection_refuses_a_newer_schema_and_a_damaged_file(tmp_path):
    path = tmp_path / journalfile.FILE_NAME
    journalfile.connect(str(path)).close()
    conn = journalfile.connect(str(path), readonly=True)
    with pytest.raises(sqlite3.OperationalError):  # read-only: nothing is written
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(journalfile.JournalError, match="newer than this runner"):
        journalfile.connect(str(path), readonly=True)
    for side in journalfile.SIDE_FILES[1:]:
        Path(f"{path}{side}").unlink(missing_ok=True)
    path.write_bytes(b"not a database, and long enough to have a header" * 4)
    with pytest.raises(journalfile.DamagedJournal):
        journalfile.connect(str(path), readonly=True)
    with pytest.raises(journalfile.JournalError, match="unable to open"):
        journalfile.connect(str(tmp_path / "missing" / "journal.sqlite"), readonly=True)


def test_a_task_with_long_output_does_not_end_the_try_it_is_part_of(ws):
    # An OK end with more output than is kept back is written at once; it once closed
    # the try too, as OK "failed" at that task, before the rest of the chain had run.
    ws.task("10-talks.sh", "head -c 9000 /dev/zero | tr '\\\\0' x; echo")
    ws.task("20-after.sh", "sleep 0.2")
    assert ws.run("-n", "1").returncode == 0
    [attempt] = rows(ws, "SELECT * FROM tries")
    assert (attempt["result"], attempt["failed_task"]) == ("OK", None)
    last = max(r["ended_at"] for r in task_runs(ws))
    assert attempt["ended_at"] >= last
