"""The local journal's SQLite file: its schema and migrations, opening it (and moving a
damaged one aside), and marking what dead runners left RUNNING as INTERRUPTED.
runner.journal writes it; `runner history` and the forwarder read it; runner.retention
decides what it keeps."""

from __future__ import annotations

import glob
import logging
import os
import sqlite3
from dataclasses import dataclass
from typing import Any

from .identity import RunIdentity, still_running, utc_now
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
    # The journal's own order of runs, which a wrong wall clock cannot reorder: "latest"
    # and retention follow it, never started_at alone. Existing runs keep the order they
    # were inserted in (rowid); each new one gets the next number from the trigger.
    """
    ALTER TABLE runs ADD COLUMN run_seq INTEGER;
    UPDATE runs SET run_seq = rowid;
    CREATE UNIQUE INDEX runs_by_seq ON runs (run_seq);
    CREATE TRIGGER runs_next_seq AFTER INSERT ON runs WHEN NEW.run_seq IS NULL
    BEGIN
        UPDATE runs SET run_seq = (SELECT coalesce(max(run_seq), 0) + 1 FROM runs)
        WHERE run_id = NEW.run_id;
    END;
    """,
    # What each task run cost (runner.usage): NULL where it is not known (it never
    # started, a record written before schema 3, peak memory without a cgroup).
    """
    ALTER TABLE task_runs ADD COLUMN cpu_user_s REAL;
    ALTER TABLE task_runs ADD COLUMN cpu_system_s REAL;
    ALTER TABLE task_runs ADD COLUMN peak_memory_bytes INTEGER;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
RUN_SEQ_SCHEMA = 2  # the first schema with runs.run_seq
COST_SCHEMA = 3  # the first schema with task_runs.cpu_user_s, cpu_system_s, peak_memory_bytes
# A task run's place in the journal's own order is its run's run_seq, then its seq.
RUN_ORDER = "(SELECT run_seq FROM runs WHERE runs.run_id = task_runs.run_id)"


# SQLite's word for a file that is not a database, or one whose pages contradict
# each other: no retry can fix it (unlike a lock, a full disk or a read-only directory).
DAMAGE_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
DAMAGED_SUFFIX = ".damaged-"
SIDE_FILES = ("", "-wal", "-shm")


class JournalError(Exception):
    """The journal file cannot be opened, read or written."""


class DamagedJournal(JournalError):
    """The journal file is not a database or is corrupt."""


@dataclass(frozen=True)
class MovedAside:
    """A damaged journal renamed out of the way: where to, and what was wrong with it."""

    path: str
    reason: str


def journal_path(state_dir: str) -> str:
    return os.path.join(state_dir, FILE_NAME)


def connect(path: str, *, readonly: bool = False, timeout: float = 5.0) -> sqlite3.Connection:
    """A connection to the journal, migrated to the current schema (unless read-only)."""
    conn = None
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
    except BaseException as exc:
        # Closed at once: a connection left to the garbage collector could still touch
        # PATH-wal after a damaged file has been moved aside and a new one started.
        if conn is not None:
            conn.close()
        if isinstance(exc, sqlite3.Error):
            kind = DamagedJournal if is_damage(exc) else JournalError
            raise kind(f"{path}: {exc}") from None
        if isinstance(exc, OSError):
            raise JournalError(f"{path}: {exc.strerror}") from None
        raise


def is_damage(exc: BaseException) -> bool:
    """Whether an SQLite error says the file itself is broken (not busy, full or locked)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in DAMAGE_CODES


def open_journal(path: str) -> tuple[sqlite3.Connection, MovedAside | None]:
    """The writer's connection. A damaged file (not a database, corrupt, or failing
    quick_check) is renamed aside with a timestamp, never deleted (it is the evidence of
    what happened before), and a fresh journal started; the second value says where."""
    try:
        return _checked(path), None
    except DamagedJournal as exc:
        moved = MovedAside(move_aside(path), str(exc).removeprefix(f"{path}: "))
    return connect(path), moved


def _checked(path: str) -> sqlite3.Connection:
    conn = connect(path)
    try:
        # quick_check reads every page once: a truncated or scribbled-on file is found
        # here, at start, and not by the first read of a page that is gone.
        problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
    except sqlite3.Error as exc:
        conn.close()
        kind = DamagedJournal if is_damage(exc) else JournalError
        raise kind(f"{path}: {exc}") from None
    if problems != ["ok"]:
        conn.close()
        raise DamagedJournal(f"{path}: quick_check: {problems[0]}")
    return conn


def move_aside(path: str) -> str:
    """Rename the journal and its -wal/-shm to PATH.damaged-<UTC time>; the new name.
    Raises JournalError when it cannot (then nothing better can be done)."""
    stamp = utc_now().strftime("%Y%m%dT%H%M%SZ")
    target = f"{path}{DAMAGED_SUFFIX}{stamp}"
    number = 1
    while any(os.path.lexists(target + side) for side in SIDE_FILES):
        number += 1  # a second damaged file in the same second, or a clock gone back
        target = f"{path}{DAMAGED_SUFFIX}{stamp}.{number}"
    try:
        for side in SIDE_FILES:
            if os.path.lexists(path + side):
                os.rename(path + side, target + side)
                os.chmod(target + side, 0o600)  # it may hold task output, as the journal
    except OSError as exc:
        raise JournalError(f"{path}: damaged, and cannot be moved aside: {exc.strerror}") \
            from None
    return target


def moved_aside_files(path: str) -> list[str]:
    """The damaged journals moved aside next to `path` and still there, oldest first."""
    found = glob.glob(glob.escape(path + DAMAGED_SUFFIX) + "*")
    return sorted(f for f in found if not f.endswith(SIDE_FILES[1:]))


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
            for statement in statements(MIGRATIONS[number]):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def statements(script: str) -> list[str]:
    """The SQL statements of a script, one by one (a trigger's body keeps its `;`s):
    executescript() would commit the migration's transaction halfway."""
    done: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                done.append(pending.strip())
            pending = ""
    return done


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
