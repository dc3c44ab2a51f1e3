"""Fault: runner SIGKILLed at random moments of a 50-task chain, then started again.

After every kill the journal (state_dir/journal.sqlite) is opened read-only, as a crash
leaves it, and checked against the previous snapshot and against a ledger the tasks
write themselves (a START line when a task begins, an END line just before it exits 0):

- PRAGMA integrity_check is ok; the schema exists whole or not at all;
- a row with a final result never changes again; a RUNNING row only becomes INTERRUPTED;
- at most one RUNNING task run and one RUNNING try per run;
- once a new runner has recorded its run, no older run has anything RUNNING;
- the seq numbers of every run are 1..n, in the chain's order;
- no record is lost: every task the ledger says started has its row, and a run has at
  most one row more than it started tasks (the kill came between the row and the spawn);
  a row is OK only if the task wrote END. Right after a kill, a start may be in the
  start log (journal.sqlite-starts, runner.startlog) and not yet in the journal: such a
  row counts as RUNNING until the next start, which must have put it in the journal
  (`recovered` counts them).

CI runs 15 kills; `pytest --slow` runs 100. The figures are printed at the end
(`pytest -s` or `-rP` shows them).
"""

from __future__ import annotations

import collections
import json
import os
import random
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import Workspace, wait_for

pytestmark = pytest.mark.slow

TASKS = [f"{number:02d}-step.sh" for number in range(50)]
LEDGER = "ledger"
FINAL = {"OK", "SKIPPED", "RETRY", "TIMEOUT", "HALT", "EXIT", "STOPPED", "INTERRUPTED"}
TASK_BODY = f"""
    echo "START $RUNNER_RUN_ID $RUNNER_TASK $$" >> "$RUNNER_STATE_DIR/{LEDGER}"
    sleep 0.005
    echo "END $RUNNER_RUN_ID $RUNNER_TASK $$" >> "$RUNNER_STATE_DIR/{LEDGER}"
"""

Snapshot = dict[str, dict[tuple, dict]]


def make_chain(ws: Workspace) -> None:
    for name in TASKS:
        ws.task(name, TASK_BODY)
    ws.config(max_tries=1)


def leftovers(ws: Workspace) -> list[int]:
    """Live processes a killed runner left: its tasks (their command line names the task
    directory) and a child forked but not yet exec'd (runner's own command line does)."""
    marker = str(ws.tasks).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state not in (b"Z", b"X"):
            found.append(int(entry))
    return found


def read_ledger(ws: Workspace) -> tuple[dict[str, collections.Counter], dict[str, set]]:
    """Per run id: how often each task started, and which tasks ended."""
    starts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    ends: dict[str, set] = collections.defaultdict(set)
    path = ws.state / LEDGER
    if not path.exists():
        return starts, ends
    for line in path.read_text().splitlines():
        what, run_id, task, _pid = line.split()
        if what == "START":
            starts[run_id][task] += 1
        else:
            ends[run_id].add(task)
    return starts, ends


def start_log(ws: Workspace, task_runs: dict[tuple, dict]) -> dict[tuple, dict]:
    """The rows of the start log (runner.startlog: a line of JSON values per start,
    in the order of its COLUMNS) past the last row of their run in the journal: the
    starts a killed runner had not committed yet, each marked `pending`."""
    from runner.startlog import COLUMNS

    path = ws.state / "journal.sqlite-starts"
    last: dict[str, int] = collections.Counter()
    for run_id, seq in task_runs:
        last[run_id] = max(last[run_id], seq)
    pending = {}
    for line in path.read_bytes().split(b"\n") if path.exists() else []:
        try:
            row = dict(zip(COLUMNS, json.loads(line), strict=True))
        except ValueError:
            continue  # a line the kill cut short: that task never started
        if row["seq"] > last[row["run_id"]]:
            pending[(row["run_id"], row["seq"])] = {**row, "pending": True}
    return pending


