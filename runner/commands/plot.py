"""`runner plot`: an SVG timeline of a run (or of every run since a moment), read from
the local journal or, with journal_url set, the fleet journal (runner.plot draws it).

Which runs: `--run ID` (an id or the start of one), `--since S` (every run started since,
in order, with the reboots and restarts between them), else the newest run together
with the runs before it that it resumed after a reboot (one chain across boots).
Exit status as the other journal commands: 0 drawn, 1 nothing to draw, 78 bad input.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from ..errors import ConfigError
from .report import NOTHING, _fail, _hostname, _open, _since, who_runs

if TYPE_CHECKING:
    from ..history import Reader
    from ..settings import RunOptions
    from .report import Where

MAX_RUNS = 200  # a --since over months draws the newest this many runs
REBOOT_CHAIN = 20  # how far back the default follows reboots


@dataclass(frozen=True)
class PlotOptions:
    """`runner plot`'s own arguments."""

    run_id: str | None = None
    since: str | None = None
    host: str | None = None
    output: str | None = None
    local: bool = False


def plot(options: RunOptions, opts: PlotOptions, out: TextIO = sys.stdout) -> int:
    from ..config import load

    config = load(options.config_path, options.overrides)
    return plot_at(config.runner, opts, out)


def plot_at(where: Where, opts: PlotOptions, out: TextIO = sys.stdout) -> int:
    from ..history import JournalUnavailable

    since = _since(opts.since)  # bad input even when there is no journal
    _check_output(opts.output)
    try:
        reader = _open(where, opts.local)
    except JournalUnavailable as exc:
        return _fail(str(exc))
    try:
        svg = _draw(reader, where, opts, since)
    except JournalUnavailable as exc:
        return _fail(str(exc))
    finally:
        reader.close()
    if svg is None:
        return NOTHING
    _write(svg, opts.output, out)
    return 0


def _draw(reader: Reader, where: Where, opts: PlotOptions, since: Any) -> str | None:
    from ..clock import utc_now
    from ..plot import Timeline, render

    # The fleet journal holds every host's runs: a plot is about this one unless told.
    host = opts.host or (_hostname() if reader.postgres else None)
    runs = _choose_runs(reader, host, opts, since)
    if not runs:
        return None
    ids = [run["run_id"] for run in runs]
    timeline = Timeline(
        runs=runs, tries=reader.of_runs("tries", ids), task_runs=reader.of_runs("task_runs", ids),
        now=utc_now(), live=_live(reader, where, runs), source=reader.source,
    )
    return render(timeline)


def _choose_runs(reader: Reader, host: str | None, opts: PlotOptions,
                 since: Any) -> list[dict[str, Any]]:
    """The runs to draw, oldest first; [] after saying why there are none."""
    if opts.run_id is not None:
        # Run ids are all as long: a whole one is nobody else's prefix.
        runs = reader.runs(host, 2, run_id=opts.run_id)
        if not runs:
            _fail(f"--run {opts.run_id}: no such run in the journal {reader.source}"
                  + (f" (for host {host})" if host else ""))
        elif len(runs) > 1:
            _fail(f"--run {opts.run_id}: more than one run id starts with it "
                  f"({runs[0]['run_id']}, {runs[1]['run_id']}, ...): give more of it")
            return []
        return runs
    if since is not None:
        runs = reader.runs(host, MAX_RUNS, since=since)
        if not runs:
            _fail(f"no runs since {opts.since} in the journal {reader.source}")
        return runs[::-1]
    runs = reader.runs(host, REBOOT_CHAIN)
    if not runs:
        _fail(f"no runs recorded in the journal {reader.source}")
        return []
    rebooted = reader.rebooted([run["run_id"] for run in runs[1:]])
    chain = [runs[0]]
    for run in runs[1:]:  # newest first: follow the reboots back
        if run["run_id"] not in rebooted:
            break
        chain.append(run)
    return chain[::-1]


def _live(reader: Reader, where: Where, runs: list[dict[str, Any]]) -> frozenset[str]:
    """The runs whose runner still runs: its open task runs end now, not INTERRUPTED.
    The local journal asks the state_dir's lock (as `runner status`); the fleet journal
    cannot ask another host, so an open run there is taken to be running."""
    open_runs = {run["run_id"] for run in runs if run["result"] == "RUNNING"}
    if not open_runs or reader.postgres:
        return frozenset(open_runs)
    alive, pid, live = who_runs(where)
    if not alive:
        return frozenset()
    if live and live.get("run_id"):
        return frozenset(open_runs & {live["run_id"]})
    return frozenset(run["run_id"] for run in runs[-1:] if run.get("pid") == pid
                     and run["run_id"] in open_runs)


def _check_output(path: str | None) -> None:
    """-o names a file in a directory that exists (said before reading the journal)."""
    if path is None or path == "-":
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError(f"-o {path}: no directory {directory}")
    if os.path.isdir(path):
        raise ConfigError(f"-o {path}: is a directory")


def _write(svg: str, path: str | None, out: TextIO) -> None:
    if path is None or path == "-":
        out.write(svg)
        out.flush()
        return
    from ..files import write_atomic

    try:
        write_atomic(path, svg.encode("utf-8"), durable=False)
    except OSError as exc:
        raise ConfigError(f"-o {path}: cannot write it: {exc.strerror or exc}") from None
