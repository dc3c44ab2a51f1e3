"""`runner reset [TASK]`: forget that once, per-boot and per-instance tasks succeeded."""

from __future__ import annotations

import sys
from typing import TextIO

from .. import stamps
from ..config import Config, load
from ..errors import ConfigError
from ..settings import RunOptions, task_dir_of
from ..tasks import discover


def reset(options: RunOptions, task: str | None, out: TextIO = sys.stdout) -> int:
    """Remove the stamps (all, or TASK's): 0 when done, 1 when TASK names nothing."""
    config = load(options.config_path, options.overrides)
    state_dir = config.runner.state_dir
    # Read before removing: the line printed for each stamp names its frequency.
    frequencies = stamps.stamps(state_dir)
    try:
        removed = stamps.reset(state_dir, task)
    except OSError as exc:
        print(f"runner: cannot forget a stamp in {state_dir}/{stamps.STAMP_DIR}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    for name in removed:
        print(f"forgot {name} ({frequencies.get(name) or 'unreadable stamp'})", file=out)
    if removed:
        return 0
    if task is not None and not _is_task(config, options, task):
        print(f"runner: no stamp of {task!r} and no such task in {task_dir_of(options, config)}",
              file=sys.stderr)
        return 1
    print("no stamps to forget", file=out)
    return 0


def _is_task(config: Config, options: RunOptions, wanted: str) -> bool:
    """Whether TASK names a task of the task directory (so it merely has no stamp)."""
    try:
        plan = discover(config, task_dir_of(options, config))
    except ConfigError:
        return False  # a broken task directory: the message names it
    return any(stamps.matches(t.name, wanted) for t in plan.tasks)
