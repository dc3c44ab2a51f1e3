"""`runner fleet QUESTION`: what a fleet operator asks, answered from the PostgreSQL fleet
journal (journal_url) by runner.fleetquery.

  failing  hosts whose newest run ended failed or halted, and at which task
  stuck    hosts whose newest run runs on, its newest task run silent for --for
  silent   hosts with no run and no task run since --since
  tasks    the tasks that failed on the most hosts since --since
  ready    time from a run's start to its first pass (READY), p50/p90/p99 per day

A table shows --limit rows (default 50) and says how many more there are; --json is the
whole answer unless --limit is given, and always says whether it was cut ("truncated",
"total", "shown"). Exit status: 0 with an answer, 1 when the answer is empty or the
journal cannot be read, 78 for bad arguments or no journal_url.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from ..errors import ConfigError
from ..history import JournalUnavailable
from ..settings import RunOptions
from .report import NOTHING, TEXT_LIMIT, _dump, _fail, _local, _seconds, _since
from .table import print_table

QUESTIONS = {
    "failing": "hosts whose newest run failed or halted, and at which task",
    "stuck": "hosts whose run goes on but whose newest task run is silent for --for",
    "silent": "hosts with no run since --since (default 1d)",
    "tasks": "tasks by the number of hosts they failed on since --since (default today)",
    "ready": "time from run start to first pass, p50/p90/p99 per day (--since, default 7d)",
}
DEFAULT_SINCE = {"silent": "1d", "tasks": "today", "ready": "7d"}
DEFAULT_QUIET = "2h"  # longer than an iteration's usual gap: quiet that long is news


@dataclass
class FleetOptions:
    question: str
    since: str | None = None
    quiet_for: str = DEFAULT_QUIET
    limit: int | None = None
    as_json: bool = False


def fleet(options: RunOptions, opts: FleetOptions, out: TextIO = sys.stdout) -> int:
    from ..config import load

    config = load(options.config_path, options.overrides)
    since = _since(opts.since or DEFAULT_SINCE.get(opts.question))
    quiet_s = _duration(opts.quiet_for)
    url = config.runner.journal_url
    if not url:
        where = config.path or "the configuration (no config file)"
        raise ConfigError(f"{where}: [runner] journal_url is not set: runner fleet "
                          "answers from the PostgreSQL fleet journal")
    from ..fleetquery import FleetQueries
    from ..history import open_postgres

    try:
        reader = open_postgres(url)
    except JournalUnavailable as exc:
        return _fail(str(exc))
    try:
        rows = _ask(FleetQueries(reader), opts.question, since, quiet_s)
    except JournalUnavailable as exc:
        return _fail(str(exc))
    finally:
        reader.close()
    return _answer(opts, since, rows, out)


def _ask(queries: Any, question: str, since: datetime | None,
         quiet_s: float) -> list[dict[str, Any]]:
    if question == "failing":
        return queries.failing()
    if question == "stuck":
        return queries.stuck(quiet_s)
    if question == "silent":
        return queries.silent(since)
    if question == "tasks":
        return queries.tasks(since)
    return queries.ready(since)


def _duration(text: str) -> float:
    from ..history import parse_duration

    seconds = parse_duration(text)
    if not seconds:
        raise ConfigError(f"--for: {text!r} is not a duration: use e.g. 90s, 30m, 2h, 1d")
    return seconds


def _answer(opts: FleetOptions, since: datetime | None, rows: list[dict[str, Any]],
            out: TextIO) -> int:
    total = len(rows)
    limit = opts.limit if opts.limit is not None or opts.as_json else TEXT_LIMIT
    shown = rows if limit is None else rows[:limit]
    if opts.as_json:
        _dump({"question": opts.question, "since": since.isoformat() if since else None,
               "total": total, "shown": len(shown), "truncated": len(shown) < total,
               "rows": shown}, out)
        return 0 if rows else NOTHING
    if not rows:
        print(f"no {NONE[opts.question]}", file=out)
        return NOTHING
    header, cells = TABLES[opts.question](shown)
    print_table(header, cells, out)
    if len(shown) < total:
        print(f"… {total - len(shown)} more; use --limit {total} (or --json)", file=out)
    return 0


NONE = {
    "failing": "host's newest run failed",
    "stuck": "host is stuck",
    "silent": "host is silent",
    "tasks": "task failed",
    "ready": "run started",
}


def _failing(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    return (["HOST", "RESULT", "TASK", "ENDED", "RUN"],
            [[r["host"], r["result"], r["task"] or "-", _local(r["ended_at"]), r["run_id"]]
             for r in rows])


def _stuck(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    return (["HOST", "TASK", "STATE", "LAST-EVENT", "RUN"],
            [[r["host"], r["task"] or "-", r["result"] or "no task run yet",
              _local(r["last_event_at"]), r["run_id"]] for r in rows])


def _silent(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    return (["HOST", "LAST-SEEN", "LAST-RUN", "RESULT"],
            [[r["host"], _local(r["last_seen_at"]), _local(r["last_run_at"]), r["result"]]
             for r in rows])


def _tasks(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    return (["TASK", "HOSTS", "FAILURES", "LAST-FAILED"],
            [[r["task"], str(r["hosts"]), str(r["failures"]), _local(r["last_failed_at"])]
             for r in rows])


def _ready(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    return (["DAY(UTC)", "RUNS", "READY", "P50", "P90", "P99", "MAX"],
            [[r["day"], str(r["runs"]), str(r["ready"]), _seconds(r["p50_s"]),
              _seconds(r["p90_s"]), _seconds(r["p99_s"]), _seconds(r["max_s"])]
             for r in rows])


TABLES = {"failing": _failing, "stuck": _stuck, "silent": _silent, "tasks": _tasks,
          "ready": _ready}
