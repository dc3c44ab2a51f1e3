"""The benchmarks run and measure what they claim (their speed targets are checked by
running them, not here: these machines are shared and noisy)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import skip_unless
from pgserver import PgServer

ROOT = Path(__file__).resolve().parent.parent


def test_the_parallel_graph_benchmark_never_beats_its_critical_path():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "parallel_graph.py"), "--scale", "0.3",
         "--max-ratio", "100", "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["tasks"] == 16 and result["waves"] >= 4
    # Shorter than the critical path would mean a dependency was not waited for; the
    # sum of the work is what running one at a time would cost.
    assert result["ratio"] >= 0.99
    assert result["chain_s"] < result["sum_s"]
    assert result["critical_path"][0].startswith("t0")
    assert result["critical_path"][-1].startswith("t3")


@pytest.mark.slow
def test_the_benchmark_table_runs_every_benchmark_and_checks_its_tasks(capsys):
    """bench/bench.py --quick: every benchmark present and not broken, the tasks really
    ran, the figures and ratios positive. Misses are the table's business, not this
    test's (no timing threshold here); the table is printed for CI's log."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench.py"), "--quick", "--json"],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout[-2000:]
    report = json.loads(proc.stdout)
    with capsys.disabled():
        print("\n" + report["table"])
    assert report["quick"] is True and report["broken"] == {}
    benches = ("chain", "config", "getconf", "wait", "graph", "strict", "commands", "memory")
    assert set(report["results"]) == set(benches)
    assert {r["benchmark"] for r in report["rows"]} == set(benches)
    assert all(r["status"] in ("PASS", "MISS", "INFO", "SKIP") for r in report["rows"])
    for row in report["rows"]:
        # runner's own overhead is a difference of noisy walls (chain - empty - bodies):
        # at --quick sizes it may come out below zero, which is noise, not a broken bench.
        derived = "overhead" in row["name"]
        if row["status"] != "SKIP":
            assert row["value"] is not None and (derived or row["value"] >= 0), row
        if row["ratio"] is not None and not derived:
            assert row["ratio"] > 0, row
    assert set(report["misses"]) == {
        f"{r['name']} ({r['target']})" for r in report["rows"] if r["status"] == "MISS"}

    methods = {"runner", "run-parts", "shell loop"}
    for name in ("chain", "config"):
        result = report["results"][name]
        assert set(result["per_task_ms"]) == methods
        # Each run was checked (runner logged every task OK, the marks were there): a chain
        # of N tasks takes longer than none, for every method.
        for method in methods:
            assert result["wall_s"][method] > result["empty_wall_s"][method] > 0
            assert result["per_task_ms"][method] > 0
            assert result["ratio_to_run_parts"][method] > 0
    config = report["results"]["config"]
    assert config["calls_per_task"] == 10
    # The tasks' bodies (10 lookups each) happen inside the chain's wall time.
    for method in methods:
        assert 0 < config["body_s"][method] < config["wall_s"][method]

    getconf = report["results"]["getconf"]
    cmd = getconf["config_cmd"]
    assert cmd[1:3] == ["-I", "-S"] and cmd[3].endswith("lookup.py") and "--snapshot" in cmd
    assert getconf["interpreter_is_binary"], getconf["interpreter_real"]
    assert all(ms > 0 for ms in getconf["median_ms"].values())
    assert getconf["ratio_to_floor"] > 0

    wait = report["results"]["wait"]
    assert wait["runs"] and all(r["waited_s"] >= wait["sleep_s"] * 0.9 for r in wait["runs"])
    assert 0 <= wait["cpu_wait_s"] and 0 < wait["interpreter_peak_rss_mb"] < wait["peak_rss_mb"]

    graph = report["results"]["graph"]
    assert graph["tasks"] == 30
    # Never shorter than the critical path (a dependency not waited for), never as long
    # as running the tasks one by one.
    assert graph["ratio"] >= 0.99 and graph["chain_s"] < graph["sum_s"]

    memory = report["results"]["memory"]
    assert set(memory) == {"200", "2000"}  # each run checked: every task logged OK
    assert all(m["peak_rss_mb"] > wait["interpreter_peak_rss_mb"] for m in memory.values())

    commands = report["results"]["commands"]
    assert commands["interpreter_is_binary"], commands["interpreter"]
    assert set(commands["ratio_to_floor"]) == {
        "runner status", "runner ctl pause", "runner history --limit 20", "runner check",
        "runner check, no cache (validates)", "runner --help"}
    assert all(ratio > 0 for ratio in commands["ratio_to_floor"].values())

    strict = report["results"]["strict"]
    if os.geteuid() == 0:  # the check applies only to a runner running as root
        assert strict["tasks"] == 40 and 0 < strict["verify_us"]
        assert all(ms > 0 for ms in strict["per_task_ms"].values())


