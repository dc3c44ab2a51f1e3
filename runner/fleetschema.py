"""The fleet journal's PostgreSQL schema 2: runner_task_runs partitioned by day, the
indexes the fleet questions read, partitions made ahead, and retention (fleet_keep_days).

Why partitions: at 5,000 hosts a month is ~50 M task runs (~26 GB). A day's partition
keeps "today" and "since 1d" questions on one or two small tables, and retention drops a
whole day (DROP TABLE: no DELETE, no bloat, no VACUUM of a 50 M-row table).

Who makes partitions: the migration makes one per UTC day from the oldest row to
AHEAD_DAYS ahead, and every migrate() (each connection a runner makes) and prune() (the
forwarder, at most hourly) make what is missing of the next AHEAD_DAYS. A row whose day has
no partition (a clock far ahead, a host offline longer than the window) lands in the
DEFAULT partition; when its day's partition is made, the rows of that day are moved out
of DEFAULT first (PostgreSQL refuses the new partition otherwise).

The upsert's conflict target must hold the partition key, so it is (run_id, seq,
started_at): a task run's started_at is written with its first row and never changed
(runner.journal only sets it in _task_started; updates set result, ended_at, ...).

Version 2 is a new schema version: an older runner refuses it (migrate() says "upgrade
runner") and keeps its rows in its local journal, as for an outage, until it is upgraded;
its upsert (ON CONFLICT (run_id, seq)) could not work on the partitioned table anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from . import fleetrollup

PARENT = "runner_task_runs"
DEFAULT_PARTITION = "runner_task_runs_default"
AHEAD_DAYS = 7  # partitions made ahead of today (UTC)
MIGRATE_DAYS = 400  # schema 1 rows older than this go to DEFAULT, not a day of their own
# pg_advisory_xact_lock key of the schema (runner.pgjournal.migrate) and of making
# partitions: 500 workers starting together migrate it once.
MIGRATION_LOCK = 0x72756E6E6572  # "runner"
# pg_try_advisory_xact_lock key of prune(): 500 hosts calling it, one prunes.
PRUNE_LOCK = MIGRATION_LOCK + 1
LOCK_WAIT = "1s"  # how long migrate() waits to make a partition (ensure_partitions_soon)
PRUNE_EVERY = timedelta(hours=1)  # the database is pruned at most this often, by anyone
# Task results that are failures of the task (runner.states): what `runner fleet tasks`
# counts and the partial index runner_task_runs_failed holds. Keep the two the same: the
# planner uses a partial index only when the query's predicate is the index's.
FAILED_RESULTS = ("RETRY", "TIMEOUT", "HALT", "INTERRUPTED")
FAILED_SQL = "result IN (" + ", ".join(f"'{r}'" for r in FAILED_RESULTS) + ")"

# Columns of runner_task_runs in schema 2 (schema 1's, the cost columns of ADDITIONS
# included).
TASK_RUN_COLUMNS = """
    run_id text NOT NULL, seq integer NOT NULL, host text NOT NULL, boot_id text,
    iteration integer NOT NULL, try_num integer NOT NULL, max_tries integer NOT NULL,
    task text NOT NULL, kind text NOT NULL, result text NOT NULL, exit_code integer,
    signal integer, error text, started_at timestamptz NOT NULL, ended_at timestamptz,
    duration_s double precision, output bytea,
    received_at timestamptz NOT NULL DEFAULT now(),
    cpu_user_s double precision, cpu_system_s double precision, peak_memory_bytes bigint
