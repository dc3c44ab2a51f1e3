"""What the local journal keeps: records by age (journal_keep_days) and the file by size
(journal_max_mb).

Neither trusts the wall clock alone. A boot whose clock was far behind (a dead RTC, NTP
not up yet: the boots that fail) writes old-looking timestamps, so a record is judged
as old as the latest start written before it in the journal's own order (runs.run_seq),
and the newest RUNS_ALWAYS_KEPT runs are kept whatever their timestamps; so is every
record not yet forwarded to the fleet journal. The size bound is the ceiling above all
that: it drops the oldest records, forwarded ones first, and never the current
iteration of the current run.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from .identity import iso, utc_now
from .journalfile import RUN_ORDER

# Runs kept whatever their timestamps say (ten boots' worth of evidence).
RUNS_ALWAYS_KEPT = 10
# Trimming starts above the bound and goes down to this share of it, so that it runs
# once per several iterations of a looping chain, not after every task.
TRIM_TO = 0.8
# A journal file this far over its bound (the bound was lowered, or an old file) is
# rewritten once (VACUUM): freed pages are reused but never returned otherwise.
VACUUM_OVER = 1.25
NEWEST_RUNS = "SELECT run_id FROM runs ORDER BY run_seq DESC LIMIT ?"
# Per run, the latest start of the runs written before it.
ENVELOPE = (
    "envelope AS (SELECT run_id, max(started_at) OVER (ORDER BY run_seq ROWS BETWEEN "
    "UNBOUNDED PRECEDING AND 1 PRECEDING) AS earlier FROM runs)"
)
# Oldest first in the journal's own order; a task run whose run row is gone comes first.
JOURNAL_ORDER = f"{RUN_ORDER}, seq"


def prune(conn: sqlite3.Connection, keep_days: int, *, forwarding: bool,
          current_run: str | None = None) -> int:
    """Delete records older than keep_days; the number of rows deleted.

    A record's age is that of the latest start written at or before its run in the
    journal's order (ENVELOPE), so a run whose clock was behind is as young as the run
    before it. Kept whatever their age: records not yet forwarded, and the newest
    RUNS_ALWAYS_KEPT runs but `current_run` (a run that has itself lasted longer than
    keep_days, by the monotonic clock: its old iterations may go).
    """
    cutoff = iso(utc_now() - timedelta(days=keep_days))
    unsynced_ok = 0 if forwarding else 1
    before = conn.total_changes  # (a DELETE that starts with WITH has no rowcount)
    with _transaction(conn):
        for table, done in (
            ("task_runs", "result != 'RUNNING'"),
            ("tries", "result != 'RUNNING'"),
            ("runs", "result != 'RUNNING' AND run_id NOT IN (SELECT run_id FROM tries)"),
        ):
            conn.execute(
                f"WITH {ENVELOPE} DELETE FROM {table} WHERE {done} "
                f"AND max(started_at, coalesce((SELECT earlier FROM envelope AS e "
                f"WHERE e.run_id = {table}.run_id), '')) < ? "
                f"AND (synced_rev >= rev OR ?) "
                f"AND run_id NOT IN (SELECT run_id FROM ({NEWEST_RUNS}) WHERE run_id != ?)",
                (cutoff, unsynced_ok, RUNS_ALWAYS_KEPT, current_run or ""),
            )
    return conn.total_changes - before


@dataclass(frozen=True)
class Current:
    """What the size bound never drops: this run's row and its iteration in progress."""

    run_id: str
    iteration: int


@dataclass
class Trimmed:
    deleted: int = 0  # task runs dropped
    unforwarded: int = 0  # of which not yet in the fleet journal
    over: bool = False  # still over the bound: nothing more could be dropped


