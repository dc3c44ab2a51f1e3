#!/usr/bin/env python3
"""What keeping the journal small costs, on a journal at its default bound (64 MiB).

    .venv/bin/python bench/journal_size.py [--mb 64] [--output-bytes 4096] [--json]

Builds a journal of the real schema (runner.journalfile) full of finished task runs,
as a chain looping for hours leaves it (one run, ten tasks an iteration, each with
--output-bytes of output), then measures, each the median of five:

  start     what a start pays to open it: open_journal() (connect, migrate,
            PRAGMA quick_check), against reading the file once from the page cache (the
            floor of any check that looks at every page; quick_check also checks each
            index, so many small rows cost more than few big ones). Target: within 20x.
  check     the size check after every task run (retention.used_bytes: three PRAGMAs),
            against the journal write it follows (one task run's row, committed).
            Target: under 0.5x of the write.
  trim      dropping the oldest records from 1% over the bound down to 80% of it
            (retention.trim_to_size), the whole pass; per dropped task run, against
            one write (it happens once per fifth of the bound written).
            Target: a dropped task run costs under 2 writes.
  prune     journal_keep_days pruning with the age envelope (retention.prune) when
            nothing is old enough, the hourly cost. Target: under 1 s.

Standard library and runner only; the journal lives in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner import journalfile, retention

RUN_ID = "b" * 32
TASKS = 10
ROUNDS = 5


def task_row(seq: int, output: bytes) -> tuple:
    iteration, task = divmod(seq, TASKS)
    started = f"2026-11-26T{(seq // 3600) % 24:02d}:{(seq // 60) % 60:02d}:{seq % 60:02d}.000Z"
    return (RUN_ID, seq, "bench", iteration + 1, 1, 5, f"{task:02d}-task.sh", "task", "OK",
            0, started, started, 0.01, output)


INSERT = ("INSERT INTO task_runs (run_id, seq, host, iteration, try_num, max_tries, task, "
          "kind, result, exit_code, started_at, ended_at, duration_s, output) "
          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def build(path: str, max_bytes: int, output_bytes: int) -> int:
    """A journal just over max_bytes; the next free task run seq."""
    conn = journalfile.connect(path)
    conn.execute("INSERT INTO runs (run_id, host, started_at, result) VALUES "
                 "(?, 'bench', '2026-11-26T00:00:00.000Z', 'RUNNING')", (RUN_ID,))
    output = os.urandom(output_bytes)
    seq = 0
    while retention.used_bytes(conn) <= max_bytes * 1.01:
        with conn:
            conn.execute("BEGIN")
            conn.executemany(INSERT, [task_row(s, output) for s in range(seq, seq + 500)])
        seq += 500
    conn.close()
    return seq


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def median_of(action: Callable[[], object], rounds: int = ROUNDS) -> float:
    return statistics.median(timed(action) for _ in range(rounds))


def read_file(path: str) -> None:
    with open(path, "rb") as file:
        while file.read(1 << 20):
            pass


def measure(root: Path, mb: int, output_bytes: int) -> dict:
    path = str(root / journalfile.FILE_NAME)
    max_bytes = mb * 1024 * 1024
    next_seq = build(path, max_bytes, output_bytes)
    results: dict = {"mb": mb, "output_bytes": output_bytes, "task_runs": next_seq,
                     "file_bytes": os.path.getsize(path)}

    def open_once() -> None:
        conn, moved = journalfile.open_journal(path)
        assert moved is None
        conn.close()

    results["start_s"] = median_of(open_once)
    results["read_s"] = median_of(lambda: read_file(path))
    conn = journalfile.connect(path)
    output = os.urandom(output_bytes)
    seqs = iter(range(next_seq, next_seq + 10 * ROUNDS * 100))
    results["write_s"] = median_of(lambda: conn.execute(INSERT, task_row(next(seqs), output)),
                                   ROUNDS * 100)
    results["check_s"] = median_of(lambda: retention.used_bytes(conn), ROUNDS * 100)
    results["prune_s"] = median_of(lambda: retention.prune(conn, 3650, forwarding=False))
    backup = str(root / "copy.sqlite")
    conn.close()
    shutil.copy(path, backup)
    trims = []
    for _ in range(3):
        shutil.copy(backup, path)
        conn = journalfile.connect(path)
        current = retention.Current(RUN_ID, 10**9)  # nothing protected but RUNNING rows
        start = time.perf_counter()
        trimmed = retention.trim_to_size(conn, max_bytes, current, forwarding=False)
        trims.append((time.perf_counter() - start, trimmed.deleted))
        assert retention.used_bytes(conn) <= max_bytes * retention.TRIM_TO, "trim missed"
        conn.close()
    results["trim_s"], results["trimmed"] = sorted(trims)[1]
    results["start_ratio"] = results["start_s"] / results["read_s"]
    results["check_ratio"] = results["check_s"] / results["write_s"]
    results["trim_ratio"] = results["trim_s"] / max(results["trimmed"], 1) / results["write_s"]
    return results


def report(r: dict) -> str:
    return "\n".join([
        f"journal: {r['file_bytes'] / 2**20:.1f} MiB, {r['task_runs']} task runs of "
        f"{r['output_bytes']} B output",
        f"start   open_journal {r['start_s'] * 1e3:8.1f} ms   read once {r['read_s'] * 1e3:.1f} ms"
        f"   ratio {r['start_ratio']:.2f}x (target < 20x)",
        f"check   used_bytes   {r['check_s'] * 1e6:8.1f} us   one write {r['write_s'] * 1e6:.1f} us"
        f"   ratio {r['check_ratio']:.2f}x (target < 0.5x)",
        f"trim    to 80%       {r['trim_s'] * 1e3:8.1f} ms   {r['trimmed']} task runs, "
        f"{r['trim_s'] / max(r['trimmed'], 1) * 1e6:.1f} us each   ratio "
        f"{r['trim_ratio']:.2f}x of a write (target < 2x)",
        f"prune   keep_days    {r['prune_s'] * 1e3:8.1f} ms   (target < 1000 ms)",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--output-bytes", type=int, default=4096)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="runner-journal-bench-") as tmp:
        results = measure(Path(tmp), args.mb, args.output_bytes)
    print(json.dumps(results, indent=2) if args.json else report(results))
    ok = (results["start_ratio"] < 20 and results["check_ratio"] < 0.5
          and results["trim_ratio"] < 2 and results["prune_s"] < 1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