def snapshot(ws: Workspace) -> Snapshot | None:
    """Every row of the journal, read-only, and the starts still in the start log;
    None while there is no journal yet."""
    path = ws.state / "journal.sqlite"
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:  # killed before or during the first migration: nothing of it
            assert tables == set(), tables
            return None
        assert {"runs", "tries", "task_runs"} <= tables
        keys = {"runs": ("run_id",), "tries": ("run_id", "iteration", "try_num"),
                "task_runs": ("run_id", "seq")}
        rows = {
            table: {tuple(row[k] for k in key): dict(row)
                    for row in conn.execute(f"SELECT * FROM {table}")}
            for table, key in keys.items()
        }
        rows["task_runs"].update(start_log(ws, rows["task_runs"]))
        return rows
    finally:
        conn.close()


def check_against_previous(before: Snapshot, now: Snapshot) -> None:
    """Final rows never change; RUNNING rows (of dead runners) only become INTERRUPTED."""
    for table, rows in before.items():
        for key, old in rows.items():
            assert key in now[table], f"{table} row {key} vanished"
            new = now[table][key]
            if old.get("pending"):  # from the start log: in the journal now
                assert new["result"] in ("RUNNING", "INTERRUPTED"), (old, new)
                assert new.get("pending") or new["started_at"] == old["started_at"], new
                continue
            if old["result"] == "RUNNING":
                assert new["result"] in ("RUNNING", "INTERRUPTED"), (table, old, new)
                changed = {k for k in old if old[k] != new[k]}
                assert changed <= {"result", "rev"}, (table, key, changed)
            else:
                assert old["result"] in FINAL or table == "runs", old
                assert new == old, f"{table} row {key} changed after it was final"


def check_runs(now: Snapshot, newest: str | None) -> None:
    """At most one RUNNING try per run, and one RUNNING task run — or two in a row: the
    end of a short task is written right after the next one's process started (runner.
    journal); nothing RUNNING in older runs once `newest` (the run the last runner
    recorded, if it got that far) exists."""
    running = collections.Counter()
    running_seqs = collections.defaultdict(list)
    running_tries = collections.Counter()
    for row in now["task_runs"].values():
        if row["result"] == "RUNNING":
            running[row["run_id"]] += 1
            running_seqs[row["run_id"]].append(row["seq"])
    for row in now["tries"].values():
        if row["result"] == "RUNNING":
            running_tries[row["run_id"]] += 1
    for seqs in running_seqs.values():
        assert len(seqs) == 1 or (len(seqs) == 2 and max(seqs) - min(seqs) == 1), running_seqs
    assert all(count == 1 for count in running_tries.values()), running_tries
    if newest is None:
        return
    for run_id, row in now["runs"].items():
        if run_id[0] != newest:
            assert row["result"] != "RUNNING", row
            assert running[run_id[0]] == 0 and running_tries[run_id[0]] == 0, run_id


def check_rows_against_ledger(now: Snapshot, starts: dict, ends: dict) -> tuple[int, int]:
    """Seq numbers 1..n in chain order; every started task has its row; at most one row
    more than started tasks. Returns (rows checked, records lost)."""
    by_run: dict[str, list[dict]] = collections.defaultdict(list)
    for (run_id, _seq), row in now["task_runs"].items():
        by_run[run_id].append(row)
    lost = 0
    checked = 0
    for run_id in set(by_run) | set(starts):
        rows = sorted(by_run.get(run_id, []), key=lambda r: r["seq"])
        checked += len(rows)
        assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1)), run_id
        assert [r["task"] for r in rows] == TASKS[: len(rows)], run_id
        started_tasks = starts.get(run_id, collections.Counter())
        assert all(count == 1 for count in started_tasks.values()), started_tasks
        missing = set(started_tasks) - {r["task"] for r in rows}
        lost += len(missing)
        assert not missing, f"run {run_id}: started but not in the journal: {sorted(missing)}"
        assert len(rows) <= len(started_tasks) + 1, (run_id, len(started_tasks), len(rows))
        for row in rows:
            if row["task"] not in started_tasks:  # the spawn never happened
                assert row is rows[-1] and row["result"] in ("RUNNING", "INTERRUPTED"), row
            if row["result"] == "OK":
                assert row["task"] in ends.get(run_id, ()), row
            elif row["task"] in ends.get(run_id, ()):
                # It ended, but runner died before it could record that.
                assert row["result"] in ("RUNNING", "INTERRUPTED"), row
    return checked, lost


