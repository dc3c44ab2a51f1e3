"""The one place every task state change goes through: it logs, and tells every listener
(hooks today; journal, notify and metrics are listeners too)."""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from .states import Kind, TaskRun, TaskState, check_transition, ended_by

log = logging.getLogger("runner")
SUMMARY_LIMIT = 50  # failed tries kept for the summary at exit
# The changes a chain goes on after (anything else is logged at once: what runner says
# about a failure follows its line).
DEFERRED = (TaskState.RUNNING, TaskState.OK, TaskState.SKIPPED)
# The end of a task that wrote more than this reaches the `first` listeners at once: the
# journal writes such an end before the next start (runner.journal.KEEP_BACK_BYTES), and
# its size bound is looked at then, not while the next task runs.
SHORT_OUTPUT_BYTES = 4096


class Listener:
    """Something that wants to know what runner does. Every method is optional."""

    # True for a listener that may make runner wait (it runs a process: the hooks). The
    # listeners before it are told idle() first, as when runner waits for anything else.
    waits = False
    # True for a listener that must hear of a task's start before its process starts (the
    # journal: every started task has its row). The others may hear of a sequential
    # chain's task changes a little later (Dispatcher.transition's `defer`).
    first = False

    def idle(self) -> None:
        """runner is about to wait (for a task, a check, a hook, a backoff): anything
        kept back to be written together with the next event is written now."""

    def started(self) -> None:
        """The configuration is read and the plan is valid; the first iteration begins."""

    def task_changed(self, run: TaskRun) -> None:
        """A task run entered a new state (RUNNING, or a result)."""

    def chain_started(self, iteration: int, try_num: int) -> None:
        """A try of the chain begins."""

    def backoff(self, seconds: float, cause: str) -> None:
        """runner waits `seconds` before the next try, because of `cause` (a task)."""

    def paused(self) -> None:
        """`runner ctl pause` holds the chain before its next task."""

    def resumed(self) -> None:
        """`runner ctl resume` let the chain go on."""

    def rebooting(self, after: str) -> None:
        """The reboot task ran; runner waits for the shutdown (resuming after `after`)."""

    def iteration_done(self, iteration: int) -> None:
        """Every task of the chain was OK in this iteration."""

    def finished(self, status: int) -> None:
        """runner is about to exit with this status."""


