"""The supervisor loop: iterations of the chain, tries, backoff, the halt task (SPEC §4)."""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
import queue
import random
import selectors
import signal
import threading
import time
from dataclasses import dataclass, field

from . import config as config_mod
from . import permissions
from .bootstate import BootState, Resume
from .config import Config
from .controls import Controls
from .errors import ConfigError
from .events import Dispatcher, Listener, describe_end
from .files import make_dir
from .hooks import HookListener
from .identity import RunIdentity, iso, utc_now
from .masking import Masker
from .process import Limits, ProcessResult, run_process
from .settings import Frequency, OnFailure, RetryFrom, TaskSettings
from .signals import SignalState, SignalView
from .states import EXIT_CODE_RESULTS, ExitStatus, Kind, TaskRun, TaskState
from .taskenv import TaskEnvironment
from .tasks import (
    HOOK_TRUST,
    NOT_EXECUTABLE,
    Plan,
    Task,
    byte_order,
    check_trust,
    discover,
    trust_of,
)

log = logging.getLogger("runner")
SUMMARY_LIMIT = 50  # failed tries kept for the summary at exit
REBOOT_EXIT = 4  # a task asks for a reboot (when reboot_task is configured)
MAX_PAUSE = 7 * 86400.0  # longest backoff pause, seconds


@dataclass(frozen=True)
class RunOptions:
    """What the command line says about a run."""

    config_path: str | None = None
    overrides: tuple[str, ...] = ()
    task_dir: str | None = None
    times: int | None = None
    halt_after: bool = False


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


@dataclass
class ChainResult:
    """How one try of the chain ended."""

    status: ExitStatus | None = None  # runner exits with this
    failed: TaskRun | None = None  # the run that failed the try
    reboot: TaskRun | None = None  # the run that asked for a reboot
    done: set[str] = field(default_factory=set)  # tasks through (OK or SKIPPED)


@dataclass
class Execution:
    """What running a task produced: its process, and the check run again after it."""

    process: ProcessResult
    recheck: ProcessResult | None = None


def task_dir_of(options: RunOptions, config: Config) -> str:
    return os.path.abspath(options.task_dir or config.runner.task_dir)


