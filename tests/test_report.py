"""The journal commands, end to end: `runner history`, `log`, `blame` and `status` read
back what real runs of the `runner` binary recorded (JSON records, aligned tables, raw
task output, the live status of a running runner, and the errors when there is nothing
to read or the input is bad)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import LogWatcher, Workspace, assert_one_line_error, wait_for

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
HOST = socket.gethostname()

# Fails on its first try (leaving a marker in $RUNNER_STATE_DIR), passes on the second.
FLAKY = """
    if [ -e "$RUNNER_STATE_DIR/flaky-ran" ]; then echo "second try"; exit 0; fi
    touch "$RUNNER_STATE_DIR/flaky-ran"
    echo "first try"
    exit 1
"""


# -- helpers --------------------------------------------------------------------------


def run_ok(ws: Workspace, *args: str) -> subprocess.CompletedProcess:
    """Run the chain to the end; it must pass."""
    proc = ws.run(*args)
    assert proc.returncode == 0, proc.stderr
    return proc


def report(ws: Workspace, *args: str) -> subprocess.CompletedProcess:
    """A journal command (no task directory argument)."""
    return ws.run(*args, tasks=False)


def report_json(ws: Workspace, *args: str, status: int = 0):
    proc = report(ws, *args, "--json")
    assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout)


def report_bytes(ws: Workspace, *args: str) -> subprocess.CompletedProcess:
    """A journal command with its stdout as raw bytes."""
    return subprocess.run(ws.command(*args, tasks=False), capture_output=True, timeout=60,
                          cwd=ws.root)


def flaky_chain(ws: Workspace) -> None:
    """10-first.sh, then 20-flaky.sh, which fails try 1: four task runs in one run."""
    ws.task("10-first.sh", "echo first output")
    ws.task("20-flaky.sh", FLAKY)
    run_ok(ws, "-n", "1")


def parse_iso(text: str) -> datetime:
    assert ISO_UTC.match(text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def assert_one_line_on_stderr(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Nothing to show: exit 1, one line on stderr, no traceback."""
    return assert_one_line_error(proc, *fragments, status=1)