def test_a_runner_that_runs_no_task_makes_the_benchmark_broken_not_fast():
    """A "runner" that exits 0 at once would be the fastest of all: the benchmark must
    notice that its tasks never ran, call itself BROKEN and exit 2."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench.py"), "--quick", "--json",
         "--only", "chain,graph", "--runner", "/bin/true"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report["broken"]) == {"chain", "graph"}
    assert "ran 0 of 40 tasks" in report["broken"]["chain"]
    assert [r["status"] for r in report["rows"]] == ["BROKEN", "BROKEN"]


def test_the_journal_size_benchmark_trims_to_its_target_and_reports_every_figure():
    """bench/journal_size.py on a 2 MiB bound: the trim got under 80% of it (the script
    asserts that itself) and every figure is there and positive."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "journal_size.py"), "--mb", "2", "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode in (0, 1), proc.stderr  # 1: a target missed on a busy machine
    result = json.loads(proc.stdout)
    assert result["file_bytes"] > 2 * 1024 * 1024 and result["trimmed"] > 0
    for key in ("start_s", "read_s", "write_s", "check_s", "trim_s", "prune_s"):
        assert result[key] > 0, key


def test_the_task_profile_measures_every_part_of_a_task_run():
    """bench/task_profile.py runs every part with runner's own classes and the whole
    chain for real; each figure is a positive time."""
    script = Path(__file__).resolve().parent.parent / "bench" / "task_profile.py"
    proc = subprocess.run([sys.executable, str(script), "--tasks", "5", "--rounds", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    figures = dict(re.findall(r"^  (\S+(?: \S+)?) +(-?[\d.]+) ms/task", proc.stdout, re.M))
    assert set(figures) == {"spawn floor", "process", "journal", "status file", "logging",
                            "whole chain"}, proc.stdout
    # The whole chain is a difference of two noisy walls at this size: only the parts,
    # each timed alone, must be positive.
    assert all(float(figures[part]) > 0 for part in figures if part != "whole chain"), \
        proc.stdout


def test_the_plot_and_progress_benchmark_measures_both_on_real_runs():
    """bench/plot_progress.py, small: both chains ran (on a pty, with and without the
    line), the plot had a bar for each of the 5N task runs (the script checks it)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "plot_progress.py"), "--tasks", "10",
         "--rounds", "1", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result = json.loads(proc.stdout)
    assert result["progress"]["tasks"] == 10 and result["plot"]["task_runs"] == 50
    for figure in ("progress_s", "no_progress_s", "progress_cpu_s", "cpu_ratio"):
        assert result["progress"][figure] > 0
    assert result["plot"]["plot_s"] > 0 and result["plot"]["svg_bytes"] > 10000


@pytest.mark.slow
@pytest.mark.postgres
def test_the_fleet_benchmark_loses_no_row_and_stays_within_the_connection_limit():
    """bench/fleet_load.py small: 20 real runners, a server taking 5 of them at once
    (max_connections 8, 3 reserved), a 4 s outage in the middle. Every task run of every
    local journal is in PostgreSQL at the end, and the server never held more sessions
    than it allows (refused ones were backed off, not lost)."""
    problem = PgServer.unavailable_reason()
    skip_unless(problem is None, problem or "")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fleet_load.py"), "--runners", "20",
         "--max-connections", "8", "--warmup", "4", "--outage", "4", "--after", "4",
         "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode in (0, 1), proc.stderr
    result = json.loads(proc.stdout)
    assert result["lost"] == 0, result
    assert result["task_runs"] >= 20 * 3, result  # every host ran its tasks
    assert 1 <= result["peak_connections"] <= result["limit"] == 5, result
    assert result["drain_s"] == result["drain_s"], result  # drained (not NaN)
    assert 0 < result["rss_mb"]["max"] < 30, result
    assert proc.returncode == 0, result


@pytest.mark.slow
def test_the_fleet_query_benchmark_answers_right_on_a_small_fleet():
    """bench/fleet_queries.py at a small size: every command answers (times are the
    benchmark's business), and --check asserts the answers: the README recipe names every
    host that failed puppet (more than the 50 a table shows), `runner fleet` names the
    failing, silent and stuck hosts the generator made."""
    problem = PgServer.unavailable_reason()
    skip_unless(problem is None, problem or "")
    skip_unless(shutil.which("jq") is not None, "needs jq (the README recipe pipes to it)")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fleet_queries.py"), "--hosts", "120",
         "--days", "2", "--iterations", "6", "--failing", "60", "--no-cold", "--check",
         "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert {r["status"] for r in report["results"][1:]} == {0}, report["results"]
    assert report["results"][0]["status"] == 1  # the floor: no such task
    assert len(report["results"]) == 11
    check = report["check"]
    assert check["recipe_hosts"] >= 60 and check["failing"] == 60
    assert (check["silent"], check["stuck"]) == (5, 4)
    assert check["blame_tasks"] == 14  # blame --since from the rollup: the raw sums
