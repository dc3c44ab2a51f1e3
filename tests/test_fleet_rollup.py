"""The fleet journal's hourly rollup (runner.fleetrollup) on a real PostgreSQL server:
`runner blame --since` from it equals the raw rows' sums exactly, through everything that
writes runner_task_runs (the forwarder's upserts, re-sends, RUNNING -> end, late rows,
rows moved out of DEFAULT, prune, compaction, the migration of a database without it),
and concurrent writers neither deadlock nor lose a count."""

from __future__ import annotations

import random
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from fleet_queries import create_schema

from runner import fleetrollup, fleetschema, history, pgjournal

TASKS = ("10-base.sh", "20-puppet.sh", "30-network.sh")
UPSERT = pgjournal._upsert_sql("task_runs")
# The raw rows' answer, as blame gave it before the rollup (numeric sums: the test's
# durations are multiples of 1/8, exact in a float whatever the order of the sum).
RAW = """
SELECT task, sum(coalesce(duration_s, 0)) AS total_s, count(*) AS runs,
    sum(CASE WHEN result = 'OK' THEN 0 ELSE 1 END) AS failures, max(duration_s) AS max_s,
    sum(cpu_user_s) AS user_s, sum(cpu_system_s) AS system_s,
    max(peak_memory_bytes) AS peak
FROM runner_task_runs WHERE started_at >= %s AND task = ANY(%s) GROUP BY task ORDER BY task
"""


def connect(url: str, autocommit: bool = True) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=autocommit, connect_timeout=10)


@dataclass
class Run:
    """One task run as the forwarder sends it (pgjournal.TABLES order)."""

    run_id: str
    seq: int
    task: str
    started_at: datetime
    result: str = "RUNNING"
    duration_s: float | None = None
    peak: int | None = None

    def ended(self, duration_s: float, result: str = "OK", peak: int = 1000) -> Run:
        return Run(self.run_id, self.seq, self.task, self.started_at, result, duration_s,
                   peak)

    def row(self) -> tuple:
        ended = None if self.duration_s is None else \
            self.started_at + timedelta(seconds=self.duration_s)
        cost = None if self.duration_s is None else self.duration_s / 2
        return (self.run_id, self.seq, "host-" + self.run_id, None, 1, 1, 3, self.task,
                "task", self.result, None, None, None, self.started_at.isoformat(),
                None if ended is None else ended.isoformat(), self.duration_s, None,
                cost, None, self.peak)


def send(conn: psycopg.Connection, runs: list[Run]) -> None:
    """As pgforward does: one transaction, an upsert statement a row."""
    with conn.transaction(), conn.cursor() as cursor:
        cursor.executemany(UPSERT, [run.row() for run in runs])


def answers(url: str, since: datetime, tasks: tuple[str, ...] = TASKS) -> tuple[list, list]:
    """(the rollup's answer, the raw rows') for blame since `since`; the former must come
    from the rollup."""
    reader = history.open_postgres(url)
    try:
        fast = reader._blame_rollup(history.Filters(tasks=tasks, since=since))
    finally:
        reader.close()
    assert fast is not None, "the rollup did not answer"
    with connect(url) as conn:
        cursor = conn.execute(RAW, (since, list(tasks)))
        names = [c[0] for c in cursor.description]
        raw = [dict(zip(names, row, strict=True)) for row in cursor]
    return sorted(fast, key=lambda r: r["task"]), raw


def assert_same(url: str, since: datetime, tasks: tuple[str, ...] = TASKS) -> None:
    fast, raw = answers(url, since, tasks)
    assert fast == raw


def new_database(url: str, now: datetime, days: int = 3) -> None:
    """Schema 2 with the rollup, partitions for the last `days` days and counted from
    then (nothing is there to count yet)."""
    create_schema(url, 2)
    with connect(url) as conn, conn.transaction():
        fleetschema.ensure_partitions(conn, now.date(), (now - timedelta(days=days)).date())
        fleetrollup.backfill(conn, now - timedelta(days=days))


def sinces(now: datetime) -> list[datetime]:
    hour = fleetrollup.hour_of(now)
    return [now - timedelta(days=1), hour - timedelta(hours=5), hour,
            now - timedelta(minutes=1), now - timedelta(days=2, minutes=17),
            now - timedelta(days=10)]


