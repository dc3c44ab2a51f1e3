"""[runner] metrics_file: what runner does, as Prometheus metrics for node_exporter's
textfile collector.

The file is rewritten whole at every step and replaced atomically, so the collector
(another process, reading whenever it likes) sees the old file or the new one, never a
part. A file that cannot be written never stops a task: runner warns once and keeps trying.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import __version__
from .escape import escape
from .events import Listener
from .files import write_atomic
from .identity import RunIdentity
from .states import TaskRun, TaskState

log = logging.getLogger("runner.metrics")

# The values of the result state-set, in TaskState's order; PENDING and RUNNING are not
# results (RUNNING has runner_task_running instead).
RESULT_VALUES = tuple(state.value for state in TaskState if state.is_result)
# node_exporter runs as another user; the metrics say nothing secret.
FILE_MODE = 0o644

# Rendered label pairs of the result values: the same for every task, made once.
RESULT_LABELS = {value: f'result="{value}"' for value in RESULT_VALUES}


@dataclass
class TaskStats:
    """What the metrics say about one task (by file name)."""

    result: str | None = None
    duration_s: float | None = None
    cpu_user_s: float | None = None
    cpu_system_s: float | None = None
    peak_memory_bytes: int | None = None
    try_num: int | None = None
    last_success: float | None = None
    running: bool = False
    # This runner's runs only: a counter starts at 0 with the process (runner_start_time).
    runs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESULT_VALUES, 0))

    @classmethod
    def from_seed(cls, record: Mapping[str, Any]) -> TaskStats:
        """The last record of the journal of earlier runs; what does not parse is left out,
        since old records are a convenience and must never stop runner."""
        result = record.get("result")
        if result == TaskState.RUNNING.value:
            # Its runner died mid-run (this one starts only now): the journal marks the
            # record INTERRUPTED when it opens, just after this seed was read.
            result = TaskState.INTERRUPTED.value
        duration = record.get("duration_s")
        try_num = record.get("try_num")
        peak = record.get("peak_memory_bytes")
        return cls(
            result=result if result in RESULT_VALUES else None,
            duration_s=_seconds(duration),
            cpu_user_s=_seconds(record.get("cpu_user_s")),
            cpu_system_s=_seconds(record.get("cpu_system_s")),
            peak_memory_bytes=peak if isinstance(peak, int) and not isinstance(peak, bool)
            else None,
            try_num=try_num if isinstance(try_num, int) else None,
            last_success=_unix_time(record.get("last_success")),
        )

    def record(self, run: TaskRun, now: float) -> None:
        self.running = False
        self.result = run.state.value
        self.duration_s = run.duration_s
        cost = run.cost
        self.cpu_user_s = cost.cpu_user_s if cost else None
        self.cpu_system_s = cost.cpu_system_s if cost else None
        self.peak_memory_bytes = cost.peak_memory_bytes if cost else None
        self.try_num = run.try_num
        self.runs[run.state.value] += 1
        if run.state is TaskState.OK:
            self.last_success = now


# Every metric family in the order of the file: name -> (type, help).
METRICS = {
    "runner_up": ("gauge", "1 while runner runs, 0 once it has exited."),
    "runner_info": ("gauge", "Always 1: the version and run id of this runner."),
    "runner_start_time_seconds": ("gauge", "Unix time this runner started."),
    "runner_iteration": ("gauge", "Current iteration of the chain."),
    "runner_try": ("gauge", "Current try of the chain in this iteration."),
    "runner_exit_status": ("gauge", "Exit status of runner; present once it has exited."),
    "runner_task_last_duration_seconds": ("gauge", "Duration of the last run of the task."),
    "runner_task_last_cpu_seconds": (
        "gauge", "CPU time of the last run of the task, in user and in system mode."
    ),
    "runner_task_last_peak_memory_bytes": (
        "gauge", "Peak memory of the last run of the task; only where it is measured."
    ),
    "runner_task_last_result": (
        "gauge", "Result of the last run of the task: 1 for that result, 0 for the others."
    ),
    "runner_task_last_try": ("gauge", "Try number of the last run of the task."),
    # The text format wants the whole sample name, _total included, in # TYPE (as
    # prometheus_client writes it); a bare `runner_task_runs` would leave the samples untyped.
    "runner_task_runs_total": ("counter", "Runs of the task since this runner started."),
    "runner_task_last_success_timestamp_seconds": (
        "gauge", "Unix time the last OK run of the task ended."
    ),
    "runner_task_running": ("gauge", "1 while the task runs, else 0."),
}


class Exposition:
    """Sample lines collected by family, written in METRICS order; empty families are left
    out. Labels come rendered (see `labels`): a file of 100 tasks holds 2000 samples, is
    rewritten twice per task run, and rendering each label anew was most of the cost."""

    def __init__(self) -> None:
        self.lines: dict[str, list[str]] = {name: [] for name in METRICS}

    def add(self, name: str, value: float, rendered_labels: str = "") -> None:
        label_part = f"{{{rendered_labels}}}" if rendered_labels else ""
        self.lines[name].append(f"{name}{label_part} {_number(value)}")

    def extend(self, other: Exposition) -> None:
        for name, lines in other.lines.items():
            self.lines[name].extend(lines)

    def text(self) -> str:
        return "".join(_family_text(name, lines) for name, lines in self.lines.items() if lines)


def labels(**pairs: str) -> str:
    """`task="a",result="OK"`: label pairs in the text format, values escaped."""
    return ",".join(f'{key}="{_escape_label(value)}"' for key, value in pairs.items())


class MetricsListener(Listener):
    """Keeps the metrics file up to date with runner's events."""

    def __init__(
        self, path: str, identity: RunIdentity, *, seed: dict[str, dict] | None = None,
        mask: Callable[[str], str] = lambda text: text,
    ) -> None:
        self.path = path
        self.mask = mask  # task names are the only free text in the file
        self.identity = identity
        self.start_time = time.time()
        self.up = True
        self.iteration = 0
        self.try_num = 0
        self.exit_status: int | None = None
        self.tasks = {name: TaskStats.from_seed(rec) for name, rec in (seed or {}).items()}
        self.failing = False
        self.began = False
        # Each task's samples, rendered when the task changes: one write then costs
        # O(changed tasks), not O(all tasks) (a chain of 100 tasks writes 200 times).
        self.rendered: dict[str, Exposition] = {}

    # -- events -----------------------------------------------------------------

    def started(self) -> None:
        self.began = True
        self.write()

    def chain_started(self, iteration: int, try_num: int) -> None:
        self.iteration, self.try_num = iteration, try_num

    def task_changed(self, run: TaskRun) -> None:
        # Keyed by the name as the journal holds it (runner.escape), which the seed's
        # names are: a restart continues the same series, and the label is that text.
        name = escape(run.task.name)
        stats = self.tasks.setdefault(name, TaskStats())
        self.rendered.pop(name, None)
        if run.state is TaskState.RUNNING:
            stats.running = True
        elif run.state.is_result:
            stats.record(run, time.time())
        else:
            return
        self.write()

    def iteration_done(self, iteration: int) -> None:
        self.iteration = iteration
        self.write()

    def finished(self, status: int) -> None:
        self.up = False
        self.exit_status = status
        for stats in self.tasks.values():
            stats.running = False
        self.rendered.clear()
        self.write()

    # -- the file ---------------------------------------------------------------

    def render(self) -> str:
        """The whole file, in the Prometheus text exposition format (version 0.0.4)."""
        out = Exposition()
        out.add("runner_up", 1 if self.up else 0)
        out.add("runner_info", 1, labels(version=__version__, run_id=self.identity.run_id))
        out.add("runner_start_time_seconds", self.start_time)
        out.add("runner_iteration", self.iteration)
        out.add("runner_try", self.try_num)
        if self.exit_status is not None:
            out.add("runner_exit_status", self.exit_status)
        for name, stats in sorted(self.tasks.items()):
            if name not in self.rendered:
                self.rendered[name] = task_samples = Exposition()
                _add_task(task_samples, labels(task=self.mask(name)), stats)
            out.extend(self.rendered[name])
        return out.text()

    def write(self) -> None:
        try:
            # Not durable: runner rewrites it at its next start, and an fsync per task
            # event doubled the cost of a chain of quick tasks.
            write_atomic(self.path, self.render().encode(), FILE_MODE, durable=False)
        except (OSError, ValueError) as exc:  # ValueError: e.g. a NUL byte in the path
            self._failed(exc)
            return
        if self.failing:
            self.failing = False
            log.info("metrics file %s: written again", self.path)

    def _failed(self, exc: Exception) -> None:
        if self.failing:
            return  # said once; every later event tries again
        self.failing = True
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        # Not started means runner exits on a configuration error, which must stay the one
        # line on stderr; the file is still worth a try (runner_exit_status 78).
        level = logging.WARNING if self.began else logging.DEBUG
        log.log(level, "metrics file %s: cannot write it (%s); will keep trying", self.path, reason)