"""

# The indexes, each for a question (EXPLAIN ANALYZE in bench/fleet_queries.py):
SCHEMA_2_SQL = f"""
    ALTER TABLE runner_task_runs RENAME TO runner_task_runs_v1;
    DROP INDEX IF EXISTS runner_task_runs_by_task;
    DROP INDEX IF EXISTS runner_task_runs_by_host;
    DROP INDEX IF EXISTS runner_task_runs_by_time;
    ALTER TABLE runner_task_runs_v1 RENAME CONSTRAINT runner_task_runs_pkey
        TO runner_task_runs_v1_pkey;
    CREATE TABLE runner_task_runs ({TASK_RUN_COLUMNS},
        PRIMARY KEY (run_id, seq, started_at)) PARTITION BY RANGE (started_at);
    CREATE TABLE {DEFAULT_PARTITION} PARTITION OF runner_task_runs DEFAULT;
    -- history --task, log TASK, blame's last run per task, task name lookup (skip scan)
    CREATE INDEX runner_task_runs_by_task ON runner_task_runs (task, started_at);
    -- history/log --host, fleet silent/stuck: a host's newest task runs
    CREATE INDEX runner_task_runs_by_host ON runner_task_runs (host, started_at);
    -- history of the whole fleet, newest first (blame --since reads the day's partitions
    -- whole: a covering index here was not used for it, and misled other plans)
    CREATE INDEX runner_task_runs_by_time ON runner_task_runs (started_at);
    -- fleet tasks: the failures of a day are few, and this index holds only them
    CREATE INDEX runner_task_runs_failed ON runner_task_runs (started_at)
        INCLUDE (task, host) WHERE {FAILED_SQL};
    -- fleet failing/silent/stuck/ready: each host's newest run, runs of a period
    CREATE INDEX runner_runs_by_host ON runner_runs (host, started_at);
    CREATE INDEX runner_runs_by_time ON runner_runs USING brin (started_at);
    -- fleet ready: a run's first try that passed
    CREATE INDEX runner_tries_passed ON runner_tries (run_id, ended_at) WHERE result = 'OK';
    CREATE INDEX runner_tries_by_time ON runner_tries USING brin (started_at);
    CREATE TABLE runner_maintenance (
        name text PRIMARY KEY, done_at timestamptz NOT NULL)
"""


def migrate_to_2(conn: Any) -> None:
    """Schema 1 -> 2, inside migrate()'s transaction and advisory lock: every row of the
    old runner_task_runs is copied into the partitioned table, then the old table is
    dropped. One transaction: a runner killed halfway leaves schema 1 as it was, and the
    next one to connect does it all again; the lock makes it once however many start."""
    _statements(conn, SCHEMA_2_SQL)
    today = _utc_today()
    # A partition for each day that has rows (a host whose clock once said 1970 must not
    # make 20,000 empty ones), no more than MIGRATE_DAYS back; older rows, and rows dated
    # past the days made ahead, go to DEFAULT.
    rows = conn.execute(
        "SELECT DISTINCT (started_at AT TIME ZONE 'UTC')::date FROM runner_task_runs_v1 "
        "WHERE started_at >= %s AND started_at < %s",
        (_bounds(today - timedelta(days=MIGRATE_DAYS))[0],
         _bounds(today + timedelta(days=AHEAD_DAYS))[1])).fetchall()
    for (day,) in sorted(rows):
        if day < today - timedelta(days=1):
            _create_day(conn, day)
    ensure_partitions(conn, today)
    old = _columns_of(conn, "runner_task_runs_v1")
    common = [c for c in _columns_of(conn, PARENT) if c in old]
    names = ", ".join(common)
    conn.execute(f"INSERT INTO runner_task_runs ({names}) "
                 f"SELECT {names} FROM runner_task_runs_v1")
    conn.execute("DROP TABLE runner_task_runs_v1")


def _statements(conn: Any, script: str) -> None:
    for statement in script.split(";"):
        lines = [line for line in statement.splitlines() if not line.strip().startswith("--")]
        if "".join(lines).strip():
            conn.execute("\n".join(lines))


def _columns_of(conn: Any, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND table_name = %s ORDER BY ordinal_position", (table,)).fetchall()
    return [row[0] for row in rows]


def _utc_today() -> date:
    return datetime.now(UTC).date()


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def partition_name(day: date) -> str:
    return f"runner_task_runs_{day:%Y%m%d}"


def _bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def day_partitions(conn: Any) -> dict[date, str]:
    """The day partitions of runner_task_runs (not DEFAULT), by their UTC day."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass", (PARENT,)).fetchall()
    found = {}
    for (name,) in rows:
        suffix = name.removeprefix("runner_task_runs_")
        if suffix.isdigit() and len(suffix) == 8:
            found[datetime.strptime(suffix, "%Y%m%d").date()] = name
    return found


