"""Reading the journal back: the queries behind status, history, log and blame.

The same SQL runs on the local SQLite journal and on the PostgreSQL fleet journal (the
tables have the same columns; PostgreSQL's carry a `runner_` prefix), so every command
answers from either. One difference: "newest" in the local journal is the journal's own
order (runs.run_seq, then the task run's seq), which a wall clock far behind or ahead
cannot reorder; the fleet journal mixes hosts, whose only common order is started_at.

`runner status` and `runner history` start here (issue 17): at import time it loads
`os`, `sqlite3`, `datetime` (which sqlite3 loads anyway) and runner's light modules only;
`re`, runner.escape and runner.names come with the arguments that need them.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime, time, timedelta

from . import journalread
from .clock import iso

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (its cost)
if TYPE_CHECKING:
    from typing import Any

# The fields of every record the commands print (and --json carries).
RECORD_FIELDS = (
    "task", "result", "try_num", "max_tries", "iteration", "started_at", "ended_at",
    "duration_s", "exit_code", "signal", "error", "kind", "run_id", "host", "boot_id",
    "cpu_user_s", "cpu_system_s", "peak_memory_bytes",
)
RUN_FIELDS = ("run_id, host, boot_id, pid, pid_start, version, config, task_dir, "
              "started_at, ended_at, result, exit_status")
TRY_FIELDS = "run_id, iteration, try_num, host, boot_id, started_at, ended_at, result, failed_task"
# What a run cost (runner.usage): columns a journal of an older schema does not have yet.
COST_FIELDS = ("cpu_user_s", "cpu_system_s", "peak_memory_bytes")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class JournalUnavailable(Exception):
    """There is no journal to read, or it cannot be read; the message says which."""


class Filters:
    """Which task runs a question is about; None means any. (A plain class: dataclasses
    would import inspect and re.)"""

    __slots__ = ("host", "iteration", "run_id", "since", "tasks", "try_num")

    def __init__(self, tasks: tuple[str, ...] | None = None, since: datetime | None = None,
                 host: str | None = None, run_id: str | None = None,
                 try_num: int | None = None, iteration: int | None = None) -> None:
        self.tasks = tasks  # exact file names
        self.since = since
        self.host = host
        self.run_id = run_id
        self.try_num = try_num
        self.iteration = iteration


def parse_duration(text: str) -> float | None:
    """`90s`, `30m`, `2h`, `1d`, `1w` -> seconds; None when `text` is not one."""
    import re

    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text.strip().lower())
    return float(match.group(1)) * _UNITS[match.group(2)] if match else None


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`2h`, `30m`, `1d`, `today`, `yesterday`, `2026-11-23`, `2026-11-23T10:00` -> UTC."""
    now = now or datetime.now(UTC)
    value = text.strip().lower()
    seconds = parse_duration(value)
    if seconds is not None:
        try:
            return now - timedelta(seconds=seconds)
        except OverflowError:  # before the year 1
            raise ValueError(f"{text!r} is too far back") from None
    if value in ("today", "yesterday"):
        day = now.astimezone().date() - timedelta(days=value == "yesterday")
        return datetime.combine(day, time(), tzinfo=now.astimezone().tzinfo).astimezone(UTC)
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use e.g. 2h, 30m, 1d, today, yesterday, "
            "2026-11-23 or 2026-11-23T10:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # a time without a zone is local time
    return moment.astimezone(UTC)


