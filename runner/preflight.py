"""What a run needs of the machine before it starts: the paths every task depends on.

`runner run` and `runner check` refuse (one line, exit 78) what would make every task
fail: a task_cwd that is not a directory runner can enter, an interpreter that cannot be
executed. What only some runs need (a hook, a check command, the reboot task) is a
warning of `runner check` (preflight.warnings). A SIGHUP reload is refused the same way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from . import permissions
from .cgroup import LIMIT_KEYS, Containment
from .config import Config, Origin
from .errors import ConfigError
from .masking import Masker
from .tasks import Plan, task_search_path


def check(config: Config, plan: Plan, containment: Containment | None = None) -> None:
    """Raise ConfigError for the first path whose absence fails every task (its secret
    values masked: a path can quote one), and, given what runner's cgroup offers, for a
    task limit whose controller is missing."""
    try:
        _check(config, plan)
        if containment is not None:
            for section, key, controller in missing_limits(plan, containment):
                raise ConfigError(f"{_where(config, section, key)}[{section}] {key}: needs "
                                  f"the {controller} controller, which runner does not have "
                                  f"here ({containment.missing(controller)})")
    except ConfigError as exc:
        raise ConfigError(Masker.from_config(config).text(str(exc))) from None


def missing_limits(plan: Plan,
                   containment: Containment) -> Iterator[tuple[str, str, str]]:
    """(section, key, controller) of each task limit runner could not enforce."""
    have = containment.controllers()
    tasks = [*plan.tasks, *(t for t in (plan.halt, plan.reboot) if t is not None)]
    for task in tasks:
        for key, controller in LIMIT_KEYS.items():
            if getattr(task.settings, key) is not None and controller not in have:
                yield task.short_name, key, controller


def _check(config: Config, plan: Plan) -> None:
    cwd = config.runner.task_cwd
    problem = directory_problem(cwd)
    if problem:
        raise ConfigError(f"{_where(config, 'runner', 'task_cwd')}[runner] task_cwd: {cwd} "
                          f"{problem} (every task, check and hook runs there)")
    for section, argv in _interpreters(config, plan):
        if not _runnable(argv[0], config):
            raise ConfigError(f"{_where(config, section, 'interpreter')}[{section}] "
                              f"interpreter: {argv[0]} is not an executable command "
                              f"(run from task_cwd {cwd})")


def warnings(config: Config, plan: Plan) -> Iterator[str]:
    """Commands that only some runs need and that cannot be executed now."""
    for special, key in ((plan.halt, "halt_task"), (plan.reboot, "reboot_task")):
        if (special is not None and not special.settings.interpreter
                and not os.access(special.path, os.X_OK)):
            yield (f"[runner] {key}: {special.path} is not executable (chmod +x it, or set "
                   "an interpreter): it would fail to start when needed")
    hook = config.runner.task_hook
    if hook and not _runnable(hook[0], config):
        yield f"[runner] task_hook: {hook[0]} is not an executable command"
    for task in plan.tasks:
        check = task.settings.check
        if check and not _runnable(check[0], config):
            yield (f"[{task.short_name}] check: {check[0]} is not an executable command "
                   f"(the check of {task.name} will fail, so the task always runs)")
    command = config.runner.instance_id_command
    if command and not _runnable(command[0], config, cwd=os.getcwd()):
        yield f"[runner] instance_id_command: {command[0]} is not an executable command"


def directory_problem(path: str) -> str | None:
    """Why `path` cannot be a working directory for runner, or None."""
    if not os.path.exists(path):
        return "does not exist"
    if not os.path.isdir(path):
        return "is not a directory"
    if not os.access(path, os.X_OK):
        return "cannot be entered (no search permission)"
    return None


def _interpreters(config: Config, plan: Plan) -> Iterator[tuple[str, list[str]]]:
    if config.runner.interpreter:
        yield "runner", config.runner.interpreter
    seen = {tuple(config.runner.interpreter or ())}
    for task in plan.tasks:
        argv = task.settings.interpreter
        if argv and tuple(argv) not in seen:
            seen.add(tuple(argv))
            yield task.short_name, argv


def _runnable(argv0: str, config: Config, cwd: str | None = None) -> bool:
    """True when exec would find an executable file for argv0 (as run_process starts it)."""
    found = permissions.resolve(argv0, cwd or config.runner.task_cwd, task_search_path(config))
    return found is not None and os.path.isfile(found) and os.access(found, os.X_OK)


def _where(config: Config, section: str, key: str) -> str:
    origin = config.origins.get((section, key))
    return f"{origin.where()}: " if isinstance(origin, Origin) else ""