def _create_day(conn: Any, day: date) -> None:
    """The partition of one UTC day; rows of that day already in DEFAULT move into it
    (PostgreSQL refuses a partition whose rows DEFAULT holds)."""
    start, end = _bounds(day)
    name = partition_name(day)
    conn.execute("CREATE TEMPORARY TABLE IF NOT EXISTS runner_moving "
                 f"(LIKE {PARENT}) ON COMMIT DROP")
    conn.execute("TRUNCATE runner_moving")
    # Deleted through the parent (only DEFAULT holds these days), so that the rollup's
    # triggers (runner.fleetrollup) see them leave, as they see them come back below.
    moved = conn.execute(
        f"WITH gone AS (DELETE FROM {PARENT} WHERE started_at >= %s AND "
        "started_at < %s RETURNING *) INSERT INTO runner_moving SELECT * FROM gone",
        (start, end)).rowcount
    conn.execute(f"CREATE TABLE {name} PARTITION OF {PARENT} FOR VALUES FROM "
                 f"('{start.isoformat()}') TO ('{end.isoformat()}')")
    if moved:
        conn.execute(f"INSERT INTO {PARENT} SELECT * FROM runner_moving")


def ensure_partitions(conn: Any, today: date | None = None,
                      first: date | None = None) -> list[str]:
    """Make the partitions of `first` (default today - 1) .. today + AHEAD_DAYS that are
    missing (the caller holds pgjournal.MIGRATION_LOCK); the names made."""
    today = today or _utc_today()
    have = day_partitions(conn)
    made = []
    for day in _days(first or today - timedelta(days=1), today + timedelta(days=AHEAD_DAYS)):
        if day not in have:
            _create_day(conn, day)
            made.append(partition_name(day))
    return made


def ensure_partitions_soon(conn: Any) -> list[str]:
    """ensure_partitions() for migrate(), every connection: it must not queue the fleet's
    inserts behind a long fleet query. Making a partition takes an exclusive lock on
    runner_task_runs; waiting for it behind a reader would make every insert wait too.
    So it gives up after LOCK_WAIT (a savepoint keeps the transaction) and a later
    connection makes it; the days are made a week ahead, so one will."""
    from psycopg import errors

    try:
        with conn.transaction():  # a savepoint inside migrate()'s transaction
            conn.execute(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'")
            return ensure_partitions(conn)
    except errors.LockNotAvailable:
        return []


def is_partitioned(conn: Any) -> bool:
    row = conn.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)",
                       (PARENT,)).fetchone()
    return bool(row) and row[0] == "p"


@dataclass
class PruneResult:
    """What prune() did: skipped (another host prunes, or one did within the hour), the
    partitions made and dropped, and what it kept or deleted."""

    skipped: str | None = None
    made: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    kept_unended: int = 0
    deleted_default: int = 0
    deleted_runs: int = 0
    deleted_tries: int = 0
    compacted: int = 0
    rollup_from: datetime | None = None


def prune(conn: Any, keep_days: int, *, now: datetime | None = None,
          force: bool = False) -> PruneResult:
    """Retention of the fleet journal (fleet_keep_days), for the forwarder to call at most
    hourly: one transaction on `conn` (not in a transaction yet; commits itself).

    Safe when 500 hosts call it: it tries PRUNE_LOCK and skips when another holds it, and
    skips when anyone pruned within PRUNE_EVERY (runner_maintenance), so the database
    does the work at most hourly. It makes the partitions ahead, then, with keep_days > 0,
    drops each day partition wholly older than keep_days days (UTC days before today -
    keep_days); its task runs that have not ended (ended_at null: running, or a runner
    that died) are moved to DEFAULT first, never dropped. From DEFAULT, runner_runs and
    runner_tries it deletes ended rows older than that, except each host's newest run
    and its tries (`runner fleet silent` still names a host gone for months).
    """
    from psycopg import errors

    try:
        return _prune(conn, keep_days, now or datetime.now(UTC), force)
    except errors.LockNotAvailable:
        # A fleet query holds runner_task_runs: the inserts must not queue behind us.
        return PruneResult(skipped="runner_task_runs is busy; the next call prunes")