def test_the_rollup_equals_the_raw_rows_through_upserts_resends_late_rows_and_moves(pg_url):
    now = datetime.now(UTC)
    new_database(pg_url, now)
    rng = random.Random(18)
    runs = [Run(f"r{n}", n, rng.choice(TASKS),
                now - timedelta(minutes=rng.randrange(0, 2 * 24 * 60)))
            for n in range(300)]
    with connect(pg_url) as conn:
        send(conn, runs)  # RUNNING
        ended = [run.ended(rng.randrange(1, 400) / 8, rng.choice(("OK", "OK", "RETRY")),
                           rng.randrange(1, 50) * 1000) for run in runs[:250]]
        send(conn, ended)  # RUNNING -> an end, by the upsert's update
        send(conn, ended[:100])  # a forwarder re-sending what it sent
        # A re-send that lowers the highest duration and peak of their hour (a maximum
        # leaves: the rollup recomputes that hour's from the raw rows).
        top = max(ended, key=lambda r: r.duration_s or 0)
        send(conn, [top.ended(0.125, top.result, 1)])
        # A host offline for a day sends its runs late, and one from before the partitions.
        late = [Run(f"late{n}", n, TASKS[n % 3], now - timedelta(days=1, hours=n))
                .ended(n / 8 + 1) for n in range(20)]
        send(conn, [*late, Run("old", 1, TASKS[0], now - timedelta(days=9)).ended(5)])
        # A clock ten days ahead lands in DEFAULT; its day's partition moves it out.
        ahead = now + timedelta(days=10)
        send(conn, [Run("ahead", 1, TASKS[1], ahead).ended(7.5)])
        with conn.transaction():
            fleetschema.ensure_partitions(conn, ahead.date())
        conn.execute("DELETE FROM runner_task_runs WHERE run_id IN ('r7', 'r8', 'r9')")
        # A runner of schema 2 without the rollup moves rows out of DEFAULT by deleting
        # them from DEFAULT itself, then inserting them through the parent.
        further = ahead + timedelta(days=fleetschema.AHEAD_DAYS + 5)
        send(conn, [Run("ahead2", 1, TASKS[2], further).ended(4.25)])
        with conn.transaction():
            moving = conn.execute(f"DELETE FROM {fleetschema.DEFAULT_PARTITION} "
                                  "RETURNING *").fetchall()
            conn.execute(f"CREATE TABLE {fleetschema.partition_name(further.date())} "
                         "PARTITION OF runner_task_runs FOR VALUES FROM (%s) TO (%s)"
                         .replace("%s", "'{}'").format(
                             *(fleetrollup.day_start(further.date()) + timedelta(days=d)
                               for d in (0, 1))))
            marks = ", ".join(["%s"] * len(moving[0]))
            conn.cursor().executemany(f"INSERT INTO runner_task_runs VALUES ({marks})",
                                      moving)
    for since in sinces(now):
        assert_same(pg_url, since)
    assert_same(pg_url, now - timedelta(days=1), (TASKS[1],))
    # Folded into one row per hour, the answers stay the same.
    with connect(pg_url) as conn:
        result = fleetschema.prune(conn, 0, now=now, force=True)
        assert result.compacted and folded(conn)
    for since in sinces(now):
        assert_same(pg_url, since)
    # Within the hour prune does nothing else, but folds again every COMPACT_EVERY.
    with connect(pg_url) as conn:
        send(conn, [run.ended(2.5, "OK") for run in runs[250:]])
        soon = fleetschema.prune(conn, 0, now=now + timedelta(minutes=1))
        assert soon.skipped and not soon.compacted and not folded(conn)
        later = fleetschema.prune(conn, 0, now=now + fleetrollup.COMPACT_EVERY)
        assert later.skipped and later.compacted and folded(conn)
    for since in sinces(now):
        assert_same(pg_url, since)


def folded(conn: psycopg.Connection) -> bool:
    """Whether the rollup holds one row per (hour, task), no lost value left."""
    deltas = conn.execute(f"SELECT count(*), count(lost_s) FROM {fleetrollup.ROLLUP}"
                          ).fetchone()
    hours = conn.execute(f"SELECT count(DISTINCT (hour, task)) FROM {fleetrollup.ROLLUP}"
                         ).fetchone()[0]
    return tuple(deltas) == (hours, 0)


def test_prune_takes_dropped_days_out_of_the_rollup_and_keeps_what_has_not_ended(pg_url):
    now = datetime.now(UTC)
    new_database(pg_url, now, days=5)
    with connect(pg_url) as conn:
        old = now - timedelta(days=4)
        send(conn, [Run("old-ended", 1, TASKS[0], old).ended(3),
                    Run("old-running", 1, TASKS[0], old - timedelta(minutes=1)),
                    Run("new", 1, TASKS[0], now - timedelta(hours=1)).ended(2)])
        result = fleetschema.prune(conn, 2, now=now, force=True)
        start = fleetrollup.covered_from(conn)
        left = {row[0] for row in conn.execute("SELECT run_id FROM runner_task_runs")}
    assert result.dropped and result.kept_unended == 1
    assert left == {"old-running", "new"}
    assert start == fleetrollup.day_start(now.date() - timedelta(days=2))
    for since in (now - timedelta(days=6), now - timedelta(days=1)):
        assert_same(pg_url, since)