class Dispatcher:
    """Applies state changes and fans events out to listeners in order.

    A deferred transition (a task of a sequential chain) is logged and told to the
    listeners at the next idle() — right after the next process has started, as runner
    then waits for it — or before any other event; a start, or a skip of a task that
    never started, reaches the `first` listeners (the journal) at once. The log lines,
    journal rows and status updates of one task's end and the next one's start are so
    made while that next process runs (on the machine's other core), not before it
    starts. Each run's events reach every listener in order, and the log keeps the
    chain's order; only a `first` listener hears a start before the end of the task
    before it. Never with a listener that waits (a hook must run before the task
    starts), nor for the halt or reboot task (the power may go before anything after
    its start), nor for a failure (what runner says about it follows its line)."""

    def __init__(self, listeners: list[Listener],
                 mask: Callable[[str], str] = lambda text: text) -> None:
        self.listeners = listeners
        self.mask = mask
        # Deferred: (run, whether the `first` listeners were told already), for flush().
        self._later: list[tuple[TaskRun, bool]] = []

    def transition(self, run: TaskRun, new: TaskState, *, defer: bool = False) -> None:
        self.deliver(run)  # an earlier deferred event of this run first
        check_transition(run.state, new)
        started = run.state is TaskState.RUNNING
        run.state = new
        if new.is_result:
            run.ended_at = datetime.now(UTC)  # what the listeners say, when they are told
        # An error can quote a command line or what a tool said; masked here, it is
        # masked for the log and for every listener (journal, status, metrics, hooks).
        if run.error:
            run.error = self.mask(run.error)
        if (defer and run.kind is Kind.TASK and new in DEFERRED
                and not any(listener.waits for listener in self.listeners)):
            now = not started or len(run.output_tail) > SHORT_OUTPUT_BYTES
            if now:  # its row must exist, in order, before what starts next
                self._call([x for x in self.listeners if x.first], "task_changed", run)
            self._later.append((run, now))
            return
        self.flush()
        _log_transition(run)
        self._emit("task_changed", run)

    def deliver(self, run: TaskRun) -> None:
        """Before a run changes again: its deferred event (and those before it) go out,
        while the run is as it was then."""
        if any(later is run for later, _told in self._later):
            self.flush()

    def flush(self) -> None:
        """Every deferred transition, in order: logged, and told to the other listeners."""
        while self._later:
            later, self._later = self._later, []
            for run, told in later:
                _log_transition(run)
                self._call([x for x in self.listeners if not (told and x.first)],
                           "task_changed", run)

    def idle(self) -> None:
        """runner is about to wait: see Listener.idle. The `first` listeners write what
        they were still to hear before anything is logged: whoever sees a task's start
        in the log finds the task before it ended in the journal."""
        first = [x for x in self.listeners if x.first]
        for index, (run, told) in enumerate(self._later):
            if not told:
                self._call(first, "task_changed", run)
                self._later[index] = (run, True)
        self._call(first, "idle")
        self.flush()
        self._emit("idle")

    def started(self) -> None:
        self._emit("started")

    def chain_started(self, iteration: int, try_num: int) -> None:
        self._emit("chain_started", iteration, try_num)

    def iteration_done(self, iteration: int) -> None:
        self._emit("iteration_done", iteration)

    def backoff(self, seconds: float, cause: str) -> None:
        self.idle()
        self._emit("backoff", seconds, cause)

    def paused(self) -> None:
        self.idle()
        self._emit("paused")

    def resumed(self) -> None:
        self._emit("resumed")

    def rebooting(self, after: str) -> None:
        self.idle()
        self._emit("rebooting", after)

    def finished(self, status: int) -> None:
        self._emit("finished", status)

    def _emit(self, method: str, *args: object) -> None:
        self.flush()
        for index, listener in enumerate(self.listeners):
            if listener.waits:
                self._settle(index)
            _call(listener, method, args)

    def _call(self, listeners: list[Listener], method: str, *args: object) -> None:
        for listener in listeners:
            _call(listener, method, args)

    def _settle(self, before: int) -> None:
        self._call(self.listeners[:before], "idle")


def _call(listener: Listener, method: str, args: tuple) -> None:
    try:
        getattr(listener, method)(*args)
    except Exception as exc:  # a listener must never change a task's result
        log.error("%s failed in %s: %s", type(listener).__name__, method, exc)


class FailureSummary(Listener):
    """The failed tries of this run, for the summary logged at exit."""

    def __init__(self) -> None:
        self.runs: collections.deque[TaskRun] = collections.deque(maxlen=SUMMARY_LIMIT)
        self.count = 0

    def task_changed(self, run: TaskRun) -> None:
        if run.state.is_failure and run.kind is Kind.TASK:
            self.runs.append(run)
            self.count += 1

    def log(self) -> None:
        if not self.runs:
            return
        log.warning("%d failed tr%s during this run:", self.count,
                    "y" if self.count == 1 else "ies")
        if self.count > len(self.runs):
            log.warning("  (%d earlier failures not shown)", self.count - len(self.runs))
        for run in self.runs:
            log.warning("  %s iteration %d try %d: %s", run.task.name, run.iteration,
                        run.try_num, describe_end(run))


def describe_end(run: TaskRun) -> str:
    """`RETRY (exit 1) after 0.20s`: the result line of a task run."""
    text = run.state.value
    if run.error or run.signal is not None or (
            run.exit_code is not None and run.state is not TaskState.OK):
        text += f" ({ended_by(run.error, run.signal, run.exit_code)})"
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
