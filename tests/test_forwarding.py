"""Forwarding to the fleet journal: short connections, backoff that holds while tasks run,
the exit flush, and runner itself free of psycopg (real runner, real PostgreSQL)."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

import psycopg
import pytest
from conftest import Workspace, skip_unless, wait_for
from pgserver import PgBouncer, TcpProxy, via
from test_pgjournal import local_rows, pg_rows

from runner import forwarder, pgjournal


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
    """Every task run of this host's journal is in PostgreSQL (others' may be too)."""
    local = {(r["run_id"], r["seq"]) for r in local_rows(ws, "SELECT * FROM task_runs")}
    remote = {(r["run_id"], r["seq"]) for r in remote_task_runs(url)}
    return bool(local) and local <= remote


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
    assert written >= 20, ("the tasks ran on during the outage", written)
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


class PeakBackends:
    """Polls the server sessions on a database (every 20 ms) while in the block."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.peak = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.done.wait(0.02):
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid()").fetchone()
                self.peak = max(self.peak, row[0] if row else 0)

    def __enter__(self) -> PeakBackends:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(5)


def test_runners_forward_through_pgbouncer_in_transaction_pooling_mode(
        tmp_path, pg_server, pg_url):
    """Six runners at once, two server connections between them: consecutive
    transactions of one runner land on different server sessions, so nothing may live in
    the session (prepared statements: psycopg prepares a query run five times)."""
    skip_unless(PgBouncer.binary() is not None, "needs pgbouncer (Debian: pgbouncer)")
    hosts = []
    for number in range(6):
        (tmp_path / f"host{number}").mkdir()
        ws = Workspace(tmp_path / f"host{number}")
        for task in range(8):
            ws.task(f"{task}0-step.sh", f"echo host {number} step {task}")
        hosts.append(ws)
    user = urlsplit(pg_url).username or "postgres"
    with PgBouncer(pg_server.host, pg_server.port, user, pool_size=2) as bouncer:
        for ws in hosts:
            ws.config(journal_url=bouncer.url(pg_url))
        with PeakBackends(pg_url) as sessions:
            procs = [ws.start("-n", "3") for ws in hosts]
            results = [proc.communicate(timeout=120) for proc in procs]
    for proc, (_out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        assert "cannot forward" not in err and "not forwarded" not in err, err
    for ws in hosts:  # 24 task runs each, every one in PostgreSQL
        assert len(local_rows(ws, "SELECT * FROM task_runs")) == 24
        assert all_arrived(ws, pg_url)
        assert not local_rows(ws, "SELECT * FROM runs WHERE synced_rev < rev")
    assert len(remote_task_runs(pg_url)) == 6 * 24
    assert pg_rows(pg_url, "SELECT version FROM runner_schema ORDER BY version") == [
        {"version": n} for n in range(1, pgjournal.SCHEMA_VERSION + 1)]
    assert 1 <= sessions.peak <= 2, "pgbouncer's pool, not a session per runner"

