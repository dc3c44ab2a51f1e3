"""The local journal's SQLite file: migrating it, opening it for writing (and moving a
damaged one aside), and marking what dead runners left RUNNING as INTERRUPTED.
runner.journal writes it; `runner history` and the forwarder read it; runner.retention
decides what it keeps. Its schema, path and read-only connection are runner.journalread's
(what the light commands import), re-exported here."""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .identity import RunIdentity, still_running, utc_now
from .journalread import COST_SCHEMA as COST_SCHEMA
from .journalread import DAMAGED_SUFFIX as DAMAGED_SUFFIX
from .journalread import FILE_NAME as FILE_NAME
from .journalread import INTERRUPTED as INTERRUPTED
from .journalread import MIGRATIONS as MIGRATIONS
from .journalread import RUN_ORDER as RUN_ORDER
from .journalread import RUN_SEQ_SCHEMA as RUN_SEQ_SCHEMA
from .journalread import RUNNING as RUNNING
from .journalread import SCHEMA_VERSION as SCHEMA_VERSION
from .journalread import SIDE_FILES as SIDE_FILES
from .journalread import DamagedJournal as DamagedJournal
from .journalread import JournalError as JournalError
from .journalread import check_version, connect_readonly, opened
from .journalread import is_damage as is_damage
from .journalread import journal_path as journal_path
from .journalread import moved_aside_files as moved_aside_files

log = logging.getLogger("runner.journal")


@dataclass(frozen=True)
class MovedAside:
    """A damaged journal renamed out of the way: where to, and what was wrong with it."""

    path: str
    reason: str


def connect(path: str, *, readonly: bool = False, timeout: float = 5.0) -> sqlite3.Connection:
    """A connection to the journal, migrated to the current schema (unless read-only)."""
    if readonly:
        return connect_readonly(path, timeout=timeout)

    def make() -> sqlite3.Connection:
        _create_private(path)
        return sqlite3.connect(path, timeout=timeout, isolation_level=None)

    def prepare(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # see the module's docstring
        _migrate(conn, path)

    return opened(path, make, prepare)


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


def _create_private(path: str) -> None:
    # Task output may hold secrets: the file (and SQLite's -wal/-shm, which copy its
    # mode) is readable by its owner only.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    check_version(conn, path)
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
    return _insert_sql(table, tuple(row)), tuple(row.values())


def update(table: str, key: dict[str, Any], row: dict[str, Any]) -> Op:
    return _update_sql(table, tuple(key), tuple(row)), (*row.values(), *key.values())


# A chain writes the same few statements for every task: their text is made once each
# (and is then also the same string object sqlite3's statement cache looks up).
@functools.lru_cache(maxsize=64)
def _insert_sql(table: str, names: tuple[str, ...]) -> str:
    marks = ", ".join("?" for _ in names)
    return f"INSERT OR REPLACE INTO {table} ({', '.join(names)}) VALUES ({marks})"


@functools.lru_cache(maxsize=64)
def _update_sql(table: str, key: tuple[str, ...], names: tuple[str, ...]) -> str:
    sets = ", ".join(f"{name} = ?" for name in names)
    where = " AND ".join(f"{name} = ?" for name in key)
    return f"UPDATE {table} SET {sets}, rev = rev + 1 WHERE {where}"


def recover_interrupted(conn: sqlite3.Connection, identity: RunIdentity,
                        starts: Iterable[dict[str, Any]] = ()) -> list[str]:
    """Mark what dead runners left RUNNING as INTERRUPTED; the run ids so marked. First
    the task starts of runner.startlog that the journal lacks are put in (their tasks
    started: each gets its row, INTERRUPTED with the rest of its run)."""
    stale = [
        row["run_id"]
        for row in conn.execute(
            "SELECT run_id, pid, pid_start, boot_id FROM runs WHERE result = ? AND run_id != ?",
            (RUNNING, identity.run_id),
        )
        if not still_running(row["pid"], row["pid_start"], row["boot_id"])
    ]
    lost = _lost_starts(conn, identity, set(stale), starts)
    if not stale and not lost:
        return []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for row in lost:  # past the run's last row: nothing there to replace
            conn.execute(*insert("task_runs", row))
        for run_id in stale:
            for table in ("runs", "tries", "task_runs"):
                conn.execute(
                    f"UPDATE {table} SET result = ?, rev = rev + 1 "
                    "WHERE run_id = ? AND result = ?",
                    (INTERRUPTED, run_id, RUNNING),
                )
        for run_id in {row["run_id"] for row in lost} - set(stale):  # its run had ended
            conn.execute("UPDATE task_runs SET result = ?, rev = rev + 1 "
                         "WHERE run_id = ? AND result = ?", (INTERRUPTED, run_id, RUNNING))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return stale


def _lost_starts(conn: sqlite3.Connection, identity: RunIdentity, stale: set[str],
                 starts: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The start rows the journal lacks: of a run it holds that is not running any more,
    and past the last row of that run it has (rows are committed in the order their
    starts were written: what is not past it was written, trimmed or refused)."""
    last: dict[str, int | None] = {}
    lost = []
    for row in starts:
        run_id = row["run_id"]
        if run_id == identity.run_id:
            continue
        if run_id not in last:
            found = conn.execute("SELECT result, coalesce((SELECT max(seq) FROM task_runs "
                                 "WHERE run_id = runs.run_id), 0) FROM runs WHERE run_id = ?",
                                 (run_id,)).fetchone()
            gone = found is None or (found[0] == RUNNING and run_id not in stale)
            last[run_id] = None if gone else found[1]
        newest = last[run_id]
        if newest is not None and row["seq"] > newest:
            lost.append(row)
            last[run_id] = row["seq"]
    return lost