def without_rollup(url: str) -> None:
    """The database as a runner of schema 2 before the rollup left it."""
    with connect(url) as conn:
        conn.execute(f"DROP TABLE {fleetrollup.ROLLUP}")
        conn.execute(f"DROP FUNCTION {fleetrollup.ROLLUP}_delta() CASCADE")
        conn.execute("DELETE FROM runner_maintenance WHERE name = %s", (fleetrollup.FROM_KEY,))


def test_a_database_of_schema_2_gets_the_rollup_from_the_next_runner_and_it_fills_in(pg_url):
    now = datetime.now(UTC)
    create_schema(pg_url, 2)
    without_rollup(pg_url)
    early = [Run(f"e{n}", n, TASKS[n % 3], now - timedelta(minutes=10 * n)).ended(n / 4 + 1)
             for n in range(60)]
    with connect(pg_url) as conn:
        send(conn, early)
        reader = history.open_postgres(pg_url)
        assert reader._blame_rollup(history.Filters(since=now - timedelta(days=1))) is None
        reader.close()
    pgjournal.pg_connect(pg_url).close()  # a runner with the rollup connects
    with connect(pg_url) as conn:
        assert pgjournal.schema_current(conn)
        start = fleetrollup.covered_from(conn)
        send(conn, [run.ended(run.duration_s or 0, "RETRY") for run in early[:5]])
    assert start == fleetrollup.hour_of(now) or start == fleetrollup.hour_of(datetime.now(UTC))
    assert_same(pg_url, now - timedelta(days=1))
    # Each prune backfills some hours more, under the lock: the answer stays exact.
    with connect(pg_url) as conn:
        result = fleetschema.prune(conn, 0, now=datetime.now(UTC), force=True)
    assert result.rollup_from == start - timedelta(hours=fleetrollup.BACKFILL_HOURS)
    assert_same(pg_url, now - timedelta(days=1))
    assert_same(pg_url, now - timedelta(hours=3))


def test_writers_at_once_neither_deadlock_nor_lose_a_count(pg_url):
    """Eight forwarders, each sending batches of a host's task runs in no particular order
    over the same hours and tasks (a schema-2 runner's executemany: a statement a row),
    their re-sends and ends, while prune folds the deltas: no deadlock, no error, and
    the rollup's answer is the raw rows'."""
    now = datetime.now(UTC)
    new_database(pg_url, now)
    errors: list[BaseException] = []

    def forwarder(number: int) -> None:
        rng = random.Random(number)
        try:
            with connect(pg_url) as conn:
                for batch in range(25):
                    runs = [Run(f"h{number}-{batch}", seq, rng.choice(TASKS),
                                now - timedelta(minutes=rng.randrange(0, 180)))
                            for seq in range(8)]
                    rng.shuffle(runs)
                    send(conn, runs)
                    send(conn, [r.ended(rng.randrange(1, 80) / 8) for r in runs[::-1]])
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    def folder() -> None:
        try:
            with connect(pg_url) as conn:
                for _ in range(10):
                    fleetschema.prune(conn, 0, now=datetime.now(UTC), force=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=forwarder, args=(n,)) for n in range(8)]
    threads.append(threading.Thread(target=folder))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    with connect(pg_url) as conn:
        count = conn.execute("SELECT count(*) FROM runner_task_runs").fetchone()[0]
    assert count == 8 * 25 * 8
    assert_same(pg_url, now - timedelta(hours=2, minutes=30))
    assert_same(pg_url, now - timedelta(days=1))


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "America/St_Johns"])
def test_hours_are_utc_hours_whatever_the_sessions_time_zone(pg_url, zone):
    """date_trunc on a timestamptz follows the session's zone: at +05:30 its "hour" would
    start at :30. The triggers run in the writer's session."""
    now = datetime.now(UTC)
    new_database(pg_url, now, days=1)
    with connect(pg_url) as conn:
        conn.execute(f"SET TIME ZONE '{zone}'")
        send(conn, [Run(f"z{n}", n, TASKS[0], now - timedelta(minutes=7 * n)).ended(1.5)
                    for n in range(40)])
        hours = {row[0] for row in conn.execute(f"SELECT hour FROM {fleetrollup.ROLLUP}")}
    assert all(h.astimezone(UTC).minute == 0 for h in hours)
    assert_same(pg_url, now - timedelta(hours=2, minutes=10))


