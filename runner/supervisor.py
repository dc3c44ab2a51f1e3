"""The supervisor loop: iterations of the chain, tries, backoff, the halt task (SPEC §4)."""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import random
import signal
import time
from dataclasses import dataclass

from . import config as config_mod
from .config import Config
from .errors import ConfigError
from .events import Dispatcher, Listener, describe_end
from .hooks import HookListener
from .identity import RunIdentity
from .process import Limits, ProcessResult, run_process
from .signals import SignalState
from .states import EXIT_CODE_RESULTS, ExitStatus, Kind, TaskRun, TaskState
from .taskenv import TaskEnvironment
from .tasks import NOT_EXECUTABLE, Plan, Task, discover

log = logging.getLogger("runner")
SUMMARY_LIMIT = 50  # failed tries kept for the summary at exit


@dataclass(frozen=True)
class RunOptions:
    """What the command line says about a run."""

    config_path: str | None = None
    overrides: tuple[str, ...] = ()
    task_dir: str | None = None
    times: int | None = None
    halt_after: bool = False


def classify(result: ProcessResult) -> TaskState:
    """The result of a task run from how its process ended."""
    if result.stopped:
        return TaskState.STOPPED
    if result.timed_out:
        return TaskState.TIMEOUT
    if result.exit_code is None:  # could not start, or died by a signal
        return TaskState.RETRY
    return EXIT_CODE_RESULTS.get(result.exit_code, TaskState.RETRY)


def task_dir_of(options: RunOptions, config: Config) -> str:
    return os.path.abspath(options.task_dir or config.runner["task_dir"])


