"""Forwarding to the fleet journal: short connections, backoff that holds while tasks run,
the exit flush, and runner itself free of psycopg (real runner, real PostgreSQL)."""

from __future__ import annotations

import time

import psycopg
import pytest
from conftest import Workspace, wait_for
from pgserver import TcpProxy, via
from test_pgjournal import local_rows, pg_rows

from runner import forwarder


def backends(url: str) -> int:
    """Sessions on `url`'s database other than the one asking."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                           "current_database() AND pid <> pg_backend_pid()").fetchone()
    assert row is not None
    return row[0]


def remote_task_runs(url: str) -> list[dict]:
    """runner_task_runs, empty before a runner created it."""
    try:
        return pg_rows(url, "SELECT run_id, seq, task FROM runner_task_runs")
    except psycopg.errors.UndefinedTable:
        return []


def all_arrived(ws: Workspace, url: str) -> bool:
    local = {(r["run_id"], r["seq"]) for r in local_rows(ws, "SELECT * FROM task_runs")}
    remote = {(r["run_id"], r["seq"]) for r in remote_task_runs(url)}
    return bool(local) and local == remote


def test_the_connection_is_let_go_while_a_long_task_runs_and_runner_holds_no_libpq(
        ws, pg_url):
    ws.task("10-quick.sh", "echo quick")
    # While the long task runs: which libraries runner has loaded, then wait to be told.
    ws.task("20-long.sh", """
        grep -c libpq /proc/$PPID/maps > "$RUNNER_STATE_DIR/libpq-maps"
        touch "$RUNNER_STATE_DIR/long"
        while [ ! -e "$RUNNER_STATE_DIR/done" ]; do sleep 0.05; done
    """)
    ws.config(journal_url=pg_url)
    proc = ws.start("-n", "1")
    try:
        wait_for(lambda: (ws.state / "long").exists(), what="the long task")
        wait_for(lambda: any(r["task"] == "10-quick.sh" for r in remote_task_runs(pg_url)),
                 timeout=15, what="the first task's row in PostgreSQL")
        # Nothing written for LINGER_S: the forwarding process and its connection end.
        wait_for(lambda: backends(pg_url) == 0, timeout=forwarder.LINGER_S + 10,
                 what="runner to let go of its connection")
        assert (ws.state / "libpq-maps").read_text().strip() == "0"
    finally:
        (ws.state / "done").touch()
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "cannot forward" not in err and all_arrived(ws, pg_url)


def test_an_outage_while_tasks_run_is_retried_with_backoff_not_at_every_write(
        ws, pg_server, pg_url):
    # A task every ~0.1 s: each one writes the journal, and each write used to reconnect
    # at once (209 attempts in 27 s of outage).
    ws.task("10-quick.sh", "sleep 0.1")
    with TcpProxy(pg_server.host, pg_server.port) as proxy:
        ws.config(journal_url=via(pg_url, proxy.port))
        proxy.reject()  # every connection attempt is accepted, counted and cut
        proc = ws.start("-n", "0")
        try:
            began = time.monotonic()
            time.sleep(10)
            attempts, window = proxy.rejected, time.monotonic() - began
            written = len(local_rows(ws, "SELECT * FROM task_runs"))
            proxy.start()  # the database is back: everything goes
            wait_for(lambda: all_arrived(ws, pg_url), timeout=forwarder.MAX_BACKOFF_S + 10,
                     what="every row in PostgreSQL after the outage")
        finally:
            proc.terminate()
            _out, err = proc.communicate(timeout=30)
    assert written >= 40, "the tasks ran on during the outage"
    # Doubling from 1 s (jitter: at least half of it): attempts at 0, ≥0.5, ≥1.5, ≥3.5,
    # ≥7.5 s; libpq may try twice per attempt (with and without TLS).
    assert 1 <= attempts <= 2 * 5, (attempts, window)
    assert err.count("cannot forward") == 1 and "reachable again" in err


def test_the_exit_flush_keeps_trying_until_the_database_is_back(ws, pg_server, pg_url):
    ws.task("10-first.sh", "echo first")
    ws.task("20-last.sh", 'touch "$RUNNER_STATE_DIR/last"')
    with TcpProxy(pg_server.host, pg_server.port) as proxy:
        ws.config(journal_url=via(pg_url, proxy.port))
        proxy.reject()
        proc = ws.start("-n", "1")
        wait_for(lambda: (ws.state / "last").exists(), what="the last task")
        time.sleep(1.5)  # runner is exiting, and the database is still down ...
        proxy.start()  # ... until now
        _out, err = proc.communicate(timeout=forwarder.FLUSH_AT_EXIT_S + 30)
        rejected = proxy.rejected
    assert proc.returncode == 0, err
    assert rejected >= 2, "runner tried more than once at exit"
    assert "not forwarded yet" not in err, err
    assert all_arrived(ws, pg_url)
    assert not local_rows(ws, "SELECT * FROM runs WHERE synced_rev < rev")


@pytest.mark.parametrize("failures", range(1, 10))
def test_backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half(failures):
    import random

    rng = random.Random(failures)
    ceiling = min(forwarder.MAX_BACKOFF_S, forwarder.BACKOFF_FIRST_S * 2 ** (failures - 1))
    delays = [forwarder.backoff_delay(failures, rng=rng) for _ in range(200)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert max(delays) - min(delays) > ceiling / 4  # spread, not one value
