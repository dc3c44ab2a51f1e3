"""The fleet journal's hourly rollup: what `runner blame --since` sums, per (hour, task),
kept exact by PostgreSQL itself, so blame reads a few hundred rows instead of a day of
task runs (~1.5 M rows a day at 5,000 hosts: 0.8 s of query; issue 18).

runner_task_hours holds *deltas*, never updated in place: statement-level triggers on
runner_task_runs (INSERT, UPDATE, DELETE, with transition tables; and DELETE on its
DEFAULT partition, TRIGGERS) each append one row per (hour, task) the statement
touched: +1 run and its duration, CPU and peak for a row inserted, -1 and minus them for
a row deleted, both for an update (the upsert's RUNNING -> end, a forwarder re-sending
a row). The forwarder upserts a batch in one statement (pgjournal.forward_batch), so
they run once a batch. Why deltas rather than counters:

- No lock is shared: 5,000 forwarders appending rows never wait on each other and
  cannot deadlock, whatever order their statements come in (counters updated in place
  would queue every host on the same 14 rows of the current hour, and a transaction of
  several statements, as a schema-2 runner's executemany sends, could lock two of them
  in the opposite order to another's).
- It is in the database, not in runner: a runner of schema 2 without this module writes
  through the same triggers, so the rollup is exact in a fleet upgraded host by host.
- A delta is committed with the rows it counts, so a single statement that reads the
  rollup and the raw rows sees both as of the same moment.

Sums are numeric (an added and a removed float cancel exactly; float8 would drift).
A maximum cannot be subtracted: a delta that removes a value records it in lost_s /
lost_peak, and an hour whose lost value is >= its maximum is recomputed from its raw rows
(one task's hour, through the (task, started_at) index). compact() (fleetschema.prune,
every COMPACT_EVERY) folds each hour's deltas into one row, recomputing such maxima.

Coverage: runner_maintenance 'task_hours_from' is the first hour the rollup counts
fully; blame reads raw rows before it. Adding the rollup (pgjournal.migrate, an additive
change: no version bump) counts from the current hour, backfilled under a lock that holds
writers for that moment; backfill() then extends it back a few hours per prune (or all at
once: bench/fleet_queries.py). Day partitions dropped by prune take their hours out of the
rollup in the same transaction; readers also never use the rollup before the oldest day
partition (a schema-2 runner's prune drops days without knowing of the rollup).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

ROLLUP = "runner_task_hours"
FROM_KEY = "task_hours_from"  # runner_maintenance: the first hour the rollup counts
# How often the deltas are folded (fleetschema.prune, which forwarders ask every few
# minutes): between two, a fleet of 5,000 hosts appends ~2 deltas a task run, ~10,000
# rows in 5 minutes, which blame sums on top of the folded hours.
COMPACT_EVERY = timedelta(minutes=5)
COMPACTED_KEY = "task_hours_compacted"  # runner_maintenance: when they were last folded
BACKFILL_HOURS = 6  # hours backfilled per prune (the lock holds writers for that long)
HOUR = "interval '1 hour'"
# The UTC hour of a task run (date_trunc on a timestamptz follows the session's TimeZone,
# whose offset may not be whole hours).
HOUR_OF = "(date_trunc('hour', {0}.started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"
DELTA_COLUMNS = ("hour, task, runs, failures, total_s, max_s, lost_s, user_s, user_n, "
                 "system_s, system_n, peak, lost_peak")

TABLE_SQL = f"""
CREATE TABLE {ROLLUP} (
    hour timestamptz NOT NULL, task text NOT NULL, runs bigint NOT NULL,
    failures bigint NOT NULL, total_s numeric NOT NULL, max_s double precision,
    lost_s double precision, user_s numeric, user_n bigint NOT NULL, system_s numeric,
    system_n bigint NOT NULL, peak bigint, lost_peak bigint);
