"""The states of a task run, the exit statuses of runner, and the record of one run."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .identity import iso
from .tasks import Task
from .usage import Cost


class TaskState(enum.Enum):
    """A task run moves PENDING -> RUNNING -> one result; nothing else is allowed."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    OK = "OK"
    HALT = "HALT"
    EXIT = "EXIT"
    RETRY = "RETRY"
    TIMEOUT = "TIMEOUT"
    STOPPED = "STOPPED"
    SKIPPED = "SKIPPED"
    # Exit 4 with reboot_task configured: done, but the machine must reboot to go on.
    REBOOT = "REBOOT"
    # Only in the journal: the runner that ran it died before the result was known.
    INTERRUPTED = "INTERRUPTED"

    @property
    def is_result(self) -> bool:
        return self not in (TaskState.PENDING, TaskState.RUNNING)

    @property
    def is_failure(self) -> bool:
        """A result that makes runner retry the chain."""
        return self in (TaskState.RETRY, TaskState.TIMEOUT)


RESULTS = frozenset(s for s in TaskState if s.is_result)
TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.PENDING: frozenset({TaskState.RUNNING, TaskState.SKIPPED}),
    # RUNNING -> SKIPPED: `runner ctl skip` stopped the task.
    TaskState.RUNNING: RESULTS - {TaskState.INTERRUPTED},
}


class ExitStatus(enum.IntEnum):
    """Exit statuses of `runner` (SPEC §4)."""

    DONE = 0
    GAVE_UP = 1
    HALTED = 2
    EXIT = 3
    INTERNAL = 70  # sysexits(3) EX_SOFTWARE: a bug in runner; no task is left running
    CONFIG = 78
    SIGINT = 130
    SIGTERM = 143


# Exit codes of a task and the result they mean; anything else is RETRY.
EXIT_CODE_RESULTS = {0: TaskState.OK, 2: TaskState.HALT, 3: TaskState.EXIT}


class Kind(enum.Enum):
    TASK = "task"
    HALT = "halt"
    REBOOT = "reboot"


@dataclass
class TaskRun:
    """One run of one task: what ran, when, and how it ended."""

    task: Task
    iteration: int
    try_num: int
    max_tries: int
    kind: Kind = Kind.TASK
    state: TaskState = TaskState.PENDING
    started_at: datetime | None = None
    ended_at: datetime | None = None  # when it got its result (Dispatcher.transition)
    duration_s: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None
    cost: Cost | None = None  # CPU time and peak memory; None when it never started
    output_tail: bytes = field(default=b"", repr=False)
    _started_text: str | None = field(default=None, repr=False, compare=False)

    def mark_started(self) -> None:
        self.started_at = datetime.now(UTC)
        self._started_text = iso(self.started_at)  # journal, status and hooks all need it

    def started_at_text(self) -> str | None:
        return self._started_text


def ended_by(error: str | None, signal: int | None, exit_code: int | None) -> str:
    """The error that kept it from ending normally, else `signal N`, else `exit N`."""
    if error:
        return error
    if signal is not None:
        return f"signal {signal}"
    return f"exit {exit_code}"


class TransitionError(RuntimeError):
    """A state change the state machine does not allow: a bug in runner, never user input."""


def check_transition(old: TaskState, new: TaskState) -> None:
    if new not in TRANSITIONS.get(old, frozenset()):
        raise TransitionError(f"task run cannot go from {old.value} to {new.value}")
