"""`runner run --dry-run`: what a run would do now — run only the checks (and read the
frequency stamps), print for every task whether it would run or be skipped and why."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from .. import stamps
from ..config import load
from ..masking import Masker, listing_output
from ..permissions import UntrustedPath
from ..process import Limits, ProcessResult, run_process
from ..settings import RunOptions, task_dir_of
from ..signals import SignalState
from ..states import TaskRun
from ..taskenv import TaskEnvironment
from ..tasklife import decide
from ..tasks import Task, check_trust, discover
from .table import print_table

log = logging.getLogger("runner")


def dry_run(options: RunOptions, out: TextIO = sys.stdout) -> int:
    config = load(options.config_path, options.overrides)
    plan = discover(config, task_dir_of(options, config))
    recorded = stamps.for_config(config)
    env = TaskEnvironment(config)
    masker = Masker.from_config(config)
    signals = SignalState()
    signals.install()

    def check(task: Task) -> ProcessResult:
        assert task.settings.check is not None
        result = run_process(
            task.settings.check,
            env=env.for_run(TaskRun(task, 1, 1, task.settings.max_tries)),
            cwd=config.runner.task_cwd,
            limits=Limits(task.settings.max_time, task.settings.kill_grace),
            signals=signals,
            on_line=lambda line: log.info("[%s check] %s", task.name, line),
            masker=masker,
            trust=check_trust(task) if recorded.strict else None,
        )
        if result.refused:
            raise UntrustedPath(result.error or task.name)
        return result

    try:
        decisions = [(task, decide(task, stamps=recorded, check=check)) for task in plan.tasks]
    finally:
        signals.uninstall()
        env.close()
    rows = [[task.name, "skip" if d.skip else "run", d.reason] for task, d in decisions]
    out = listing_output(out, config)  # a check's error can quote its command line
    print_table(["TASK", "WOULD", "WHY"], rows, out)
    would_run = sum(not d.skip for _task, d in decisions)
    print(f"{would_run} of {len(rows)} task(s) would run", file=out)
    return 0
