"""`runner run --dry-run`: what a run would do now — run only the checks (and read the
frequency stamps), print for every task whether it would run or be skipped and why."""

from __future__ import annotations

import functools
import logging
import sys
from typing import TextIO

from .. import stamps as stamps_mod
from ..config import load
from ..identity import boot_id
from ..masking import MaskedWriter, Masker
from ..permissions import UntrustedPath
from ..process import Limits, run_process
from ..signals import SignalState
from ..states import TaskRun
from ..supervisor import RunOptions, task_dir_of
from ..taskenv import TaskEnvironment
from ..tasks import Task, check_trust, discover
from .check import print_table

log = logging.getLogger("runner")


def dry_run(options: RunOptions, out: TextIO = sys.stdout) -> int:
    config = load(options.config_path, options.overrides)
    plan = discover(config, task_dir_of(options, config))
    stamps = stamps_mod.Stamps(
        config.runner.state_dir, config, boot_id=boot_id(),
        instance_id=functools.partial(stamps_mod.instance_id, config),
    )
    env = TaskEnvironment(config)
    masker = Masker.from_config(config)
    signals = SignalState()
    signals.install()
    try:
        rows = [_decide(task, stamps, env, config.runner.task_cwd, signals, masker)
                for task in plan.tasks]
    finally:
        signals.uninstall()
        env.close()
    out = MaskedWriter(out, masker)  # a check's error can quote its command line
    print_table(["TASK", "WOULD", "WHY"], rows, out)
    would_run = sum(row[1] == "run" for row in rows)
    print(f"{would_run} of {len(rows)} task(s) would run", file=out)
    return 0


def _decide(task: Task, stamps, env: TaskEnvironment, cwd: str, signals: SignalState,
            masker: Masker) -> list:
    if task.settings.frequency != "always":
        reason = stamps.skip_reason(task)
        if reason:
            return [task.name, "skip", reason]
    if not task.settings.check:
        return [task.name, "run", "no check" if task.settings.frequency == "always"
                else f"{task.settings.frequency}: not done yet"]
    result = run_process(
        task.settings.check,
        env=env.for_run(TaskRun(task, 1, 1, task.settings.max_tries)),
        cwd=cwd,
        limits=Limits(task.settings.max_time, task.settings.kill_grace),
        signals=signals,
        on_line=lambda line: log.info("[%s check] %s", task.name, line),
        masker=masker,
        trust=check_trust(task) if stamps.strict else None,
    )
    if result.refused:
        raise UntrustedPath(result.error or task.name)
    if result.exit_code == 0:
        return [task.name, "skip", "check: already done"]
    how = result.error or (f"signal {result.signal}" if result.signal is not None
                           else f"exit {result.exit_code}")
    return [task.name, "run", f"check fails ({how})"]
