"""`runner plan` and `runner graph`: what a run would do, and the dependency graph as DOT/SVG."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from typing import TextIO

from .. import stamps
from ..config import Config, load
from ..escape import escape
from ..graph import dependencies, markers, to_dot, waves
from ..masking import Masker, listing_output
from ..names import byte_order
from ..settings import RunOptions, task_dir_of
from ..tasklife import decide
from ..tasks import Plan, Task, discover

NEEDS_DOT = "runner graph --format svg needs Graphviz's dot (apt-get install graphviz)"
FORMATS = ("dot", "svg")


def _load(options: RunOptions) -> tuple[Config, Plan, dict[str, set[str]]]:
    config = load(options.config_path, options.overrides)
    plan = discover(config, task_dir_of(options, config))
    needs = getattr(plan, "needs", None) or dependencies(plan.tasks)
    return config, plan, needs


def skip_reasons(config: Config, plan: Plan) -> dict[str, str]:
    """Tasks the operator's view of the stamps would skip now: file name -> reason (the
    run's own decision, without running any check)."""
    recorded = stamps.for_config(config)
    reasons = {}
    for task in plan.tasks:
        try:
            decision = decide(task, stamps=recorded)
        except (OSError, ValueError):  # an unreadable stamp means the task runs
            continue
        if decision.skip:
            reasons[task.name] = decision.reason
    return reasons


def plan(options: RunOptions, as_json: bool = False, out: TextIO = sys.stdout,
         show_secrets: bool = False) -> int:
    """Print the execution plan: waves (or the sequence), skips, the halt and reboot tasks.
    Secret values (in a check command line, say) are masked unless `show_secrets`."""
    config, the_plan, needs = _load(options)
    out = listing_output(out, config, show_secrets)
    max_parallel = config.runner.max_parallel
    reasons = skip_reasons(config, the_plan)
    scheduled = waves(the_plan.tasks, max_parallel, needs)
    halt = the_plan.halt.name if the_plan.halt else None
    reboot = config.runner.reboot_task or None
    if as_json:
        document = {
            "task_dir": the_plan.task_dir,
            "max_parallel": max_parallel,
            "waves": [[_record(t, needs, reasons) for t in wave] for wave in scheduled],
            "halt": halt,
            "reboot": reboot,
        }
        print(json.dumps(document, indent=2), file=out)
        return 0
    print(f"task dir:     {the_plan.task_dir}", file=out)
    if max_parallel == 1:
        print("max_parallel: 1 (one task at a time, in this order)", file=out)
    else:
        print(f"max_parallel: {max_parallel} (waves: tasks that may run together)", file=out)
    if not the_plan.tasks:
        print("no tasks", file=out)
    elif max_parallel == 1:
        for number, task in enumerate(the_plan.tasks, start=1):
            line = f"  {number:3d}. {escape(task.name)}{_markers(task, reasons)}"
            if task.name in reasons:
                line += f"  skip: {reasons[task.name]}"
            print(line, file=out)
    else:
        for number, wave in enumerate(scheduled, start=1):
            names = ", ".join(escape(t.name) + _markers(t, reasons) for t in wave)
            print(f"wave {number}: {names}", file=out)
        for task in the_plan.tasks:
            if task.name in reasons:
                print(f"  skip {escape(task.name)}: {reasons[task.name]}", file=out)
    if the_plan.halt:
        print(f"halt task:    {escape(the_plan.halt.name)} ({escape(the_plan.halt.path)})",
              file=out)
    else:
        print(f"halt task:    {the_plan.halt_name} MISSING (a halt will only be logged)",
              file=out)
    if reboot:
        found = getattr(the_plan, "reboot", None)
        where = f"({found.path})" if found else "MISSING"
        print(f"reboot task:  {reboot} {where}", file=out)
    return 0


def _markers(task: Task, reasons: dict[str, str]) -> str:
    shown = markers(task)
    if task.name in reasons:
        shown.append("skip")
    return f" [{', '.join(shown)}]" if shown else ""


def _record(task: Task, needs: dict[str, set[str]], reasons: dict[str, str]) -> dict:
    return {
        "task": task.name,
        "depends_on": sorted(needs.get(task.name, ()), key=byte_order),
        "skip": reasons.get(task.name),
        "frequency": task.settings.frequency,
        "check": shlex.join(task.settings.check) if task.settings.check else None,
    }


def graph(options: RunOptions, fmt: str = "dot", out: TextIO = sys.stdout,
          show_secrets: bool = False) -> int:
    """Print the dependency graph as Graphviz DOT, or as SVG rendered by `dot -Tsvg`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown graph format {fmt!r}")
    config, the_plan, needs = _load(options)
    text = to_dot(the_plan, skip_reasons(config, the_plan), config.runner.max_parallel, needs)
    if not show_secrets:
        text = Masker.from_config(config).text(text)
    data = text.encode("utf-8")
    if fmt == "svg":
        dot = shutil.which("dot")
        if dot is None:
            print(NEEDS_DOT, file=sys.stderr)
            return 1
        proc = subprocess.run([dot, "-Tsvg"], input=data, capture_output=True)
        if proc.returncode != 0:
            lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            detail = f": {lines[-1]}" if lines else ""
            print(f"runner: dot -Tsvg failed with status {proc.returncode}{detail}",
                  file=sys.stderr)
            return 1
        data = proc.stdout
    _write(out, data)
    return 0


def _write(out: TextIO, data: bytes) -> None:
    """UTF-8 whatever the locale says (DOT and SVG are UTF-8)."""
    buffer = getattr(out, "buffer", None)
    if buffer is None:
        out.write(data.decode("utf-8"))
        return
    out.flush()
    buffer.write(data)
    buffer.flush()
