"""The journal's checkpoints, from a thread of their own.

In WAL mode a commit appends pages to the -wal file; a checkpoint copies them into the
database file and lets the -wal file start over. SQLite's automatic checkpoint runs in
the commit that crosses its threshold, on the writer's thread: in a chain of short
tasks that was a third of what writing the journal cost, on the path from one task's end
to the next one's start. Here the writer's connection does no automatic checkpoints; after
each commit it looks at the size of the -wal file (one stat) and, past the threshold,
wakes this thread, which checkpoints from its own connection (PASSIVE: it never makes the
writer wait) while runner goes on. sqlite3 lets go of the GIL while it works. The writer
cuts the -wal file back to the threshold when it starts it over, so the file grows past
the threshold only once a threshold's worth has been written since the last checkpoint.

Safety is SQLite's: a checkpoint only copies what is committed, in either thread, and a
SIGKILL in the middle of one is recovered from the -wal file like any other. If the
thread falls behind (the -wal file past MAX_BEHIND thresholds), the writer checkpoints
itself. The -wal file can so grow to MAX_BEHIND thresholds, not one: that is only done
where it stays a small part of journal_max_mb (in_background); a small bound keeps
SQLite's own checkpoints in the commit, which hold the files closest to it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading

log = logging.getLogger("runner.journal")

MAX_BEHIND = 2
LOOK_EVERY = 8  # commits between two looks at the -wal file's size
CLOSE_WAIT_S = 5.0


def in_background(threshold: int, max_bytes: int) -> bool:
    """Whether checkpoints after `threshold` bytes of -wal file may leave the writer:
    with no bound, or one that MAX_BEHIND thresholds are at most an eighth of (the
    default 64 MiB and more)."""
    return not max_bytes or threshold * MAX_BEHIND * 8 <= max_bytes


class Checkpointer:
    """Checkpoints the journal at `path` once its -wal file holds `threshold` bytes."""

    def __init__(self, path: str, threshold: int, size_limit: int | None = None) -> None:
        self.path = path
        self.wal = path + "-wal"
        self.threshold = threshold
        self.size_limit = size_limit  # journal_size_limit: the -wal file is cut back to it
        self._wanted = threading.Event()
        self._checkpointing = threading.Lock()  # one checkpoint at a time
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._commits = 0

    def adopt(self, conn: sqlite3.Connection) -> None:
        """Take the automatic checkpoints away from the writer's connection, and have it
        cut the -wal file back to `threshold` bytes when it starts it over (after a
        checkpoint): the file's size then says how much was written since."""
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute(f"PRAGMA journal_size_limit = {int(self.size_limit or self.threshold)}")

    def committed(self, conn: sqlite3.Connection) -> None:
        """After a commit of the writer's: wake the thread, or checkpoint here if it is far
        behind. The -wal file is looked at every LOOK_EVERY commits (a stat per commit
        cost a chain of short tasks 10-15 µs a task): a chain commits a few pages each, so
        the file passes the threshold by a few tens of KiB at most before it is seen."""
        self._commits += 1
        if self._commits % LOOK_EVERY and not self._stopping:
            return
        try:
            size = os.stat(self.wal).st_size
        except OSError:
            return
        # A -wal file started over is cut back to the threshold (adopt), and written from
        # its beginning again: only past that size does it hold a threshold's worth. (At
        # `>=`, every commit after the first threshold asked for a checkpoint, and every
        # checkpoint cost the writer an fsync of the file's header when it started over.)
        if size <= self.threshold:
            return
        if size >= self.threshold * MAX_BEHIND or self._stopping:
            # Not beside the thread's: a checkpoint does nothing while another runs, and a
            # fast writer outgrew the bound.
            with self._checkpointing:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="journal-checkpoint",
                                            daemon=True)
            self._thread.start()
        self._wanted.set()

    def close(self) -> None:
        """Stop the thread, so that the writer's connection is the last one to close (the
        last close checkpoints everything and removes the -wal file)."""
        self._stopping = True
        self._wanted.set()
        if self._thread is not None:
            self._thread.join(CLOSE_WAIT_S)

    def _loop(self) -> None:
        conn = None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=1.0,
                                   check_same_thread=False)
            if self.size_limit is not None:
                conn.execute(f"PRAGMA journal_size_limit = {int(self.size_limit)}")
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._stopping:
                    return
                try:
                    with self._checkpointing:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:  # the writer checkpoints when far behind
                    log.debug("journal checkpoint: %s", exc)
        except sqlite3.Error as exc:
            log.debug("journal checkpoint thread: %s", exc)
        finally:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
