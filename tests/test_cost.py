"""What each task run cost (runner.usage): CPU time and peak memory, carried from the
process to the journal, `runner history`/`log`/`blame`, the metrics file and the hook.

The end-to-end tests run the real `runner` with a task that burns CPU until its own
process has used 0.3 s of it (it counts, and says how much) and one that sleeps."""

from __future__ import annotations

import json
import shlex
import sqlite3
import sys
from pathlib import Path

import pytest
from conftest import Workspace
from prometheus_client.parser import text_string_to_metric_families
from test_hooks import recording_hook, stats

from runner import journalfile, usage
from runner.commands.report import _bytes
from runner.identity import RunIdentity
from runner.metrics import MetricsListener
from runner.names import short_name
from runner.settings import TaskSettings
from runner.states import TaskRun, TaskState
from runner.tasks import Task
from runner.usage import Cost

BURN_S = 0.3
# Burns user time until the process has used BURN_S of CPU, then writes what it used.
# Mostly arithmetic between two looks at the clock: reading the process's CPU clock is a
# system call, and a loop of nothing else would burn system time instead.
BURNER = f"""
import os, time
while time.process_time() < {BURN_S}:
    sum(range(20000))
with open(os.environ["RUNNER_STATE_DIR"] + "/burned", "w") as out:
    out.write(repr(time.process_time()))
"""