def _prune(conn: Any, keep_days: int, now: datetime, force: bool) -> PruneResult:
    result = PruneResult()
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'")
        got = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (PRUNE_LOCK,)).fetchone()[0]
        if not got:
            result.skipped = "another host is pruning"
            return result
        if not is_partitioned(conn):
            result.skipped = "the schema is older than 2"
            return result
        done = conn.execute("SELECT done_at FROM runner_maintenance WHERE name = 'prune'"
                            ).fetchone()
        if done and not force and now - done[0] < PRUNE_EVERY:
            result.skipped = f"pruned at {done[0].isoformat()}"
            # The rollup's deltas are folded more often than that: blame sums what is
            # left of them (runner.fleetrollup.COMPACT_EVERY).
            if fleetrollup.present(conn):
                result.compacted = fleetrollup.compact_if_due(conn, now)
            return result
        # Partition DDL only under the migration's lock (a runner's migrate() makes them
        # too); PRUNE_LOCK is always taken first, so the two cannot deadlock.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        result.made = ensure_partitions(conn, now.date())
        if keep_days > 0:
            _drop_old(conn, now.date() - timedelta(days=keep_days), result)
        if fleetrollup.present(conn):
            _maintain_rollup(conn, now, result)
        conn.execute("INSERT INTO runner_maintenance (name, done_at) VALUES ('prune', %s) "
                     "ON CONFLICT (name) DO UPDATE SET done_at = EXCLUDED.done_at", (now,))
    return result


def _maintain_rollup(conn: Any, now: datetime, result: PruneResult) -> None:
    """Fold the past hours' deltas of the rollup, and extend it a few hours back (the
    days a database had before it was added)."""
    result.compacted = fleetrollup.compact_if_due(conn, now, force=True)
    start = fleetrollup.covered_from(conn)
    days = day_partitions(conn)
    if start is not None and days:
        oldest = fleetrollup.day_start(min(days))
        first = max(oldest, start - timedelta(hours=fleetrollup.BACKFILL_HOURS))
        result.rollup_from = fleetrollup.backfill(conn, first)


def _drop_old(conn: Any, first_kept: date, result: PruneResult) -> None:
    cutoff, _ = _bounds(first_kept)
    for day, name in sorted(day_partitions(conn).items()):
        if day >= first_kept:
            continue
        conn.execute(f"ALTER TABLE {PARENT} DETACH PARTITION {name}")
        # Its range is gone from the parent: what is inserted now lands in DEFAULT.
        result.kept_unended += conn.execute(
            f"INSERT INTO {PARENT} SELECT * FROM {name} WHERE ended_at IS NULL").rowcount
        conn.execute(f"DROP TABLE {name}")
        result.dropped.append(name)
    # Through the parent (the older days are gone: only DEFAULT holds rows this old),
    # so the rollup's triggers see them go; then the rollup forgets these days.
    result.deleted_default = conn.execute(
        f"DELETE FROM {PARENT} WHERE started_at < %s AND ended_at IS NOT NULL",
        (cutoff,)).rowcount
    if fleetrollup.present(conn):
        fleetrollup.forget_before(conn, cutoff)
    result.deleted_runs = conn.execute(
        "DELETE FROM runner_runs r WHERE started_at < %s AND ended_at IS NOT NULL AND "
        "EXISTS (SELECT 1 FROM runner_runs n WHERE n.host = r.host "
        "AND n.started_at > r.started_at)", (cutoff,)).rowcount
    result.deleted_tries = conn.execute(
        "DELETE FROM runner_tries t WHERE started_at < %s AND ended_at IS NOT NULL AND "
        "NOT EXISTS (SELECT 1 FROM runner_runs r WHERE r.run_id = t.run_id)",
        (cutoff,)).rowcount
