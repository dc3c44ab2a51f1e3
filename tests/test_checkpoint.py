"""runner.checkpoint: the journal's WAL checkpoints run in a thread of their own, the
-wal file stays bounded, and the writer's connection is the last to close."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess

from conftest import skip_unless

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
    # Bounded by MAX_BEHIND thresholds plus the commits until the size is next looked at
    # (each of a record and its pages): the -wal file was started over, so checkpoints
    # happened, and the thread is what made them.
    assert largest <= threshold * checkpoint.MAX_BEHIND + checkpoint.LOOK_EVERY * 2 * len(record)
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


def test_a_long_chain_checkpoints_once_per_threshold_not_after_every_commit(ws):
    """Once the -wal file had reached the threshold, every commit asked for a checkpoint
    (the file is cut back to the threshold, not below) and every checkpoint cost the
    writer an fsync when the file started over: 480 fsyncs for 200 no-op tasks. Counted
    with strace: the journal's syncs in a chain that writes a few thresholds."""
    skip_unless(shutil.which("strace") is not None, "strace is not installed")
    for i in range(400):
        ws.task(f"{i:03d}-ok.sh", "exit 0")
    trace = ws.root / "strace.txt"
    proc = subprocess.run(
        ["strace", "-f", "-y", "-qq", "-e", "trace=fsync,fdatasync", "-o", str(trace),
         *ws.command("-n", "1")], capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr
    syncs = [line for line in trace.read_text().splitlines() if "journal.sqlite" in line]
    # A checkpoint syncs the -wal file and the database, the writer the -wal file's header
    # when it starts over; a few thresholds' worth, the first and last commits' own.
    assert 2 <= len(syncs) <= 40, len(syncs)
