"""Task starts recorded before their process starts, outside SQLite.

Every task that started must have its journal row, even when runner is SIGKILLed the
moment after the exec. Committing that row to SQLite before each start cost a chain of
short tasks a fifth of each task's time (a WAL commit of the row and its indexes, about
0.15 ms). Instead, the row is appended as one line of JSON to `journal.sqlite-starts`
(one write(), no fsync: it survives a crash of runner, as a WAL commit with
synchronous=NORMAL does), and committed to SQLite with the next records, when runner is
about to wait (runner.journal). The next start puts every row of that file that the
journal lacks back into it, before marking what the dead runner left RUNNING as
INTERRUPTED (runner.journalfile.recover_interrupted).

A line is of a row the journal lacks when its seq is past the last one of its run in
the journal: rows are committed in the order their starts were written, so nothing that
was written, trimmed by `journal_max_mb` or refused by SQLite comes back. The file is
emptied once everything is committed and it has grown past CLEAR_BYTES (a truncation per
task would cost more than the line), and after each recovery. It is a state file: made
0600 like the journal (a task's name can tell something), never followed as a symlink,
moved aside with a damaged journal, and checked with the other state files under
strict_permissions (runner.statedir).
"""

from __future__ import annotations

import json
import os
from typing import Any

SUFFIX = "-starts"
CLEAR_BYTES = 64 * 1024  # emptied past this size once nothing is waiting to be committed
MAX_BYTES = 1024 * 1024  # past this (a journal that cannot be written) starts go to SQLite
READ_LIMIT = 2 * MAX_BYTES  # more than the writer ever leaves
# The task_runs columns of a start row: what recovery inserts, and nothing else.
COLUMNS = ("run_id", "seq", "host", "boot_id", "iteration", "try_num", "max_tries", "task",
           "kind", "result", "started_at")
_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


# A start row holds texts, whole numbers and None only. Each value through json's own C
# string encoder: json.dumps of the list (its encoder object made per call, in Python)
# was a third of what recording a start cost in a chain.
_ENCODE = json.encoder.encode_basestring_ascii


def _json(value: str | int | None) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return _ENCODE(value)
    return str(int(value))


def path_of(journal: str) -> str:
    return journal + SUFFIX


class StartLog:
    """The writer's side: append a start, and empty the file once all are committed."""

    def __init__(self, journal: str) -> None:
        self.path = path_of(journal)
        self.fd = -1
        self.size = 0

    def open(self) -> list[dict[str, Any]]:
        """Open (or make) the file; the start rows it holds (a dead runner's)."""
        self.fd = os.open(self.path, _FLAGS, 0o600)
        os.fchmod(self.fd, 0o600)  # whatever made it, whatever the umask
        data = os.pread(self.fd, READ_LIMIT, 0)
        self.size = os.fstat(self.fd).st_size
        return parse(data)

    def append(self, row: dict[str, Any]) -> bool:
        """Write one start row; False (nothing written) when it cannot: the caller then
        commits the row itself before the start."""
        if self.fd < 0 or self.size >= MAX_BYTES:
            return False
        # The newline first: a piece a full disk left is no prefix of the next line.
        data = ("\n[" + ",".join([_json(row[name]) for name in COLUMNS]) + "]").encode()
        try:
            written = os.write(self.fd, data)
        except OSError:
            return False
        self.size += written
        # A piece of a line (a full disk) is skipped when read; it is no start.
        return written == len(data)

    def committed(self) -> None:
        """Everything appended is in the journal now."""
        if self.size >= CLEAR_BYTES:
            self.clear()

    def clear(self) -> None:
        if self.fd >= 0 and self.size:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                return  # tried again after the next commit; recovery skips what is there
            self.size = 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def parse(data: bytes) -> list[dict[str, Any]]:
    """The start rows of the lines that read as one whole row (a line a crash or a full
    disk cut short is no start: its task never started)."""
    rows = []
    for line in data.split(b"\n"):
        try:
            values = json.loads(line)
        except ValueError:
            continue
        if isinstance(values, list) and len(values) == len(COLUMNS):
            row = dict(zip(COLUMNS, values, strict=True))
            if (isinstance(row["run_id"], str) and isinstance(row["seq"], int)
                    and all(isinstance(value, str | int | None) for value in values)):
                rows.append(row)
    return rows