def test_a_schema_1_database_migrates_to_2_with_the_rollup_and_answers_the_same(pg_url):
    """Schema 1 -> 2 copies the rows into the partitioned table before the rollup exists;
    the rollup then counts from the hour of the migration, backfilled under the lock."""
    now = datetime.now(UTC)
    create_schema(pg_url, 1)
    with connect(pg_url) as conn:
        upsert_v1 = UPSERT.replace("(run_id, seq, started_at)", "(run_id, seq)")
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(upsert_v1, [
                Run(f"v1-{n}", n, TASKS[n % 3], now - timedelta(minutes=9 * n))
                .ended(n / 8 + 0.5).row() for n in range(200)])
    pgjournal.pg_connect(pg_url).close()
    with connect(pg_url) as conn:
        assert fleetrollup.present(conn) and fleetschema.is_partitioned(conn)
        send(conn, [Run("after", 1, TASKS[0], now - timedelta(minutes=3)).ended(9.5)])
    for since in sinces(now):
        assert_same(pg_url, since)


def test_blames_last_run_per_task_finds_a_task_not_run_for_days(pg_url):
    """blame's "last run" of each task looks in the last day first (one or two
    partitions), then further back for the tasks it did not find there."""
    now = datetime.now(UTC)
    new_database(pg_url, now, days=5)
    with connect(pg_url) as conn:
        send(conn, [Run("old", 1, TASKS[0], now - timedelta(days=3)).ended(2, "RETRY"),
                    Run("older", 1, TASKS[0], now - timedelta(days=4)).ended(1),
                    Run("new", 1, TASKS[1], now - timedelta(hours=2)).ended(3),
                    Run("new", 2, TASKS[1], now - timedelta(days=2)).ended(4)])
    reader = history.open_postgres(pg_url)
    try:
        records = {r["task"]: r for r in reader.blame(
            history.Filters(since=now - timedelta(days=5)))}
    finally:
        reader.close()
    assert set(records) == {TASKS[0], TASKS[1]}
    assert (records[TASKS[0]]["run_id"], records[TASKS[0]]["result"]) == ("old", "RETRY")
    assert records[TASKS[1]]["last_duration_s"] == 3  # the newest, of two hours ago
    assert records[TASKS[0]]["runs"] == 2 and records[TASKS[0]]["duration_s"] == 3


def as_user(url: str, user: str) -> str:
    """The same server and database as another user (the superuser is not always named
    postgres: CI's is runner)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}@{parts.hostname}:{parts.port}"))


def test_without_the_rollup_or_leave_to_read_it_blame_answers_from_the_raw_rows(pg_url):
    """A database of schema 1 (no maintenance table) and a role that may read the task
    runs but not the rollup: blame sums the raw rows, as before the rollup."""
    now = datetime.now(UTC)
    new_database(pg_url, now, days=1)
    with connect(pg_url) as conn:
        send(conn, [Run(f"p{n}", n, TASKS[n % 3], now - timedelta(minutes=5 * n)).ended(1.25)
                    for n in range(30)])
        role = f"reader_{conn.info.dbname}"
        conn.execute(f"CREATE ROLE {role} LOGIN")
        for table in ("runner_task_runs", "runner_maintenance", "runner_runs"):
            conn.execute(f"GRANT SELECT ON {table} TO {role}")
        conn.execute(f"CREATE ROLE {role}_none LOGIN")
    url = as_user(pg_url, role)
    since = now - timedelta(hours=2)
    try:
        reader = history.open_postgres(url)
        try:
            assert reader._blame_rollup(history.Filters(since=since)) is None
            records = reader.blame(history.Filters(since=since))
        finally:
            reader.close()
        with pytest.raises(history.JournalUnavailable,
                           match="permission denied for table runner_task_runs"):
            history.open_postgres(as_user(pg_url, f"{role}_none"))
    finally:
        with connect(pg_url) as conn:
            for name in (role, f"{role}_none"):
                conn.execute(f"DROP OWNED BY {name}")
                conn.execute(f"DROP ROLE {name}")
    fast, raw = answers(pg_url, since)
    assert fast == raw
    assert {(r["task"], r["runs"], r["duration_s"]) for r in records} == {
        (r["task"], r["runs"], r["total_s"]) for r in raw}
    other = pg_url.rsplit("/", 1)[0] + "/postgres"
    with connect(other) as admin:
        admin.execute(f"CREATE DATABASE {role}")
    try:
        with pytest.raises(history.JournalUnavailable,
                           match="no runner journal in this database yet"):
            history.open_postgres(pg_url.rsplit("/", 1)[0] + f"/{role}")
        create_schema(pg_url.rsplit("/", 1)[0] + f"/{role}", 1)
        reader = history.open_postgres(pg_url.rsplit("/", 1)[0] + f"/{role}")
        try:
            assert reader.blame(history.Filters(since=since)) == []
        finally:
            reader.close()
    finally:
        with connect(other) as admin:
            admin.execute(f"DROP DATABASE {role}")