CREATE INDEX {ROLLUP}_by_hour ON {ROLLUP} (hour, task)
"""


def _rows(source: str, sign: int, lost: str = "NULL") -> str:
    """One signed row per task run of `source` (a transition table, alias r); `lost`:
    whether its duration/peak leave the hour (SQL on r and n)."""
    added = sign > 0
    return (
        f"SELECT {HOUR_OF.format('r')} AS hour, r.task, {sign} AS sign, "
        "CASE WHEN r.result = 'OK' THEN 0 ELSE 1 END AS failed, "
        "coalesce(r.duration_s, 0)::numeric AS dur, r.cpu_user_s::numeric AS usr, "
        "r.cpu_system_s::numeric AS sys, "
        f"{'r.duration_s' if added else 'NULL::double precision'} AS max_s, "
        f"{'r.peak_memory_bytes' if added else 'NULL::bigint'} AS peak, "
        f"CASE WHEN {lost} THEN r.duration_s END AS lost_s, "
        f"CASE WHEN {lost} THEN r.peak_memory_bytes END AS lost_peak FROM {source}"
    )


def _delta_insert(rows: str) -> str:
    """Append one delta per (hour, task) of `rows` (signed rows, _rows)."""
    return (
        f"INSERT INTO {ROLLUP} ({DELTA_COLUMNS}) SELECT hour, task, sum(sign), "
        "sum(sign * failed), sum(sign * dur), max(max_s), max(lost_s), sum(sign * usr), "
        "coalesce(sum(sign) FILTER (WHERE usr IS NOT NULL), 0), sum(sign * sys), "
        "coalesce(sum(sign) FILTER (WHERE sys IS NOT NULL), 0), max(peak), max(lost_peak) "
        f"FROM ({rows}) AS d GROUP BY hour, task"
    )


# An updated row's old value leaves its hour unless the new one is at least as high (a
# re-send, RUNNING -> end: the old duration was null).
_REPLACED = ("n.run_id IS NULL OR r.duration_s > coalesce(n.duration_s, '-infinity') "
             "OR r.peak_memory_bytes > coalesce(n.peak_memory_bytes, -1)")
_UPDATED_OLD = (
    "old_rows r LEFT JOIN new_rows n ON n.run_id = r.run_id AND n.seq = r.seq "
    "AND n.started_at = r.started_at AND n.task = r.task"
)
FUNCTION_SQL = f"""
CREATE OR REPLACE FUNCTION {ROLLUP}_delta() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {_delta_insert(_rows('new_rows r', 1))};
    ELSIF TG_OP = 'DELETE' THEN
        {_delta_insert(_rows('old_rows r', -1, 'true'))};
    ELSE
        {_delta_insert(_rows('new_rows r', 1) + ' UNION ALL '
                       + _rows(_UPDATED_OLD, -1, _REPLACED))};
    END IF;
    RETURN NULL;
END
$body$
"""
# (name, table, event, transition tables). A statement on the parent fires only the
# parent's statement triggers, one on a partition only the partition's: the DELETE on
# DEFAULT counts what a runner of schema 2 without this module deletes from it directly
# (its fleetschema moved rows out of DEFAULT that way, and put them back through the
# parent, which counts them).
TRIGGERS = (
    ("insert", "runner_task_runs", "INSERT", "NEW TABLE AS new_rows"),
    ("update", "runner_task_runs", "UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
    ("delete", "runner_task_runs", "DELETE", "OLD TABLE AS old_rows"),
    ("default_delete", "runner_task_runs_default", "DELETE", "OLD TABLE AS old_rows"),
)


def present(conn: Any) -> bool:
    return conn.execute("SELECT to_regclass(%s)", (ROLLUP,)).fetchone()[0] is not None


def ensure(conn: Any) -> bool:
    """Add the rollup when the database has none (inside migrate()'s transaction and
    lock); whether it was added. runner_task_runs is locked against writers (readers go
    on) for the moment it takes, so no row is written between the triggers' start and
    the backfill of the current hour."""
    if present(conn):
        return False
    conn.execute("LOCK TABLE runner_task_runs IN SHARE ROW EXCLUSIVE MODE")
    for statement in TABLE_SQL.split(";"):
        conn.execute(statement)
    conn.execute(FUNCTION_SQL)
    for name, table, event, referencing in TRIGGERS:
        conn.execute(f"CREATE TRIGGER {ROLLUP}_{name} AFTER {event} ON {table} "
                     f"REFERENCING {referencing} FOR EACH STATEMENT "
                     f"EXECUTE FUNCTION {ROLLUP}_delta()")
    hour = conn.execute(f"SELECT {HOUR_OF.format('x')} FROM (SELECT now() AS started_at) x"
                        ).fetchone()[0]
    _aggregate_raw(conn, hour, None)
    conn.execute("INSERT INTO runner_maintenance (name, done_at) VALUES (%s, %s) "
                 "ON CONFLICT (name) DO UPDATE SET done_at = EXCLUDED.done_at",
                 (FROM_KEY, hour))
    return True


def _aggregate_raw(conn: Any, first: datetime, end: datetime | None) -> None:
    """Deltas of the raw rows started in [first, end) (end None: from first on)."""
    bound = "" if end is None else " AND r.started_at < %s"
    conn.execute(_delta_insert(_rows("runner_task_runs r", 1)
                               + f" WHERE r.started_at >= %s{bound}"),
                 (first,) if end is None else (first, end))


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def hour_of(moment: datetime) -> datetime:
    """The UTC hour `moment` is in."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def covered_from(conn: Any) -> datetime | None:
    """The first hour the rollup counts (None: there is no rollup)."""
    row = conn.execute("SELECT done_at FROM runner_maintenance WHERE name = %s",
                       (FROM_KEY,)).fetchone()
    return row[0] if row else None