def used_bytes(conn: sqlite3.Connection) -> int:
    """Bytes the journal's records take in its file (pages in use, not the free ones)."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return int((pages - free) * page_size)


def file_bytes(conn: sqlite3.Connection) -> int:
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int(conn.execute("PRAGMA page_count").fetchone()[0] * page_size)


DEFAULT_WAL_PAGES = 1000  # SQLite's wal_autocheckpoint


def bound_wal(conn: sqlite3.Connection, max_bytes: int) -> int:
    """Keep the -wal file small next to a small bound: checkpoint after an eighth of it
    (SQLite's default, 1000 pages = 4 MiB, is kept for bounds of 32 MiB and more), and
    cut the file back to that after each checkpoint. Returns that size in bytes (the
    checkpoints themselves are runner.checkpoint's)."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    if not max_bytes:
        return DEFAULT_WAL_PAGES * page_size
    pages = max(16, min(DEFAULT_WAL_PAGES, max_bytes // page_size // 8))
    conn.execute(f"PRAGMA wal_autocheckpoint = {pages}")
    conn.execute(f"PRAGMA journal_size_limit = {pages * page_size}")
    return pages * page_size


def trim_to_size(conn: sqlite3.Connection, max_bytes: int, current: Current, *,
                 forwarding: bool) -> Trimmed:
    """Over max_bytes: drop the oldest task runs (with their emptied tries and runs) down
    to TRIM_TO of it — forwarded ones first, then, if that is not enough, unforwarded
    ones (the bound is the admin's ceiling for the disk; a fleet database away for
    weeks must not fill it). Never RUNNING rows or the current iteration."""
    trimmed = Trimmed()
    used = used_bytes(conn)
    if used <= max_bytes:
        return trimmed
    target = int(max_bytes * TRIM_TO)
    for only_forwarded in ((True, False) if forwarding else (False,)):
        while used > target:
            dropped = _drop_oldest(conn, used - target, current, only_forwarded)
            if not dropped:
                break
            trimmed.deleted += dropped
            trimmed.unforwarded += 0 if only_forwarded or not forwarding else dropped
            used = used_bytes(conn)
    trimmed.over = used > max_bytes
    if not trimmed.over and file_bytes(conn) > max_bytes * VACUUM_OVER:
        conn.execute("VACUUM")
    return trimmed


def _drop_oldest(conn: sqlite3.Connection, excess: int, current: Current,
                 only_forwarded: bool) -> int:
    """Delete about `excess` bytes of the oldest droppable task runs; how many."""
    count, size = conn.execute(
        "SELECT count(*), coalesce(sum(length(output)), 0) FROM task_runs").fetchone()
    if not count:
        return 0
    # An estimate from the mean row (output plus ~300 bytes of the rest); the caller
    # measures again and comes back for more.
    batch = max(1, min(count, int(excess / (size / count + 300)) + 1))
    candidates = conn.execute(
        f"SELECT run_id, seq, iteration, try_num FROM task_runs "
        f"WHERE result != 'RUNNING' AND NOT (run_id = ? AND iteration >= ?) "
        f"AND (synced_rev >= rev OR ?) ORDER BY {JOURNAL_ORDER} LIMIT ?",
        (current.run_id, current.iteration, 0 if only_forwarded else 1, batch),
    ).fetchall()
    if not candidates:
        return 0
    with _transaction(conn):
        conn.executemany("DELETE FROM task_runs WHERE run_id = ? AND seq = ?",
                         [(row[0], row[1]) for row in candidates])
        _drop_emptied(conn, candidates, current)
    return len(candidates)


def _drop_emptied(conn: sqlite3.Connection, dropped: list[sqlite3.Row],
                  current: Current) -> None:
    """The tries, then the runs, whose every task run has just been dropped."""
    conn.executemany(
        "DELETE FROM tries WHERE run_id = ? AND iteration = ? AND try_num = ? "
        "AND result != 'RUNNING' AND NOT EXISTS (SELECT 1 FROM task_runs AS t "
        "WHERE t.run_id = tries.run_id AND t.iteration = tries.iteration "
        "AND t.try_num = tries.try_num)",
        sorted({(row[0], row[2], row[3]) for row in dropped}),
    )
    conn.executemany(
        "DELETE FROM runs WHERE run_id = ? AND run_id != ? AND result != 'RUNNING' "
        "AND NOT EXISTS (SELECT 1 FROM tries WHERE tries.run_id = runs.run_id) "
        "AND NOT EXISTS (SELECT 1 FROM task_runs WHERE task_runs.run_id = runs.run_id)",
        sorted({(row[0], current.run_id) for row in dropped}),
    )


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error (autocommit connections)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