class Reader:
    """Runs the commands' queries on one journal."""

    def __init__(self, conn: Any, *, postgres: bool, source: str,
                 run_seq: bool = True, cost: bool = True) -> None:
        self.conn = conn
        self.postgres = postgres
        self.source = source
        # False: a local journal of schema 1 that no runner has migrated yet (readers
        # never write); it only has started_at to order by.
        self.by_run_seq = run_seq and not postgres
        # False: a journal from before the cost columns (local schema 2, or a fleet
        # database no runner has given them yet): they read as null.
        self.has_cost = cost

    def close(self) -> None:
        self.conn.close()

    # -- plumbing ---------------------------------------------------------------

    def table(self, name: str) -> str:
        return f"runner_{name}" if self.postgres else name

    def rows(self, sql: str,
             params: tuple[Any, ...] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        if isinstance(params, dict):  # PostgreSQL's named parameters, %(name)s
            pass
        elif self.postgres:
            sql = sql.replace("?", "%s")
        else:  # SQLite compares the ISO text runner writes
            params = tuple(iso(p) if isinstance(p, datetime) else p for p in params)
        try:
            cursor = self.conn.execute(sql, params)
            names = [column[0] for column in cursor.description]
            return [_normalize(dict(zip(names, row, strict=True))) for row in cursor]
        except sqlite3.Error as exc:
            raise JournalUnavailable(f"{self.source}: {exc}") from None

    def record_fields(self) -> str:
        """The SELECT list of RECORD_FIELDS on this journal's task_runs."""
        return ", ".join(f"NULL AS {name}" if name in COST_FIELDS and not self.has_cost
                         else name for name in RECORD_FIELDS)

    def newest_first(self, filters: Filters | None = None, alias: str = "", *,
                     one_task: bool = False) -> str:
        """ORDER BY terms for task runs, newest first (`one_task`: of one task, whatever
        `filters` say)."""
        if self.by_run_seq:
            return f"{journalread.RUN_ORDER} DESC, seq DESC"
        hint = ""
        if self.postgres and filters is not None:
            # A leading term that changes nothing (an `=` of the filters fixes it) but
            # names the index that answers best: (host, started_at) for a host, else
            # (task, started_at) for one task. PostgreSQL otherwise picked the
            # (started_at) index of the day's partitions and filtered thousands of rows.
            if filters.host is not None:
                hint = f"{alias}host DESC, "
            elif one_task or (filters.tasks is not None and len(filters.tasks) == 1):
                hint = f"{alias}task DESC, "
        return f"{hint}{alias}started_at DESC, {alias}seq DESC"

    def _where(self, filters: Filters, alias: str = "") -> tuple[str, list[Any]]:
        prefix = f"{alias}." if alias else ""
        clauses: list[str] = []
        params: list[Any] = []
        if filters.tasks is not None:
            if not filters.tasks:
                return "1 = 0", []
            clauses.append(f"{prefix}task IN ({', '.join('?' for _ in filters.tasks)})")
            params.extend(filters.tasks)
        for column in ("host", "run_id", "try_num", "iteration"):
            value = getattr(filters, column)
            if value is not None:
                clauses.append(f"{prefix}{column} = ?")
                params.append(value)
        if filters.since is not None:
            clauses.append(f"{prefix}started_at >= ?")
            params.append(filters.since)
        return " AND ".join(clauses) or "1 = 1", params

    # -- questions ----------------------------------------------------------------

    def task_names(self) -> list[str]:
        if self.postgres:
            # A skip scan of the (task, started_at) index: one probe per task name, not
            # a read of 50 M rows (SELECT DISTINCT did that before every --task).
            rows = self.rows(
                "WITH RECURSIVE names(task) AS ("
                " SELECT min(task) FROM runner_task_runs"
                " UNION ALL SELECT (SELECT min(task) FROM runner_task_runs"
                " WHERE task > names.task) FROM names WHERE names.task IS NOT NULL)"
                " SELECT task FROM names WHERE task IS NOT NULL")
        else:
            rows = self.rows(f"SELECT DISTINCT task FROM {self.table('task_runs')}")
        return sorted(row["task"] for row in rows)

    def has_task(self, name: str) -> bool:
        return bool(self.rows(
            f"SELECT 1 AS found FROM {self.table('task_runs')} WHERE task = ? LIMIT 1",
            (name,)))

    def resolve_task(self, name: str) -> tuple[str, ...]:
        """The recorded file names a task argument means: a file name or a short name,
        as the file system has it (the journal holds it escaped, runner.escape) or as
        runner shows it (the escaped text, copied from a listing); the former first."""
        from .escape import escape
        from .names import short_name

        for wanted in dict.fromkeys((escape(name), name)):
            if self.has_task(wanted):
                return (wanted,)
        names = self.task_names()
        for wanted in dict.fromkeys((escape(name), name)):
            found = tuple(n for n in names if short_name(n) == wanted)
            if found:
                return found
        return ()

    def history(self, filters: Filters, limit: int | None) -> list[dict[str, Any]]:
        """The newest `limit` task runs (None: all), oldest first."""
        where, params = self._where(filters)
        bound = "" if limit is None else " LIMIT ?"
        rows = self.rows(
            f"SELECT {self.record_fields()} FROM {self.table('task_runs')} "
            f"WHERE {where} ORDER BY {self.newest_first(filters)}{bound}",
            (*params, *(() if limit is None else (limit,))),
        )
        return rows[::-1]

    def last_run(self, task_filters: Filters) -> dict[str, Any] | None:
        """The newest task run matching, with its output."""
        where, params = self._where(task_filters)
        rows = self.rows(
            f"SELECT {self.record_fields()}, output FROM {self.table('task_runs')} "
            f"WHERE {where} ORDER BY {self.newest_first(task_filters)} LIMIT 1",
            tuple(params),
        )
        return rows[0] if rows else None

    def latest_per_task(self, filters: Filters,
                        tasks: list[str] | None = None) -> list[dict[str, Any]]:
        """The last run of every task (the halt task included), in name order; `tasks`:
        the names there are, when the caller knows them."""
        if self.postgres:
            return self._latest_per_task_pg(filters, tasks)
        where, params = self._where(filters)
        return self.rows(
            f"SELECT {self.record_fields()} FROM ("
            f" SELECT *, row_number() OVER (PARTITION BY task ORDER BY "
            f"{self.newest_first()}) AS newest FROM {self.table('task_runs')} WHERE {where}"
            ") AS ranked WHERE newest = 1 ORDER BY task",
            tuple(params),
        )

    def _latest_per_task_pg(self, filters: Filters,
                            tasks: list[str] | None) -> list[dict[str, Any]]:
        """One probe of the (task, started_at) index per task: a window over every row
        of the period sorted a whole day of the fleet (277 MB spilled to disk)."""
        names = sorted(tasks if tasks is not None else self.task_names())
        if filters.tasks is not None:
            names = [n for n in names if n in filters.tasks]
        # The last day first: over a month, PostgreSQL merged every day partition's
        # (started_at) index, each read back until it met the task (1 s for 14 tasks
        # at 5,000 hosts x 30 days); a task not run that day is looked for again.
        recent = datetime.now(UTC) - timedelta(days=1)
        found: list[dict[str, Any]] = []
        if filters.since is None or filters.since < recent:
            found = self._latest_of(names, _since(filters, recent))
            names = sorted(set(names) - {row["task"] for row in found})
        if names:
            found += self._latest_of(names, filters)
        return sorted(found, key=lambda row: row["task"])

    def _latest_of(self, names: list[str], filters: Filters) -> list[dict[str, Any]]:
        if not names:
            return []
        where, params = self._where(filters, "r")
        order = self.newest_first(filters, "r.", one_task=True)
        return self.rows(
            f"SELECT last.* FROM unnest(?::text[]) AS names(name), LATERAL ("
            f" SELECT {self.record_fields()} FROM runner_task_runs r"
            f" WHERE r.task = names.name AND {where}"
            f" ORDER BY {order} LIMIT 1) AS last ORDER BY last.task",
            (names, *params),
        )

    def last_success(self, filters: Filters) -> dict[str, str]:
        where, params = self._where(filters)
        rows = self.rows(
            f"SELECT task, max(ended_at) AS ended_at FROM {self.table('task_runs')} "
            f"WHERE {where} AND result = 'OK' GROUP BY task",
            tuple(params),
        )
        return {row["task"]: row["ended_at"] for row in rows}

    def runs(self, host: str | None, limit: int = 1, *, since: datetime | None = None,
             run_id: str | None = None) -> list[dict[str, Any]]:
        """The newest runner runs (processes), newest first: of `host` (None: any), started
        since `since`, whose id is `run_id` or starts with it."""
        clauses: list[str] = ["1 = 1"]
        params: list[Any] = []
        if host:
            clauses.append("host = ?")
            params.append(host)
        if since is not None:
            clauses.append("started_at >= ?")
            params.append(since)
        if run_id is not None:
            # A prefix, as the plot's header shows it; `_` and `%` are no pattern here.
            clauses.append("substr(run_id, 1, ?) = ?")
            params += [len(run_id), run_id]
        order = "run_seq DESC" if self.by_run_seq else "started_at DESC"
        return self.rows(
            f"SELECT {RUN_FIELDS} FROM {self.table('runs')} "
            f"WHERE {' AND '.join(clauses)} ORDER BY {order} LIMIT ?",
            (*params, limit),
        )

    def of_runs(self, table: str, run_ids: list[str]) -> list[dict[str, Any]]:
        """Every row of `tries` or `task_runs` (without the output) of these runs."""
        if not run_ids:
            return []
        fields = self.record_fields() + ", seq" if table == "task_runs" else TRY_FIELDS
        marks = ", ".join("?" for _ in run_ids)
        return self.rows(
            f"SELECT {fields} FROM {self.table(table)} WHERE run_id IN ({marks}) "
            "ORDER BY started_at", tuple(run_ids),
        )

    def rebooted(self, run_ids: list[str]) -> set[str]:
        """Which of these runs ran a reboot task (the next start resumed after it)."""
        if not run_ids:
            return set()
        marks = ", ".join("?" for _ in run_ids)
        rows = self.rows(
            f"SELECT DISTINCT run_id FROM {self.table('task_runs')} "
            f"WHERE kind = 'reboot' AND run_id IN ({marks})", tuple(run_ids),
        )
        return {row["run_id"] for row in rows}

    def blame(self, filters: Filters) -> list[dict[str, Any]]:
        """Per task: time spent, runs and failures, longest first, with its last run."""
        where, params = self._where(filters)
        cost = ("sum(cpu_user_s) AS user_s, sum(cpu_system_s) AS system_s, "
                "max(peak_memory_bytes) AS peak" if self.has_cost
                else "NULL AS user_s, NULL AS system_s, NULL AS peak")
        totals = self._blame_rollup(filters)
        if totals is None:
            totals = self.rows(
                f"SELECT task, sum(coalesce(duration_s, 0)) AS total_s, count(*) AS runs, "
                f"sum(CASE WHEN result = 'OK' THEN 0 ELSE 1 END) AS failures, "
                f"max(duration_s) AS max_s, {cost} FROM {self.table('task_runs')} "
                f"WHERE {where} GROUP BY task",
                tuple(params),
            )
        last = {row["task"]: row for row in
                self.latest_per_task(filters, [total["task"] for total in totals])}
        records = []
        for total in totals:
            record = dict(last.get(total["task"], {}))
            record.update(
                task=total["task"], duration_s=round(total["total_s"] or 0.0, 3),
                runs=total["runs"], failures=total["failures"], max_s=total["max_s"],
                last_duration_s=record.get("duration_s"),
                **_cost_totals(total["user_s"], total["system_s"], total["peak"]),
            )
            records.append(record)
        records.sort(key=lambda r: (-r["duration_s"], r["task"]))
        return records


    def _blame_rollup(self, filters: Filters) -> list[dict[str, Any]] | None:
        """blame's totals from the fleet journal's hourly rollup (runner.fleetrollup)
        when the question is "since a moment" (of some tasks), over the whole fleet; None
        when it cannot answer (a host, a run, no rollup): the raw rows answer."""
        if not (self.postgres and self.has_cost and filters.since is not None) or any(
                getattr(filters, name) is not None
                for name in ("host", "run_id", "try_num", "iteration")):
            return None
        from . import fleetrollup
        from .fleetschema import day_partitions
        from .pgjournal import import_psycopg

        # An older schema (no rollup, no maintenance table), or a role that may not read
        # the rollup: the raw rows answer.
        errors = import_psycopg().errors
        try:
            days = day_partitions(self.conn)
            oldest = fleetrollup.day_start(min(days)) if days else None
            first = fleetrollup.first_hour(self.conn, filters.since, oldest)
            if first is None:
                return None
            params = {"since": filters.since, "first": first,
                      "tasks": list(filters.tasks or ())}
            with self.conn.transaction():
                self.conn.execute(fleetrollup.NO_JIT)
                return self.rows(fleetrollup.blame_sql(filters.tasks is not None), params)
        except (errors.InsufficientPrivilege, errors.UndefinedTable):
            return None


def _since(filters: Filters, since: datetime) -> Filters:
    """`filters`, from `since` on."""
    return Filters(tasks=filters.tasks, since=since, host=filters.host,
                   run_id=filters.run_id, try_num=filters.try_num,
                   iteration=filters.iteration)


def _cost_totals(user_s: float | None, system_s: float | None,
                 peak: int | None) -> dict[str, Any]:
    """A task's CPU seconds over its runs (None when no run's is known) and the highest
    peak memory of any of them."""
    known = [value for value in (user_s, system_s) if value is not None]
    return {
        "cpu_s": round(sum(known), 3) if known else None,
        "cpu_user_s": None if user_s is None else round(user_s, 3),
        "cpu_system_s": None if system_s is None else round(system_s, 3),
        "peak_memory_bytes": None if peak is None else int(peak),
    }


def open_local(state_dir: str) -> Reader:
    path = journalread.journal_path(state_dir)
    if not os.path.exists(path):
        raise JournalUnavailable(f"no journal at {path}: runner has not run with this state_dir")
    try:
        conn = journalread.connect_readonly(path)
    except journalread.JournalError as exc:
        raise JournalUnavailable(str(exc)) from None
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    return Reader(conn, postgres=False, source=path,
                  run_seq=version >= journalread.RUN_SEQ_SCHEMA,
                  cost=version >= journalread.COST_SCHEMA)


def open_postgres(url: str) -> Reader:
    from .masking import Masker, mask_url
    from .pgjournal import CONNECT_TIMEOUT_S, JOURNAL_PROBE, import_psycopg

    try:
        psycopg = import_psycopg()
    except ImportError as exc:
        raise JournalUnavailable(str(exc)) from None
    try:
        conn = psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True)
        exists, readable, cost = conn.execute(JOURNAL_PROBE).fetchone()
        if not (exists and readable):
            conn.close()
            why = ("permission denied for table runner_task_runs" if exists
                   else "no runner journal in this database yet")
            raise JournalUnavailable(f"{mask_url(url)}: {why}")
    except psycopg.Error as exc:
        reason = Masker.for_url(url).text(" ".join(str(exc).split()))
        raise JournalUnavailable(f"{mask_url(url)}: {reason}") from None
    return Reader(conn, postgres=True, source=mask_url(url), cost=cost)


def _normalize(row: dict[str, Any]) -> dict[str, Any]:
    for key, value in row.items():
        if isinstance(value, datetime):
            row[key] = iso(value)
        elif isinstance(value, memoryview):
            row[key] = bytes(value)
    return row