def backfill(conn: Any, first: datetime) -> datetime | None:
    """Extend the rollup back to the hour of `first` from the raw rows (in the caller's
    transaction): writers wait on runner_task_runs meanwhile (readers do not). The new
    first hour, or None when there is no rollup."""
    start = covered_from(conn)
    if start is None:
        return None
    hour = hour_of(first)
    if hour >= start:
        return start
    conn.execute("LOCK TABLE runner_task_runs IN SHARE ROW EXCLUSIVE MODE")
    # The deltas of these hours so far (updates of rows older than the rollup) are
    # replaced by the count of what is there.
    conn.execute(f"DELETE FROM {ROLLUP} WHERE hour >= %s AND hour < %s", (hour, start))
    _aggregate_raw(conn, hour, start)
    conn.execute("UPDATE runner_maintenance SET done_at = %s WHERE name = %s",
                 (hour, FROM_KEY))
    return hour


def forget_before(conn: Any, first: datetime) -> None:
    """The rollup's hours before `first` (prune dropped their day partitions): gone, and
    coverage starts at `first` at the earliest."""
    conn.execute(f"DELETE FROM {ROLLUP} WHERE hour < %s", (first,))
    conn.execute("UPDATE runner_maintenance SET done_at = greatest(done_at, %s) "
                 "WHERE name = %s", (first, FROM_KEY))


def forget_day(conn: Any, start: datetime) -> None:
    """The deltas of one day whose partition is being dropped (its unended rows are put
    back through runner_task_runs afterwards, and counted again)."""
    conn.execute(f"DELETE FROM {ROLLUP} WHERE hour >= %s AND hour < %s",
                 (start, start + timedelta(days=1)))


# Per (hour, task): the deltas summed, and whether the maximum may be stale (a removed
# value at least as high as any added one).
_HOURS = f"""
SELECT hour, task, sum(runs) AS runs, sum(failures) AS failures, sum(total_s) AS total_s,
    max(max_s) AS max_s, sum(user_s) AS user_s, sum(user_n) AS user_n,
    sum(system_s) AS system_s, sum(system_n) AS system_n, max(peak) AS peak,
    max(lost_s) AS lost_s, max(lost_peak) AS lost_peak,
    coalesce(max(lost_s) >= max(max_s), max(lost_s) IS NOT NULL)
        OR coalesce(max(lost_peak) >= max(peak), max(lost_peak) IS NOT NULL) AS stale
FROM {ROLLUP} WHERE {{where}} GROUP BY hour, task HAVING sum(runs) <> 0
"""
# The hours with their maxima exact: a stale one's from its raw rows (the lateral runs
# only for those: its WHERE starts with h.stale, a one-time filter).
_EXACT = f"""
SELECT h.hour, h.task, h.runs, h.failures, h.total_s, h.user_s, h.user_n, h.system_s,
    h.system_n, CASE WHEN h.stale THEN x.max_s ELSE h.max_s END AS max_s,
    CASE WHEN h.stale THEN x.peak ELSE h.peak END AS peak
FROM hours h LEFT JOIN LATERAL (
    SELECT max(duration_s) AS max_s, max(peak_memory_bytes) AS peak FROM runner_task_runs
    WHERE h.stale AND task = h.task AND started_at >= h.hour
        AND started_at < h.hour + {HOUR}{{bound}}) AS x ON true
"""
# The planner counts that lateral's cost for every hour, though it runs for almost none:
# the estimate passes jit_above_cost and JIT compiled 400 functions for 10 s (measured at
# 5,000 hosts x 30 days). Each query of the rollup runs with JIT off (SET LOCAL: for its
# transaction only, as PgBouncer's transaction pooling requires).
NO_JIT = "SET LOCAL jit = off"


