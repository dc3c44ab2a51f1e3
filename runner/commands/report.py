"""`runner status`, `history`, `log` and `blame`: what happened, read from the journal.

Exit status: 0 with an answer, 1 when there is nothing to show or no journal to read,
78 for bad arguments or configuration (as everywhere).
"""

from __future__ import annotations

import os
import sys

from .table import print_table

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (its cost)
if TYPE_CHECKING:
    from datetime import datetime
    from typing import Any, TextIO, TypeAlias

    from ..history import Filters, Reader
    from ..settings import RunnerSettings, RunOptions
    from .light import Locations

    Where: TypeAlias = RunnerSettings | Locations

NOTHING = 1


class ReportOptions:
    """The journal commands' own arguments."""

    __slots__ = (
        "as_json",
        "host",
        "iteration",
        "limit",
        "local",
        "run_id",
        "since",
        "task",
        "try_num",
    )

    def __init__(self, as_json: bool = False, local: bool = False, task: str | None = None,
                 since: str | None = None, host: str | None = None, run_id: str | None = None,
                 try_num: int | None = None, iteration: int | None = None,
                 limit: int | None = None) -> None:
        self.as_json = as_json
        self.local = local
        self.task = task
        self.since = since
        self.host = host
        self.run_id = run_id
        self.try_num = try_num
        self.iteration = iteration
        self.limit = limit  # None: TEXT_LIMIT for people, everything for --json


TEXT_LIMIT = 50  # history's task runs on a terminal unless --limit says otherwise


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    from ..errors import ConfigError
    from ..history import parse_since

    try:
        return parse_since(text)
    except ValueError as exc:
        raise ConfigError(f"--since: {exc}") from None


def _open(where: Where, local: bool) -> Reader:
    from .. import history

    url = where.journal_url
    if url and not local:
        return history.open_postgres(url)
    return history.open_local(where.state_dir)


def _fail(message: str) -> int:
    print(f"runner: {message}", file=sys.stderr)
    return NOTHING


def _filters(reader: Reader, opts: ReportOptions, host: str | None) -> Filters | None:
    from ..history import Filters

    tasks = None
    if opts.task is not None:
        tasks = reader.resolve_task(opts.task)
        if not tasks:
            return None
    return Filters(
        tasks=tasks, since=_since(opts.since), host=host, run_id=opts.run_id,
        try_num=opts.try_num, iteration=opts.iteration,
    )


def report(command: str, options: RunOptions, opts: ReportOptions,
           out: TextIO = sys.stdout) -> int:
    from ..config import load

    config = load(options.config_path, options.overrides)
    return report_at(command, config.runner, opts, out)


def report_at(command: str, where: Where, opts: ReportOptions,
              out: TextIO = sys.stdout) -> int:
    """`command` on the journal and status file of `where` (runner.commands.light, or the
    loaded configuration's [runner])."""
    from ..history import JournalUnavailable

    _since(opts.since)  # a bad --since is bad input even when there is no journal
    if command == "status":
        return status(where, opts, out)
    try:
        reader = _open(where, opts.local)
    except JournalUnavailable as exc:
        return _fail(str(exc))
    try:
        return COMMANDS[command](reader, opts, out)
    except JournalUnavailable as exc:
        return _fail(str(exc))
    finally:
        reader.close()


# -- history ------------------------------------------------------------------

def history_command(reader: Reader, opts: ReportOptions, out: TextIO) -> int:
    filters = _filters(reader, opts, opts.host)
    if filters is None:
        return _fail(f"no task {opts.task!r} in the journal {reader.source}")
    # --json without --limit is the whole answer (a script must never see a cut list
    # as the truth: the README's fleet recipe did); a table says when it is cut.
    limit = opts.limit if opts.limit is not None or opts.as_json else TEXT_LIMIT
    records = reader.history(filters, None if limit is None else limit + 1)
    cut = limit is not None and len(records) > limit
    if cut:
        records = records[1:]  # oldest first: the one over the limit is the oldest
    if opts.as_json:
        _dump(records, out)
    elif records:
        _task_table(records, out, hosts=len({r["host"] for r in records}) > 1)
        if cut:
            print(f"… older task runs not shown (the newest {limit}); use --limit N or "
                  "--since, or --json for all", file=out)
    else:
        print("no task runs recorded", file=out)
    return 0 if records else NOTHING


