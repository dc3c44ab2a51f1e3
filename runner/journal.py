"""The local journal: every run, try and task run in SQLite under state_dir.

Crash safety comes from SQLite itself: WAL mode and short transactions, so a SIGKILL at
any point never corrupts the file. Before a task's process starts, its row is appended to
the start log (runner.startlog: one write() of a line, where a commit cost a short task a
fifth of its time); the row, and the end of a short task after which the chain goes on
(OK or SKIPPED, output up to KEEP_BACK_BYTES), are kept back and committed when runner is
about to wait for anything (Listener.idle) — in a chain, right after the next task's
process started, while it runs — or with the next record that is kept back for nothing.
So a SIGKILL can lose at most the end of the one task that ended last (its row stays
RUNNING and becomes INTERRUPTED) and never a task's start: the next start puts the rows
of the start log that the journal lacks back in. Commits are synchronous=NORMAL (in
WAL mode: safe against any crash of runner, and no fsync per event, which would cost
more than the task it records); the commits before a halt or reboot task (whose starts
are committed, not logged) and the last one of a run are FULL, which makes everything
before them durable against a power cut too. A later start marks what a dead runner
left RUNNING as INTERRUPTED. A journal that
cannot be written never stops a task: the listener warns once, holds the records in
memory (bounded) and writes them when it can again. A record that SQLite refuses for
what it holds (a constraint, a trigger, a value it cannot bind) would be refused
forever: it is reported, counted in Health.rejected and dropped, and the records after
it are written.

Text goes in under runner.escape's rule (the task column holds `10-\\xff.sh` for a file
name with the byte 0xff), so every text column is valid UTF-8 that the fleet journal
accepts as it is, reads the same as the log, and `runner log NAME` finds by the
escaped argument; task output stays raw bytes (a BLOB).

Every row carries `rev` (bumped by each write) and `synced_rev` (what the PostgreSQL
forwarder has sent), so the same file is the buffer for `journal_url`.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from . import checkpoint
from .checkpoint import Checkpointer
from .escape import escape
from .events import SHORT_OUTPUT_BYTES, Listener
from .identity import RunIdentity, iso, utc_now
from .journalfile import (
    INTERRUPTED,
    RUNNING,
    JournalError,
    MovedAside,
    Op,
    insert,
    open_journal,
    recover_interrupted,
    update,
)
from .retention import Current, bound_wal, prune, trim_to_size
from .startlog import StartLog
from .states import Kind, TaskRun, TaskState
from .usage import Cost

log = logging.getLogger("runner.journal")

MAX_HELD = 1000  # records kept in memory while the journal cannot be written
# Records a transaction writes at most when there is more than one to write (what was
# held): each batch needs room for itself only. No fsync per commit (WAL, NORMAL), so
# small batches cost little more than one big one.
WRITE_BATCH = 20
# Errors that belong to one record (its values, a constraint, a trigger's RAISE), not to
# the file: writing that record again can only fail again. (ValueError: a str SQLite
# cannot bind, e.g. one holding a surrogate; OverflowError: an int beyond 64 bits.)
RECORD_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError,
                 sqlite3.ProgrammingError, ValueError, TypeError, OverflowError)
PRUNE_EVERY_S = 3600.0
# journal_max_mb is looked at again after this much was written (at most a 64th of it),
# counting a task run's row as ROW_BYTES plus its output: a chain of 200 silent tasks
# looks about once, one whose tasks print 64 KiB each looks after every task.
CHECK_EVERY_BYTES = 64 * 1024
ROW_BYTES = 512
# The end of a task with more output than this is written at once, as before: it is no
# short task, and its pages in the -wal file are checkpointed before the next task runs.
KEEP_BACK_BYTES = SHORT_OUTPUT_BYTES


@dataclass(frozen=True)
class Record:
    """One write held for the journal, and what it is about (for the report when SQLite
    refuses it)."""

    op: Op
    what: str


@dataclass
class Health:
    """What `runner status` says about the journal; shared with the forwarder thread."""

    path: str
    ok: bool = True
    error: str | None = None
    since: str | None = None
    held: int = 0
    dropped: int = 0
    moved_aside: str | None = None  # where a damaged journal file went at this start
    trimmed: int = 0  # task runs dropped to keep the file under journal_max_mb
    rejected: int = 0  # records SQLite refused (each reported, then dropped)
    rejected_error: str | None = None  # the last one: which record, and why
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "path": self.path, "ok": self.ok, "error": self.error, "since": self.since,
                "held": self.held, "dropped": self.dropped,
                "moved_aside": self.moved_aside, "trimmed": self.trimmed,
                "rejected": self.rejected, "rejected_error": self.rejected_error,
            }


class JournalListener(Listener):
    """Turns runner's events into journal rows, one transaction per event."""

    first = True  # a task's start is recorded before its process starts (runner.startlog)

    def __init__(
        self,
        path: str,
        identity: RunIdentity,
        *,
        run_info: dict[str, Any],
        keep_days: int = 0,
        max_bytes: int = 0,
        forwarding: bool = False,
        on_write: Any = None,
    ) -> None:
        self.path = path
        self.identity = identity
        self.run_info = run_info
        self.keep_days = keep_days
        self.max_bytes = max_bytes  # 0: no size bound
        self.iteration = 0  # the iteration in progress, which the size bound never drops
        self.warned: set[str] = set()  # size bound warnings, each given once per run
        # Bytes of task runs written since the size was last looked at.
        self.unchecked = 0
        self.check_every = min(CHECK_EVERY_BYTES, max_bytes // 64) if max_bytes else 0
        self.forwarding = forwarding
        self.on_write = on_write  # called after each successful write (wakes the forwarder)
        self.health = Health(path)
        self.conn: sqlite3.Connection | None = None
        self.checkpointer: Checkpointer | None = None
        self.held: deque[Record] = deque()
        self.kept_back: list[Record] = []  # written at idle() or with a next record
        self.seq = 0
        self.seqs: dict[int, int] = {}  # id(TaskRun) -> seq of its row
        self.open_try: tuple[int, int] | None = None
        self.started_mono = time.monotonic()
        self.last_prune: float | None = None  # monotonic: a clock jump neither stops nor
        # hurries pruning
        self.active = False
        self.starts = StartLog(path)
        self.lost_starts: list[dict[str, Any]] = []  # a dead runner's, until recovered

    # -- events -----------------------------------------------------------------

    def started(self) -> None:
        self.active = True
        self._open()
        ident = self.identity
        self._write(self._insert("runs", {
            "run_id": ident.run_id, "host": ident.host, "boot_id": ident.boot_id,
            "pid": ident.pid, "pid_start": ident.pid_start, **self.run_info,
            "started_at": iso(utc_now()), "result": RUNNING,
        }))
        self._prune()
        self._bound_size()

    def chain_started(self, iteration: int, try_num: int) -> None:
        self.open_try = (iteration, try_num)
        self.iteration = iteration
        self._write(self._insert("tries", {
            "run_id": self.identity.run_id, "iteration": iteration, "try_num": try_num,
            "host": self.identity.host, "boot_id": self.identity.boot_id,
            "started_at": iso(utc_now()), "result": RUNNING,
        }))

    def task_changed(self, run: TaskRun) -> None:
        if run.state is TaskState.RUNNING:
            # A halt or reboot task may cut the power: what led to it goes to disk first.
            durable = run.kind is not Kind.TASK
            row = self._start_row(run)
            record = self._start_record(run, row)
            if not durable and self.starts.append(row):
                self.kept_back.append(record)  # see runner.startlog
                return
            self._write(record, durable=durable, with_kept_back=durable)
            return
        ops = [] if id(run) in self.seqs else [self._task_started(run)]  # SKIPPED: no RUNNING
        ops.append(self._task_ended(run))
        # A task's output is what makes the file grow: the size is looked at once enough
        # has been written since the last look to matter (each look costs three PRAGMAs).
        self.unchecked += len(run.output_tail or b"") + ROW_BYTES
        goes_on = run.state in (TaskState.OK, TaskState.SKIPPED)  # the chain goes on
        if (run.kind is Kind.TASK and goes_on
                and len(run.output_tail or b"") <= KEEP_BACK_BYTES):
            self.kept_back.extend(ops)  # see the module's docstring
            return
        if run.kind is Kind.TASK and not goes_on:  # a failure ends the try
            ops.extend(self._end_try(run.state.value, run.task.name))
        self._write(*ops)

    def idle(self) -> None:
        if self.kept_back:
            self._write()

    def iteration_done(self, iteration: int) -> None:
        self._write(*self._end_try(TaskState.OK.value, None))
        self._prune()

    def finished(self, status: int) -> None:
        from .states import ExitStatus

        if not self.active:  # the configuration was refused: there was no run
            return
        try:
            name = ExitStatus(status).name
        except ValueError:
            name = f"EXIT_{status}"
        ops = self._end_try(INTERRUPTED, None)
        ops.append(self._update(
            "runs", {"run_id": self.identity.run_id},
            {"ended_at": iso(utc_now()), "result": name, "exit_status": status},
        ))
        self._write(*ops, durable=True)
        self.close()

    # -- rows -------------------------------------------------------------------

    def _insert(self, table: str, row: dict[str, Any], about: str = "") -> Record:
        return Record(insert(table, _escaped(row)), _what(table, about))

    def _update(self, table: str, key: dict[str, Any], row: dict[str, Any],
                about: str = "") -> Record:
        return Record(update(table, key, _escaped(row)), _what(table, about))

    def _task_started(self, run: TaskRun) -> Record:
        return self._start_record(run, self._start_row(run))

    @staticmethod
    def _start_record(run: TaskRun, row: dict[str, Any]) -> Record:
        return Record(insert("task_runs", row), _what("task_runs", run.task.name))

    def _start_row(self, run: TaskRun) -> dict[str, Any]:
        """A task run's row as it starts (runner.startlog.COLUMNS), escaped: the name is
        the one text of it that is not runner's own (a kind, RUNNING, a time in ISO)."""
        self.seq += 1
        self.seqs[id(run)] = self.seq
        run_id, host, boot_id = self._escaped_identity
        return {
            "run_id": run_id, "seq": self.seq, "host": host,
            "boot_id": boot_id, "iteration": run.iteration, "try_num": run.try_num,
            "max_tries": run.max_tries, "task": escape(run.task.name), "kind": run.kind.value,
            "result": RUNNING, "started_at": run.started_at_text() or iso(utc_now()),
        }

    @functools.cached_property
    def _escaped_identity(self) -> tuple[str, str, str]:
        ident = self.identity
        return escape(ident.run_id), escape(ident.host), escape(ident.boot_id)

    def _task_ended(self, run: TaskRun) -> Record:
        seq = self.seqs.pop(id(run))
        return self._update("task_runs", {"run_id": self.identity.run_id, "seq": seq}, {
            "result": run.state.value, "exit_code": run.exit_code, "signal": run.signal,
            "error": run.error, "ended_at": iso(run.ended_at or utc_now()),
            "duration_s": None if run.duration_s is None else round(run.duration_s, 3),
            **cost_columns(run.cost),
            "output": run.output_tail,
        }, run.task.name)

    def _end_try(self, result: str, failed_task: str | None) -> list[Record]:
        if self.open_try is None:
            return []
        iteration, try_num = self.open_try
        self.open_try = None
        return [self._update(
            "tries",
            {"run_id": self.identity.run_id, "iteration": iteration, "try_num": try_num},
            {"ended_at": iso(utc_now()), "result": result, "failed_task": failed_task},
        )]

    # -- storage ----------------------------------------------------------------

    def _open(self) -> None:
        try:
            self.conn, moved = open_journal(self.path)
            # After the journal: a damaged one is moved aside with its start log.
            self._open_starts()
            wal_bytes = bound_wal(self.conn, self.max_bytes)
            if checkpoint.in_background(wal_bytes, self.max_bytes):
                self.checkpointer = Checkpointer(self.path, wal_bytes,
                                                 wal_bytes if self.max_bytes else None)
                self.checkpointer.adopt(self.conn)
            interrupted = recover_interrupted(self.conn, self.identity, self.lost_starts)
        except (JournalError, sqlite3.Error, OSError) as exc:
            self._failed(exc)
            return
        self.lost_starts = []
        if self._all_written():  # none of this run's yet
            self.starts.clear()  # whatever was there is in the journal or no start
        if moved is not None:
            self._moved_aside(moved)
        for run_id in interrupted:
            log.warning("journal: run %s ended without a word: marked INTERRUPTED", run_id)

    def _all_written(self) -> bool:
        """Nothing the start log holds is still to be written: it may be emptied."""
        return not self.held and not self.kept_back and not self.lost_starts

    def _open_starts(self) -> None:
        if self.starts.fd >= 0:
            return
        try:
            self.lost_starts = self.starts.open()
        except OSError as exc:  # each start is committed before its process then
            log.debug("journal: cannot open %s (%s): task starts are committed before "
                      "each task", self.starts.path, exc.strerror)

    def _write(self, *records: Record, durable: bool = False,
               with_kept_back: bool = True) -> None:
        """Append records to what is held and try to write everything (_commit);
        `durable`: fsync it, and with it every earlier commit (one WAL file);
        `with_kept_back`: False leaves what is kept back for idle()."""
        if with_kept_back:
            self.held.extend(self.kept_back)
            self.kept_back.clear()
        self.held.extend(records)
        while len(self.held) > MAX_HELD:
            self.held.popleft()
            self.health.dropped += 1
        if self.conn is None:
            self._open()
            if self.conn is None:
                self._sync_health()
                return
        count = len(self.held)
        try:
            if durable:
                self.conn.execute("PRAGMA synchronous=FULL")
            try:
                self._commit(self.conn)
            finally:
                if durable:
                    self.conn.execute("PRAGMA synchronous=NORMAL")
        except (sqlite3.Error, OSError) as exc:
            self._failed(exc)
            return
        if not self.health.ok:
            log.warning("journal %s: writable again; wrote %d held record(s)", self.path,
                        count)
            with self.health.lock:
                self.health.ok, self.health.error, self.health.since = True, None, None
        self._sync_health()
        if self._all_written():
            self.starts.committed()
        if self.checkpointer is not None:
            self.checkpointer.committed(self.conn)
        if self.unchecked >= self.check_every:
            self.unchecked = 0
            self._bound_size()
        if self.on_write is not None:
            self.on_write()

    def _commit(self, conn: sqlite3.Connection) -> None:
        """Everything held, oldest first, in transactions of up to WRITE_BATCH records: a
        journal that could not be written (a full disk) recovers with room for a batch,
        not for all it held at once, and a batch written stays written if a later one
        fails. A record SQLite refuses is reported and dropped, the rest written without it."""
        while self.held:
            batch = list(islice(self.held, WRITE_BATCH))
            refused = self._try_commit(conn, batch)
            if refused is None:
                for _ in batch:
                    self.held.popleft()
                continue
            index, exc = refused
            record = self.held[index]
            del self.held[index]
            self._rejected(record, exc)

    @staticmethod
    def _try_commit(conn: sqlite3.Connection,
                    records: list[Record]) -> tuple[int, Exception] | None:
        """Write `records` in one transaction, or roll all of them back and name the first
        one refused for what it holds (other errors are the file's: they propagate)."""
        many = len(records) > 1  # one statement is a transaction of its own
        if many:
            conn.execute("BEGIN IMMEDIATE")
        try:
            for index, record in enumerate(records):
                try:
                    conn.execute(*record.op)
                except RECORD_ERRORS as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    return index, exc
            if many:
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return None

    def _rejected(self, record: Record, exc: Exception) -> None:
        reason = f"{record.what}: {str(exc) or type(exc).__name__}"
        log.warning("journal %s: SQLite refused the %s; dropped it, the records after it "
                    "are written", self.path, reason)
        with self.health.lock:
            self.health.rejected += 1
            self.health.rejected_error = reason

    def _failed(self, exc: BaseException) -> None:
        reason = str(exc) or type(exc).__name__
        if self.health.ok:
            log.warning(
                "journal %s: cannot write (%s); tasks keep running, records are held in "
                "memory (up to %d) until it can be written",
                self.path, reason, MAX_HELD,
            )
            with self.health.lock:
                self.health.ok, self.health.since = False, iso(utc_now())
        with self.health.lock:
            self.health.error = reason
        self._sync_health()

    def _sync_health(self) -> None:
        with self.health.lock:
            self.health.held = len(self.held)

    def _prune(self) -> None:
        if not self.keep_days or self.conn is None or not self.health.ok:
            return
        now = time.monotonic()
        if self.last_prune is not None and now - self.last_prune < PRUNE_EVERY_S:
            return
        self.last_prune = now
        # A run that has itself lasted longer than keep_days (a chain looping for weeks)
        # is not held whole by the newest-runs floor: its old iterations may go.
        long_running = now - self.started_mono > self.keep_days * 86400
        try:
            deleted = prune(self.conn, self.keep_days, forwarding=self.forwarding,
                            current_run=self.identity.run_id if long_running else None)
        except sqlite3.Error as exc:
            log.warning("journal %s: pruning failed: %s", self.path, exc)
            return
        if deleted:
            log.info("journal: removed %d record(s) older than %d days", deleted,
                     self.keep_days)

    def _moved_aside(self, moved: MovedAside) -> None:
        log.warning("journal %s: damaged (%s): moved aside to %s (kept, never deleted) "
                    "and started a new one", self.path, moved.reason, moved.path)
        with self.health.lock:
            self.health.moved_aside = moved.path

    def _bound_size(self) -> None:
        """Keep the file under journal_max_mb (checking costs three PRAGMAs)."""
        if not self.max_bytes or self.conn is None or not self.health.ok:
            return
        current = Current(self.identity.run_id, self.iteration)
        try:
            trimmed = trim_to_size(self.conn, self.max_bytes, current,
                                   forwarding=self.forwarding)
        except sqlite3.Error as exc:
            log.warning("journal %s: keeping it under journal_max_mb failed: %s",
                        self.path, exc)
            return
        if trimmed.deleted:
            with self.health.lock:
                self.health.trimmed += trimmed.deleted
            log.info("journal: dropped the %d oldest task run record(s) to stay under "
                     "journal_max_mb", trimmed.deleted)
        self._warn_once("unforwarded", trimmed.unforwarded > 0,
                        "%d record(s) not yet forwarded to journal_url dropped to stay "
                        "under journal_max_mb", trimmed.unforwarded)
        self._warn_once("over", trimmed.over,
                        "over journal_max_mb, and the current iteration alone is more: "
                        "it is kept whole")

    def _warn_once(self, key: str, condition: bool, message: str, *args: Any) -> None:
        if condition and key not in self.warned:
            self.warned.add(key)
            log.warning("journal %s: " + message, self.path, *args)

    def close(self) -> None:
        if self._all_written():
            self.starts.clear()
        self.starts.close()
        if self.checkpointer is not None:
            self.checkpointer.close()
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def cost_columns(cost: Cost | None) -> dict[str, Any]:
    """The task_runs columns of what a run cost: CPU seconds to the millisecond."""
    if cost is None:
        return {"cpu_user_s": None, "cpu_system_s": None, "peak_memory_bytes": None}
    return {"cpu_user_s": round(cost.cpu_user_s, 3), "cpu_system_s": round(cost.cpu_system_s, 3),
            "peak_memory_bytes": cost.peak_memory_bytes}


def _escaped(row: dict[str, Any]) -> dict[str, Any]:
    """Text values under runner.escape's rule (bytes, numbers and None as they are)."""
    return {key: escape(value) if isinstance(value, str) else value
            for key, value in row.items()}


def _what(table: str, about: str) -> str:
    return f"{table} record of {about}" if about else f"{table} record"
