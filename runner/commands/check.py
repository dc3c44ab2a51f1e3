"""`runner check` and `runner list`: validate everything and show the plan, running nothing."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from .. import cgroup, fdlimit, preflight, statedir
from ..checkrecord import importable
from ..config import Config, load
from ..console import format_value
from ..escape import escape
from ..masking import MaskedWriter, listing_output, listing_outputs
from ..settings import RunOptions, task_dir_of
from ..spec import load_spec
from ..tasks import NOT_EXECUTABLE, Plan, Task, discover
from .table import print_table

SETTINGS = ("max_time", "max_tries", "sleep_time", "retry_jitter", "kill_grace")


def _plan(options: RunOptions) -> tuple[Config, Plan]:
    config = load(options.config_path, options.overrides)
    return config, discover(config, task_dir_of(options, config))


def check(options: RunOptions, out: TextIO = sys.stdout, show_secrets: bool = False) -> int:
    """Print the plan and every warning; exit 0 (ConfigError means 78, raised to the caller)."""
    config, plan = _plan(options)
    statedir.check(config)  # what `run` would refuse
    preflight.check(config, plan)
    out, err = listing_outputs(config, show_secrets, out, sys.stderr)
    print(f"config:    {', '.join(config.files) or '(none, defaults apply)'}", file=out)
    print(f"task dir:  {plan.task_dir}", file=out)
    halt = plan.halt.path if plan.halt else "MISSING"
    print(f"halt task: {halt}", file=out)
    found = cgroup.probe()
    print(found.statement(), file=out)  # as this process would run tasks
    print(f"chain:     {len(plan.tasks)} task(s), in this order", file=out)
    for number, task in enumerate(plan.tasks, start=1):
        deps = f"  after {', '.join(task.settings.depends_on)}" if task.settings.depends_on else ""
        print(f"  {number:3d}. {escape(task.name)}{deps}", file=out)
    if plan.skipped:
        print("skipped:", file=out)
        for name, reason in plan.skipped:
            print(f"  {escape(name)}: {reason}", file=out)
    warnings = list(_warnings(config, plan))
    warnings += [f"[{section}] {key}: needs the {controller} controller, which this process "
                 f"does not have ({found.missing(controller)}): runner run refuses it so"
                 for section, key, controller in preflight.missing_limits(plan, found)]
    for warning in warnings:
        print(f"warning: {warning}", file=err)
    print(f"OK ({len(warnings)} warning(s))", file=out)
    return 0


def _warnings(config: Config, plan: Plan):
    yield from config.warnings
    if plan.halt is None:
        yield f"halt task {plan.halt_name} not found in {plan.task_dir}: a halt will only be logged"
    reboot = config.runner.reboot_task
    if reboot and plan.reboot is None:
        yield (f"reboot_task {reboot} not found in {plan.task_dir}: a task exiting 4 "
               "will be retried instead")
    for name, reason in plan.skipped:
        if reason == NOT_EXECUTABLE:
            yield f"{escape(name)}: {reason}"
    yield from preflight.warnings(config, plan)
    note = fdlimit.possible(config.runner.max_parallel).note(config.runner.max_parallel)
    if note:
        yield note
    if config.runner.journal_url:
        if not importable("psycopg"):
            yield ("[runner] journal_url: psycopg 3 is not installed (python3-psycopg): records "
                   "will stay in the local journal")
    task_keys = set(load_spec().sections["task"])
    short_names = {t.short_name for t in plan.tasks}
    if plan.halt:
        short_names.add(plan.halt.short_name)
    for section, values in config.sections.items():
        if section in ("runner", "env") or section in short_names:
            continue
        overrides = sorted(task_keys & set(values))
        if overrides:
            yield (f"[{section}] sets {', '.join(overrides)} but no task is named "
                   f"{section!r}: the section is not applied to any task")


def list_tasks(options: RunOptions, as_json: bool = False, out: TextIO = sys.stdout,
               show_secrets: bool = False) -> int:
    """The tasks in run order with their effective settings (secret values masked)."""
    config, plan = _plan(options)
    out = listing_output(out, config, show_secrets)
    rows = [_row(task) for task in plan.tasks]
    if as_json:
        print(json.dumps(rows, indent=2), file=out)
        return 0
    columns = ["task", *SETTINGS, "interpreter", "depends_on"]
    # Masked cell by cell before the widths are measured, so the columns stay aligned.
    mask = out.mask if isinstance(out, MaskedWriter) else str
    table = [[mask(format_value(row[c])) if row[c] is not None else "-" for c in columns]
             for row in rows]
    print_table(columns, table, out)
    return 0


def _row(task: Task) -> dict:
    settings = task.settings
    row: dict[str, Any] = {"task": task.name, "path": task.path, "short_name": task.short_name}
    row.update({name: getattr(settings, name) for name in SETTINGS})
    row["interpreter"] = " ".join(settings.interpreter) if settings.interpreter else None
    row["depends_on"] = list(settings.depends_on) or None
    return row