def full_run_seconds(ws: Workspace) -> float:
    """How long one whole run takes here (in a state_dir of its own)."""
    begin = time.monotonic()
    proc = ws.run("-n", "1", "-D", f"runner.state_dir={ws.root / 'calibration'}")
    assert proc.returncode == 0, proc.stderr
    return time.monotonic() - begin


def test_sigkill_at_random_points_of_a_50_task_chain_keeps_the_journal_consistent(ws, slow):
    kills = 100 if slow else 15
    make_chain(ws)
    span = full_run_seconds(ws)
    rng = random.Random(20261123)
    before: Snapshot | None = None
    figures = collections.Counter()
    for _ in range(kills):
        proc = ws.start("-n", "1")
        time.sleep(rng.uniform(0, span))
        proc.kill()
        _out, err = proc.communicate(timeout=10)
        assert "Traceback" not in err, err
        figures["kills"] += 1
        wait_for(lambda: not leftovers(ws), 10, "the killed runner's tasks to end")
        now = snapshot(ws)
        if now is None:
            assert before is None
            continue
        if before is not None:
            check_against_previous(before, now)
        mine = [key[0] for key, row in now["runs"].items()
                if row["pid"] == proc.pid and (before is None or key not in before["runs"])]
        assert len(mine) <= 1
        check_runs(now, mine[0] if mine else None)
        starts, ends = read_ledger(ws)
        checked, lost = check_rows_against_ledger(now, starts, ends)
        figures["rows checked"] += checked
        figures["records lost"] += lost
        figures["killed mid-chain"] += bool(mine and starts.get(mine[0]))
        figures["recovered"] += sum(bool(row.get("pending"))
                                    for row in now["task_runs"].values())
        before = now

    proc = ws.run("-n", "1")
    figures["restarts"] = kills  # every kill was followed by a start
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    now = snapshot(ws)
    assert now is not None
    if before is not None:
        check_against_previous(before, now)
    [last] = [key[0] for key in now["runs"] if before is None or key not in before["runs"]]
    check_runs(now, last)
    starts, ends = read_ledger(ws)
    checked, lost = check_rows_against_ledger(now, starts, ends)
    figures["rows checked"] += checked
    figures["records lost"] += lost
    final = sorted((r for r in now["task_runs"].values() if r["run_id"] == last),
                   key=lambda r: r["seq"])
    assert [(r["task"], r["result"]) for r in final] == [(t, "OK") for t in TASKS]
    assert now["runs"][(last,)]["result"] == "DONE"
    for table in ("runs", "tries", "task_runs"):
        assert not [r for r in now[table].values() if r["result"] == "RUNNING"], table
    assert not [r for r in now["task_runs"].values() if r.get("pending")]
    assert {r["result"] for key, r in now["runs"].items() if key != (last,)} <= {
        "INTERRUPTED", "DONE"}
    print(
        f"\ncrash/restart: {figures['kills']} kills ({figures['killed mid-chain']} mid-chain),"
        f" {figures['restarts']} restarts survived, {len(now['task_runs'])} task runs in the"
        f" journal, {figures['rows checked']} row checks, {figures['recovered']} starts"
        f" put back from the start log, records lost: {figures['records lost']}"
    )
    assert figures["records lost"] == 0
    assert figures["killed mid-chain"] >= kills // 3  # the kills really hit the chain