def compact_if_due(conn: Any, now: datetime, force: bool = False) -> int:
    """compact() when COMPACT_EVERY has passed since the last (or `force`), under
    fleetschema.PRUNE_LOCK; the hours folded."""
    row = conn.execute("SELECT done_at FROM runner_maintenance WHERE name = %s",
                       (COMPACTED_KEY,)).fetchone()
    if row and not force and now - row[0] < COMPACT_EVERY:
        return 0
    conn.execute("INSERT INTO runner_maintenance (name, done_at) VALUES (%s, %s) "
                 "ON CONFLICT (name) DO UPDATE SET done_at = EXCLUDED.done_at",
                 (COMPACTED_KEY, now))
    return compact(conn)


def compact(conn: Any) -> int:
    """Fold the deltas of each hour into one row (in the caller's transaction, under
    fleetschema.PRUNE_LOCK: one compacts at a time); the hours folded. Deltas committed
    meanwhile stay rows of their own: one statement's snapshot decides what is folded,
    and its raw rows the maxima it recomputes."""
    conn.execute(NO_JIT)
    return conn.execute(
        f"WITH groups AS (SELECT hour, task FROM {ROLLUP} "
        " GROUP BY hour, task HAVING count(*) > 1 OR max(lost_s) IS NOT NULL "
        " OR max(lost_peak) IS NOT NULL), "
        f"gone AS (DELETE FROM {ROLLUP} d USING groups g WHERE d.hour = g.hour "
        " AND d.task = g.task RETURNING d.*), "
        f"hours AS ({_HOURS.format(where='true').replace(ROLLUP, 'gone')}), "
        f"exact AS ({_EXACT.format(bound='')}) "
        f"INSERT INTO {ROLLUP} ({DELTA_COLUMNS}) SELECT hour, task, runs, failures, "
        "total_s, max_s, NULL, user_s, user_n, system_s, system_n, peak, NULL FROM exact"
    ).rowcount


def blame_sql(tasks: bool) -> str:
    """Per task: runs, failures, total/max seconds, CPU and peak since %(since)s: the
    rollup's hours from %(first)s on, and the raw rows of [since, first) (the partial hour
    at the edge, and what the rollup does not cover). `tasks`: only %(tasks)s."""
    only = " AND task = ANY(%(tasks)s)" if tasks else ""
    return (
        f"WITH hours AS ({_HOURS.format(where='hour >= %(first)s' + only)}), "
        f"exact AS ({_EXACT.format(bound=' AND started_at >= %(first)s')}), "
        # float sums here, as the raw query had them (a numeric sum of each row took
        # twice as long), made numeric once per task
        "edge AS (SELECT task, count(*) AS runs, "
        " sum(CASE WHEN result = 'OK' THEN 0 ELSE 1 END) AS failures, "
        " sum(coalesce(duration_s, 0))::numeric AS total_s, max(duration_s) AS max_s, "
        " sum(cpu_user_s)::numeric AS user_s, count(cpu_user_s) AS user_n, "
        " sum(cpu_system_s)::numeric AS system_s, count(cpu_system_s) AS system_n, "
        " max(peak_memory_bytes) AS peak FROM runner_task_runs "
        f" WHERE started_at >= %(since)s AND started_at < %(first)s{only} GROUP BY task), "
        "both_ AS (SELECT task, runs, failures, total_s, max_s, user_s, user_n, system_s, "
        " system_n, peak FROM exact UNION ALL SELECT task, runs, failures, total_s, "
        " max_s, user_s, user_n, system_s, system_n, peak FROM edge) "
        "SELECT task, sum(total_s)::double precision AS total_s, sum(runs)::bigint AS runs, "
        "sum(failures)::bigint AS failures, max(max_s) AS max_s, "
        "CASE WHEN sum(user_n) > 0 THEN sum(user_s)::double precision END AS user_s, "
        "CASE WHEN sum(system_n) > 0 THEN sum(system_s)::double precision END AS system_s, "
        "max(peak) AS peak FROM both_ GROUP BY task"
    )


def first_hour(conn: Any, since: datetime, oldest_day: datetime | None) -> datetime | None:
    """Where the rollup's part of a question since `since` starts: the first whole hour
    at or after it that the rollup covers (None: no rollup)."""
    start = covered_from(conn)
    if start is None:
        return None
    hour = hour_of(since)
    if hour < since:
        hour += timedelta(hours=1)
    return max(hour, start, *(() if oldest_day is None else (oldest_day,)))
