"""The fleet journal: the local journal's rows forwarded to PostgreSQL (journal_url).

The local SQLite journal stays the record of truth and the buffer: every row carries
`rev` and `synced_rev`; rows whose synced_rev lags are upserted to PostgreSQL, then
marked sent. This module is the schema and the SQL; runner.forwarder decides when to
forward (a thread in runner), runner.pgforward does it (a process of its own, the only
one that loads psycopg). An unreachable database only delays forwarding; tasks never
wait on it, and whatever is left at exit goes with the next start.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import fleetrollup, fleetschema

CONNECT_TIMEOUT_S = 5
BATCH = 200
# pg_advisory_xact_lock key: 500 workers starting together migrate the schema once.
MIGRATION_LOCK = fleetschema.MIGRATION_LOCK

TIMESTAMPS = frozenset({"started_at", "ended_at"})
TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # local table: (key columns, other columns)
    "runs": (
        ("run_id",),
        ("host", "boot_id", "pid", "pid_start", "version", "config", "task_dir",
         "started_at", "ended_at", "result", "exit_status"),
    ),
    "tries": (
        ("run_id", "iteration", "try_num"),
        ("host", "boot_id", "started_at", "ended_at", "result", "failed_task"),
    ),
    "task_runs": (
        ("run_id", "seq"),
        ("host", "boot_id", "iteration", "try_num", "max_tries", "task", "kind", "result",
         "exit_code", "signal", "error", "started_at", "ended_at", "duration_s", "output",
         "cpu_user_s", "cpu_system_s", "peak_memory_bytes"),
    ),
}

# Each entry migrates the schema from version i to i + 1 (table runner_schema): SQL
# statements, or a function of the connection for what SQL alone cannot say.
MIGRATIONS: tuple[str | Callable[[Any], None], ...] = (
    """
    CREATE TABLE runner_runs (
        run_id text PRIMARY KEY, host text NOT NULL, boot_id text, pid integer,
        pid_start bigint, version text, config text, task_dir text,
        started_at timestamptz NOT NULL, ended_at timestamptz, result text NOT NULL,
        exit_status integer, received_at timestamptz NOT NULL DEFAULT now());
    CREATE TABLE runner_tries (
        run_id text NOT NULL, iteration integer NOT NULL, try_num integer NOT NULL,
        host text NOT NULL, boot_id text, started_at timestamptz NOT NULL,
        ended_at timestamptz, result text NOT NULL, failed_task text,
        received_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (run_id, iteration, try_num));
    CREATE TABLE runner_task_runs (
        run_id text NOT NULL, seq integer NOT NULL, host text NOT NULL, boot_id text,
        iteration integer NOT NULL, try_num integer NOT NULL, max_tries integer NOT NULL,
        task text NOT NULL, kind text NOT NULL, result text NOT NULL, exit_code integer,
        signal integer, error text, started_at timestamptz NOT NULL, ended_at timestamptz,
        duration_s double precision, output bytea,
        received_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (run_id, seq));
    CREATE INDEX runner_task_runs_by_task ON runner_task_runs (task, started_at);
    CREATE INDEX runner_task_runs_by_host ON runner_task_runs (host, started_at);
    CREATE INDEX runner_task_runs_by_time ON runner_task_runs (started_at)
    """,
    # runner_task_runs partitioned by day, and the fleet questions' indexes
    # (runner.fleetschema): every row of schema 1 is moved over, once.
    fleetschema.migrate_to_2,
)
SCHEMA_VERSION = len(MIGRATIONS)
# Nullable columns an older runner of the same schema version still works with (it
# names the columns it inserts): added once, without a new version. A runner refuses a
# newer version, so a version bump would stop every host not yet upgraded from
# forwarding; a fleet upgrades host by host, over days.
ADDITIONS = (
    # What each task run cost (runner.usage); null where not known.
    ("runner_task_runs", "cpu_user_s", "double precision"),
    ("runner_task_runs", "cpu_system_s", "double precision"),
    ("runner_task_runs", "peak_memory_bytes", "bigint"),
)


def import_psycopg() -> Any:
    """psycopg, or an ImportError saying which package provides it."""
    try:
        import psycopg
    except ImportError:
        raise ImportError(
            "journal_url needs psycopg 3 (Debian/Ubuntu: python3-psycopg; pip: psycopg)"
        ) from None
    return psycopg


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer runner: this one must not write to it."""