# -- log ----------------------------------------------------------------------

def log_command(reader: Reader, opts: ReportOptions, out: TextIO) -> int:
    # The fleet journal holds every host's runs; a log is about this one unless told.
    host = opts.host or (_hostname() if reader.postgres else None)
    filters = _filters(reader, opts, host)
    if filters is None:
        return _fail(f"no task {opts.task!r} in the journal {reader.source}")
    record = reader.last_run(filters)
    if record is None:
        return _fail(f"no run of {opts.task} matches in the journal {reader.source}")
    output = record.pop("output", None) or b""
    if opts.as_json:
        # Line by line under runner.escape's rule: the lines the log showed, and valid
        # JSON whatever bytes the task printed.
        from ..escape import escape_bytes

        record["output"] = "\n".join(map(escape_bytes, output.split(b"\n")))
        _dump(record, out)
        return 0
    print(f"# {record['task']}: {_describe(record)}", file=out)
    _write_bytes(output, out)
    if output and not output.endswith(b"\n"):
        print(file=out)
    return 0


# -- blame --------------------------------------------------------------------

def blame_command(reader: Reader, opts: ReportOptions, out: TextIO) -> int:
    filters = _filters(reader, opts, opts.host)
    if filters is None:
        return _fail(f"no task {opts.task!r} in the journal {reader.source}")
    scope = "since " + opts.since if opts.since else None
    if filters.since is None and filters.run_id is None:
        # Like systemd-analyze blame's "this boot": the newest runner run by default (of
        # this host in the fleet journal, which holds every host's runs).
        from ..history import Filters

        runs = reader.runs(opts.host or (_hostname() if reader.postgres else None))
        if not runs:
            return _fail(f"no runs recorded in the journal {reader.source}")
        filters = Filters(tasks=filters.tasks, host=filters.host, run_id=runs[0]["run_id"],
                          since=_run_bound(reader, runs[0]["started_at"]))
        scope = f"run {runs[0]['run_id']} started {_local(runs[0]['started_at'])}"
    records = reader.blame(filters)
    if opts.as_json:
        _dump(records, out)
        return 0 if records else NOTHING
    if not records:
        print("no task runs recorded", file=out)
        return NOTHING
    print(f"# time spent per task, {scope or 'run ' + str(filters.run_id)}", file=out)
    rows = [
        [_seconds(r["duration_s"]), r["task"], str(r["runs"]), str(r["failures"]),
         _seconds(r["max_s"]), _seconds(r["cpu_s"]), _bytes(r["peak_memory_bytes"]),
         r.get("result") or "-"]
        for r in records
    ]
    print_table(["TOTAL", "TASK", "RUNS", "FAILED", "LONGEST", "CPU", "PEAK-MEM", "LAST"],
                rows, out)
    return 0


def _run_bound(reader: Reader, started_at: str) -> datetime | None:
    """In the fleet journal, a bound on the task runs of a run that started at
    `started_at`: only the partitions since then are read, not every day's index. A day
    early, for a host clock set back during the run (the local journal needs none)."""
    if not reader.postgres:
        return None
    from datetime import datetime, timedelta

    return datetime.fromisoformat(started_at.replace("Z", "+00:00")) - timedelta(days=1)


# -- status -------------------------------------------------------------------

def _hostname() -> str:
    """socket.gethostname(), without importing socket: on Linux both are uname(2)'s."""
    return os.uname().nodename


