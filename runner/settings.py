"""Typed, frozen settings: [runner] as RunnerSettings, a task's as TaskSettings.

The configspec (configspec.ini) stays the one description of every key: these classes
only give its checked values a type. Their fields are the configspec's keys, one for one
(tests/test_settings.py pins that), and every `option(...)` key has an enum whose values
are the option's words.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Config


class Frequency(enum.StrEnum):
    """How often a task runs (the `frequency` key)."""

    ALWAYS = "always"
    ONCE = "once"
    PER_BOOT = "per-boot"
    PER_INSTANCE = "per-instance"


class RetryFrom(enum.StrEnum):
    """Where a retry resumes (the `retry_from` key)."""

    START = "start"
    FAILED = "failed"


class OnFailure(enum.StrEnum):
    """What a failure does to the tasks running beside it (the `on_failure` key)."""

    WAIT = "wait"
    STOP = "stop"


class ReadyWhen(enum.StrEnum):
    """When systemd hears READY=1 (the `notify_ready` key, without a task name)."""

    START = "start"
    PASS = "pass"
    TASK = "task"


@dataclass(frozen=True)
class NotifyReady:
    """`start`, `pass` or `task:NAME`, parsed once."""

    when: ReadyWhen
    task: str | None = None

    @classmethod
    def parse(cls, text: str) -> NotifyReady:
        """`start`, `pass` or `task:NAME`; ValueError for anything else (the configspec's
        check calls this, so what it accepts is what runner understands)."""
        if text.startswith("task:") and text[5:].strip():
            return cls(ReadyWhen.TASK, text[5:].strip())
        if text in (ReadyWhen.START, ReadyWhen.PASS):
            return cls(ReadyWhen(text))
        raise ValueError(f"{text!r} is not one of start, pass, task:NAME")

    def __str__(self) -> str:
        return f"task:{self.task}" if self.when is ReadyWhen.TASK else self.when.value


@dataclass(frozen=True)
class TaskSettings:
    """The effective settings of one task: its section's values over [runner]'s."""

    max_time: float
    max_tries: int
    sleep_time: float
    retry_jitter: float
    interpreter: list[str] | None
    kill_grace: float
    depends_on: list[str] = field(default_factory=list)
    check: list[str] | None = None
    frequency: Frequency = Frequency.ALWAYS
    memory_max: int | None = None  # the task's cgroup limits (runner.cgroup)
    cpu_weight: int | None = None
    tasks_max: int | None = None

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> TaskSettings:
        return cls(**_typed(values))


@dataclass(frozen=True)
class RunnerSettings:
    """The checked [runner] section, defaults filled in."""

    sleep_time: float
    retry_jitter: float
    max_tries: int
    max_time: float
    halt_task: str
    task_hook: list[str] | None
    interpreter: list[str] | None
    include_dir: str | None
    retry_from: RetryFrom
    task_dir: str
    state_dir: str
    task_cwd: str
    backoff: float
    kill_grace: float
    hook_timeout: float
    times: int
    max_parallel: int
    on_failure: OnFailure
    notify_ready: NotifyReady
    metrics_file: str | None
    journal_url: str | None
    journal_keep_days: int
    journal_max_mb: int
    fleet_keep_days: int
    runtime_dir: str
    strict_permissions: bool
    secret_keys: list[str]
    config_get_strict: bool
    reboot_task: str | None
    max_boot_tries: int
    instance_id_command: list[str] | None

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> RunnerSettings:
        """From the configspec's checked values (every [runner] key, by name)."""
        return cls(**_typed(values))

    def values(self) -> dict[str, Any]:
        """Every key with its value as JSON and runner-config show it (enums as words)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


# The keys whose checked text becomes an enum (or a parsed value).
_CONVERT: dict[str, Any] = {
    "frequency": Frequency,
    "retry_from": RetryFrom,
    "on_failure": OnFailure,
    "notify_ready": NotifyReady.parse,
}


def _typed(values: dict[str, Any]) -> dict[str, Any]:
    return {
        name: _CONVERT[name](value) if name in _CONVERT and isinstance(value, str) else value
        for name, value in values.items()
    }


def _plain(value: Any) -> Any:
    if isinstance(value, NotifyReady):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


@dataclass(frozen=True)
class RunOptions:
    """What the command line says about a run."""

    config_path: str | None = None
    overrides: tuple[str, ...] = ()
    task_dir: str | None = None
    times: int | None = None
    halt_after: bool = False


def task_dir_of(options: RunOptions, config: Config) -> str:
    """The task directory: the command line's, else [runner] task_dir."""
    return os.path.abspath(options.task_dir or config.runner.task_dir)
