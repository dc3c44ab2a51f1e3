"""The fleet journal: the local journal's rows forwarded to PostgreSQL (journal_url).

The local SQLite journal stays the record of truth and the buffer: every row carries
`rev` and `synced_rev`, and a background thread upserts rows whose synced_rev lags to
PostgreSQL, then marks them sent. An unreachable database only delays forwarding;
tasks never wait on it, and whatever is left at exit goes with the next start.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import fleetschema, journalfile
from .events import Listener
from .identity import iso, utc_now
from .masking import Masker, mask_url

log = logging.getLogger("runner.journal")

CONNECT_TIMEOUT_S = 5
BATCH = 200
IDLE_S = 60.0  # forward at least this often: rows of earlier runs, recoveries
MAX_BACKOFF_S = 60.0
FLUSH_AT_EXIT_S = 5.0
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


def pg_connect(url: str) -> Any:
    """A connection with the schema created or migrated to this runner's version."""
    psycopg = import_psycopg()
    conn = psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S)
    try:
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(conn: Any) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS runner_schema (version integer NOT NULL)")
        row = conn.execute("SELECT max(version) FROM runner_schema").fetchone()
        version = row[0] or 0
        if version > SCHEMA_VERSION:
            raise RuntimeError(
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
        # Today's partition and the next days' (a cheap catalog read when they exist).
        fleetschema.ensure_partitions_soon(conn)


def columns(conn: Any) -> set[tuple[str, str]]:
    """(table, column) of runner's tables in the connection's schema."""
    rows = conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name LIKE 'runner%%'").fetchall()
    return {(table, column) for table, column in rows}


def has_cost(conn: Any) -> bool:
    return ("runner_task_runs", "cpu_user_s") in columns(conn)


# The upsert's conflict target where it is not the local key: a unique constraint of
# the partitioned runner_task_runs must hold its partition key, started_at (schema 2;
# a task run's started_at never changes after its first row, runner.fleetschema).
CONFLICT_KEYS = {"task_runs": ("run_id", "seq", "started_at")}


def _upsert_sql(table: str) -> str:
    keys, others = TABLES[table]
    columns = (*keys, *others)
    values = ", ".join("%s::timestamptz" if c in TIMESTAMPS else "%s" for c in columns)
    conflict = CONFLICT_KEYS.get(table, keys)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in others if c not in conflict)
    return (
        f"INSERT INTO runner_{table} ({', '.join(columns)}) VALUES ({values}) "
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
    with remote.transaction(), remote.cursor() as cursor:
        for table, rows in batches.items():
            if rows:
                cursor.executemany(_upsert_sql(table), [tuple(row)[:-1] for row in rows])
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


class Forwarder(Listener):
    """Forwards the local journal to PostgreSQL from a thread of its own."""

    def __init__(self, url: str, db_path: str, masker: Masker | None = None) -> None:
        self.on_change: Callable[[], None] | None = None  # health changed (from the thread)
        self.url = url
        # What psycopg says can quote the URL: every error is masked before status.json
        # or a log line gets it.
        self.masker = masker or Masker.for_url(url)
        self.db_path = db_path
        self.health = ForwardHealth(mask_url(url))
        self.wakeup = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="journal-forwarder", daemon=True)
        self.remote: Any = None

    def wake(self) -> None:
        """A journal write: forward it now, unless forwarding is backing off from a
        failure (every write would reconnect at once, and the forwarder's reads of the
        local journal at every attempt kept SQLite from checkpointing its WAL, past
        journal_max_mb). runner's exit still makes the last attempt (finished)."""
        if self.health.ok:
            self.wakeup.set()

    def started(self) -> None:
        try:
            import_psycopg()
        except ImportError as exc:
            self._failed(str(exc))
            return
        self.thread.start()

    def finished(self, status: int) -> None:
        if not self.thread.is_alive():
            return
        self.stopping.set()  # the thread makes one last pass, then ends
        self.wakeup.set()
        self.thread.join(FLUSH_AT_EXIT_S + CONNECT_TIMEOUT_S)
        snapshot = self.health.snapshot()
        if self.thread.is_alive() or snapshot["pending"]:
            log.warning(
                "journal_url %s: %s record(s) not forwarded yet; they stay in the local "
                "journal and are sent after the next start",
                snapshot["url"], snapshot["pending"] or "some",
            )

    # -- the thread -------------------------------------------------------------

    def _loop(self) -> None:
        delay = 0.0
        local = None
        while True:
            self.wakeup.wait(delay)
            self.wakeup.clear()
            last = self.stopping.is_set()
            try:
                if local is None:
                    local = journalfile.connect(self.db_path)
                self._forward_all(local)
                delay = IDLE_S
            except Exception as exc:  # any failure only delays forwarding
                self._close_remote()
                self._failed(self.masker.text(_reason(exc)), local)
                delay = min(max(delay * 2, 1.0), MAX_BACKOFF_S)
            if last:
                break
        self._close_remote()
        if local is not None:
            local.close()

    def _forward_all(self, local: sqlite3.Connection) -> None:
        if self.remote is None:
            self.remote = pg_connect(self.url)
        sent = 0
        while count := forward_batch(local, self.remote):
            sent += count
        with self.health.lock:
            was_failing = not self.health.ok
            self.health.ok, self.health.error, self.health.since = True, None, None
            self.health.pending = pending_count(local)
            self.health.forwarded += sent
            if sent:
                self.health.last_forward_at = iso(utc_now())
        if was_failing:
            log.warning("journal_url %s: reachable again; forwarded %d buffered record(s)",
                        self.health.url, sent)
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception as exc:  # the status file is a convenience, forwarding is not
                log.debug("status refresh failed: %s", exc)

    def _failed(self, reason: str, local: sqlite3.Connection | None = None) -> None:
        pending = None
        if local is not None:
            try:
                pending = pending_count(local)
            except sqlite3.Error:
                pass
        with self.health.lock:
            if pending is not None:
                self.health.pending = pending
            first = self.health.ok
            self.health.ok, self.health.error = False, reason
            if first:
                self.health.since = iso(utc_now())
        if first:
            log.warning(
                "journal_url %s: cannot forward (%s); records are kept in the local journal "
                "and sent when it is reachable", self.health.url, reason,
            )
            self._changed()

    def _close_remote(self) -> None:
        if self.remote is not None:
            try:
                self.remote.close()
            except Exception:  # already broken: nothing more to lose
                pass
            self.remote = None


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
