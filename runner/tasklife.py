"""One task's life: skip (by the operator, a frequency stamp or its check), run, check
again, stamp; and which runs are in progress (for `runner ctl skip`).

Every state change goes through the Dispatcher (logs, journal, status, hooks). The
decision whether a task would be skipped is `decide()`, which `runner run --dry-run`
and `runner plan` use too, so the three cannot disagree.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import permissions, usage
from .cgroup import Cell, CellLimits, Tree
from .preflight import directory_problem
from .process import Later, Limits, ProcessResult, describe_exit, run_process
from .settings import Frequency
from .signals import SignalState, SignalView
from .states import EXIT_CODE_RESULTS, Kind, TaskRun, TaskState
from .tasks import Task, check_trust, trust_of

if TYPE_CHECKING:
    from .config import Config
    from .events import Dispatcher
    from .masking import Masker
    from .stamps import Stamps
    from .taskenv import TaskEnvironment

log = logging.getLogger("runner")
REBOOT_EXIT = 4  # a task asks for a reboot (when reboot_task is configured)
OPERATOR_SKIP = "skipped by runner ctl"
CHECK_PASSED = "check: already done"

Signals = SignalState | SignalView
RunProcess = Callable[..., ProcessResult]


def classify(result: ProcessResult, reboot: bool = False) -> TaskState:
    """The result of a task run from how its process ended; exit 4 means REBOOT only when
    a reboot_task is configured (otherwise it stays the RETRY it always was)."""
    if result.stopped:
        return TaskState.STOPPED
    if result.timed_out:
        return TaskState.TIMEOUT
    if result.exit_code is None:  # could not start, or died by a signal
        return TaskState.RETRY
    if reboot and result.exit_code == REBOOT_EXIT:
        return TaskState.REBOOT
    return EXIT_CODE_RESULTS.get(result.exit_code, TaskState.RETRY)


# -- the one skip decision ------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """Whether a task runs now, and why."""

    skip: bool
    reason: str


def decide(
    task: Task,
    *,
    stamps: Stamps | None,
    operator_skip: Callable[[str], bool] | None = None,
    check: Callable[[Task], ProcessResult | None] | None = None,
) -> Decision:
    """Skip by the operator (`runner ctl skip`, taken once), by a frequency stamp, or by
    a check that passes, in that order. Without `check` the check is not run (`runner
    plan`); a check that was stopped or refused (None) lets the task go on."""
    settings = task.settings
    if operator_skip is not None and operator_skip(task.name):
        return Decision(True, OPERATOR_SKIP)
    if stamps is not None and settings.frequency is not Frequency.ALWAYS:
        reason = stamps.skip_reason(task)
        if reason:
            return Decision(True, reason)
    if not settings.check:
        return Decision(False, "no check" if settings.frequency is Frequency.ALWAYS
                        else f"{settings.frequency}: not done yet")
    result = check(task) if check is not None else None
    if result is None or result.stopped:
        return Decision(False, "check not run")
    if result.exit_code == 0:
        return Decision(True, CHECK_PASSED)
    return Decision(False, f"check fails ({describe_exit(result)})")


# -- what may stop a run ----------------------------------------------------------------


class Refusal:
    """strict_permissions refused to exec something: runner ends with 78 at the next
    decision, never running, skipping or halting anything because of it. Any thread may
    record one; the first reason is kept."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return self.reason is not None

    def refuse(self, reason: str) -> None:
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
        log.error("%s", reason)

    def of(self, result: ProcessResult | None) -> bool:
        """True (and the refusal recorded) when run_process refused to start it."""
        if result is None or not result.refused:
            return False
        self.refuse(result.error or "refused")
        return True


@dataclass
class Execution:
    """What running a task produced: its process, and the check run again after it.
    `started` is False when a `runner ctl skip` came before the process could start."""

    process: ProcessResult
    recheck: ProcessResult | None = None
    started: bool = True


@dataclass
class _Running:
    view: SignalView
    skipped: bool = False  # stopped by `runner ctl skip`, not by a failure beside it


