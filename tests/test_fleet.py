"""The fleet journal's schema 2 (runner.fleetschema: day partitions, migration from schema
1, retention) and `runner fleet`, on a real PostgreSQL server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from conftest import RUNNER, Workspace, assert_one_line_error

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import fleetgen
from fleet_queries import create_schema

from runner import fleetschema, pgjournal

TABLES = ("runner_runs", "runner_tries", "runner_task_runs")


def connect(url: str, autocommit: bool = True) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=autocommit, connect_timeout=10)


def everything(url: str) -> dict[str, list[tuple]]:
    """Every row of runner's tables, in a stable order (received_at included: a migration
    that rewrote it would show)."""
    with connect(url) as conn:
        return {table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
                for table in TABLES}


def add_task_run(conn: psycopg.Connection, run_id: str, started_at: datetime,
                 ended: bool = True) -> None:
    conn.execute(
        "INSERT INTO runner_task_runs (run_id, seq, host, iteration, try_num, max_tries, "
        "task, kind, result, started_at, ended_at) VALUES (%s, 1, 'odd-host', 1, 1, 1, "
        "'10-odd.sh', 'task', %s, %s, %s)",
        (run_id, "OK" if ended else "RUNNING", started_at,
         started_at + timedelta(seconds=1) if ended else None))


def fleet_database(url: str, fleet: fleetgen.Fleet, schema: int = 2) -> datetime:
    """`fleet` generated into the database at `url` in schema `schema`; its `now`."""
    create_schema(url, schema)
    now = datetime.now(UTC)
    with connect(url) as conn:
        if schema >= 2:
            with conn.transaction():
                fleetschema.ensure_partitions(
                    conn, now.date(), (now - timedelta(days=fleet.days + 1)).date())
        fleetgen.generate(conn, fleet, now)
    return now


def test_a_schema_1_database_with_rows_migrates_once_and_keeps_every_row(pg_url):
    now = fleet_database(pg_url, fleetgen.Fleet(hosts=12, days=3, iterations=4, tasks=5,
                                                  failing=3, silent=1, stuck=1), schema=1)
    with connect(pg_url) as conn:
        # Rows no day partition is made for: a clock of 1970, one a year ahead.
        add_task_run(conn, "clock-behind", datetime(1970, 1, 2, tzinfo=UTC))
        add_task_run(conn, "clock-ahead", now + timedelta(days=365))
        add_task_run(conn, "still-running", now - timedelta(hours=1), ended=False)
    before = everything(pg_url)
    assert len(before["runner_task_runs"]) > 500

    # Eight runners connect at once: one migrates, the others wait on the lock and find
    # schema 2 made.
    errors: list[BaseException] = []

    def connect_like_a_runner() -> None:
        try:
            pgjournal.pg_connect(pg_url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=connect_like_a_runner) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors

    assert everything(pg_url) == before
    with connect(pg_url) as conn:
        versions = [row[0] for row in conn.execute(
            "SELECT version FROM runner_schema ORDER BY version")]
        assert versions == [1, 2]
        assert fleetschema.is_partitioned(conn)
        assert conn.execute("SELECT to_regclass('runner_task_runs_v1')").fetchone()[0] is None
        where = dict(conn.execute(
            "SELECT run_id, tableoid::regclass::text FROM runner_task_runs "
            "WHERE run_id IN ('clock-behind', 'clock-ahead', 'still-running')").fetchall())
        days = fleetschema.day_partitions(conn)
    assert where["clock-behind"] == where["clock-ahead"] == fleetschema.DEFAULT_PARTITION
    assert where["still-running"] == fleetschema.partition_name(
        (now - timedelta(hours=1)).date())
    # The generated days, and a week ahead; nothing for 1970.
    assert min(days) == (now - timedelta(days=3)).date()
    assert max(days) == now.date() + timedelta(days=fleetschema.AHEAD_DAYS)


def test_a_runner_forwards_into_the_partitioned_table_and_a_resend_is_one_row(ws, pg_url):
    ws.task("10-ok.sh", "echo hi")
    ws.config(journal_url=pg_url)
    assert ws.run("-n", "2").returncode == 0
    with connect(pg_url) as conn:
        rows = conn.execute("SELECT run_id, seq, result, tableoid::regclass::text "
                            "FROM runner_task_runs ORDER BY seq").fetchall()
        # Send the same rows again, as a runner whose "sent" mark was lost would.
        with conn.transaction(), conn.cursor() as cursor:
            row = conn.execute(
                "SELECT run_id, seq, host, boot_id, iteration, try_num, max_tries, task, "
                "kind, 'OK', exit_code, signal, error, started_at::text, ended_at::text, "
                "duration_s, output, cpu_user_s, cpu_system_s, peak_memory_bytes "
                "FROM runner_task_runs ORDER BY seq LIMIT 1").fetchone()
            cursor.execute(pgjournal._upsert_sql("task_runs"), row)
        count = conn.execute("SELECT count(*) FROM runner_task_runs").fetchone()[0]
    assert [(seq, result) for _, seq, result, _ in rows] == [(1, "OK"), (2, "OK")]
    today = fleetschema.partition_name(datetime.now(UTC).date())
    assert {part for *_, part in rows} <= {today, fleetschema.partition_name(
        (datetime.now(UTC) - timedelta(minutes=1)).date())}
    assert count == 2


def test_a_days_partition_takes_the_rows_default_holds_for_it(pg_url):
    create_schema(pg_url, 2)
    later = datetime.now(UTC) + timedelta(days=30)
    with connect(pg_url) as conn:
        add_task_run(conn, "ahead", later)
        with conn.transaction():
            made = fleetschema.ensure_partitions(conn, later.date())
        where = conn.execute("SELECT tableoid::regclass::text FROM runner_task_runs "
                             "WHERE run_id = 'ahead'").fetchone()[0]
        left = conn.execute(f"SELECT count(*) FROM {fleetschema.DEFAULT_PARTITION}"
                            ).fetchone()[0]
    assert fleetschema.partition_name(later.date()) in made
    assert where == fleetschema.partition_name(later.date()) and left == 0


def test_a_fleet_query_in_progress_never_queues_a_runners_connection(pg_url):
    """Making a partition needs an exclusive lock on runner_task_runs: a runner that
    connects while a long fleet query reads it gives up making it (after LOCK_WAIT),
    rather than make every host's inserts wait behind it; the next connection makes it.
    prune() skips the same way."""
    create_schema(pg_url, 2)
    ahead = datetime.now(UTC).date() + timedelta(days=fleetschema.AHEAD_DAYS)
    with connect(pg_url) as conn:
        conn.execute(f"DROP TABLE {fleetschema.partition_name(ahead)}")
    with connect(pg_url, autocommit=False) as reader:
        reader.execute("SELECT count(*) FROM runner_task_runs").fetchone()  # holds it
        began = time.monotonic()
        pgjournal.pg_connect(pg_url).close()
        waited = time.monotonic() - began
        with connect(pg_url) as conn:
            busy = fleetschema.prune(conn, 1, force=True)
            missing = ahead not in fleetschema.day_partitions(conn)
        reader.rollback()
    assert missing and waited < 5
    assert busy.skipped and "busy" in busy.skipped
    pgjournal.pg_connect(pg_url).close()
    with connect(pg_url) as conn:
        assert ahead in fleetschema.day_partitions(conn)


def test_prune_drops_old_days_whole_and_keeps_what_has_not_ended(pg_url):
    fleet = fleetgen.Fleet(hosts=6, days=6, iterations=2, tasks=3, failing=1, silent=1,
                           stuck=1)
    now = fleet_database(pg_url, fleet)
    with connect(pg_url) as conn:
        add_task_run(conn, "old-running", now - timedelta(days=5), ended=False)
        add_task_run(conn, "old-ended", now - timedelta(days=5))
        old_days = [day for day in fleetschema.day_partitions(conn)
                    if day < now.date() - timedelta(days=2)]
        assert old_days
        # Another host is pruning (holds the lock): this one skips, and waits for nothing.
        with connect(pg_url, autocommit=False) as other:
            other.execute("SELECT pg_advisory_xact_lock(%s)", (fleetschema.PRUNE_LOCK,))
            busy = fleetschema.prune(conn, 2, now=now)
            other.rollback()
        assert busy.skipped == "another host is pruning" and not busy.dropped
        result = fleetschema.prune(conn, 2, now=now)
        again = fleetschema.prune(conn, 2, now=now + timedelta(minutes=30))
        days = fleetschema.day_partitions(conn)
        oldest_task_run = conn.execute(
            "SELECT min(started_at) FROM runner_task_runs WHERE ended_at IS NOT NULL"
        ).fetchone()[0]
        kept = {row[0] for row in conn.execute(
            "SELECT run_id FROM runner_task_runs WHERE run_id LIKE 'old-%'")}
        hosts = conn.execute("SELECT count(DISTINCT host) FROM runner_runs").fetchone()[0]
        old_runs = conn.execute("SELECT count(*) FROM runner_runs WHERE started_at < %s",
                                (now - timedelta(days=3),)).fetchone()[0]
    assert sorted(result.dropped) == sorted(fleetschema.partition_name(d) for d in old_days)
    assert min(days) == now.date() - timedelta(days=2)
    assert oldest_task_run >= datetime.combine(min(days), datetime.min.time(), UTC)
    assert kept == {"old-running"} and result.kept_unended >= 1
    assert again.skipped and again.skipped.startswith("pruned at")
    # Every host still has its newest run (the silent host's is old), older ones are gone.
    assert hosts == fleet.hosts + 0 and old_runs == 0


def test_a_runners_forwarder_applies_fleet_keep_days_to_the_fleet_journal(ws, pg_url):
    """fleet_keep_days set in runner.cfg reaches PostgreSQL through the forwarding
    process: after a run, the days older than it are gone, the run's own rows are there."""
    fleet = fleetgen.Fleet(hosts=3, days=6, iterations=2, tasks=2, failing=1, silent=0,
                           stuck=0)
    now = fleet_database(pg_url, fleet)
    with connect(pg_url) as conn:
        assert min(fleetschema.day_partitions(conn)) < now.date() - timedelta(days=2)
    ws.task("10-ok.sh")
    ws.config(journal_url=pg_url, fleet_keep_days=2)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    with connect(pg_url) as conn:
        days = fleetschema.day_partitions(conn)
        mine = conn.execute("SELECT count(*) FROM runner_task_runs WHERE task = '10-ok.sh'"
                            ).fetchone()[0]
    assert min(days) >= now.date() - timedelta(days=2)
    assert mine == 1


