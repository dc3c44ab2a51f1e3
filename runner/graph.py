"""The shape of a plan: waves of a parallel run, the critical path, and Graphviz DOT.

Pure functions (no I/O): `runner plan`, `runner graph` and the benchmarks call them.
Dependencies are resolved exactly as the run resolves them (tasks.needs_of): a
depends_on entry names a task by file name or short name.
"""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING

from .escape import escape
from .names import byte_order
from .scheduler import ready
from .settings import Frequency
from .tasks import needs_of

if TYPE_CHECKING:
    from .tasks import Plan, Task


def dependencies(tasks: list[Task]) -> dict[str, set[str]]:
    """Each task's depends_on as file names of `tasks` (without a config, a dependency on
    a task that is not there is a ConfigError without a file name)."""
    return needs_of(tasks)


def waves(tasks: list[Task], max_parallel: int,
          needs: dict[str, set[str]] | None = None) -> list[list[Task]]:
    """The schedule when every task takes the same time: each wave takes at most
    max_parallel of the tasks that may start once the earlier waves are through, chosen
    by the scheduler's own rule (scheduler.ready), which is what the run does when the
    tasks running together also end together. With max_parallel 1 that is plan order.
    `needs` (file name -> file names it waits for) defaults to the tasks' resolved
    depends_on. A cycle is a ValueError.
    """
    if max_parallel < 1:
        raise ValueError(f"max_parallel must be at least 1, not {max_parallel}")
    needs = dependencies(tasks) if needs is None else needs
    present = {t.name for t in tasks}
    within = {t.name: needs.get(t.name, set()) & present for t in tasks}
    waiting = list(tasks)
    done: set[str] = set()
    result: list[list[Task]] = []
    while waiting:
        candidates = ready(waiting, within, done)
        if not candidates:
            names = ", ".join(t.name for t in sorted(waiting, key=lambda t: byte_order(t.name)))
            raise ValueError(f"dependency cycle among: {names}")
        wave = candidates[:max_parallel]
        result.append(wave)
        done.update(t.name for t in wave)
        waiting = [t for t in waiting if t.name not in done]
    return result


def critical_path(tasks: list[Task], durations: dict[str, float],
                  needs: dict[str, set[str]] | None = None) -> tuple[float, list[str]]:
    """The longest chain of dependencies, weighted by duration: (its total, its task file
    names from first to last). No run with any max_parallel can be shorter.

    `durations` are seconds by file name (or short name); a task without one counts 0.
    Ties go to the name first in byte order, so the answer is deterministic.
    """
    needs = dependencies(tasks) if needs is None else needs
    by_name = {t.name: t for t in tasks}
    finish: dict[str, float] = {}
    previous: dict[str, str | None] = {}
    # Level order visits every dependency before its dependents.
    for wave in waves(tasks, max(2, len(tasks)), needs):
        for task in wave:
            deps = sorted((d for d in needs.get(task.name, ()) if d in by_name), key=byte_order)
            before = max(deps, key=lambda d: finish[d], default=None)  # first of equals wins
            start = finish[before] if before is not None else 0.0
            finish[task.name] = start + _duration(task, durations)
            previous[task.name] = before
    if not finish:
        return 0.0, []
    last = max(sorted(finish, key=byte_order), key=lambda n: finish[n])
    path = []
    step: str | None = last
    while step is not None:
        path.append(step)
        step = previous[step]
    return finish[last], path[::-1]


def _duration(task: Task, durations: dict[str, float]) -> float:
    if task.name in durations:
        return float(durations[task.name])
    return float(durations.get(task.short_name, 0.0))


# -- Graphviz DOT -------------------------------------------------------------------


def to_dot(plan: Plan, skipped_reasons: dict[str, str], max_parallel: int = 1,
           needs: dict[str, set[str]] | None = None) -> str:
    """The plan as a Graphviz digraph.

    One box per task (label: file name, then its frequency and `check` markers, and why it
    would be skipped), an edge from each dependency to its dependent; with max_parallel 1
    also dashed edges for the order the chain runs in where no dependency says it. Tasks
    in `skipped_reasons` (file name -> reason) are grey. The halt task is an octagon with
    no edges. Names are quoted and escaped: quotes, backslashes, UTF-8 and even bytes that
    are not UTF-8 or control characters (shown as \\xNN) survive.
    """
    needs = dependencies(plan.tasks) if needs is None else needs
    ids = _NodeIds()
    lines = [
        "digraph runner {",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fillcolor=white, fontname="Helvetica"];',
        '  edge [fontname="Helvetica"];',
    ]
    for task in plan.tasks:
        label = [escape(task.name)]
        shown = markers(task)
        if shown:
            label.append(f"[{', '.join(shown)}]")
        attrs: dict[str, str] = {}
        reason = skipped_reasons.get(task.name)
        if reason is not None:
            label.append(f"skip: {escape(reason)}")
            attrs.update(fillcolor="grey85", color="grey50", fontcolor="grey40")
        attrs = {"label": _label(label), **{k: _quote(v) for k, v in attrs.items()}}
        lines.append(f"  {ids.of(task.name)} [{_attributes(attrs)}];")
    if plan.halt is not None:
        halt_id = ids.of(plan.halt.name)
        halt_label = _label([escape(plan.halt.name), "(halt task)"])
        lines.append(f'  {halt_id} [shape=octagon, style=filled, fillcolor="#fbe3e3", '
                     f"label={halt_label}];")
    names = {t.name for t in plan.tasks}
    for task in plan.tasks:
        for dep in sorted(needs.get(task.name, set()) & names, key=byte_order):
            lines.append(f"  {ids.of(dep)} -> {ids.of(task.name)};")
    if max_parallel == 1:
        for before, after in pairwise(plan.tasks):
            if before.name not in needs.get(after.name, set()):
                lines.append(f"  {ids.of(before.name)} -> {ids.of(after.name)} "
                             "[style=dashed, color=grey50];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def markers(task: Task) -> list[str]:
    """What the label shows besides the name: a frequency other than always, `check`."""
    found = []
    if task.settings.frequency is not Frequency.ALWAYS:
        found.append(task.settings.frequency.value)
    if task.settings.check:
        found.append("check")
    return found


class _NodeIds:
    """Task file name -> its quoted DOT id; two names that display alike stay two nodes."""

    def __init__(self) -> None:
        self._ids: dict[str, str] = {}
        self._taken: set[str] = set()

    def of(self, name: str) -> str:
        if name not in self._ids:
            text, number = escape(name), 1
            while text in self._taken:
                number += 1
                text = f"{escape(name)} ({number})"
            self._taken.add(text)
            self._ids[name] = _quote(text)
        return self._ids[name]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _quote(text: str) -> str:
    """A DOT quoted string: only the quote and the backslash need a backslash."""
    return f'"{_escape(text)}"'


def _label(lines: list[str]) -> str:
    """A multi-line label: \\n is Graphviz's centred line break (escString)."""
    return '"' + "\\n".join(_escape(line) for line in lines) + '"'


def _attributes(attrs: dict[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in attrs.items())
