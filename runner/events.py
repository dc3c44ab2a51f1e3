"""The one place every task state change goes through: it logs, and tells every listener
(hooks today; journal, notify and metrics are listeners too)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from .states import Kind, TaskRun, TaskState, check_transition

log = logging.getLogger("runner")


class Listener:
    """Something that wants to know what runner does. Every method is optional."""

    def started(self) -> None:
        """The configuration is read and the plan is valid; the first iteration begins."""

    def task_changed(self, run: TaskRun) -> None:
        """A task run entered a new state (RUNNING, or a result)."""

    def chain_started(self, iteration: int, try_num: int) -> None:
        """A try of the chain begins."""

    def waiting(self, seconds: float, reason: str) -> None:
        """runner pauses (backoff before a retry)."""

    def iteration_done(self, iteration: int) -> None:
        """Every task of the chain was OK in this iteration."""

    def finished(self, status: int) -> None:
        """runner is about to exit with this status."""


class Dispatcher:
    """Applies state changes and fans events out to listeners in order."""

    def __init__(self, listeners: list[Listener],
                 mask: Callable[[str], str] = lambda text: text) -> None:
        self.listeners = listeners
        self.mask = mask

    def transition(self, run: TaskRun, new: TaskState) -> None:
        check_transition(run.state, new)
        run.state = new
        # An error can quote a command line or what a tool said; masked here, it is
        # masked for the log and for every listener (journal, status, metrics, hooks).
        if run.error:
            run.error = self.mask(run.error)
        _log_transition(run)
        self._emit("task_changed", run)

    def started(self) -> None:
        self._emit("started")

    def chain_started(self, iteration: int, try_num: int) -> None:
        self._emit("chain_started", iteration, try_num)

    def iteration_done(self, iteration: int) -> None:
        self._emit("iteration_done", iteration)

    def waiting(self, seconds: float, reason: str) -> None:
        self._emit("waiting", seconds, reason)

    def finished(self, status: int) -> None:
        self._emit("finished", status)

    def _emit(self, method: str, *args: object) -> None:
        for listener in self.listeners:
            try:
                getattr(listener, method)(*args)
            except Exception as exc:  # a listener must never change a task's result
                log.error("%s failed in %s: %s", type(listener).__name__, method, exc)


def describe_end(run: TaskRun) -> str:
    """`RETRY (exit 1) after 0.20s`: the result line of a task run."""
    detail = []
    if run.error:
        detail.append(run.error)
    elif run.signal is not None:
        detail.append(f"signal {run.signal}")
    elif run.exit_code is not None and run.state is not TaskState.OK:
        detail.append(f"exit {run.exit_code}")
    text = run.state.value + (f" ({', '.join(detail)})" if detail else "")
    if run.duration_s is not None:
        text += f" after {run.duration_s:.2f}s"
    return text


def _log_transition(run: TaskRun) -> None:
    name = run.task.name if run.kind is Kind.TASK else f"{run.kind.value} task {run.task.name}"
    if run.state is TaskState.RUNNING:
        log.info(
            "%s: starting (try %d/%d, iteration %d)",
            name, run.try_num, run.max_tries, run.iteration,
        )
        return
    level = logging.INFO if run.state in (TaskState.OK, TaskState.SKIPPED) else logging.WARNING
    log.log(level, "%s: %s", name, describe_end(run))
