"""The local journal's SQLite file as its readers see it: where it is, its schema (one
definition, which runner.journalfile migrates to), a read-only connection that refuses a
schema newer than this runner, and the damaged files runner.journalfile moved aside.
runner.journalfile re-exports all of it.

Its own room so that `runner status` and `runner history` read the journal importing
only `os` and `sqlite3`: the writer's logging, glob, dataclasses and task states cost
more than the interpreter's start.
"""

import os
import sqlite3

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (its cost)
if TYPE_CHECKING:
    from collections.abc import Callable

FILE_NAME = "journal.sqlite"
# runner.states.TaskState's values (tests/test_journal.py checks), as the journal holds them.
RUNNING = "RUNNING"
INTERRUPTED = "INTERRUPTED"

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
SIDE_FILES = ("", "-wal", "-shm", "-starts")  # -starts: runner.startlog


class JournalError(Exception):
    """The journal file cannot be opened, read or written."""


class DamagedJournal(JournalError):
    """The journal file is not a database or is corrupt."""


def journal_path(state_dir: str) -> str:
    return os.path.join(state_dir, FILE_NAME)


def connect_readonly(path: str, *, timeout: float = 5.0) -> sqlite3.Connection:
    """A read-only connection to the journal at `path` (never migrated: readers do not
    write); JournalError when it cannot be opened or its schema is newer than this runner."""
    return opened(path, lambda: sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                                timeout=timeout),
                  lambda conn: check_version(conn, path))


def opened(path: str, make: "Callable[[], sqlite3.Connection]",
           prepare: "Callable[[sqlite3.Connection], None]") -> sqlite3.Connection:
    """The connection `make()` opens to the journal at `path`, its rows sqlite3.Row, once
    `prepare(conn)` is done with it. When either fails: the connection closed and the
    error a JournalError (DamagedJournal when the file itself is broken)."""
    conn = None
    try:
        conn = make()
        conn.row_factory = sqlite3.Row
        prepare(conn)
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


def check_version(conn: sqlite3.Connection, path: str) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"{path}: journal schema {version} is newer than this runner knows "
            f"({SCHEMA_VERSION}); upgrade runner"
        )


def moved_aside_files(path: str) -> list[str]:
    """The damaged journals moved aside next to `path` and still there, oldest first."""
    directory, name = os.path.split(path)
    prefix = name + DAMAGED_SUFFIX
    try:
        names = os.listdir(directory or os.curdir)
    except OSError:
        return []
    return sorted(os.path.join(directory, found) for found in names
                  if found.startswith(prefix) and not found.endswith(SIDE_FILES[1:]))