class Supervisor:
    """Runs the chain the way the configuration says, until done, halted or stopped."""

    def __init__(
        self,
        options: RunOptions,
        config: Config,
        signals: SignalState,
        listeners: tuple[Listener, ...] = (),
        identity: RunIdentity | None = None,
        *,
        masker: Masker,
    ) -> None:
        self.identity = identity or RunIdentity.current()
        self.options = options
        self.config = config
        self.signals = signals
        self.extra_listeners = listeners
        self.env = TaskEnvironment(config, self.identity.run_id)
        # The one masker of the run: supervise() masks the log with it, and the recorders
        # (status, metrics, forwarder) hold it too.
        self.masker = masker
        self.dispatcher = Dispatcher(self._listeners(), self.masker.text)
        self.rng = random.Random()
        self.failures: collections.deque[TaskRun] = collections.deque(maxlen=SUMMARY_LIMIT)
        self.failure_count = 0
        self.plan: Plan | None = None
        self.controls = Controls()
        self.boot = BootState(config.runner.state_dir, strict=self._strict())
        # strict_permissions refused to exec something: runner ends with 78 at the next
        # decision, never running, skipping or halting anything because of it.
        self.refusal: str | None = None
        self.resume: Resume | None = None
        self.stamps = None
        # Runs in progress, for `runner ctl skip`: task name -> its worker's view (None
        # when the main thread waits for it, cancelled through signals.cancelled).
        self.running: dict[str, SignalView | None] = {}
        self.running_lock = threading.Lock()
        self.in_backoff = False

    def _listeners(self) -> list[Listener]:
        listeners = list(self.extra_listeners)
        hook = self.config.runner.task_hook
        if hook:
            listeners.append(HookListener(
                hook,
                timeout=self.config.runner.hook_timeout,
                kill_grace=self.config.runner.kill_grace,
                cwd=self.config.runner.task_cwd,
                env_for=self.env.for_run,
                signals=self.signals,
                masker=self.masker,
                run_id=self.identity.run_id,
                trust=self._trust(HOOK_TRUST),
                on_refused=self._refuse,
            ))
        return listeners

    def _strict(self) -> bool:
        return permissions.applies(self.config.runner.strict_permissions)

    def _trust(self, trust: permissions.Trust) -> permissions.Trust | None:
        """What run_process must check right before the exec (strict_permissions)."""
        return trust if self._strict() else None

    def _refuse(self, reason: str) -> None:
        """Something runner was about to execute is not trusted (any thread may call)."""
        if self.refusal is None:
            self.refusal = reason
            log.error("%s", reason)

    def _refused(self, result: ProcessResult | None) -> bool:
        """True (and the refusal recorded) when run_process refused to start it."""
        if result is None or not result.refused:
            return False
        self._refuse(result.error or "refused")
        return True

    # -- the loop -------------------------------------------------------------

    def run(self) -> ExitStatus:
        status = ExitStatus.CONFIG
        control = None
        try:
            self._prepare()
            control = self._start_control()
            self.dispatcher.started()
            status = self._iterations()
            if self.refusal is not None:
                status = ExitStatus.CONFIG
            return status
        finally:
            if control is not None:
                control.close()
            self._summarize()
            self.dispatcher.finished(int(status))
            self.env.close()

    def _start_control(self):
        from .control import ControlServer, socket_path

        runtime_dir = self.config.runner.runtime_dir
        try:
            make_dir(runtime_dir, 0o755)
        except OSError as exc:
            log.warning("runtime_dir %s: cannot create it (%s); runner ctl will not work",
                        runtime_dir, exc.strerror)
            return None
        server = ControlServer(socket_path(runtime_dir), self._control)
        server.start()
        return server

    def _prepare(self) -> None:
        self.plan = discover(self.config, self.task_dir())
        log.info(
            "runner: %d task(s) in %s, config %s",
            len(self.plan.tasks), self.plan.task_dir, self.config.path or "(defaults)",
        )
        for warning in self.config.warnings:
            log.warning("%s", warning)
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
        self.resume = self.boot.take_resume()
        if self.resume is not None:
            log.warning(
                "resuming after the reboot asked for by %s (run %s, iteration %d, try %d)",
                self.resume.after, self.resume.run_id or "?", self.resume.iteration,
                self.resume.try_num,
            )
        self.stamps = self._make_stamps()

    def _make_stamps(self):
        if all(t.settings.frequency is Frequency.ALWAYS for t in self.plan.tasks):
            return None  # frequency is opt-in: nothing to read or write without it
        from . import stamps
        from .identity import boot_id

        return stamps.Stamps(
            self.config.runner.state_dir, self.config, boot_id=boot_id(),
            instance_id=functools.partial(stamps.instance_id, self.config),
        )

    def task_dir(self) -> str:
        return task_dir_of(self.options, self.config)

    def times(self) -> int:
        return self.options.times if self.options.times is not None else self.config.runner.times

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
            pause = self.config.runner.sleep_time - (time.monotonic() - started)
            if pause > 0 and not self.signals.sleep(pause):
                return self._stop_status()
        if self.options.halt_after:
            log.info("all %d iteration(s) done; running the halt task (-H)", iteration)
            self._halt(iteration, 1)
        return ExitStatus.DONE

    def _iteration(self, iteration: int) -> ExitStatus | None:
        """One iteration: tries of the chain until it passes; None when it passed."""
        try_num, done = 1, set()
        if self.resume is not None:
            try_num, done = self.resume.try_num, set(self.resume.done)
            self.resume = None
        while True:
            self._reload_if_asked()
            try:
                self.plan = discover(self.config, self.task_dir())
            except permissions.UntrustedPath as exc:
                self._refuse(str(exc))  # made unsafe under runner: never retried into a halt
                return ExitStatus.CONFIG
            except ConfigError as exc:
                # The task directory changed under runner (being rewritten, a file made
                # unsafe): this try fails like a task would, and the next one re-plans.
                log.error("cannot plan try %d: %s", try_num, exc)
                status = self._unplannable(iteration, try_num)
                if status is not None:
                    return status
                try_num += 1
                continue
            status = self._boot_loop_guard(iteration, try_num)
            if status is not None:
                return status
            self.dispatcher.chain_started(iteration, try_num)
            if self.config.runner.max_parallel > 1:
                chain = self._parallel_chain(iteration, try_num, done)
            else:
                chain = self._sequential_chain(iteration, try_num, done)
            if chain.status is not None:
                self._settle_boot_tries(chain.status)
                return chain.status
            failed = chain.failed
            if chain.reboot is not None:
                status = self._reboot(iteration, try_num, chain)
                if status is not None:
                    return status
                failed = chain.reboot  # no reboot happened: retried like a failure
                chain.done.discard(failed.task.name)
            if failed is None:
                if self.config.runner.max_boot_tries:
                    self.boot.reset_tries()
                return None
            if try_num >= failed.max_tries:
                log.error(
                    "%s failed on try %d of %d: giving up", failed.task.name, try_num,
                    failed.max_tries,
                )
                self._halt(iteration, try_num)
                return ExitStatus.GAVE_UP
            if not self._pause(failed.task.settings, try_num, failed.task.name):
                return self._stop_status()
            if self.controls.halt:
                return self._operator_halt(iteration, try_num)
            try_num += 1
            from_failed = self.config.runner.retry_from is RetryFrom.FAILED
            done = (done | chain.done) if from_failed else set()

    def _unplannable(self, iteration: int, try_num: int) -> ExitStatus | None:
        """A try that could not even be planned: give up after max_tries, else pause."""
        settings = self.config.task_settings("")
        if try_num >= settings.max_tries:
            log.error("no usable plan on try %d of %d: giving up", try_num, settings.max_tries)
            self._halt(iteration, try_num)
            return ExitStatus.GAVE_UP
        if not self._pause(settings, try_num, "the task directory"):
            return self._stop_status()
        return self._operator_halt(iteration, try_num) if self.controls.halt else None

    def _settle_boot_tries(self, status: ExitStatus) -> None:
        """A try ended by a stop or on a task's request did not fail: take it back; after a
        halt the machine is repaired or gone, so start afresh."""
        if not self.config.runner.max_boot_tries:
            return
        if status in (ExitStatus.SIGTERM, ExitStatus.SIGINT, ExitStatus.EXIT,
                      ExitStatus.CONFIG):
            self.boot.uncount_try()
        elif status is ExitStatus.HALTED:
            self.boot.reset_tries()

    def _boot_loop_guard(self, iteration: int, try_num: int) -> ExitStatus | None:
        """max_boot_tries: count this try durably; halt when too many failed before."""
        limit = self.config.runner.max_boot_tries
        if not limit:
            return None
        failed = self.boot.boot_tries()
        if failed >= limit:
            log.error(
                "%d tries of the chain failed across restarts and reboots "
                "(max_boot_tries = %d): halting instead of trying again", failed, limit,
            )
            self._halt(iteration, try_num)
            self.boot.reset_tries()  # a repaired machine starts afresh
            return ExitStatus.GAVE_UP
        self.boot.count_try()
        return None

    # -- one try, task after task -------------------------------------------

    def _sequential_chain(self, iteration: int, try_num: int, done: set[str]) -> ChainResult:
        chain = ChainResult(done=set(done))
        for task in self.plan.tasks:
            if task.name in chain.done:
                continue
            status = self._before_task(iteration, try_num)
            if status is not None:
                chain.status = status
                return chain
            if self._reload_if_asked():
                task = dataclasses.replace(
                    task, settings=self.config.task_settings(task.short_name)
                )
            run = self._run_task(task, iteration, try_num)
            if self._settle(run, chain):
                return chain
        return chain

    def _settle(self, run: TaskRun, chain: ChainResult) -> bool:
        """Record a task's result in the try; True when the try ends here."""
        if self.refusal is not None:
            chain.status = ExitStatus.CONFIG
            return True
        state = run.state
        if state in (TaskState.OK, TaskState.SKIPPED):
            chain.done.add(run.task.name)
            return False
        if state is TaskState.STOPPED:
            chain.status = self._stop_status()
        elif state is TaskState.HALT:
            log.error("%s asked for a halt", run.task.name)
            self._halt(run.iteration, run.try_num)
            chain.status = ExitStatus.HALTED
        elif state is TaskState.EXIT:
            log.warning("%s asked runner to exit", run.task.name)
            chain.status = ExitStatus.EXIT
        elif state is TaskState.REBOOT:
            chain.done.add(run.task.name)
            chain.reboot = chain.reboot or run
        elif chain.failed is None:
            chain.failed = run
        return True

    def _before_task(self, iteration: int, try_num: int) -> ExitStatus | None:
        """Between tasks: a refusal, a stop, a pause or a halt asked by the operator."""
        if self.refusal is not None:
            return ExitStatus.CONFIG
        if self.signals.stop_signal is not None:
            return self._stop_status()
        if not self._wait_while_paused():
            return self._stop_status()
        if self.controls.halt:
            return self._operator_halt(iteration, try_num)
        return None

    def _wait_while_paused(self) -> bool:
        """Hold while `runner ctl pause` holds (a halt ends it too); False if stopped."""
        if not self.controls.paused or self.controls.halt:
            return True
        log.warning("paused by runner ctl: waiting for runner ctl resume")
        self.dispatcher.waiting(0, "paused by runner ctl")
        if not self.signals.wait_until(lambda: not self.controls.paused or self.controls.halt):
            return False
        log.info("resumed by runner ctl")
        return True

    def _operator_halt(self, iteration: int, try_num: int) -> ExitStatus:
        log.error("halt asked by runner ctl")
        self._halt(iteration, try_num)
        return ExitStatus.HALTED

    # -- one try, tasks side by side ----------------------------------------

    def _parallel_chain(self, iteration: int, try_num: int, done: set[str]) -> ChainResult:
        """Tasks whose depends_on are through run side by side, up to max_parallel. A
        failure stops new starts; on_failure = stop also stops the running ones."""
        chain = ChainResult(done=set(done))
        pending = [t for t in self.plan.tasks if t.name not in chain.done]
        workers: dict[str, tuple[TaskRun, SignalView, threading.Thread]] = {}
        finished: queue.Queue[tuple[str, Execution]] = queue.Queue()
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        failures: list[TaskRun] = []
        stop_new = False
        try:
            while True:
                if not stop_new:
                    stop_new = self._start_ready(
                        pending, workers, chain, iteration, try_num, finished, wake_w)
                if not workers:
                    break
                self._wait_for_workers(wake_r)
                if self.signals.stop_signal is not None or self.controls.halt:
                    stop_new = True
                while not finished.empty():
                    name, execution = finished.get()
                    run, view, thread = workers.pop(name)
                    thread.join()
                    self._unregister(name)
                    self.signals.forget(view)
                    self._conclude(run, execution)
                    if self._settle_parallel(run, chain, failures):
                        stop_new = True
                        if (self.config.runner.on_failure is OnFailure.STOP
                                or self.refusal is not None):
                            for _run, other, _thread in workers.values():
                                other.cancel()
        finally:
            os.close(wake_r)
            os.close(wake_w)
        return self._parallel_outcome(chain, failures, iteration, try_num)

    def _start_ready(self, pending, workers, chain, iteration, try_num, finished, wake_w) -> bool:
        """Start what can start; True when nothing more may start (stop, pause, halt)."""
        while len(workers) < self.config.runner.max_parallel:
            if (self.signals.stop_signal is not None or self.controls.halt
                    or self.refusal is not None):
                return True
            if self.controls.paused:
                if workers:
                    return False  # pause after what runs now
                if not self._wait_while_paused() or self.controls.halt:
                    return True
            needs = self.plan.needs
            ready = sorted((t for t in pending if needs.get(t.name, set()) <= chain.done),
                           key=lambda t: byte_order(t.name))
            if not ready:
                return False
            task = ready[0]
            pending.remove(task)
            run = TaskRun(task, iteration, try_num, task.settings.max_tries)
            if self._skipped(run):
                chain.done.add(task.name)
                continue
            if self.signals.stop_signal is not None or self.refusal is not None:
                return True  # stopped, or its check refused, while the check ran
            self._begin(run)
            view = self.signals.view()
            self._register(task.name, view)
            thread = threading.Thread(
                target=self._work, args=(run, view, finished, wake_w),
                name=f"task {task.name}", daemon=True,
            )
            workers[task.name] = (run, view, thread)
            thread.start()
        return False

    def _work(self, run: TaskRun, view: SignalView, finished: queue.Queue, wake_w: int) -> None:
        try:
            execution = self._execute(run, view)
        except Exception as exc:  # a bug must not leave the main loop waiting forever
            execution = Execution(ProcessResult(error=f"internal error: {exc}"))
        finished.put((run.task.name, execution))
        os.write(wake_w, b"\0")

    def _wait_for_workers(self, wake_r: int) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(wake_r, selectors.EVENT_READ)
            if self.signals.fd >= 0:
                selector.register(self.signals.fd, selectors.EVENT_READ)
            self.signals.expect_wake_by(None)  # the workers enforce every time limit
            selector.select()
            self.signals.expect_wake_by(time.monotonic())
        self.signals.drain()  # passes a stop on to every worker's view
        try:
            while os.read(wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _settle_parallel(self, run: TaskRun, chain: ChainResult, failures: list) -> bool:
        """True when no new task may start."""
        if self.refusal is not None:
            return True
        state = run.state
        if state in (TaskState.OK, TaskState.SKIPPED):
            chain.done.add(run.task.name)
            return False
        if state is TaskState.REBOOT:
            chain.done.add(run.task.name)
            chain.reboot = chain.reboot or run
            return True
        if state is not TaskState.STOPPED:
            failures.append(run)
        return True

    def _parallel_outcome(self, chain: ChainResult, failures: list[TaskRun], iteration: int,
                          try_num: int) -> ChainResult:
        """One decision for the try: a refusal, a stop, then HALT, EXIT, a failure, a
        reboot."""
        if self.refusal is not None:
            chain.status = ExitStatus.CONFIG
            return chain
        if self.signals.stop_signal is not None:
            chain.status = self._stop_status()
            return chain
        if self.controls.halt:
            chain.status = self._operator_halt(iteration, try_num)
            return chain
        for wanted in (TaskState.HALT, TaskState.EXIT):
            for run in failures:
                if run.state is wanted:
                    self._settle(run, chain)
                    return chain
        if failures:
            chain.failed = failures[0]
            if chain.reboot is not None:  # the failure decides; the reboot is asked again
                chain.done.discard(chain.reboot.task.name)
                chain.reboot = None
        return chain

    # -- one task -------------------------------------------------------------

    def _run_task(self, task: Task, iteration: int, try_num: int) -> TaskRun:
        run = TaskRun(task, iteration, try_num, task.settings.max_tries)
        if self._skipped(run) or self.refusal is not None:
            return run
        self._begin(run)
        if self.signals.stop_signal is not None:  # asked to stop while the hook ran
            run.duration_s = 0.0
            self.dispatcher.transition(run, TaskState.STOPPED)
            return run
        self._register(task.name, None)
        try:
            execution = self._execute(run, self.signals)
        finally:
            self._unregister(task.name)
            self.signals.cancelled = False
        self._conclude(run, execution)
        return run

    def _skipped(self, run: TaskRun) -> bool:
        """Skip by operator, by frequency stamp or by check; True (and SKIPPED) if so."""
        reason = self._skip_reason(run)
        if reason is None:
            return False
        run.error = reason
        run.mark_started()
        run.duration_s = 0.0
        self.dispatcher.transition(run, TaskState.SKIPPED)
        return True

    def _skip_reason(self, run: TaskRun) -> str | None:
        task = run.task
        if self.controls.take_skip(task.name):
            return "skipped by runner ctl"
        if self.stamps is not None and task.settings.frequency is not Frequency.ALWAYS:
            reason = self.stamps.skip_reason(task)
            if reason:
                return reason
        if task.settings.check and self._check(run, "check") is True:
            return "check: already done"
        return None

    def _check(self, run: TaskRun, what: str) -> bool | None:
        """Run the task's check; True when it exits 0, None when runner was stopped."""
        result = self._check_process(run, self.signals, what)
        if self._refused(result):
            return None
        if result.stopped:
            return None
        if result.error:
            log.warning("%s: %s: %s", run.task.name, what, result.error)
        return result.exit_code == 0

    def _check_process(self, run: TaskRun, signals, what: str) -> ProcessResult:
        task = run.task
        return run_process(
            task.settings.check,
            env=self.env.for_run(run),
            cwd=self.config.runner.task_cwd,
            limits=Limits(task.settings.max_time, task.settings.kill_grace),
            signals=signals,
            on_line=lambda line: log.info("[%s %s] %s", task.name, what, line),
            masker=self.masker,
            label=f"{task.name} {what}",
            trust=self._trust(check_trust(task)),
        )

    def _begin(self, run: TaskRun) -> None:
        run.mark_started()
        self.dispatcher.transition(run, TaskState.RUNNING)

    def _execute(self, run: TaskRun, signals: SignalState | SignalView) -> Execution:
        """The task's process, then its check again: thread-safe, no transitions."""
        task = run.task
        process = run_process(
            task.argv,
            env=self.env.for_run(run),
            cwd=self.config.runner.task_cwd,
            limits=Limits(task.settings.max_time, task.settings.kill_grace),
            signals=signals,
            on_line=lambda line: log.info("[%s] %s", task.name, line),
            masker=self.masker,
            trust=self._trust(trust_of(task)),
        )
        execution = Execution(process)
        if task.settings.check and process.exit_code == 0 and not process.stopped:
            execution.recheck = self._check_process(run, signals, "recheck")
        return execution

    def _conclude(self, run: TaskRun, execution: Execution) -> None:
        """Turn what ran into the run's result, and make the one transition to it."""
        result = execution.process
        self._refused(result)
        self._refused(execution.recheck)
        run.exit_code, run.signal, run.error = result.exit_code, result.signal, result.error
        run.duration_s, run.output_tail = result.duration_s, result.output_tail
        state = classify(result, reboot=bool(self.config.runner.reboot_task))
        if state is TaskState.OK and execution.recheck is not None and execution.recheck.stopped:
            state = TaskState.STOPPED  # stopped during the recheck: a stop, not a failure
        skip_asked = self.controls.take_skip(run.task.name)
        if state is TaskState.STOPPED and skip_asked and self.signals.stop_signal is None:
            state, run.error = TaskState.SKIPPED, "stopped and skipped by runner ctl"
        recheck = execution.recheck
        if state is TaskState.OK and recheck is not None and recheck.exit_code != 0:
            state = TaskState.RETRY
            how = recheck.error or (f"signal {recheck.signal}" if recheck.signal
                                    else f"exit {recheck.exit_code}")
            run.error = f"check still fails after the run ({how})"
        if state is TaskState.OK and self.stamps is not None:
            if run.task.settings.frequency is not Frequency.ALWAYS:
                self.stamps.record(run.task)
        if run.duration_s is not None and recheck is not None:
            run.duration_s += recheck.duration_s
        self.dispatcher.transition(run, state)
        if run.state.is_failure and run.kind is Kind.TASK:
            self.failures.append(run)
            self.failure_count += 1

    def _register(self, name: str, view: SignalView | None) -> None:
        with self.running_lock:
            self.running[name] = view

    def _unregister(self, name: str) -> None:
        with self.running_lock:
            self.running.pop(name, None)

    def _pause(self, settings: TaskSettings, try_num: int, cause: str) -> bool:
        """Backoff before the next try (the failing task's settings); False if runner
        was stopped meanwhile."""
        try:
            pause = settings.sleep_time * self.config.runner.backoff ** try_num
        except OverflowError:
            pause = MAX_PAUSE
        if settings.retry_jitter > 0:
            pause += self.rng.uniform(0, min(settings.retry_jitter, MAX_PAUSE))
        # A week at most: a typo (1e300) or backoff**n on many tries must not overflow the
        # clock; nobody waits longer than that for a retry.
        pause = min(pause, MAX_PAUSE)
        log.info("retrying in %.1fs (try %d of %d next)", pause, try_num + 1, settings.max_tries)
        self.dispatcher.waiting(pause, f"backoff after {cause}")
        self.in_backoff = True
        try:
            return self.signals.sleep(
                pause, until=lambda: self.controls.take_retry_now() or self.controls.halt
            )
        finally:
            self.in_backoff = False

    # -- runner ctl (called in the control socket's thread) ---------------------

    def _control(self, words: list[str]) -> str:
        from .control import ControlError

        action = words[0]
        if action == "retry-now":
            if not self.in_backoff:
                raise ControlError("runner is not pausing between tries")
            self.controls.set(retry_now=True)
            reply = "the pause ends now; the next try starts"
        elif action == "skip":
            reply = self._control_skip(words[1])
        elif action in ("pause", "resume"):
            self.controls.set(paused=action == "pause")
            reply = "pausing after the current task" if action == "pause" else "resuming"
        else:  # halt
            self.controls.set(halt=True)
            reply = "halting after the current task"
        self.signals.poke()
        return reply

    def _control_skip(self, wanted: str) -> str:
        from .control import ControlError

        plan = self.plan
        names = [t.name for t in plan.tasks if wanted in (t.name, t.short_name)] if plan else []
        if not names:
            raise ControlError(f"no task {wanted!r} in the chain")
        name = names[0]
        self.controls.request_skip(name)
        with self.running_lock:
            if name not in self.running:
                return f"{name} will be skipped when its turn comes (once)"
            view = self.running[name]
            if view is None:
                self.signals.cancelled = True
            else:
                view.cancel()
        return f"{name} is being stopped; it counts as SKIPPED"

    def _run_special(self, task: Task, iteration: int, try_num: int, kind: Kind) -> TaskRun:
        """The halt or reboot task: no check, no stamps, no skipping."""
        run = TaskRun(task, iteration, try_num, task.settings.max_tries, kind)
        self._begin(run)
        execution = self._execute(dataclasses.replace(run), self.signals)
        result = execution.process
        self._refused(result)
        run.exit_code, run.signal, run.error = result.exit_code, result.signal, result.error
        run.duration_s, run.output_tail = result.duration_s, result.output_tail
        self.dispatcher.transition(run, classify(result))
        return run

    def _reboot(self, iteration: int, try_num: int, chain: ChainResult) -> ExitStatus | None:
        """Record where to resume, run reboot_task and wait for the reboot to stop runner.
        None when no reboot happens (the asking run is then retried like a failure)."""
        asking = chain.reboot
        reboot = self.plan.reboot
        if reboot is None:
            log.error("%s asked for a reboot but reboot_task %s is not in %s: retrying",
                      asking.task.name, self.config.runner.reboot_task, self.plan.task_dir)
            return None
        resume = Resume(
            iteration=iteration, try_num=try_num, after=asking.task.name,
            done=sorted(chain.done), run_id=self.identity.run_id,
            boot_id=self.identity.boot_id, at=iso(utc_now()),
        )
        if not self.boot.save_resume(resume):
            log.error("cannot record where to resume: not rebooting, retrying instead")
            return None
        log.warning("%s asked for a reboot: running reboot task %s", asking.task.name,
                    reboot.name)
        run = self._run_special(reboot, iteration, try_num, Kind.REBOOT)
        if self.signals.stop_signal is not None:  # the shutdown came first: keep the point
            return self._stop_status()
        if run.state is not TaskState.OK:
            log.error("reboot task %s failed: %s; retrying instead", reboot.name,
                      describe_end(run))
            self.boot.clear_resume()
            return None
        log.warning("waiting for the reboot; the next start resumes after %s",
                    asking.task.name)
        self.dispatcher.waiting(0, "waiting for the reboot")
        self.signals.wait_until(lambda: False)
        return self._stop_status()

    def _halt(self, iteration: int, try_num: int) -> None:
        assert self.plan is not None
        halt = self.plan.halt
        if halt is None:
            log.error(
                "a halt is needed but halt task %s is not in %s: not halting",
                self.plan.halt_name, self.plan.task_dir,
            )
            return
        run = self._run_special(halt, iteration, try_num, Kind.HALT)
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
        try:
            self.env.update(new)
        except OSError as exc:
            log.error("SIGHUP: cannot write the configuration snapshot for tasks (%s); "
                      "keeping the old configuration", exc.strerror or exc)
            return False
        self.config = new
        self.masker.replace(Masker.from_config(new).values)
        self.plan = discover(new, task_dir_of(self.options, new))
        self.stamps = self._make_stamps()
        self.dispatcher = Dispatcher(self._listeners(), self.masker.text)
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