def pg_connect(url: str, *, migrate_schema: bool = True, timeout: float | None = None) -> Any:
    """A connection with the schema created or migrated to this runner's version
    (`migrate_schema`: once per runner's life is enough; the forwarding process of a
    runner that migrated it already skips it). Autocommit, and every write in an
    explicit transaction; nothing prepared (prepare_threshold=None): the connection may
    be a PgBouncer in transaction pooling mode, where consecutive transactions can run
    on different server sessions and a prepared statement would not be there."""
    psycopg = import_psycopg()
    conn = psycopg.connect(url, connect_timeout=int(timeout or CONNECT_TIMEOUT_S),
                           autocommit=True, prepare_threshold=None)
    try:
        if migrate_schema and not schema_current(conn):
            migrate(conn)
        elif migrate_schema:
            # The days ahead, as migrate() makes them: a cheap catalog read when they
            # exist, and it gives up at once behind a long fleet query (a later
            # connection, or the hourly fleetschema.prune, makes them).
            fleetschema.ensure_partitions_soon(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def schema_current(conn: Any) -> bool:
    """Whether the schema is this runner's already: read without the migration's lock,
    which a fleet starting at once would otherwise queue on (each waiter holding one of
    the server's connections) only to find nothing to do."""
    psycopg = import_psycopg()
    try:
        row = conn.execute("SELECT max(version) FROM runner_schema").fetchone()
    except psycopg.errors.UndefinedTable:
        return False
    if not row or row[0] != SCHEMA_VERSION:
        return False  # older: migrate; newer: migrate() says so
    wanted = {(table, column) for table, column, _ in ADDITIONS}
    return (wanted | {(fleetrollup.ROLLUP, "hour")}) <= columns(conn)


def migrate(conn: Any) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS runner_schema (version integer NOT NULL)")
        row = conn.execute("SELECT max(version) FROM runner_schema").fetchone()
        version = row[0] or 0
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"database schema {version} is newer than this runner knows "
                f"({SCHEMA_VERSION}); upgrade runner"
            )
        for number in range(version, SCHEMA_VERSION):
            step = MIGRATIONS[number]
            if callable(step):
                step(conn)
            else:
                for statement in step.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute("INSERT INTO runner_schema (version) VALUES (%s)", (number + 1,))
        present = columns(conn)
        for table, column, kind in ADDITIONS:
            if (table, column) not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
        # The hourly rollup blame reads (an addition like the columns above: a runner of
        # schema 2 without it writes through its triggers all the same).
        fleetrollup.ensure(conn)
        # Today's partition and the next days' (a cheap catalog read when they exist).
        fleetschema.ensure_partitions_soon(conn)


def columns(conn: Any) -> set[tuple[str, str]]:
    """(table, column) of runner's tables in the connection's schema."""
    rows = conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name LIKE 'runner%%'").fetchall()
    return {(table, column) for table, column in rows}


# Whether runner_task_runs exists, may be read, and has the cost columns: read from the
# catalog in one query (information_schema.columns took 25 ms, and a probe of the table
# planned it over every day partition: 15 ms more, on each fleet command).
JOURNAL_PROBE = """
SELECT t IS NOT NULL, t IS NOT NULL AND has_table_privilege(t, 'SELECT'),
    EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = t AND attname = 'cpu_user_s'
            AND NOT attisdropped)
FROM (SELECT to_regclass('runner_task_runs') AS t) AS journal
"""


# The upsert's conflict target where it is not the local key: a unique constraint of
# the partitioned runner_task_runs must hold its partition key, started_at (schema 2;
# a task run's started_at never changes after its first row, runner.fleetschema).
CONFLICT_KEYS = {"task_runs": ("run_id", "seq", "started_at")}


def _upsert_sql(table: str, rows: int = 1) -> str:
    """The upsert of `rows` rows in one statement (their keys differ: a batch is read
    from the local table by its key)."""
    keys, others = TABLES[table]
    columns = (*keys, *others)
    one = "(" + ", ".join("%s::timestamptz" if c in TIMESTAMPS else "%s"
                          for c in columns) + ")"
    values = ", ".join([one] * rows)
    conflict = CONFLICT_KEYS.get(table, keys)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in others if c not in conflict)
    return (
        f"INSERT INTO runner_{table} ({', '.join(columns)}) VALUES {values} "
        f"ON CONFLICT ({', '.join(conflict)}) DO UPDATE SET {updates}, received_at = now()"
    )


def unsynced(local: sqlite3.Connection, table: str, limit: int) -> list[sqlite3.Row]:
    keys, others = TABLES[table]
    return local.execute(
        f"SELECT {', '.join((*keys, *others))}, rev FROM {table} "
        "WHERE synced_rev < rev ORDER BY started_at LIMIT ?",
        (limit,),
    ).fetchall()


def pending_count(local: sqlite3.Connection) -> int:
    return sum(
        local.execute(f"SELECT count(*) FROM {table} WHERE synced_rev < rev").fetchone()[0]
        for table in TABLES
    )


def forward_batch(local: sqlite3.Connection, remote: Any, limit: int = BATCH) -> int:
    """Send up to `limit` unsynced rows of each table; the number of rows sent."""
    batches = {table: unsynced(local, table, limit) for table in TABLES}
    sent = sum(len(rows) for rows in batches.values())
    if not sent:
        return 0
    # One statement per table and batch, not one per row: the blame rollup's statement
    # triggers (runner.fleetrollup) then run once a batch, and append one delta per
    # (hour, task) of it rather than one per row.
    with remote.transaction(), remote.cursor() as cursor:
        for table, rows in batches.items():
            if rows:
                cursor.execute(_upsert_sql(table, len(rows)),
                               [value for row in rows for value in tuple(row)[:-1]])
    # Only now are they safe in PostgreSQL; a row written again meanwhile has a higher
    # rev and stays unsynced.
    with local:
        for table, rows in batches.items():
            keys = TABLES[table][0]
            where = " AND ".join(f"{k} = ?" for k in keys)
            local.executemany(
                f"UPDATE {table} SET synced_rev = max(synced_rev, ?) WHERE {where}",
                [(row["rev"], *(row[k] for k in keys)) for row in rows],
            )
    return sent


@dataclass
class ForwardHealth:
    """What `runner status` says about forwarding; written by the forwarder thread."""

    url: str
    ok: bool = True
    error: str | None = None
    since: str | None = None
    pending: int = 0
    forwarded: int = 0
    last_forward_at: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "url": self.url, "ok": self.ok, "error": self.error, "since": self.since,
                "pending": self.pending, "forwarded": self.forwarded,
                "last_forward_at": self.last_forward_at,
            }