class Supervisor:
    """Runs the chain the way the configuration says, until done, halted or stopped."""

    def __init__(
        self,
        options: RunOptions,
        config: Config,
        signals: SignalState,
        listeners: tuple[Listener, ...] = (),
        identity: RunIdentity | None = None,
    ) -> None:
        self.identity = identity or RunIdentity.current()
        self.options = options
        self.config = config
        self.signals = signals
        self.extra_listeners = listeners
        self.env = TaskEnvironment(config, self.identity.run_id)
        self.dispatcher = Dispatcher(self._listeners())
        self.rng = random.Random()
        self.failures: collections.deque[TaskRun] = collections.deque(maxlen=SUMMARY_LIMIT)
        self.failure_count = 0
        self.plan: Plan | None = None

    def _listeners(self) -> list[Listener]:
        listeners = list(self.extra_listeners)
        hook = self.config.runner["task_hook"]
        if hook:
            listeners.append(HookListener(
                hook,
                timeout=self.config.runner["hook_timeout"],
                kill_grace=self.config.runner["kill_grace"],
                cwd=self.config.runner["task_cwd"],
                env_for=self.env.for_run,
                signals=self.signals,
                run_id=self.identity.run_id,
            ))
        return listeners

    # -- the loop -------------------------------------------------------------

    def run(self) -> ExitStatus:
        status = ExitStatus.CONFIG
        try:
            self._prepare()
            self.dispatcher.started()
            status = self._iterations()
            return status
        finally:
            self._summarize()
            self.dispatcher.finished(int(status))
            self.env.close()

    def _prepare(self) -> None:
        self.plan = discover(self.config, self.task_dir())
        log.info(
            "runner: %d task(s) in %s, config %s",
            len(self.plan.tasks), self.plan.task_dir, self.config.path or "(defaults)",
        )
        if self.plan.halt is None:
            log.warning(
                "halt task %s not found in %s: a halt will only be logged",
                self.plan.halt_name, self.plan.task_dir,
            )
        for name, reason in self.plan.skipped:
            # A non-executable task is most likely a mistake (SPEC §3: a warning);
            # hidden files, leftovers and directories are expected.
            level = logging.WARNING if reason == NOT_EXECUTABLE else logging.DEBUG
            log.log(level, "skipping %s: %s", name, reason)
        state_dir = self.config.runner["state_dir"]
        try:
            os.makedirs(state_dir, exist_ok=True)
        except OSError as exc:
            log.warning("state_dir %s: cannot create it: %s", state_dir, exc.strerror)

    def task_dir(self) -> str:
        return task_dir_of(self.options, self.config)

    def times(self) -> int:
        return self.options.times if self.options.times is not None else self.config.runner["times"]

    def _iterations(self) -> ExitStatus:
        iteration = 0
        while True:
            iteration += 1
            started = time.monotonic()
            log.info("iteration %d", iteration)
            status = self._iteration(iteration)
            if status is not None:
                return status
            self.dispatcher.iteration_done(iteration)
            times = self.times()
            if times and iteration >= times:
                break
            # Iterations start at least sleep_time apart, so a chain that finishes at
            # once does not spin the CPU when runner loops forever.
            pause = self.config.runner["sleep_time"] - (time.monotonic() - started)
            if pause > 0 and not self.signals.sleep(pause):
                return self._stop_status()
        if self.options.halt_after:
            log.info("all %d iteration(s) done; running the halt task (-H)", iteration)
            self._halt(iteration, 1)
        return ExitStatus.DONE

    def _iteration(self, iteration: int) -> ExitStatus | None:
        """One iteration: tries of the chain until it passes; None when it passed."""
        try_num, resume_at = 1, None
        while True:
            self._reload_if_asked()
            self.plan = discover(self.config, self.task_dir())
            start = (self.plan.index_of(resume_at) or 0) if resume_at else 0
            self.dispatcher.chain_started(iteration, try_num)
            failed = None
            for task in self.plan.tasks[start:]:
                if self.signals.stop_signal is not None:
                    return self._stop_status()
                if self._reload_if_asked():
                    task = dataclasses.replace(
                        task, settings=self.config.task_settings(task.short_name)
                    )
                run = self._run_task(task, iteration, try_num)
                if run.state is TaskState.OK:
                    continue
                if run.state is TaskState.STOPPED:
                    return self._stop_status()
                if run.state is TaskState.HALT:
                    log.error("%s asked for a halt", task.name)
                    self._halt(iteration, try_num)
                    return ExitStatus.HALTED
                if run.state is TaskState.EXIT:
                    log.warning("%s asked runner to exit", task.name)
                    return ExitStatus.EXIT
                failed = run
                break
            if failed is None:
                return None
            if try_num >= failed.max_tries:
                log.error(
                    "%s failed on try %d of %d: giving up", failed.task.name, try_num,
                    failed.max_tries,
                )
                self._halt(iteration, try_num)
                return ExitStatus.GAVE_UP
            if not self._pause(failed.task, try_num):
                return self._stop_status()
            try_num += 1
            resume_at = failed.task.name if self.config.runner["retry_from"] == "failed" else None

    def _pause(self, task: Task, try_num: int) -> bool:
        """Backoff before the next try; False if runner was stopped meanwhile."""
        settings = task.settings
        pause = settings.sleep_time * self.config.runner["backoff"] ** try_num
        if settings.retry_jitter > 0:
            pause += self.rng.uniform(0, settings.retry_jitter)
        log.info("retrying in %.1fs (try %d of %d next)", pause, try_num + 1, settings.max_tries)
        self.dispatcher.waiting(pause, f"backoff after {task.name}")
        return self.signals.sleep(pause)

    def _run_task(
        self, task: Task, iteration: int, try_num: int, kind: Kind = Kind.TASK
    ) -> TaskRun:
        run = TaskRun(task, iteration, try_num, task.settings.max_tries, kind)
        run.mark_started()
        self.dispatcher.transition(run, TaskState.RUNNING)
        if self.signals.stop_signal is not None:  # asked to stop while the hook ran
            run.duration_s = 0.0
            self.dispatcher.transition(run, TaskState.STOPPED)
            return run
        result = run_process(
            task.argv,
            env=self.env.for_run(run),
            cwd=self.config.runner["task_cwd"],
            limits=Limits(task.settings.max_time, task.settings.kill_grace),
            signals=self.signals,
            on_line=lambda line: log.info("[%s] %s", task.name, line),
        )
        run.exit_code, run.signal, run.error = result.exit_code, result.signal, result.error
        run.duration_s, run.output_tail = result.duration_s, result.output_tail
        self.dispatcher.transition(run, classify(result))
        if run.state.is_failure and kind is Kind.TASK:
            self.failures.append(run)
            self.failure_count += 1
        return run

    def _halt(self, iteration: int, try_num: int) -> None:
        assert self.plan is not None
        halt = self.plan.halt
        if halt is None:
            log.error(
                "a halt is needed but halt task %s is not in %s: not halting",
                self.plan.halt_name, self.plan.task_dir,
            )
            return
        run = self._run_task(halt, iteration, try_num, Kind.HALT)
        if run.state is not TaskState.OK:
            log.error("halt task %s failed: %s", halt.name, describe_end(run))

    # -- signals and reloads --------------------------------------------------

    def _stop_status(self) -> ExitStatus:
        if self.signals.stop_signal == signal.SIGINT:
            return ExitStatus.SIGINT
        return ExitStatus.SIGTERM

    def _reload_if_asked(self) -> bool:
        """Apply a SIGHUP: load and check the new configuration; keep the old one if bad."""
        if not self.signals.reload:
            return False
        self.signals.reload = False
        try:
            new = config_mod.load(self.options.config_path, self.options.overrides)
            discover(new, task_dir_of(self.options, new))
        except ConfigError as exc:
            log.error("SIGHUP: new configuration is invalid, keeping the old one: %s", exc)
            return False
        self.config = new
        self.env.update(new)
        self.dispatcher = Dispatcher(self._listeners())
        log.info("SIGHUP: configuration reloaded from %s", new.path or "(defaults)")
        return True

    def _summarize(self) -> None:
        if not self.failures:
            return
        omitted = self.failure_count - len(self.failures)
        log.warning("%d failed tr%s during this run:", self.failure_count,
                    "y" if self.failure_count == 1 else "ies")
        if omitted:
            log.warning("  (%d earlier failures not shown)", omitted)
        for run in self.failures:
            log.warning("  %s iteration %d try %d: %s", run.task.name, run.iteration,
                        run.try_num, describe_end(run))