def table(text: str, first_column: str) -> list[str]:
    """The lines of the table in `text` whose header starts with `first_column`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first_column + " "))
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        rows.append(line)
    return rows


def assert_aligned(rows: list[str], columns: list[str]) -> list[dict[str, str]]:
    """Every cell starts at its header's offset; the cells' first words, by column."""
    header = rows[0]
    offsets = [header.index(name) for name in columns]
    assert [header[o:].split()[0] for o in offsets] == columns, header
    cells = []
    for row in rows[1:]:
        for offset in offsets:
            assert len(row) > offset and row[offset] != " ", (offset, header, row)
            assert offset == 0 or row[offset - 1] == " ", (offset, header, row)
        cells.append({name: row[o:].split()[0] for name, o in zip(columns, offsets,
                                                                    strict=True)})
    return cells


# -- history ----------------------------------------------------------------------------


def test_history_json_records_every_task_run_oldest_first_with_its_fields(ws):
    before = datetime.now(UTC) - timedelta(seconds=1)
    flaky_chain(ws)
    records = report_json(ws, "history")
    assert [(r["task"], r["try_num"], r["result"], r["exit_code"]) for r in records] == [
        ("10-first.sh", 1, "OK", 0),
        ("20-flaky.sh", 1, "RETRY", 1),
        ("10-first.sh", 2, "OK", 0),
        ("20-flaky.sh", 2, "OK", 0),
    ]
    starts = [parse_iso(r["started_at"]) for r in records]
    assert starts == sorted(starts)
    assert before <= starts[0] <= datetime.now(UTC)
    for record in records:
        assert record["iteration"] == 1
        assert record["max_tries"] == 5
        assert record["kind"] == "task"
        assert record["host"] == HOST
        assert RUN_ID.match(record["run_id"])
        assert isinstance(record["duration_s"], float) and 0 <= record["duration_s"] < 5
        assert parse_iso(record["ended_at"]) >= parse_iso(record["started_at"])
    assert len({r["run_id"] for r in records}) == 1


def test_history_limit_keeps_the_newest_runs_still_oldest_first(ws):
    flaky_chain(ws)
    records = report_json(ws, "history", "--limit", "2")
    assert [(r["task"], r["try_num"]) for r in records] == [
        ("10-first.sh", 2), ("20-flaky.sh", 2)]
    [last] = report_json(ws, "history", "--limit", "1")
    assert (last["task"], last["try_num"], last["result"]) == ("20-flaky.sh", 2, "OK")


@pytest.mark.parametrize("name", ["20-flaky.sh", "flaky"])
def test_history_task_accepts_the_file_name_and_the_short_name(ws, name):
    flaky_chain(ws)
    records = report_json(ws, "history", "--task", name)
    assert [(r["task"], r["try_num"], r["result"]) for r in records] == [
        ("20-flaky.sh", 1, "RETRY"), ("20-flaky.sh", 2, "OK")]


def test_history_of_an_unknown_task_exits_1_with_one_line_naming_it(ws):
    flaky_chain(ws)
    proc = report(ws, "history", "--task", "nope")
    assert_one_line_on_stderr(proc, "'nope'")
    assert proc.stdout == ""


def test_history_since_an_hour_ago_includes_everything_just_run(ws):
    flaky_chain(ws)
    assert report_json(ws, "history", "--since", "1h") == report_json(ws, "history")
    assert len(report_json(ws, "history", "--since", "1h")) == 4


def test_history_since_a_future_time_shows_nothing_and_exits_1(ws):
    flaky_chain(ws)
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert report_json(ws, "history", "--since", tomorrow, status=1) == []
    proc = report(ws, "history", "--since", tomorrow)
    assert proc.returncode == 1
    assert proc.stdout.strip() == "no task runs recorded"
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("since", ["garbage", "1e5h", "1000000d", "99999999999999d"])
def test_history_since_garbage_is_a_usage_error_naming_since(ws, since):
    flaky_chain(ws)
    assert_one_line_error(report(ws, "history", "--since", since), "--since", since)


def test_a_bad_since_is_a_usage_error_even_without_a_journal(ws):
    assert_one_line_error(report(ws, "history", "--since", "soon"), "--since", "soon")
    assert_one_line_error(report(ws, "blame", "--since", "soon"), "--since", "soon")


def test_history_run_narrows_to_one_run(ws):
    ws.task("10-only.sh", "echo hi")
    run_ok(ws, "-n", "1")
    run_ok(ws, "-n", "1")
    records = report_json(ws, "history")
    assert [r["task"] for r in records] == ["10-only.sh", "10-only.sh"]
    first, second = (r["run_id"] for r in records)
    assert first != second
    for run_id in (first, second):
        [record] = report_json(ws, "history", "--run", run_id)
        assert record["run_id"] == run_id
    assert report_json(ws, "history", "--run", "0" * 32, status=1) == []


def test_history_table_columns_line_up(ws):
    ws.task("10-a.sh", "exit 0")
    ws.task("20-a-much-longer-task-name.sh", FLAKY)
    run_ok(ws, "-n", "1")
    proc = report(ws, "history")
    assert proc.returncode == 0, proc.stderr
    rows = table(proc.stdout, "STARTED")
    assert len(rows) == 1 + 4
    cells = assert_aligned(rows, ["STARTED", "TASK", "ITER", "TRY", "RESULT", "EXIT",
                                  "DURATION"])
    assert [(c["TASK"], c["TRY"], c["RESULT"], c["EXIT"]) for c in cells] == [
        ("10-a.sh", "1/5", "OK", "0"),
        ("20-a-much-longer-task-name.sh", "1/5", "RETRY", "1"),
        ("10-a.sh", "2/5", "OK", "0"),
        ("20-a-much-longer-task-name.sh", "2/5", "OK", "0"),
    ]


# -- log -------------------------------------------------------------------------------


def test_log_prints_a_header_then_the_output_byte_for_byte(ws):
    ws.task("10-bytes.sh", r"""
        echo "plain line"
        printf 'not utf-8: \377\376 and a NUL-free tab\tend\n'
        echo "last line"
    """)
    run_ok(ws, "-n", "1")
    [record] = report_json(ws, "history")
    proc = report_bytes(ws, "log", "bytes")
    assert proc.returncode == 0, proc.stderr
    header, body = proc.stdout.split(b"\n", 1)
    assert header.startswith(b"# 10-bytes.sh: OK (0), iteration 1, try 1, started ")
    assert f"host {HOST}, run {record['run_id']}".encode() in header
    assert body == b"plain line\nnot utf-8: \xff\xfe and a NUL-free tab\tend\nlast line\n"


def test_log_ends_output_without_a_final_newline_with_one(ws):
    ws.task("10-partial.sh", "printf 'no newline at the end'")
    run_ok(ws, "-n", "1")
    proc = report_bytes(ws, "log", "10-partial.sh")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split(b"\n", 1)[1] == b"no newline at the end\n"


def test_log_try_picks_the_output_of_that_try(ws):
    flaky_chain(ws)
    first = report(ws, "log", "flaky", "--try", "1")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0].startswith("# 20-flaky.sh: RETRY (1), iteration 1, "
                                                   "try 1, ")
    assert first.stdout.split("\n", 1)[1] == "first try\n"
    newest = report(ws, "log", "flaky")
    assert newest.returncode == 0, newest.stderr
    assert newest.stdout.splitlines()[0].startswith("# 20-flaky.sh: OK (0), iteration 1, "
                                                    "try 2, ")
    assert newest.stdout.split("\n", 1)[1] == "second try\n"


def test_log_of_a_try_that_never_ran_exits_1_with_one_line(ws):
    flaky_chain(ws)
    proc = report(ws, "log", "flaky", "--try", "3")
    assert_one_line_on_stderr(proc, "flaky")
    assert proc.stdout == ""


def test_log_of_an_unknown_task_exits_1_with_one_line_naming_it(ws):
    flaky_chain(ws)
    proc = report(ws, "log", "nope")
    assert_one_line_on_stderr(proc, "'nope'")
    assert proc.stdout == ""


def test_log_json_carries_the_record_and_the_output_as_text(ws):
    ws.task("10-bytes.sh", r"""
        echo "hello"
        printf 'bad \377 byte\n'
    """)
    run_ok(ws, "-n", "1")
    record = report_json(ws, "log", "bytes")
    assert record["task"] == "10-bytes.sh"
    assert (record["result"], record["exit_code"], record["try_num"]) == ("OK", 0, 1)
    assert record["host"] == HOST and RUN_ID.match(record["run_id"])
    assert record["output"] == "hello\nbad \\xff byte\n"  # as the log shows the line


def test_log_keeps_only_the_last_64_kib_of_a_long_output(ws):
    line = "x" * 40
    # 2000 lines of 52 bytes: about 100 KiB, "line 00000 xxx…" to "line 01999 xxx…".
    ws.task("10-chatty.sh", f"seq -f 'line %05g {line}' 0 1999")
    run_ok(ws, "-n", "1")
    full = "".join(f"line {i:05d} {line}\n" for i in range(2000)).encode()
    assert len(full) > 64 * 1024
    proc = report_bytes(ws, "log", "chatty")
    assert proc.returncode == 0, proc.stderr
    body = proc.stdout.split(b"\n", 1)[1]
    assert 64 * 1024 - 52 <= len(body) <= 64 * 1024
    assert body == full[-len(body):]
    assert body.endswith(f"line 01999 {line}\n".encode())
    assert b"line 00000" not in body


# -- blame ------------------------------------------------------------------------------


def test_blame_sorts_tasks_by_total_time_and_counts_runs_and_failures(ws):
    # retry_from = start: try 2 runs 10-slow.sh again, so it spends about 2 x 0.3 s.
    ws.task("10-slow.sh", "sleep 0.3")
    ws.task("20-flaky.sh", FLAKY)
    ws.task("30-medium.sh", "sleep 0.1")
    run_ok(ws, "-n", "1")
    [run_id] = {r["run_id"] for r in report_json(ws, "history")}
    records = report_json(ws, "blame")
    assert [r["task"] for r in records] == ["10-slow.sh", "30-medium.sh", "20-flaky.sh"]
    totals = [r["duration_s"] for r in records]
    assert totals == sorted(totals, reverse=True)
    assert totals[0] >= 0.6 and totals[1] >= 0.1
    by_task = {r["task"]: r for r in records}
    assert {t: (r["runs"], r["failures"], r["result"]) for t, r in by_task.items()} == {
        "10-slow.sh": (2, 0, "OK"), "20-flaky.sh": (2, 1, "OK"), "30-medium.sh": (1, 0, "OK")}
    for record in records:
        assert record["run_id"] == run_id and record["host"] == HOST

    proc = report(ws, "blame")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith(f"# time spent per task, run {run_id} ")
    cells = assert_aligned(table(proc.stdout, "TOTAL"),
                           ["TOTAL", "TASK", "RUNS", "FAILED", "LONGEST", "LAST"])
    assert [(c["TASK"], c["RUNS"], c["FAILED"], c["LAST"]) for c in cells] == [
        ("10-slow.sh", "2", "0", "OK"), ("30-medium.sh", "1", "0", "OK"),
        ("20-flaky.sh", "2", "1", "OK")]


def test_blame_covers_the_newest_run_by_default_and_both_runs_since_an_hour(ws):
    old = ws.task("10-old-name.sh", "echo old")
    run_ok(ws, "-n", "1")
    old.rename(ws.tasks / "10-new-name.sh")
    run_ok(ws, "-n", "1")
    newest = report_json(ws, "blame")
    assert [r["task"] for r in newest] == ["10-new-name.sh"]
    both = report_json(ws, "blame", "--since", "1h")
    assert sorted(r["task"] for r in both) == ["10-new-name.sh", "10-old-name.sh"]
    assert len({r["run_id"] for r in both}) == 2
    old_run = next(r["run_id"] for r in both if r["task"] == "10-old-name.sh")
    [only_old] = report_json(ws, "blame", "--run", old_run)
    assert (only_old["task"], only_old["runs"]) == ("10-old-name.sh", 1)


# -- status -----------------------------------------------------------------------------


def test_status_after_a_finished_run_says_not_running_with_the_result_and_each_task(ws):
    ws.task("10-a.sh", "exit 0")
    ws.task("20-a-much-longer-task-name.sh", FLAKY)
    run_ok(ws, "-n", "1")
    [run_id] = {r["run_id"] for r in report_json(ws, "history")}
    proc = report(ws, "status")
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith(f"runner on {HOST}: not running; last run {run_id} ended at ")
    assert first.endswith(" with DONE (exit status 0)")
    cells = assert_aligned(table(proc.stdout, "STARTED"),
                           ["STARTED", "TASK", "ITER", "TRY", "RESULT", "EXIT", "DURATION"])
    # One row per task with its last result: the flaky task's try 2, not its RETRY.
    assert [(c["TASK"], c["TRY"], c["RESULT"]) for c in cells] == [
        ("10-a.sh", "2/5", "OK"), ("20-a-much-longer-task-name.sh", "2/5", "OK")]


def test_status_json_after_a_finished_run(ws):
    flaky_chain(ws)
    doc = report_json(ws, "status")
    assert doc["running"] is False and doc["runner"] is None
    assert doc["host"] == HOST and doc["journal_problem"] is None
    run = doc["last_run"]
    assert (run["result"], run["exit_status"], run["host"]) == ("DONE", 0, HOST)
    assert RUN_ID.match(run["run_id"])
    assert parse_iso(run["ended_at"]) >= parse_iso(run["started_at"])
    assert [(t["task"], t["result"], t["try_num"], t["run_id"]) for t in doc["tasks"]] == [
        ("10-first.sh", "OK", 2, run["run_id"]), ("20-flaky.sh", "OK", 2, run["run_id"])]


def test_status_while_a_task_runs_names_it_then_the_stop_is_recorded(ws):
    ws.task("10-quick.sh", "exit 0")
    ws.task("20-sleepy.sh", "sleep 30")
    status_file = ws.root / "run" / "status.json"

    def sleepy_running() -> bool:
        try:
            live = json.loads(status_file.read_text())
        except (OSError, ValueError):
            return False
        return live.get("state") == "running" and live.get("task") == "20-sleepy.sh"

    with LogWatcher(ws.start("-n", "1")) as watcher:
        wait_for(sleepy_running, timeout=10, what="20-sleepy.sh running in status.json")
        doc = report_json(ws, "status")
        assert doc["running"] is True
        live = doc["runner"]
        assert (live["state"], live["task"], live["pid"]) == (
            "running", "20-sleepy.sh", watcher.proc.pid)
        assert (live["iteration"], live["try_num"]) == (1, 1)
        assert doc["last_run"]["result"] == "RUNNING"
        assert doc["last_run"]["run_id"] == live["run_id"]
        assert {t["task"]: t["result"] for t in doc["tasks"]} == {
            "10-quick.sh": "OK", "20-sleepy.sh": "RUNNING"}

        proc = report(ws, "status")
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0].startswith(f"runner on {HOST}: running since ")
        assert f"(pid {watcher.proc.pid}, run {live['run_id']})" in lines[0]
        assert lines[1].startswith("  now: iteration 1, try 1/5: running 20-sleepy.sh since ")

        watcher.proc.send_signal(signal.SIGTERM)
        assert watcher.finish(timeout=10) == 143

    doc = report_json(ws, "status")
    assert doc["running"] is False
    assert (doc["last_run"]["result"], doc["last_run"]["exit_status"]) == ("SIGTERM", 143)
    assert {t["task"]: t["result"] for t in doc["tasks"]} == {
        "10-quick.sh": "OK", "20-sleepy.sh": "STOPPED"}


def test_status_after_a_killed_runner_reports_its_run_and_task_as_interrupted(ws):
    ws.task("10-sleepy.sh", """
        echo $$ > "$RUNNER_STATE_DIR/task.pid"
        exec sleep 30
    """)
    pid_file = ws.state / "task.pid"
    with LogWatcher(ws.start("-n", "1")) as watcher:
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(),
                 what="the task's pid")
        task_pid = int(pid_file.read_text())
        try:
            watcher.proc.kill()
            assert watcher.finish() == -signal.SIGKILL
        finally:
            os.killpg(task_pid, signal.SIGKILL)  # the task has a process group of its own
    doc = report_json(ws, "status")
    assert doc["running"] is False and doc["runner"] is None
    assert doc["last_run"]["result"] == "INTERRUPTED"
    assert doc["last_run"]["exit_status"] is None
    assert [(t["task"], t["result"]) for t in doc["tasks"]] == [("10-sleepy.sh", "INTERRUPTED")]
    proc = report(ws, "status")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith(f"runner on {HOST}: not running; last run ")
    assert proc.stdout.splitlines()[0].endswith(" with INTERRUPTED")


# -- nothing to read, bad input -----------------------------------------------------------


@pytest.mark.parametrize("args", [("history",), ("log", "anything"), ("blame",),
                                  ("history", "--json"), ("blame", "--json")])
def test_without_a_journal_journal_commands_exit_1_with_one_line(ws, args):
    proc = report(ws, *args)
    line = assert_one_line_on_stderr(proc, "no journal at", str(ws.state / "journal.sqlite"))
    assert line.startswith("runner: ")
    assert proc.stdout == ""


def test_without_a_journal_status_says_no_runs_recorded_and_exits_1(ws):
    proc = report(ws, "status")
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[0] == f"runner on {HOST}: not running, no runs recorded"
    assert "no journal at" in proc.stdout
    assert proc.stderr == ""

    doc = report_json(ws, "status", status=1)
    assert doc["running"] is False and doc["runner"] is None
    assert doc["last_run"] is None and doc["tasks"] == []
    assert "no journal at" in doc["journal_problem"]
    assert not Path(ws.state / "journal.sqlite").exists()


@pytest.mark.parametrize("command", ["history", "status", "blame"])
def test_an_invalid_config_value_is_a_config_error_for_journal_commands(ws, command):
    ws.config(max_tries="five")
    assert_one_line_error(report(ws, command), "max_tries", "five")


# -- the fleet journal (PostgreSQL) ---------------------------------------------------------


@pytest.mark.slow
def test_blame_on_the_fleet_journal_defaults_to_this_hosts_newest_run(ws, pg_url, tmp_path):
    import psycopg

    ws.config(journal_url=pg_url)
    ws.task("10-mine.sh", "echo mine")
    run_ok(ws, "-n", "1")
    # A newer run of another machine in the same fleet journal.
    (tmp_path / "other-machine").mkdir()
    other = Workspace(tmp_path / "other-machine")
    other.config(journal_url=pg_url)
    other.task("10-theirs.sh", "echo theirs")
    run_ok(other, "-n", "1")
    [theirs] = report_json(other, "history", "--local")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for table in ("runner_runs", "runner_tries", "runner_task_runs"):
            conn.execute(f"UPDATE {table} SET host = 'other-host' WHERE run_id = %s",
                         (theirs["run_id"],))
    [mine] = report_json(ws, "blame")
    assert (mine["task"], mine["host"]) == ("10-mine.sh", HOST)
    proc = report(ws, "blame")
    assert proc.returncode == 0, proc.stderr
    assert "10-theirs.sh" not in proc.stdout
    # Asked for, the other host's newest run is there.
    [their_blame] = report_json(ws, "blame", "--host", "other-host")
    assert (their_blame["task"], their_blame["host"]) == ("10-theirs.sh", "other-host")


@pytest.mark.slow
def test_a_reader_that_stops_early_is_not_an_internal_error(ws):
    ws.task("10-chatty.sh", "seq 1 20000")
    for _ in range(3):
        assert ws.run("-n", "1").returncode == 0
    command = " ".join(ws.command("history", "--json", tasks=False))
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; {command} | head -c 10"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