def status(where: Where, opts: ReportOptions, out: TextIO) -> int:
    from ..history import Filters, JournalUnavailable, open_local
    from ..journalread import INTERRUPTED, RUNNING, journal_path, moved_aside_files

    alive, pid, live = who_runs(where)
    host = _hostname()
    tasks: list[dict[str, Any]] = []
    last_run, problem = None, None
    try:
        reader = open_local(where.state_dir)
    except JournalUnavailable as exc:
        problem = str(exc)
    else:
        try:
            # The local journal is this machine's, whatever its name was when it wrote
            # (a boot task may set the hostname): no host filter.
            runs = reader.runs(None)
            last_run = runs[0] if runs else None
            tasks = reader.latest_per_task(Filters())
            live_run = _live_run(runs, pid, live) if alive else None
            # What the next start will record for runs whose runner is gone.
            for record in [last_run, *tasks]:
                if record and record["result"] == RUNNING and record["run_id"] != live_run:
                    record["result"] = INTERRUPTED
        except JournalUnavailable as exc:
            problem = str(exc)
        finally:
            reader.close()
    # A runner that has exited left its last word in the status file (until a reboot
    # empties runtime_dir): what its journal could not write is still worth saying.
    last_word = live or _status_of(where, last_run) or {}
    document = {
        "host": host,
        "running": alive,
        "pid": pid,
        "runner": live,
        "journal": last_word.get("journal"),
        "forward": (live or {}).get("forward"),
        "journal_problem": problem,
        # Files, not a flag: the message stays until someone has looked and removed them.
        "journal_moved_aside": moved_aside_files(journal_path(where.state_dir)),
        "last_run": last_run,
        "tasks": tasks,
    }
    if opts.as_json:
        _dump(document, out)
    else:
        _print_status(document, where, out)
    return 0 if (alive or last_run or tasks) else NOTHING


def who_runs(where: Where) -> tuple[bool, int | None, dict[str, Any] | None]:
    """Whether a runner runs on this state_dir, its pid, and its live status (None when
    the status file is not that runner's).

    The state_dir lock decides: the status file's pid alone cannot tell two runners
    apart. It is trusted only when the lock cannot be asked (no lock file to read) or
    when that runner says it runs without one (its state_dir was not writable).
    """
    from ..liveness import still_running
    from ..lockprobe import probe
    from ..statusfile import read_status

    live = read_status(where.runtime_dir) or {}  # {}: no live status
    live_alive = bool(live) and still_running(live.get("pid"), live.get("pid_start"),
                                              live.get("boot_id"))
    lock = probe(where.state_dir)
    if lock.held:
        # No pid in the lock file (a full state_dir): a live status file is the holder's.
        mine = live_alive and lock.pid in (None, live.get("pid"))
        return True, lock.pid or (live.get("pid") if mine else None), live if mine else None
    if live_alive and (lock.held is None or not live.get("lock")):
        return True, live.get("pid"), live
    return False, None, None


def _status_of(where: Where, run: dict[str, Any] | None) -> dict[str, Any] | None:
    """The status file, when it is the one `run` (the journal's last run) left."""
    from ..statusfile import read_status

    left = read_status(where.runtime_dir)
    return left if run and left and left.get("run_id") == run["run_id"] else None


def _live_run(runs: list[dict[str, Any]], pid: int | None,
              live: dict[str, Any] | None) -> str | None:
    """The run id of the runner that runs now: from its status file, else the journal."""
    if live:
        return live.get("run_id")
    from ..journalread import RUNNING

    return next((r["run_id"] for r in runs if r["result"] == RUNNING and r.get("pid") == pid),
                None)


def _print_status(doc: dict[str, Any], where: Where, out: TextIO) -> None:
    from ..statusfile import status_path

    live = doc["runner"]
    if live:
        print(f"runner on {doc['host']}: running since {_local(live['started_at'])} "
              f"(pid {live['pid']}, run {live['run_id']})", file=out)
        print(f"  now: {_now_line(live)}", file=out)
    elif doc["running"]:
        print(f"runner on {doc['host']}: running (pid {doc['pid'] or 'unknown'}); its live "
              f"status is not in {status_path(where.runtime_dir)}", file=out)
    elif doc["last_run"]:
        run = doc["last_run"]
        ended = f" at {_local(run['ended_at'])}" if run.get("ended_at") else ""
        status = f" (exit status {run['exit_status']})" if run.get("exit_status") is not None \
            else ""
        print(f"runner on {doc['host']}: not running; last run {run['run_id']} "
              f"ended{ended} with {run['result']}{status}", file=out)
    else:
        print(f"runner on {doc['host']}: not running, no runs recorded", file=out)
    _print_health(doc, out)
    if doc["tasks"]:
        print(file=out)
        _task_table(doc["tasks"], out, hosts=False)