def run_fleet(ws: Workspace, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([RUNNER, "-c", str(ws.cfg), *args], capture_output=True,
                          text=True, timeout=120)


def test_runner_fleet_says_when_its_answer_is_cut_and_json_never_hides_it(ws, pg_url):
    fleet = fleetgen.Fleet(hosts=70, days=2, iterations=24, tasks=4, failing=55, silent=2,
                           stuck=2)
    fleet_database(pg_url, fleet)
    ws.config(journal_url=pg_url)
    table = run_fleet(ws, "fleet", "failing")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert len([line for line in lines if line.startswith("host-")]) == 50
    assert lines[-1] == "… 5 more; use --limit 55 (or --json)"
    whole = json.loads(run_fleet(ws, "fleet", "failing", "--json").stdout)
    assert (whole["total"], whole["shown"], whole["truncated"]) == (55, 55, False)
    assert {row["host"] for row in whole["rows"]} == set(fleet.failing_hosts())
    cut = json.loads(run_fleet(ws, "fleet", "failing", "--json", "--limit", "5").stdout)
    assert (cut["total"], cut["shown"], cut["truncated"]) == (55, 5, True)
    # history: a table says it is cut; --json is every run (the README recipe).
    history = run_fleet(ws, "history", "--task", "puppet", "--since", "1d")
    assert "older task runs not shown (the newest 50)" in history.stdout.splitlines()[-1]
    runs = json.loads(run_fleet(ws, "history", "--task", "puppet", "--since", "1d",
                                "--json").stdout)
    assert len(runs) > 50 * 24 and {r["task"] for r in runs} == {"20-puppet.sh"}
    silent = run_fleet(ws, "fleet", "silent", "--since", "1d")
    assert sorted(line.split()[0] for line in silent.stdout.splitlines()[1:]) == \
        fleet.silent_hosts()


def test_runner_fleet_bad_input_is_one_line_and_78(ws, pg_url):
    assert_one_line_error(run_fleet(ws, "fleet", "failing"), "journal_url is not set")
    ws.config(journal_url=pg_url)
    assert_one_line_error(run_fleet(ws, "fleet", "stuck", "--for", "soon"), "--for", "soon")
    assert_one_line_error(run_fleet(ws, "fleet", "tasks", "--since", "whenever"), "--since")
    assert_one_line_error(run_fleet(ws, "fleet", "everything"), "QUESTION")


@pytest.mark.parametrize("question", ["failing", "stuck", "silent", "tasks", "ready"])
def test_each_question_answers_an_empty_fleet_journal_with_nothing(ws, pg_url, question):
    create_schema(pg_url, 2)
    ws.config(journal_url=pg_url)
    proc = run_fleet(ws, "fleet", question, "--json")
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["rows"] == []
