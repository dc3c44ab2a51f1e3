"""Find the tasks of a task directory and put them in the order they run (SPEC §3)."""

from __future__ import annotations

import heapq
import os
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import permissions
from .errors import ConfigError
from .names import byte_order, short_name, skip_reason

if TYPE_CHECKING:
    from .config import Config
    from .settings import TaskSettings

# The skip reason that deserves a warning: the file was probably meant to run.
NOT_EXECUTABLE = "not executable (chmod +x it, or set an interpreter)"


@dataclass(frozen=True)
class Task:
    """One executable of the task directory with its effective settings."""

    name: str
    path: str
    short_name: str
    settings: TaskSettings

    @property
    def argv(self) -> list[str]:
        interpreter = self.settings.interpreter
        return [*interpreter, self.path] if interpreter else [self.path]


@dataclass(frozen=True)
class Plan:
    """What a task directory holds: the chain in order, the halt task, and what is skipped."""

    task_dir: str
    tasks: list[Task]
    halt: Task | None
    halt_name: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    needs: dict[str, set[str]] = field(default_factory=dict)  # depends_on as file names
    reboot: Task | None = None


def discover(config: Config, task_dir: str) -> Plan:
    """Read TASKDIR and return the plan; raise ConfigError on anything that stops a run."""
    try:
        names = os.listdir(task_dir)
    except NotADirectoryError:
        raise ConfigError(f"{task_dir}: task directory is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"{task_dir}: cannot read task directory: {exc.strerror}") from None
    halt_name = config.runner.halt_task
    set_aside = {_resolve(task_dir, halt_name)}
    if config.runner.reboot_task:
        set_aside.add(_resolve(task_dir, config.runner.reboot_task))
    tasks, skipped = [], []
    for name in sorted(names, key=byte_order):
        path = os.path.join(task_dir, name)
        reason = skip_reason(name) or _file_problem(path)
        if path in set_aside:
            continue
        if reason is None:
            short = short_name(name)
            settings = config.task_settings(short)
            if not settings.interpreter and not os.access(path, os.X_OK):
                reason = NOT_EXECUTABLE
            else:
                tasks.append(Task(name, path, short, settings))
        if reason:
            skipped.append((name, reason))
    ordered = order(tasks, config, skipped)
    reboot_name = config.runner.reboot_task
    plan = Plan(
        task_dir, ordered, _special(config, task_dir, halt_name), halt_name, skipped,
        needs_of(ordered, config, skipped),
        _special(config, task_dir, reboot_name) if reboot_name else None,
    )
    if permissions.applies(config.runner.strict_permissions):
        reason = _plan_problem(config, plan)
        if reason:
            raise permissions.UntrustedPath(reason)
    return plan


def trust_of(task: Task) -> permissions.Trust:
    """What running a task executes: the task file, or its interpreter and the file."""
    if task.settings.interpreter:
        return permissions.Trust(f"interpreter of {task.name}", ((task.path, "task"),))
    return permissions.Trust("task")


def check_trust(task: Task) -> permissions.Trust:
    return permissions.Trust(f"check command of {task.name}")


HOOK_TRUST = permissions.Trust("task_hook")
INSTANCE_ID_TRUST = permissions.Trust("[runner] instance_id_command")


def task_search_path(config: Config) -> str | None:
    """The PATH tasks, checks and hooks are started with: [env] over runner's own."""
    return config.env.get("PATH", os.environ.get("PATH"))


def _plan_problem(config: Config, plan: Plan) -> str | None:
    """Why something the plan would execute as root may not be trusted (strict_permissions),
    resolved the way it is executed: in task_cwd, with the tasks' PATH."""
    cwd, path = config.runner.task_cwd, task_search_path(config)
    commands: list[tuple[list[str] | None, permissions.Trust, str, str | None]] = []
    for task in [*plan.tasks, plan.halt, plan.reboot]:
        if task is not None:
            commands.append((task.argv, trust_of(task), cwd, path))
            commands.append((task.settings.check, check_trust(task), cwd, path))
    commands.append((config.runner.task_hook, HOOK_TRUST, cwd, path))
    # instance_id_command runs as runner's own child: runner's cwd and PATH.
    commands.append((config.runner.instance_id_command, INSTANCE_ID_TRUST, os.getcwd(),
                     os.environ.get("PATH")))
    reason = permissions.problem(plan.task_dir, "task directory")
    for argv, trust, where, search in commands:
        if argv and not reason:
            reason = permissions.verify(argv, trust, cwd=where, search_path=search)[1]
    return reason


def _special(config: Config, task_dir: str, name: str) -> Task | None:
    """The halt or reboot task: set aside from the chain; None when it is not there."""
    path = _resolve(task_dir, name)
    if not os.path.isfile(path):
        return None
    base = os.path.basename(path)
    return Task(base, path, short_name(base), config.task_settings(short_name(base)))


def _resolve(task_dir: str, name: str) -> str:
    return os.path.normpath(os.path.join(task_dir, name))


def _file_problem(path: str) -> str | None:
    try:
        mode = os.stat(path).st_mode  # one stat, not isdir()'s and isfile()'s
    except (OSError, ValueError):
        return "not a regular file" if os.path.lexists(path) else "vanished"
    if stat.S_ISDIR(mode):
        return "directory"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    return None


def order(tasks: list[Task], config: Config, skipped: list[tuple[str, str]]) -> list[Task]:
    """Byte order, adjusted so that every task runs after its depends_on (Kahn's algorithm,
    always taking the smallest ready name, so the result is deterministic)."""
    by_name = {t.name: t for t in tasks}
    needs = needs_of(tasks, config, skipped)
    dependents: dict[str, list[str]] = {name: [] for name in needs}
    for name, deps in needs.items():
        for dep in deps:
            dependents[dep].append(name)
    waiting = {name: len(deps) for name, deps in needs.items()}
    ready = [(byte_order(n), n) for n, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    result = []
    while ready:
        _key, name = heapq.heappop(ready)
        result.append(by_name[name])
        for child in dependents[name]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, (byte_order(child), child))
    if len(result) != len(tasks):
        cycle = _find_cycle({n: needs[n] for n, c in waiting.items() if c > 0})
        first = by_name[cycle[0]]
        where = config.origins.get((first.short_name, "depends_on"))
        prefix = f"{where.where()}: [{first.short_name}] depends_on: " if where else ""
        raise ConfigError(prefix + "dependency cycle: " + " -> ".join(cycle))
    return result


def needs_of(
    tasks: list[Task], config: Config | None = None,
    skipped: list[tuple[str, str]] | None = None,
) -> dict[str, set[str]]:
    """Each task's depends_on as the file names of tasks present (short names resolved);
    a dependency on a task that is not there is a ConfigError naming the line (when the
    config is given)."""
    origins = config.origins if config is not None else {}
    by_name = {t.name: t for t in tasks}
    by_short: dict[str, list[str]] = {}
    for t in tasks:
        by_short.setdefault(t.short_name, []).append(t.name)
    skipped_names = dict(skipped or [])
    needs: dict[str, set[str]] = {t.name: set() for t in tasks}
    for t in tasks:
        for dep in t.settings.depends_on:
            targets = [dep] if dep in by_name else by_short.get(dep, [])
            if not targets:
                where = origins.get((t.short_name, "depends_on"))
                prefix = f"{where.where()}: " if where else ""
                why = f" ({skipped_names[dep]})" if dep in skipped_names else ""
                raise ConfigError(
                    f"{prefix}[{t.short_name}] depends_on: "
                    f"no task {dep!r} in the task directory{why}"
                )
            # A task depending on itself is ignored, as the original did.
            needs[t.name].update(n for n in targets if n != t.name)
    return needs


def _find_cycle(needs: dict[str, set[str]]) -> list[str]:
    """A concrete cycle among tasks that could not be ordered, for the error message."""
    start = min(needs, key=byte_order)
    path, seen = [start], {start: 0}
    current = start
    while True:
        current = min((d for d in needs[current] if d in needs), key=byte_order)
        if current in seen:
            return [*path[seen[current]:], current]
        seen[current] = len(path)
        path.append(current)
