"""The local journal's SQLite file: its schema and migrations, opening it, marking what
dead runners left RUNNING as INTERRUPTED, and pruning old records. runner.journal writes
it; `runner history` and the forwarder read it."""

from __future__ import annotations

import logging
import os
import sqlite3
from datetime import timedelta
from typing import Any

from .identity import RunIdentity, iso, still_running, utc_now
from .states import TaskState

log = logging.getLogger("runner.journal")

FILE_NAME = "journal.sqlite"
INTERRUPTED = TaskState.INTERRUPTED.value
RUNNING = TaskState.RUNNING.value

# Each entry migrates the schema from version i to i + 1 (PRAGMA user_version).
MIGRATIONS = (
    """
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY, host TEXT NOT NULL, boot_id TEXT, pid INTEGER,
        pid_start INTEGER, version TEXT, config TEXT, task_dir TEXT,
        started_at TEXT NOT NULL, ended_at TEXT, result TEXT NOT NULL, exit_status INTEGER,
        rev INTEGER NOT NULL DEFAULT 1, synced_rev INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE tries (
        run_id TEXT NOT NULL, iteration INTEGER NOT NULL, try_num INTEGER NOT NULL,
        host TEXT NOT NULL, boot_id TEXT, started_at TEXT NOT NULL, ended_at TEXT,
        result TEXT NOT NULL, failed_task TEXT,
        rev INTEGER NOT NULL DEFAULT 1, synced_rev INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, iteration, try_num));
    CREATE TABLE task_runs (
        run_id TEXT NOT NULL, seq INTEGER NOT NULL, host TEXT NOT NULL, boot_id TEXT,
        iteration INTEGER NOT NULL, try_num INTEGER NOT NULL, max_tries INTEGER NOT NULL,
        task TEXT NOT NULL, kind TEXT NOT NULL, result TEXT NOT NULL, exit_code INTEGER,
        signal INTEGER, error TEXT, started_at TEXT NOT NULL, ended_at TEXT,
        duration_s REAL, output BLOB,
        rev INTEGER NOT NULL DEFAULT 1, synced_rev INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, seq));
    CREATE INDEX task_runs_by_task ON task_runs (task, started_at);
    CREATE INDEX task_runs_by_time ON task_runs (started_at);
    CREATE INDEX runs_unsynced ON runs (started_at) WHERE synced_rev < rev;
    CREATE INDEX tries_unsynced ON tries (started_at) WHERE synced_rev < rev;
    CREATE INDEX task_runs_unsynced ON task_runs (started_at) WHERE synced_rev < rev;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class JournalError(Exception):
    """The journal file cannot be opened, read or written."""


def journal_path(state_dir: str) -> str:
    return os.path.join(state_dir, FILE_NAME)


def connect(path: str, *, readonly: bool = False, timeout: float = 5.0) -> sqlite3.Connection:
    """A connection to the journal, migrated to the current schema (unless read-only)."""
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)
            conn.row_factory = sqlite3.Row
            _check_version(conn, path)
            return conn
        _create_private(path)
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # see the module's docstring
        _migrate(conn, path)
        return conn
    except sqlite3.Error as exc:
        raise JournalError(f"{path}: {exc}") from None
    except OSError as exc:
        raise JournalError(f"{path}: {exc.strerror}") from None


def _create_private(path: str) -> None:
    # Task output may hold secrets: the file (and SQLite's -wal/-shm, which copy its
    # mode) is readable by its owner only.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)


def _check_version(conn: sqlite3.Connection, path: str) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"{path}: journal schema {version} is newer than this runner knows "
            f"({SCHEMA_VERSION}); upgrade runner"
        )


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    _check_version(conn, path)
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# -- writing ------------------------------------------------------------------

Op = tuple[str, tuple[Any, ...]]


def insert(table: str, row: dict[str, Any]) -> Op:
    names = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    return f"INSERT OR REPLACE INTO {table} ({names}) VALUES ({marks})", tuple(row.values())


def update(table: str, key: dict[str, Any], row: dict[str, Any]) -> Op:
    sets = ", ".join(f"{name} = ?" for name in row)
    where = " AND ".join(f"{name} = ?" for name in key)
    return (
        f"UPDATE {table} SET {sets}, rev = rev + 1 WHERE {where}",
        (*row.values(), *key.values()),
    )


def recover_interrupted(conn: sqlite3.Connection, identity: RunIdentity) -> list[str]:
    """Mark what dead runners left RUNNING as INTERRUPTED; the run ids so marked."""
    stale = [
        row["run_id"]
        for row in conn.execute(
            "SELECT run_id, pid, pid_start, boot_id FROM runs WHERE result = ? AND run_id != ?",
            (RUNNING, identity.run_id),
        )
        if not still_running(row["pid"], row["pid_start"], row["boot_id"])
    ]
    if not stale:
        return []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for run_id in stale:
            for table in ("runs", "tries", "task_runs"):
                conn.execute(
                    f"UPDATE {table} SET result = ?, rev = rev + 1 "
                    "WHERE run_id = ? AND result = ?",
                    (INTERRUPTED, run_id, RUNNING),
                )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return stale


def prune(conn: sqlite3.Connection, keep_days: int, *, forwarding: bool) -> int:
    """Delete records older than keep_days (never ones not yet forwarded); rows deleted."""
    cutoff = iso(utc_now() - timedelta(days=keep_days))
    unsynced_ok = 0 if forwarding else 1
    deleted = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, done in (
            ("task_runs", "result != 'RUNNING'"),
            ("tries", "result != 'RUNNING'"),
            ("runs", "result != 'RUNNING' AND run_id NOT IN (SELECT run_id FROM tries)"),
        ):
            cursor = conn.execute(
                f"DELETE FROM {table} WHERE started_at < ? AND {done} "
                "AND (synced_rev >= rev OR ?)",
                (cutoff, unsynced_ok),
            )
            deleted += cursor.rowcount
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return deleted