def _now_line(live: dict[str, Any]) -> str:
    where = f"iteration {live.get('iteration')}, try {live.get('try_num')}" + (
        f"/{live['max_tries']}" if live.get("max_tries") else "")
    state = live.get("state")
    if state == "running":
        return f"{where}: running {live['task']} since {_local(live['since'])}"
    if state == "waiting":
        return f"{where}: waiting until {_local(live['waiting_until'])} ({live['reason']})"
    if state in ("paused", "rebooting"):
        return f"{where}: {live['reason']} (since {_local(live['since'])})"
    if live.get("iteration") is None:
        return str(state)
    return f"{where}: {state}"


def _print_health(doc: dict[str, Any], out: TextIO) -> None:
    if doc["journal_problem"]:
        print(f"journal: {doc['journal_problem']}", file=out)
    for path in doc["journal_moved_aside"]:
        print(f"journal: damaged file moved aside to {path} (remove it once read)", file=out)
    health = doc["journal"]
    if health and not health["ok"] and doc["running"]:  # held: a gone runner lost them
        print(f"journal: NOT WRITABLE since {_local(health['since'])}: {health['error']} "
              f"({health['held']} record(s) held in memory, {health['dropped']} dropped)",
              file=out)
    if health and health.get("rejected"):
        print(f"journal: {health['rejected']} record(s) REFUSED by SQLite and dropped; the "
              f"last: {health['rejected_error']}", file=out)
    forward = doc["forward"]
    if forward:
        state = "ok" if forward["ok"] else (
            f"UNREACHABLE since {_local(forward['since'])}: {forward['error']}")
        print(f"fleet journal {forward['url']}: {state}; {forward['pending']} record(s) "
              "waiting to be forwarded", file=out)


# -- output helpers -----------------------------------------------------------

def _task_table(records: list[dict[str, Any]], out: TextIO, *, hosts: bool) -> None:
    columns = ["STARTED", *(["HOST"] if hosts else []), "TASK", "ITER", "TRY", "RESULT",
               "EXIT", "DURATION"]
    rows = []
    for r in records:
        tries = f"{r['try_num']}/{r['max_tries']}" if r.get("max_tries") else str(r["try_num"])
        rows.append([
            _local(r["started_at"]), *([r["host"]] if hosts else []), r["task"],
            str(r["iteration"]), tries, r["result"], _exit(r), _seconds(r["duration_s"]),
        ])
    print_table(columns, rows, out)


def _describe(record: dict[str, Any]) -> str:
    return (f"{record['result']} ({_exit(record)}), iteration {record['iteration']}, "
            f"try {record['try_num']}, started {_local(record['started_at'])}, "
            f"took {_seconds(record['duration_s'])}, host {record['host']}, "
            f"run {record['run_id']}")


def _exit(record: dict[str, Any]) -> str:
    if record.get("signal") is not None:
        return f"signal {record['signal']}"
    if record.get("exit_code") is not None:
        return str(record["exit_code"])
    return "-"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _bytes(value: int | None) -> str:
    """`512B`, `35.1M`, `2.0G` (powers of 1024), or `-` when not known."""
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "K", "M", "G"):
        if round(amount, 1) < 1024:
            return f"{value}B" if unit == "B" else f"{amount:.1f}{unit}"
        amount /= 1024
    return f"{amount:.1f}T"


def _local(text: str | None) -> str:
    """An ISO UTC time from the journal as local wall-clock time, for people."""
    if not text:
        return "-"
    from datetime import datetime

    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _write_bytes(data: bytes, out: TextIO) -> None:
    """Task output as it was printed, bytes and all, when `out` is a real stream."""
    out.flush()
    if hasattr(out, "buffer"):
        out.buffer.write(data)
        out.buffer.flush()
    else:
        out.write(data.decode("utf-8", errors="replace"))


def _dump(data: Any, out: TextIO) -> None:
    import json

    json.dump(data, out, indent=2, default=str)
    print(file=out)


COMMANDS = {"history": history_command, "log": log_command, "blame": blame_command}
