"""runner.checkpoint: the journal's WAL checkpoints run in a thread of their own, the
-wal file stays bounded, and the writer's connection is the last to close."""

from __future__ import annotations

import os
import sqlite3

from runner import checkpoint, journalfile
from runner.checkpoint import Checkpointer


def writer(path: str) -> sqlite3.Connection:
    conn = journalfile.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS blobs (data BLOB)")
    return conn


def test_the_writer_does_no_checkpoint_the_thread_does_and_the_wal_stays_bounded(tmp_path):
    path = str(tmp_path / "journal.sqlite")
    conn = writer(path)
    threshold = 256 * 1024
    keeper = Checkpointer(path, threshold)
    keeper.adopt(conn)
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    record = os.urandom(8192)
    largest = 0
    for _ in range(600):  # ~5 MB through the -wal file: many thresholds
        conn.execute("INSERT INTO blobs VALUES (?)", (record,))
        keeper.committed(conn)
        largest = max(largest, os.path.getsize(path + "-wal"))
    # Bounded by MAX_BEHIND thresholds plus the commit that crossed it: the -wal file was
    # started over, so checkpoints happened, and the thread is what made them.
    assert largest <= threshold * checkpoint.MAX_BEHIND + 4 * len(record)
    assert keeper._thread is not None and keeper._thread.is_alive()
    assert os.path.getsize(path) > 4 * 1024 * 1024  # the rows reached the database file
    keeper.close()
    assert not keeper._thread.is_alive()
    conn.close()
    assert not os.path.exists(path + "-wal")  # the last close checkpointed everything
    check = sqlite3.connect(path)
    assert check.execute("SELECT count(*) FROM blobs").fetchone()[0] == 600


def test_small_bounds_keep_sqlites_own_checkpoints():
    page = 4096
    assert checkpoint.in_background(1000 * page, 0)  # no bound
    assert checkpoint.in_background(1000 * page, 64 * 1024 * 1024)  # the default
    assert not checkpoint.in_background(32 * page, 1024 * 1024)  # journal_max_mb = 1