class TaskLife:
    """Takes one task run from PENDING to its result."""

    def __init__(
        self,
        config: Config,
        *,
        env: TaskEnvironment,
        masker: Masker,
        dispatcher: Dispatcher,
        refusal: Refusal,
        stamps: Stamps | None = None,
        run: RunProcess = run_process,
        tree: Tree | None = None,
    ) -> None:
        self.tree = tree
        self.config = config
        self.env = env
        self.masker = masker
        self.dispatcher = dispatcher
        self.refusal = refusal
        self.stamps = stamps
        self._run_process = run
        # Runs in progress, from before their start hook: task file name -> its view;
        # and the skips asked for tasks not running then. One lock for both, so a skip
        # is never lost between the two.
        self._running: dict[str, _Running] = {}
        self._skips: set[str] = set()
        self._running_lock = threading.Lock()

    def reconfigure(self, config: Config, dispatcher: Dispatcher,
                    stamps: Stamps | None) -> None:
        """After a reload (SIGHUP): the new settings apply to the runs that start next."""
        self.dispatcher.flush()  # what the old listeners were still to hear
        self.config, self.dispatcher, self.stamps = config, dispatcher, stamps

    def _trust(self, of: Callable[[Task], permissions.Trust],
               task: Task) -> permissions.Trust | None:
        """What must be trusted to run `task` (`of` says which of its commands), under
        strict_permissions only: without it nothing is worked out."""
        return of(task) if permissions.applies(self.config.runner.strict_permissions) else None

    # -- before the run (main thread) ---------------------------------------

    def skipped(self, run: TaskRun, signals: Signals) -> bool:
        """Skip by operator, by frequency stamp or by check; True (and SKIPPED) if so."""
        decision = decide(run.task, stamps=self.stamps, operator_skip=self.take_skip,
                          check=lambda task: self._check(run, signals))
        if not decision.skip:
            return False
        run.error = decision.reason
        run.mark_started()
        run.duration_s = 0.0
        self.dispatcher.transition(run, TaskState.SKIPPED)
        return True

    def _check(self, run: TaskRun, signals: Signals) -> ProcessResult | None:
        """The task's check before the run; None when refused (strict_permissions)."""
        self.dispatcher.idle()  # runner waits for the check
        result = self._check_process(run, signals, "check")
        if self.refusal.of(result):
            return None
        if result.error and not result.stopped:
            log.warning("%s: check: %s", run.task.name, result.error)
        return result

    def begin(self, run: TaskRun, defer: bool = False) -> None:
        """RUNNING; `defer`: logged and told to most listeners once the process started
        (Dispatcher.transition): pass the dispatcher's idle as execute()'s on_start."""
        run.mark_started()
        self.dispatcher.transition(run, TaskState.RUNNING, defer=defer)

    def stop_before_start(self, run: TaskRun) -> None:
        """runner was asked to stop while the hook before the run ran."""
        self.dispatcher.deliver(run)
        run.duration_s = 0.0
        self.dispatcher.transition(run, TaskState.STOPPED)

    # -- the run (any thread, no transitions) ---------------------------------

    def execute(self, run: TaskRun, signals: Signals,
                on_start: Callable[[], None] | None = None,
                later: Later | None = None) -> Execution:
        """The task's process, then its check again; `on_start` is called once the
        process has started; `later`: see run_process."""
        task = run.task
        if signals.cancelled:  # skipped by the operator while the start hook ran
            return Execution(ProcessResult(stopped=True), started=False)
        process = self._run_process(
            task.argv,
            env=self.env.for_run(run),
            cwd=self._cwd(run),
            limits=Limits(task.settings.max_time, task.settings.kill_grace),
            signals=signals,
            on_line=lambda line: log.info("[%s] %s", task.name, line),
            masker=self.masker,
            trust=self._trust(trust_of, task),
            cell=self._cell(run.kind.value, task),
            on_start=on_start,
            later=later,
        )
        execution = Execution(process)
        if task.settings.check and process.exit_code == 0 and not process.stopped:
            execution.recheck = self._check_process(run, signals, "recheck")
        return execution

    def _cwd(self, run: TaskRun) -> str:
        """task_cwd; for the halt and reboot tasks `/` when task_cwd went away under
        runner (checked at start), since the machine must still halt or reboot."""
        cwd = self.config.runner.task_cwd
        problem = directory_problem(cwd) if run.kind is not Kind.TASK else None
        if problem:
            log.warning("task_cwd %s %s: running %s task %s in /", cwd, problem,
                        run.kind.value, run.task.name)
            return "/"
        return cwd

    def _check_process(self, run: TaskRun, signals: Signals, what: str) -> ProcessResult:
        task = run.task
        assert task.settings.check is not None
        return self._run_process(
            task.settings.check,
            env=self.env.for_run(run),
            cwd=self.config.runner.task_cwd,
            limits=Limits(task.settings.max_time, task.settings.kill_grace),
            signals=signals,
            on_line=lambda line: log.info("[%s %s] %s", task.name, what, line),
            masker=self.masker,
            label=f"{task.name} {what}",
            trust=self._trust(check_trust, task),
            cell=self._cell("check", task),
        )

    def _cell(self, kind: str, task: Task) -> Cell | None:
        """The run's own cgroup, with the task's limits (None: not contained by one)."""
        if self.tree is None:
            return None
        settings = task.settings
        return self.tree.cell(kind, task.name, CellLimits(
            settings.memory_max, settings.cpu_weight, settings.tasks_max))

    # -- after the run (main thread) ------------------------------------------

    def conclude(self, run: TaskRun, execution: Execution, *, stopping: bool,
                 skipped: bool, defer: bool = False) -> None:
        """Turn what ran into the run's result, and make the one transition to it.
        `skipped`: `runner ctl skip` stopped it (unregister() says); `stopping`: runner
        itself is being stopped, which wins over the skip; `defer`: see begin()."""
        self.dispatcher.deliver(run)
        result, recheck = execution.process, execution.recheck
        self.refusal.of(result)
        self.refusal.of(recheck)
        _copy_result(run, result)
        state = classify(result, reboot=bool(self.config.runner.reboot_task))
        if state is TaskState.OK and recheck is not None and recheck.stopped:
            state = TaskState.STOPPED  # stopped during the recheck: a stop, not a failure
        if state is TaskState.STOPPED and skipped and not stopping:
            state = TaskState.SKIPPED
            run.error = ("stopped and skipped by runner ctl" if execution.started
                         else OPERATOR_SKIP)
        if state is TaskState.OK and recheck is not None and recheck.exit_code != 0:
            state = TaskState.RETRY
            run.error = f"check still fails after the run ({describe_exit(recheck)})"
        if (state is TaskState.OK and self.stamps is not None
                and run.task.settings.frequency is not Frequency.ALWAYS):
            self.stamps.record(run.task)
        if recheck is not None:
            if run.duration_s is not None:
                run.duration_s += recheck.duration_s
            run.cost = usage.combined(run.cost, recheck.cost)
        self.dispatcher.transition(run, state, defer=defer)

    # -- the halt and reboot tasks --------------------------------------------

    def run_special(self, task: Task, iteration: int, try_num: int, kind: Kind,
                    signals: SignalState) -> TaskRun:
        """The halt or reboot task: no check, no stamps, no skipping."""
        run = TaskRun(task, iteration, try_num, task.settings.max_tries, kind)
        self.begin(run)
        execution = self.execute(dataclasses.replace(run), signals)
        self.refusal.of(execution.process)
        _copy_result(run, execution.process)
        self.dispatcher.transition(run, classify(execution.process))
        return run

    # -- runs in progress ----------------------------------------------------------

    def register(self, name: str, view: SignalView) -> None:
        """From here on a `runner ctl skip` of `name` cancels `view`: registered before
        the start hook runs, so a skip during the hook keeps the process from starting."""
        with self._running_lock:
            entry = self._running[name] = _Running(view)
            if name in self._skips:  # asked for since the skip decision
                self._skips.discard(name)
                entry.skipped = True
                view.cancel()

    def unregister(self, name: str) -> bool:
        """The run is over; True when `runner ctl skip` stopped it."""
        with self._running_lock:
            entry = self._running.pop(name, None)
            return entry is not None and entry.skipped

    def request_skip(self, name: str) -> bool:
        """`runner ctl skip NAME` (any thread): True when a run of it is in progress, which
        is then stopped (or never started); else its next turn is skipped, once."""
        with self._running_lock:
            entry = self._running.get(name)
            if entry is None:
                self._skips.add(name)
                return False
            entry.skipped = True
            entry.view.cancel()
            return True

    def take_skip(self, name: str) -> bool:
        """True once per skip asked for while `name` was not running."""
        with self._running_lock:
            asked = name in self._skips
            self._skips.discard(name)
            return asked


def _copy_result(run: TaskRun, result: ProcessResult) -> None:
    run.exit_code, run.signal, run.error = result.exit_code, result.signal, result.error
    run.duration_s, run.output_tail = result.duration_s, result.output_tail
    run.cost = result.cost