def _add_task(out: Exposition, task: str, stats: TaskStats) -> None:
    """The samples of one task; `task` is its rendered label pair."""
    if stats.duration_s is not None:
        out.add("runner_task_last_duration_seconds", stats.duration_s, task)
    if stats.cpu_user_s is not None:
        out.add("runner_task_last_cpu_seconds", stats.cpu_user_s, f'{task},mode="user"')
    if stats.cpu_system_s is not None:
        out.add("runner_task_last_cpu_seconds", stats.cpu_system_s, f'{task},mode="system"')
    if stats.peak_memory_bytes is not None:
        out.add("runner_task_last_peak_memory_bytes", stats.peak_memory_bytes, task)
    if stats.result is not None:
        for value, result in RESULT_LABELS.items():
            is_last = 1 if value == stats.result else 0
            out.add("runner_task_last_result", is_last, f"{task},{result}")
    if stats.try_num is not None:
        out.add("runner_task_last_try", stats.try_num, task)
    # Every result from 0, so the first RETRY is an increase rate() can see.
    for value, result in RESULT_LABELS.items():
        out.add("runner_task_runs_total", stats.runs[value], f"{task},{result}")
    if stats.last_success is not None:
        out.add("runner_task_last_success_timestamp_seconds", stats.last_success, task)
    out.add("runner_task_running", 1 if stats.running else 0, task)


def _family_text(name: str, lines: list[str]) -> str:
    kind, text = METRICS[name]
    return "\n".join([f"# HELP {name} {_escape_help(text)}", f"# TYPE {name} {kind}", *lines, ""])


def _seconds(value: object) -> float | None:
    """A number of seconds from a journal record, or None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _unix_time(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    # runner writes UTC everywhere (identity.iso); a time without a zone is UTC too.
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
