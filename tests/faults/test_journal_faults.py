"""The journal is the evidence, so it must outlive what goes wrong at the boots that
fail: a wall clock a year behind, a damaged journal file, and a chain that loops for
days. Each test drives the real `runner` (libfaketime for the clock)."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path

import pytest
from conftest import Workspace, journal_rows, libfaketime, skip_unless

from runner import journalfile

MIB = 1024 * 1024
# What the journal may take above journal_max_mb: the size is checked after each task
# run's record, so the file may hold one more 64 KiB output tail; the -wal file is cut
# back to an eighth of the bound at each checkpoint but takes a whole transaction first,
# and the -shm index is 32 KiB. Measured: see docs/guarantees.md.
SLACK = 320 * 1024
DAMAGED = re.compile(r"journal\.sqlite\.damaged-\d{8}T\d{6}Z")


def year_behind() -> dict[str, str]:
    """An environment whose wall clock is 365 days behind (the monotonic clock is not)."""
    library = libfaketime()
    skip_unless(library is not None, "needs libfaketime (Debian package faketime)")
    return {**os.environ, "LD_PRELOAD": str(library), "FAKETIME": "-365d",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1", "DONT_FAKE_MONOTONIC": "1"}


def run_once(ws: Workspace, env: dict[str, str] | None = None) -> str:
    """One run of the chain; its run id, as the task saw it."""
    proc = ws.run("-n", "1", env=env)
    assert proc.returncode == 0, proc.stderr
    return (ws.root / "ids").read_text().split()[-1]


def report(ws: Workspace, *args: str) -> dict | list:
    proc = ws.run(*args, "--json", tasks=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def journal(ws: Workspace, sql: str, params: tuple = ()) -> list[dict]:
    return journal_rows(ws.state / "journal.sqlite", sql, params)


def recorded_runs(ws: Workspace) -> list[str]:
    return [row["run_id"] for row in journal(ws, "SELECT run_id FROM runs ORDER BY run_seq")]


# -- the wall clock -----------------------------------------------------------------

def test_a_run_with_the_clock_a_year_behind_is_the_latest_and_survives_pruning(ws):
    ws.task("10-say.sh", f'echo "said by $RUNNER_RUN_ID"; echo "$RUNNER_RUN_ID" >> "{ws.root}/ids"')
    first = run_once(ws)
    behind = run_once(ws, year_behind())
    [row] = journal(ws, "SELECT started_at FROM runs WHERE run_id = ?", (behind,))
    [earlier] = journal(ws, "SELECT started_at FROM runs WHERE run_id = ?", (first,))
    assert row["started_at"][:4] < earlier["started_at"][:4]  # the clock really was behind

    status = report(ws, "status")
    assert status["last_run"]["run_id"] == behind
    assert [task["run_id"] for task in status["tasks"]] == [behind]
    log = ws.run("log", "10-say.sh", tasks=False)
    assert f"said by {behind}" in log.stdout and f"said by {first}" not in log.stdout
    assert [r["run_id"] for r in report(ws, "history")] == [first, behind]

    # The right clock again, and a retention of one day: the year-old rows are among
    # the newest runs, so they stay.
    ws.config(journal_keep_days=1)
    last = run_once(ws)
    assert recorded_runs(ws) == [first, behind, last]
    assert len(journal(ws, "SELECT * FROM task_runs WHERE run_id = ?", (behind,))) == 1
    assert len(journal(ws, "SELECT * FROM tries WHERE run_id = ?", (behind,))) == 1
    assert report(ws, "status")["last_run"]["run_id"] == last
    assert [r["run_id"] for r in report(ws, "history")] == [first, behind, last]


@pytest.mark.slow
def test_a_run_is_as_old_as_the_runs_before_it_and_ten_runs_are_kept_whatever_their_age(ws):
    """With keep_days = 1: a year-old first run stays while it is among the newest ten
    (RUNS_ALWAYS_KEPT) and goes with the start that makes it the eleventh. A run whose
    clock was a year behind, written after a run with the right clock, is as young as
    that run: it stays when ten newer runs exist."""
    ws.task("10-say.sh", f'echo "$RUNNER_RUN_ID" >> "{ws.root}/ids"')
    old = run_once(ws, year_behind())
    ws.config(journal_keep_days=1)
    mid = run_once(ws)
    behind = run_once(ws, year_behind())
    newer = [run_once(ws) for _ in range(7)]
    assert recorded_runs(ws) == [old, mid, behind, *newer]  # ten runs: all kept
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert "removed 3 record(s) older than 1 days" in proc.stderr  # run, try, task run
    newer.append((ws.root / "ids").read_text().split()[-1])
    newer += [run_once(ws) for _ in range(2)]
    assert recorded_runs(ws) == [mid, behind, *newer]  # `behind` is not in the newest ten
    for table in ("tries", "task_runs"):
        assert not journal(ws, f"SELECT * FROM {table} WHERE run_id = ?", (old,))
        assert len(journal(ws, f"SELECT * FROM {table} WHERE run_id = ?", (behind,))) == 1


def write_schema_1_journal(path: Path, runs: list[tuple[str, str]]) -> None:
    """A journal as the runner before run_seq left it: `runs` (run id, started_at) in
    the order they were written, each with one task run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in journalfile.statements(journalfile.MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    for run_id, started in runs:
        conn.execute(
            "INSERT INTO runs (run_id, host, started_at, ended_at, result, exit_status) "
            "VALUES (?, 'old-host', ?, ?, 'DONE', 0)", (run_id, started, started))
        conn.execute(
            "INSERT INTO task_runs (run_id, seq, host, iteration, try_num, max_tries, task, "
            "kind, result, exit_code, started_at, ended_at, duration_s, output) "
            "VALUES (?, 1, 'old-host', 1, 1, 5, '10-say.sh', 'task', 'OK', 0, ?, ?, 0.1, ?)",
            (run_id, started, started, f"said by {run_id}\n".encode()))
    conn.close()


def test_a_journal_of_the_previous_schema_is_migrated_in_the_order_it_was_written(ws):
    # The second run was written after the first, with a clock a year behind.
    write_schema_1_journal(ws.state / "journal.sqlite", [
        ("a" * 32, "2026-11-20T10:00:00.000Z"), ("b" * 32, "2025-11-21T10:00:00.000Z")])
    # Before any runner migrates it, the commands read it (by started_at, all it has).
    assert report(ws, "status")["last_run"]["run_id"] == "a" * 32
    ws.task("10-say.sh", f'echo "said by $RUNNER_RUN_ID"; echo "$RUNNER_RUN_ID" >> "{ws.root}/ids"')
    new = run_once(ws)
    [version] = journal(ws, "PRAGMA user_version")
    assert version["user_version"] == journalfile.SCHEMA_VERSION == 3
    assert journal(ws, "SELECT run_id, run_seq FROM runs ORDER BY run_seq") == [
        {"run_id": "a" * 32, "run_seq": 1}, {"run_id": "b" * 32, "run_seq": 2},
        {"run_id": new, "run_seq": 3}]
    assert [r["run_id"] for r in report(ws, "history")] == ["a" * 32, "b" * 32, new]
    assert report(ws, "status")["last_run"]["run_id"] == new
    assert ws.run("log", "10-say.sh", tasks=False).stdout.count(f"said by {new}") == 1


# -- a damaged journal file ---------------------------------------------------------

def garbage(ws: Workspace) -> bytes:
    data = b"this is not a database\n" * 2000
    ws.state.mkdir(parents=True, exist_ok=True)
    (ws.state / "journal.sqlite").write_bytes(data)
    return data


def truncated(ws: Workspace) -> bytes:
    """A real journal of several pages (five task runs with 20 KB of output each), cut
    in half as a crash of the disk or a careless copy would."""
    for number in range(1, 6):
        ws.task(f"0{number}-out.sh", "head -c 15000 /dev/zero | base64")
    assert ws.run("-n", "1").returncode == 0  # its last connection folds the -wal in
    for number in range(1, 6):
        (ws.tasks / f"0{number}-out.sh").unlink()
    path = ws.state / "journal.sqlite"
    assert not Path(f"{path}-wal").exists()
    data = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(data)
    return data


def journal_warnings(log: str) -> list[str]:
    return [line for line in log.splitlines() if "WARNING journal" in line]


@pytest.mark.parametrize("damage", [garbage, truncated])
def test_a_damaged_journal_is_moved_aside_once_and_the_next_run_is_recorded(ws, damage):
    content = damage(ws)
    for number in range(1, 4):
        ws.task(f"{number}0-task.sh", f"echo task {number}")
    proc = ws.run("-n", "2")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    [warning] = journal_warnings(proc.stderr)
    moved = re.search(r"moved aside to (\S+)", warning)[1]
    assert DAMAGED.fullmatch(Path(moved).name), moved
    assert Path(moved).read_bytes() == content  # kept as it was, never deleted
    assert Path(moved).stat().st_mode & 0o777 == 0o600
    # Nothing lost: every task run of both iterations is in the new journal.
    results = journal(ws, "SELECT task, iteration, result FROM task_runs ORDER BY "
                          "iteration, seq")
    assert results == [(dict(task=f"{n}0-task.sh", iteration=i, result="OK"))
                       for i in (1, 2) for n in (1, 2, 3)]
    live = json.loads((ws.root / "run" / "status.json").read_text())
    assert live["journal"]["moved_aside"] == moved and live["journal"]["ok"] is True
    status = ws.run("status", tasks=False)
    assert f"journal: damaged file moved aside to {moved}" in status.stdout
    # The next start finds a sound journal: no warning, the moved file still reported.
    again = ws.run("-n", "1")
    assert again.returncode == 0 and not journal_warnings(again.stderr), again.stderr
    assert f"moved aside to {moved}" in ws.run("status", tasks=False).stdout
    assert len(recorded_runs(ws)) == 2


# -- the size bound -----------------------------------------------------------------

def journal_bytes(state: Path) -> int:
    return sum(os.path.getsize(p) for p in state.glob("journal.sqlite*") if p.is_file())


@pytest.mark.slow
@pytest.mark.parametrize("fleet", [False, True], ids=["local", "fleet-unreachable"])
def test_a_looping_chain_keeps_the_journal_under_journal_max_mb(ws, fleet):
    """40 iterations of a task with 60 KB of output write 2.4 MB; with journal_max_mb = 1
    the files (journal, -wal, -shm), measured by a task in every iteration, stay under
    1 MiB + SLACK. Every task run is either in the journal or counted as dropped, the
    kept ones are the newest, and the last iteration is whole. With a fleet journal that
    cannot be reached nothing is ever forwarded: the bound still holds (one warning)."""
    iterations = 40
    sizes = ws.root / "sizes"
    ws.task("10-big.sh", "head -c 45000 /dev/urandom | base64")
    ws.task("20-measure.sh", f"""
        total=0
        for f in "$RUNNER_STATE_DIR"/journal.sqlite*; do
            total=$((total + $(stat -c %s "$f")))
        done
        echo "$total" >> '{sizes}'
    """)
    extra = {"journal_url": "postgresql://runner@127.0.0.1:9/none"} if fleet else {}
    ws.config(journal_max_mb=1, **extra)
    proc = ws.run("-n", str(iterations), timeout=180)
    assert proc.returncode == 0, proc.stderr
    measured = [int(line) for line in sizes.read_text().split()]
    assert len(measured) == iterations
    assert max([*measured, journal_bytes(ws.state)]) <= MIB + SLACK, measured
    rows = journal(ws, "SELECT iteration, task FROM task_runs ORDER BY iteration, seq")
    live = json.loads((ws.root / "run" / "status.json").read_text())
    dropped = live["journal"]["trimmed"]
    assert dropped > 0 and len(rows) + dropped == 2 * iterations
    kept = [row["iteration"] for row in rows]
    assert kept == sorted(kept) and kept[-2:] == [iterations, iterations]
    assert set(kept) == set(range(kept[0], iterations + 1))  # no hole: the oldest went
    assert len(recorded_runs(ws)) == 1  # the run itself is never dropped
    unforwarded = [line for line in proc.stderr.splitlines()
                   if "not yet forwarded to journal_url dropped" in line]
    assert len(unforwarded) == (1 if fleet else 0), proc.stderr
