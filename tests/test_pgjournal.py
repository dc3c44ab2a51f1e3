"""The fleet journal on a real PostgreSQL server: schema, forwarding, outages, fleet queries."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys

import psycopg
import pytest
from conftest import RUNNER, Workspace, need_root, skip_unless, wait_for
from pgserver import TcpProxy, via
from test_cost import BURNER

from runner import pgjournal
from runner.identity import iso
from runner.masking import mask_url


def pg_rows(url: str, sql: str, params: tuple = ()) -> list[dict]:
    with psycopg.connect(url, connect_timeout=5) as conn:
        cursor = conn.execute(sql, params)
        names = [c.name for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]


def local_rows(ws: Workspace, sql: str) -> list[dict]:
    conn = sqlite3.connect(ws.state / "journal.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute(sql)]
    finally:
        conn.close()


def flaky_chain(ws: Workspace) -> None:
    ws.task("10-first.sh", "echo first output")
    ws.task("20-flaky.sh", """
        if [ ! -e "$RUNNER_STATE_DIR/seen" ]; then touch "$RUNNER_STATE_DIR/seen"; exit 9; fi
        echo flaky passed
    """)


@pytest.mark.slow
def test_runs_are_forwarded_with_host_boot_id_results_and_output(ws, pg_url):
    flaky_chain(ws)
    ws.config(journal_url=pg_url)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert "cannot forward" not in proc.stderr
    remote = pg_rows(pg_url, "SELECT * FROM runner_task_runs ORDER BY seq")
    local = local_rows(ws, "SELECT * FROM task_runs ORDER BY seq")
    assert [(r["task"], r["try_num"], r["result"]) for r in remote] == [
        ("10-first.sh", 1, "OK"), ("20-flaky.sh", 1, "RETRY"),
        ("10-first.sh", 2, "OK"), ("20-flaky.sh", 2, "OK"),
    ]
    boot = open("/proc/sys/kernel/random/boot_id").read().strip()
    for mine, theirs in zip(local, remote, strict=True):
        assert theirs["host"] == socket.gethostname() and theirs["boot_id"] == boot
        assert theirs["output"] == mine["output"] and theirs["exit_code"] == mine["exit_code"]
        assert iso(theirs["started_at"]) == mine["started_at"]
    assert remote[3]["output"] == b"flaky passed\n"
    [run] = pg_rows(pg_url, "SELECT * FROM runner_runs")
    assert (run["result"], run["exit_status"]) == ("DONE", 0)
    tries = pg_rows(pg_url, "SELECT try_num, result FROM runner_tries ORDER BY try_num")
    assert tries == [{"try_num": 1, "result": "RETRY"}, {"try_num": 2, "result": "OK"}]
    # Everything sent is marked sent locally.
    assert not local_rows(ws, "SELECT * FROM task_runs WHERE synced_rev < rev")


@pytest.mark.slow
def test_the_schema_is_created_once_and_versioned(ws, pg_url):
    ws.task("10-ok.sh")
    ws.config(journal_url=pg_url)
    assert ws.run("-n", "1").returncode == 0
    assert ws.run("-n", "1").returncode == 0
    versions = pg_rows(pg_url, "SELECT version FROM runner_schema ORDER BY version")
    # One row per migration, each made once.
    assert versions == [{"version": n} for n in range(1, pgjournal.SCHEMA_VERSION + 1)]
    assert len(pg_rows(pg_url, "SELECT * FROM runner_runs")) == 2


def test_a_database_with_a_newer_schema_is_not_written_and_tasks_still_run(ws, pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE runner_schema (version integer NOT NULL)")
        conn.execute("INSERT INTO runner_schema VALUES (99)")
    ws.task("10-ok.sh", "echo did run")
    ws.config(journal_url=pg_url)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0 and "did run" in proc.stderr
    assert "newer than this runner" in proc.stderr and "Traceback" not in proc.stderr
    assert len(local_rows(ws, "SELECT * FROM task_runs WHERE synced_rev < rev")) == 1


def test_the_password_never_reaches_the_log_or_the_status_file(ws, pg_server):
    with TcpProxy(pg_server.host, pg_server.port) as proxy:
        proxy.stop()
        url = f"postgresql://runner:s3cr3t-pw@127.0.0.1:{proxy.port}/nowhere"
        ws.task("10-ok.sh")
        ws.config(journal_url=url)
        proc = ws.run("-n", "1")
    assert proc.returncode == 0
    assert "cannot forward" in proc.stderr and "runner:********@127.0.0.1" in proc.stderr
    assert "s3cr3t" not in proc.stderr
    assert "s3cr3t" not in (ws.root / "run" / "status.json").read_text()


@pytest.mark.slow
def test_an_outage_for_a_whole_run_loses_nothing_once_the_database_is_back(
        ws, pg_server, pg_url):
    flaky_chain(ws)
    with TcpProxy(pg_server.host, pg_server.port) as proxy:
        ws.config(journal_url=via(pg_url, proxy.port))
        proxy.stop()
        down = ws.run("-n", "1")
        assert down.returncode == 0, down.stderr
        assert sum("cannot forward" in line for line in down.stderr.splitlines()) == 1
        assert "not forwarded yet" in down.stderr
        live = json.loads((ws.root / "run" / "status.json").read_text())
        assert live["forward"]["ok"] is False and live["forward"]["pending"] >= 4
        assert mask_url(via(pg_url, proxy.port)) == live["forward"]["url"]
        held = local_rows(ws, "SELECT run_id, seq, result FROM task_runs ORDER BY seq")

        proxy.start()
        ws.task("30-later.sh")
        up = ws.run("-n", "1")
        assert up.returncode == 0, up.stderr
    remote = pg_rows(pg_url, "SELECT run_id, seq, result FROM runner_task_runs")
    for record in held:  # every record of the run during the outage arrived
        assert record in remote
    assert len(remote) == len(local_rows(ws, "SELECT * FROM task_runs")) == 4 + 3
    assert not local_rows(ws, "SELECT * FROM runs WHERE synced_rev < rev")


def test_an_outage_in_the_middle_of_a_run_is_bridged_without_stopping_tasks(
        ws, pg_server, pg_url):
    for number in range(1, 6):
        ws.task(f"{number}0-step.sh", f"""
            [ "$RUNNER_ITERATION" = 1 ] && [ {number} = 2 ] && touch "$RUNNER_STATE_DIR/mid"
            [ "$RUNNER_ITERATION" = 2 ] && [ {number} = 4 ] && \\
                while [ ! -e "$RUNNER_STATE_DIR/back" ]; do sleep 0.05; done
            echo step {number}
        """)
    with TcpProxy(pg_server.host, pg_server.port) as proxy:
        ws.config(journal_url=via(pg_url, proxy.port))
        proc = ws.start("-n", "3")
        wait_for(lambda: (ws.state / "mid").exists(), what="first iteration under way")
        proxy.stop()  # the database goes away mid-run ...
        wait_for(lambda: "cannot forward" in _status_error(ws), timeout=20,
                 what="runner to notice the outage")
        proxy.start()  # ... and comes back
        (ws.state / "back").touch()
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert err.count("step ") == 15
    remote = pg_rows(pg_url, "SELECT iteration, task, result FROM runner_task_runs")
    assert len(remote) == 15 and {r["result"] for r in remote} == {"OK"}
    [run] = pg_rows(pg_url, "SELECT result FROM runner_runs")
    assert run["result"] == "DONE"


def _status_error(ws: Workspace) -> str:
    try:
        live = json.loads((ws.root / "run" / "status.json").read_text())
    except (OSError, ValueError):
        return ""
    forward = live.get("forward") or {}
    return "" if forward.get("ok", True) else "cannot forward " + str(forward.get("error"))


# -- fleet queries -------------------------------------------------------------

def _as_host(ws: Workspace, host: str, *args: str) -> subprocess.CompletedProcess:
    """Run runner with another host name, in a UTS namespace of its own."""
    need_root("needs root to set a host name in a UTS namespace of its own")
    skip_unless(shutil.which("unshare") is not None, "needs unshare (util-linux)")
    command = " ".join(f"'{a}'" for a in [RUNNER, "-c", str(ws.cfg), *args, str(ws.tasks)])
    return subprocess.run(
        ["unshare", "-u", "sh", "-c", f"hostname {host} && exec {command}"],
        capture_output=True, text=True, timeout=60, cwd=ws.root,
    )


@pytest.fixture
def fleet(ws, pg_url):
    """Three workers sharing one database: worker-1 and -3 pass, worker-2 gives up."""
    ws.task("10-setup.sh", "echo setting up on $(hostname)")
    ws.task("20-puppet.sh", '[ "$(hostname)" = worker-2 ] && { echo puppet broke; exit 1; }; '
            "echo puppet fine")
    ws.config(journal_url=pg_url, max_tries=2)
    for host in ("worker-1", "worker-2", "worker-3"):
        (ws.state / "journal.sqlite").unlink(missing_ok=True)  # each worker has its own disk
        proc = _as_host(ws, host, "-n", "1")
        if proc.returncode != 0 and "unshare" in proc.stderr:
            skip_unless(False, f"unshare -u is not permitted here: {proc.stderr.strip()}")
        assert proc.returncode == (1 if host == "worker-2" else 0), proc.stderr
    return ws


@pytest.mark.slow
@pytest.mark.root
def test_the_fleet_journal_answers_which_workers_failed_a_task_today(fleet):
    proc = fleet.run("history", "--task", "puppet", "--since", "today", "--json", tasks=False)
    assert proc.returncode == 0, proc.stderr
    records = json.loads(proc.stdout)
    failed = sorted({r["host"] for r in records if r["result"] != "OK"})
    assert failed == ["worker-2"]
    assert sorted({r["host"] for r in records}) == ["worker-1", "worker-2", "worker-3"]
    for record in records:
        for field in ("task", "result", "try_num", "iteration", "started_at", "duration_s",
                      "exit_code", "run_id", "host"):
            assert field in record
    table = fleet.run("history", "--task", "puppet", tasks=False).stdout
    assert "HOST" in table.splitlines()[0] and "worker-2" in table


@pytest.mark.slow
@pytest.mark.root
def test_host_filters_and_the_local_journal_are_separate_views(fleet):
    only = json.loads(fleet.run("history", "--host", "worker-2", "--json", tasks=False).stdout)
    assert {r["host"] for r in only} == {"worker-2"} and len(only) == 4
    log = fleet.run("log", "puppet", "--host", "worker-2", tasks=False)
    assert log.returncode == 0 and "puppet broke" in log.stdout
    # --local reads this disk's journal: only the last worker ran with it.
    local = json.loads(fleet.run("history", "--local", "--json", tasks=False).stdout)
    assert {r["host"] for r in local} == {"worker-3"}
    blame = json.loads(fleet.run("blame", "--since", "1h", "--json", tasks=False).stdout)
    assert {r["task"]: r["runs"] for r in blame} == {"10-setup.sh": 4, "20-puppet.sh": 4}
    assert {r["task"]: r["failures"] for r in blame} == {"10-setup.sh": 0, "20-puppet.sh": 2}


def test_journal_commands_say_so_in_one_line_when_the_database_is_unreachable(
        ws, pg_server, pg_url):
    ws.task("10-ok.sh")
    with TcpProxy(pg_server.host, pg_server.port) as proxy:
        proxy.stop()
        ws.config(journal_url=via(pg_url, proxy.port))
        proc = ws.run("history", tasks=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{proxy.port}" in lines[0], proc.stderr


def test_without_psycopg_runner_warns_keeps_records_locally_and_check_says_so(ws, tmp_path):
    # A psycopg that cannot be imported, first on the path: as on a host without the package.
    shadow = tmp_path / "no-psycopg" / "psycopg"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named psycopg')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    ws.task("10-ok.sh", "echo ran anyway")
    ws.config(journal_url="postgresql://runner@127.0.0.1:9/fleet")
    check = ws.run("check", env=env)
    assert check.returncode == 0 and "python3-psycopg" in check.stderr
    proc = ws.run("-n", "1", env=env)
    assert proc.returncode == 0 and "ran anyway" in proc.stderr
    assert "python3-psycopg" in proc.stderr and "Traceback" not in proc.stderr
    assert len(local_rows(ws, "SELECT * FROM task_runs WHERE synced_rev < rev")) == 1


# -- what each task run cost ---------------------------------------------------------

COST = ("cpu_user_s", "cpu_system_s", "peak_memory_bytes")


def test_the_cost_of_each_task_run_is_forwarded_and_read_back(ws, pg_url):
    ws.task("10-burn.py", BURNER, shebang=f"#!{sys.executable}")
    ws.task("20-sleep.sh", "sleep 0.3")
    ws.config(journal_url=pg_url)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    local = {r["task"]: r for r in local_rows(ws, "SELECT * FROM task_runs")}
    remote = {r["task"]: r for r in pg_rows(pg_url, "SELECT * FROM runner_task_runs")}
    for task in ("10-burn.py", "20-sleep.sh"):
        assert {c: remote[task][c] for c in COST} == {c: local[task][c] for c in COST}
    assert remote["10-burn.py"]["cpu_user_s"] >= 0.2
    assert remote["20-sleep.sh"]["cpu_user_s"] < 0.1
    history = json.loads(ws.run("history", "--json", tasks=False).stdout)  # from PostgreSQL
    assert {r["task"]: r["cpu_user_s"] for r in history} == {
        task: row["cpu_user_s"] for task, row in local.items()}
    blame = {r["task"]: r for r in json.loads(ws.run("blame", "--json", tasks=False).stdout)}
    assert blame["10-burn.py"]["cpu_s"] >= 0.2 and blame["20-sleep.sh"]["cpu_s"] < 0.1
    assert blame["10-burn.py"]["peak_memory_bytes"] is None


def test_a_database_without_cost_columns_is_read_as_it_is_then_gets_them(
        ws, pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for statement in pgjournal.MIGRATIONS[0].split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("CREATE TABLE runner_schema (version integer NOT NULL)")
        conn.execute("INSERT INTO runner_schema VALUES (1)")
        conn.execute(
            "INSERT INTO runner_runs (run_id, host, started_at, result) VALUES "
            "(%s, %s, now() - interval '1 hour', 'DONE')", ("a" * 32, socket.gethostname()))
        conn.execute(
            "INSERT INTO runner_task_runs (run_id, seq, host, iteration, try_num, max_tries, "
            "task, kind, result, started_at, duration_s) VALUES "
            "(%s, 1, %s, 1, 1, 5, '10-burn.py', 'task', 'OK', now() - interval '1 hour', 0.5)",
            ("a" * 32, socket.gethostname()))
    ws.config(journal_url=pg_url)
    # Before a runner migrates it, the commands read it: no cost known.
    [old] = json.loads(ws.run("history", "--json", tasks=False).stdout)
    assert {c: old[c] for c in COST} == dict.fromkeys(COST)
    ws.task("10-burn.py", BURNER, shebang=f"#!{sys.executable}")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert "cannot forward" not in proc.stderr
    # A schema 1 database without the cost columns: this runner migrates it to schema 2
    # (runner.fleetschema), whose task runs have them; the old row's are null.
    assert pg_rows(pg_url, "SELECT version FROM runner_schema ORDER BY version") == [
        {"version": 1}, {"version": 2}]
    rows = pg_rows(pg_url, "SELECT run_id, cpu_user_s, peak_memory_bytes "
                           "FROM runner_task_runs ORDER BY started_at")
    assert rows[0] == {"run_id": "a" * 32, "cpu_user_s": None, "peak_memory_bytes": None}
    assert rows[1]["cpu_user_s"] >= 0.2 and rows[1]["peak_memory_bytes"] is None
    history = json.loads(ws.run("history", "--json", tasks=False).stdout)
    assert [r["cpu_user_s"] for r in history] == [None, rows[1]["cpu_user_s"]]