def journal(ws: Workspace, sql: str, params: tuple = ()) -> list[dict]:
    conn = sqlite3.connect(ws.state / "journal.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute(sql, params)]
    finally:
        conn.close()


def report_json(ws: Workspace, *args: str):
    proc = ws.run(*args, "--json", tasks=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def samples(path: Path) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(path.read_text())
            for s in family.samples}


@pytest.fixture(scope="module")
def costly(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """One run of a burner and a sleeper, with a metrics file and a recording hook."""
    ws = Workspace(tmp_path_factory.mktemp("cost"))
    ws.task("10-burn.py", BURNER, shebang=f"#!{sys.executable}")
    ws.task("20-sleep.sh", "sleep 0.3")
    hook, _calls = recording_hook(ws)
    ws.config(metrics_file=ws.root / "runner.prom", task_hook=shlex.quote(hook))
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    return ws


def by_task(records: list[dict]) -> dict[str, dict]:
    return {r["task"]: r for r in records}


# -- the journal ------------------------------------------------------------------


def test_the_journal_records_the_cpu_a_task_burned_and_not_the_time_it_slept(costly):
    burned = float((costly.state / "burned").read_text())  # what the burner counted
    rows = by_task(journal(costly, "SELECT * FROM task_runs"))
    burn, sleep = rows["10-burn.py"], rows["20-sleep.sh"]
    assert burn["cpu_user_s"] >= 0.2
    # wait4() sees all of it (and the interpreter's start and exit); each to the ms.
    assert burn["cpu_user_s"] + burn["cpu_system_s"] >= burned - 0.005
    assert burn["cpu_user_s"] <= burn["duration_s"] + 0.05  # one thread: not more than it ran
    assert sleep["duration_s"] >= 0.3 and sleep["cpu_user_s"] < 0.1
    assert sleep["cpu_system_s"] < 0.1
    for row in (burn, sleep):
        assert row["cpu_user_s"] == round(row["cpu_user_s"], 3)
        assert row["peak_memory_bytes"] is None  # wait4() knows no peak of the run
    assert journal(costly, "PRAGMA user_version") == [{"user_version": 3}]


def test_history_and_log_json_carry_the_cost_of_each_run(costly):
    records = by_task(report_json(costly, "history"))
    rows = by_task(journal(costly, "SELECT * FROM task_runs"))
    for name, record in records.items():
        for field in ("cpu_user_s", "cpu_system_s", "peak_memory_bytes"):
            assert record[field] == rows[name][field]
    assert records["10-burn.py"]["cpu_user_s"] >= 0.2
    log = report_json(costly, "log", "burn")
    assert log["cpu_user_s"] == records["10-burn.py"]["cpu_user_s"]
    assert "cpu_system_s" in log and log["peak_memory_bytes"] is None


def test_blame_shows_each_tasks_cpu_and_a_dash_for_an_unknown_peak(costly):
    records = by_task(report_json(costly, "blame"))
    burn, sleep = records["10-burn.py"], records["20-sleep.sh"]
    assert burn["cpu_s"] == round(burn["cpu_user_s"] + burn["cpu_system_s"], 3)
    assert burn["cpu_s"] >= 0.2 and sleep["cpu_s"] < 0.1
    assert burn["peak_memory_bytes"] is None
    proc = costly.run("blame", tasks=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("TOTAL"))
    assert header.split() == ["TOTAL", "TASK", "RUNS", "FAILED", "LONGEST", "CPU",
                              "PEAK-MEM", "LAST"]
    cells = {line.split()[1]: line.split() for line in lines[lines.index(header) + 1:]}
    assert cells["10-burn.py"][5] == f"{burn['cpu_s']:.2f}s"
    assert cells["20-sleep.sh"][5] == f"{sleep['cpu_s']:.2f}s"
    assert cells["10-burn.py"][6] == "-"


def test_metrics_show_the_last_runs_cpu_by_mode_and_no_unknown_peak(costly):
    prom = costly.root / "runner.prom"
    got = samples(prom)
    rows = by_task(journal(costly, "SELECT * FROM task_runs"))
    for name in ("10-burn.py", "20-sleep.sh"):
        for mode in ("user", "system"):
            value = got[("runner_task_last_cpu_seconds",
                         frozenset({"task": name, "mode": mode}.items()))]
            assert round(value, 3) == rows[name][f"cpu_{mode}_s"]
    assert got[("runner_task_last_cpu_seconds",
                frozenset({"task": "10-burn.py", "mode": "user"}.items()))] >= 0.2
    text = prom.read_text()
    assert "# TYPE runner_task_last_cpu_seconds gauge" in text
    assert "# HELP runner_task_last_cpu_seconds " in text
    assert "runner_task_last_peak_memory_bytes" not in text  # never measured: no sample


def test_the_hook_gets_the_cost_after_the_run_and_nulls_before(costly):
    calls = [json.loads(line) for line in (costly.root / "calls.jsonl").read_text().splitlines()]
    records = stats(calls)
    rows = by_task(journal(costly, "SELECT * FROM task_runs"))
    assert [(r["task"], r["result"]) for r in records] == [
        ("10-burn.py", "RUNNING"), ("10-burn.py", "OK"),
        ("20-sleep.sh", "RUNNING"), ("20-sleep.sh", "OK")]
    for before, after in (records[0:2], records[2:4]):
        assert (before["cpu_user_s"], before["cpu_system_s"],
                before["peak_memory_bytes"]) == (None, None, None)
        row = rows[after["task"]]
        assert (after["cpu_user_s"], after["cpu_system_s"], after["peak_memory_bytes"]) == (
            row["cpu_user_s"], row["cpu_system_s"], None)
    assert records[1]["cpu_user_s"] >= 0.2


# -- a recheck ------------------------------------------------------------------------


def test_a_recheck_adds_its_cpu_to_the_run(ws):
    """The task itself sleeps; its check fails before the run (at once) and, after it,
    burns 0.3 s of CPU and passes: the run's CPU is the recheck's."""
    done = ws.root / "done"
    check = ws.root / "check.py"
    check.write_text(f"#!{sys.executable}\nimport os, sys, time\n"
                     f"if not os.path.exists({str(done)!r}):\n    sys.exit(1)\n"
                     + BURNER)
    check.chmod(0o755)
    ws.task("10-work.sh", f'sleep 0.1; touch "{done}"')
    ws.config(f"[work]\ncheck = {check}\n")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    [row] = journal(ws, "SELECT * FROM task_runs")
    assert row["result"] == "OK"
    assert row["cpu_user_s"] >= 0.2  # the task slept: this is the recheck's
    burned = float((ws.state / "burned").read_text())
    assert row["cpu_user_s"] + row["cpu_system_s"] >= burned - 0.01


def test_combined_costs_add_the_cpu_and_keep_the_higher_known_peak():
    task = Cost(1.25, 0.5, None)
    check = Cost(0.25, 0.125, 4096)
    assert usage.combined(task, check) == Cost(1.5, 0.625, 4096)
    assert usage.combined(Cost(1, 0, 8192), check) == Cost(1.25, 0.125, 8192)
    assert usage.combined(task, None) is task and usage.combined(None, check) is check
    assert usage.combined(None, None) is None


# -- blame over several runs ----------------------------------------------------------


def test_blame_sums_the_cpu_of_every_run_and_shows_the_highest_peak(ws):
    ws.task("10-quick.sh")
    ws.task("20-other.sh")
    assert ws.run("-n", "3").returncode == 0
    # As a cgroup would measure them (wait4() knows no peak): three runs of 10-quick.sh.
    conn = sqlite3.connect(ws.state / "journal.sqlite")
    with conn:
        for seq, (user, system, peak) in enumerate(
                [(0.5, 0.25, 20 * 2**20), (1.0, 0.125, 36_805_017), (0.25, 0.0, None)]):
            conn.execute(
                "UPDATE task_runs SET cpu_user_s = ?, cpu_system_s = ?, peak_memory_bytes = ? "
                "WHERE task = '10-quick.sh' AND iteration = ?", (user, system, peak, seq + 1))
        conn.execute("UPDATE task_runs SET cpu_user_s = NULL, cpu_system_s = NULL "
                     "WHERE task = '20-other.sh'")  # as recorded before schema 3
    conn.close()
    records = by_task(report_json(ws, "blame"))
    quick, other = records["10-quick.sh"], records["20-other.sh"]
    assert (quick["cpu_user_s"], quick["cpu_system_s"], quick["cpu_s"]) == (1.75, 0.375, 2.125)
    assert quick["peak_memory_bytes"] == 36_805_017 and quick["runs"] == 3
    assert (other["cpu_s"], other["cpu_user_s"], other["peak_memory_bytes"]) == (
        None, None, None)
    proc = ws.run("blame", tasks=False)
    rows = {line.split()[1]: line.split() for line in proc.stdout.splitlines()[2:]}
    assert rows["10-quick.sh"][5:7] == ["2.12s", "35.1M"]
    assert rows["20-other.sh"][5:7] == ["-", "-"]


@pytest.mark.parametrize(("value", "shown"), [
    (None, "-"), (0, "0B"), (1023, "1023B"), (1024, "1.0K"), (36_805_017, "35.1M"),
    (2**20 - 1, "1.0M"), (3 * 2**30, "3.0G"), (5 * 2**40, "5.0T")])
def test_peak_memory_is_shown_in_powers_of_1024(value, shown):
    assert _bytes(value) == shown


# -- a journal of the previous schema ---------------------------------------------


def write_schema_2_journal(path: Path) -> None:
    """A journal as the runner before the cost columns left it: one run, one task run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    for script in journalfile.MIGRATIONS[:2]:
        for statement in journalfile.statements(script):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    conn.execute("INSERT INTO runs (run_id, host, started_at, ended_at, result, exit_status) "
                 "VALUES (?, 'old-host', ?, ?, 'DONE', 0)",
                 ("a" * 32, "2026-11-20T10:00:00.000Z", "2026-11-20T10:00:01.000Z"))
    conn.execute(
        "INSERT INTO task_runs (run_id, seq, host, iteration, try_num, max_tries, task, "
        "kind, result, exit_code, started_at, ended_at, duration_s, output) VALUES "
        "(?, 1, 'old-host', 1, 1, 5, '10-burn.py', 'task', 'OK', 0, ?, ?, 0.5, x'')",
        ("a" * 32, "2026-11-20T10:00:00.000Z", "2026-11-20T10:00:00.500Z"))
    conn.close()


def test_a_schema_2_journal_is_read_as_it_is_then_migrated_to_the_cost_columns(ws):
    write_schema_2_journal(ws.state / "journal.sqlite")
    # Before a runner migrates it, the commands read it: no cost known.
    [old] = report_json(ws, "history")
    assert (old["task"], old["cpu_user_s"], old["peak_memory_bytes"]) == (
        "10-burn.py", None, None)
    [blamed] = report_json(ws, "blame")
    assert (blamed["cpu_s"], blamed["peak_memory_bytes"]) == (None, None)
    ws.task("10-burn.py", BURNER, shebang=f"#!{sys.executable}")
    ws.config(metrics_file=ws.root / "runner.prom")  # its seed reads the old file
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert "cannot read earlier results" not in proc.stderr
    assert journal(ws, "PRAGMA user_version") == [{"user_version": 3}]
    columns = {c["name"]: c["type"] for c in journal(ws, "PRAGMA table_info(task_runs)")}
    assert (columns["cpu_user_s"], columns["cpu_system_s"],
            columns["peak_memory_bytes"]) == ("REAL", "REAL", "INTEGER")
    before, after = journal(ws, "SELECT run_id, cpu_user_s, cpu_system_s, duration_s "
                                "FROM task_runs ORDER BY started_at")
    assert before == {"run_id": "a" * 32, "cpu_user_s": None, "cpu_system_s": None,
                      "duration_s": 0.5}
    assert after["cpu_user_s"] >= 0.2
    assert [r["cpu_user_s"] for r in report_json(ws, "history")] == [None,
                                                                     after["cpu_user_s"]]


# -- metrics, unit -------------------------------------------------------------------


def _task_run(name: str, cost: Cost | None) -> TaskRun:
    settings = TaskSettings(max_time=600, max_tries=5, sleep_time=0, retry_jitter=0,
                            interpreter=None, kill_grace=1)
    run = TaskRun(Task(name, f"/t/{name}", short_name(name), settings), 1, 1, 5)
    run.mark_started()
    run.state, run.duration_s, run.exit_code, run.cost = TaskState.OK, 1.0, 0, cost
    return run


def test_the_peak_memory_gauge_is_written_where_it_is_known_and_the_seed_carries_cost(
        tmp_path):
    prom = tmp_path / "runner.prom"
    seed = {"30-seeded.sh": {"result": "OK", "duration_s": 2.0, "try_num": 1,
                             "cpu_user_s": 1.5, "cpu_system_s": 0.25,
                             "peak_memory_bytes": 1000}}
    listener = MetricsListener(str(prom), RunIdentity("0123abcd", "h", "b", 1, None),
                               seed=seed)
    listener.started()
    listener.task_changed(_task_run("10-measured.sh", Cost(0.5, 0.125, 52_428_800)))
    listener.task_changed(_task_run("20-plain.sh", Cost(0.5, 0.125)))
    listener.task_changed(_task_run("40-never-started.sh", None))
    got = samples(prom)

    def value(name: str, **labels: str) -> float | None:
        return got.get((name, frozenset(labels.items())))

    assert value("runner_task_last_peak_memory_bytes", task="10-measured.sh") == 52_428_800
    assert value("runner_task_last_peak_memory_bytes", task="20-plain.sh") is None
    assert value("runner_task_last_cpu_seconds", task="20-plain.sh", mode="system") == 0.125
    assert value("runner_task_last_cpu_seconds", task="30-seeded.sh", mode="user") == 1.5
    assert value("runner_task_last_peak_memory_bytes", task="30-seeded.sh") == 1000
    assert value("runner_task_last_cpu_seconds", task="40-never-started.sh",
                 mode="user") is None
    assert "# TYPE runner_task_last_peak_memory_bytes gauge" in prom.read_text()
