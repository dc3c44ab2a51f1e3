"""The supervisor loop: iterations of the chain, tries, backoff, the halt task and reloads
(SPEC §4). Which task starts when is runner.scheduler's; one task's life is
runner.tasklife's."""

from __future__ import annotations

import dataclasses
import gc
import logging
import random
import signal
import time
from dataclasses import dataclass

from . import cgroup, fdlimit, permissions, preflight, stamps
from . import config as config_mod
from .bootstate import BootState, Resume
from .config import Config
from .controls import Controls, serve
from .ctlsocket import ControlServer
from .errors import ConfigError
from .events import Dispatcher, FailureSummary, Listener, describe_end
from .hooks import HookListener
from .identity import RunIdentity
from .masking import Masker
from .reboot import RebootRequest, reboot
from .scheduler import Scheduler, TryResult
from .settings import Frequency, RetryFrom, RunOptions, TaskSettings, task_dir_of
from .signals import SignalState
from .states import ExitStatus, Kind, TaskRun, TaskState
from .taskenv import TaskEnvironment
from .tasklife import Refusal, TaskLife
from .tasks import HOOK_TRUST, NOT_EXECUTABLE, Plan, Task, discover

log = logging.getLogger("runner")
MAX_PAUSE = 7 * 86400.0  # longest backoff pause, seconds


@dataclass(frozen=True)
class TryEnd:
    """How a try ended: runner exits with `status`, or `failed` is retried, or (neither)
    the chain passed. `rebooting`: stopped for a reboot a task asked for (reboot.reboot
    took the try back from max_boot_tries already)."""

    status: ExitStatus | None = None
    failed: TaskRun | None = None
    rebooting: bool = False


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
        tree: cgroup.Tree | None = None,
        found: cgroup.Probe | None = None,
    ) -> None:
        self.identity = identity or RunIdentity.current()
        # Where runs are contained (runner.cgroup): a tree of cgroups, or process groups.
        self.tree = tree
        self.found = found or cgroup.Probe(None, "not looked for")
        self.options = options
        self.config = config
        self.signals = signals
        self.extra_listeners = listeners
        self.env = TaskEnvironment(config, self.identity.run_id)
        # The one masker of the run: supervise() masks the log with it, and the recorders
        # (status, metrics, forwarder) hold it too.
        self.masker = masker
        self.rng = random.Random()
        self.summary = FailureSummary()
        self.refusal = Refusal()
        self.controls = Controls()
        self.plan: Plan | None = None
        # The plan read at the start, not yet used: the first try's (read again for
        # every later try, and after a reload).
        self.unused_plan: Plan | None = None
        self.boot = BootState(config.runner.state_dir, strict=self._strict())
        self.resume: Resume | None = None
        self.life = TaskLife(config, env=self.env, masker=masker, dispatcher=self._dispatcher(),
                             refusal=self.refusal, tree=tree)
        self.scheduler = Scheduler(self.life, signals, self.controls, self.refusal,
                                   refresh=self._refresh)

    @property
    def dispatcher(self) -> Dispatcher:
        return self.life.dispatcher

    def _dispatcher(self) -> Dispatcher:
        """Every listener, built anew from the configuration (and again on reload)."""
        listeners = [*self.extra_listeners, self.summary]
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
                trust=HOOK_TRUST if self._strict() else None,
                on_refused=self.refusal.refuse,
                tree=self.tree,
            ))
        return Dispatcher(listeners, self.masker.text)

    def _strict(self) -> bool:
        return permissions.applies(self.config.runner.strict_permissions)

    # -- the loop -------------------------------------------------------------

    def run(self) -> ExitStatus:
        status = ExitStatus.CONFIG
        control = None
        try:
            self._prepare()
            control = self._start_control()
            self.dispatcher.started()
            collect_from_now_on()
            status = self._iterations()
            if self.refusal:
                status = ExitStatus.CONFIG
            return status
        except ConfigError:
            raise
        except Exception:
            status = ExitStatus.INTERNAL  # what the journal says; cli says why
            raise
        finally:
            if control is not None:
                control.close()
            self.summary.log()
            self.dispatcher.finished(int(status))
            self.env.close()

    def _start_control(self) -> ControlServer | None:
        return serve(self.config.runner.runtime_dir, self.controls, find=self._find_task,
                     skip=self.life.request_skip, poke=self.signals.poke)

    def _containment(self) -> cgroup.Containment:
        return self.tree if self.tree is not None else self.found

    def _find_task(self, wanted: str) -> str | None:
        tasks = self.plan.tasks if self.plan is not None else []
        return next((t.name for t in tasks if wanted in (t.name, t.short_name)), None)

    def _prepare(self) -> None:
        self.plan = self.unused_plan = plan = discover(self.config, self.task_dir())
        preflight.check(self.config, plan, self._containment())
        fdlimit.close_on_exec()  # once: what runner was started with (not on a reload)
        self._fit_descriptors()
        log.info("runner: %d task(s) in %s, config %s", len(plan.tasks), plan.task_dir,
                 self.config.path or "(defaults)")
        log.info("%s", self.found.statement())
        for warning in self.config.warnings:
            log.warning("%s", warning)
        if plan.halt is None:
            log.warning("halt task %s not found in %s: a halt will only be logged",
                        plan.halt_name, plan.task_dir)
        for name, reason in plan.skipped:
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
        self.life.stamps = self._stamps(plan)

    def _fit_descriptors(self) -> None:
        capacity = fdlimit.fit(self.config.runner.max_parallel)
        note = capacity.note(self.config.runner.max_parallel)
        if note:
            log.warning("%s", note)
        self.scheduler.capacity = capacity.tasks

    def _stamps(self, plan: Plan) -> stamps.Stamps | None:
        if all(t.settings.frequency is Frequency.ALWAYS for t in plan.tasks):
            return None  # frequency is opt-in: nothing to read or write without it
        return stamps.for_config(self.config)

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
        try_num, done = 1, set[str]()
        if self.resume is not None:
            try_num, done = self.resume.try_num, set(self.resume.done)
            self.resume = None
        while True:
            self._reload_if_asked()
            plan, status = self._plan_try(iteration, try_num)
            if status is not None:
                return status
            if plan is None:  # unplannable: this try failed, the next one re-plans
                try_num += 1
                continue
            failed = self.boot.begin_try(self.config.runner.max_boot_tries)
            if failed is not None:
                return self._too_many_boot_tries(failed, iteration, try_num)
            self.dispatcher.chain_started(iteration, try_num)
            result = self.scheduler.run_try(plan.tasks, plan.needs, done, iteration, try_num)
            end = self._decide(result, iteration, try_num)
            if end.status is not None or end.failed is None:
                if not end.rebooting:  # taken back already, when the reboot was recorded
                    self.boot.settle_try(end.status, self.config.runner.max_boot_tries)
                return end.status
            run = end.failed
            if try_num >= run.max_tries:
                log.error("%s failed on try %d of %d: giving up", run.task.name, try_num,
                          run.max_tries)
                self._halt(iteration, try_num)
                return ExitStatus.GAVE_UP
            status = self._between_tries(run.task.settings, try_num, run.task.name, iteration)
            if status is not None:
                return status
            try_num += 1
            from_failed = self.config.runner.retry_from is RetryFrom.FAILED
            done = (done | result.done) if from_failed else set()

    def _plan_try(self, iteration: int, try_num: int) -> tuple[Plan | None, ExitStatus | None]:
        """The plan of this try, read again from the task directory (the first try's was,
        a moment ago: reading 200 tasks costs as much as running a few)."""
        if self.unused_plan is not None:
            self.plan, self.unused_plan = self.unused_plan, None
            return self.plan, None
        try:
            self.plan = discover(self.config, self.task_dir())
            return self.plan, None
        except permissions.UntrustedPath as exc:
            self.refusal.refuse(str(exc))  # made unsafe under runner: never retried into a halt
            return None, ExitStatus.CONFIG
        except ConfigError as exc:
            # The task directory changed under runner (being rewritten, a file made
            # unsafe): this try fails like a task would, and the next one re-plans.
            log.error("cannot plan try %d: %s", try_num, exc)
            settings = self.config.task_settings("")
            if try_num >= settings.max_tries:
                log.error("no usable plan on try %d of %d: giving up", try_num,
                          settings.max_tries)
                self._halt(iteration, try_num)
                return None, ExitStatus.GAVE_UP
            return None, self._between_tries(settings, try_num, "the task directory",
                                             iteration)

    def _decide(self, result: TryResult, iteration: int, try_num: int) -> TryEnd:
        """One decision for the try: a refusal, a stop, an operator's halt, then a task's
        HALT or EXIT, a failure, a reboot."""
        if self.refusal:
            return TryEnd(ExitStatus.CONFIG)
        if self.signals.stop_signal is not None:
            return TryEnd(self._stop_status())
        if self.controls.halt:
            return TryEnd(self._operator_halt(iteration, try_num))
        ended = result.ended
        for run in ended:
            if run.state is TaskState.HALT:
                log.error("%s asked for a halt", run.task.name)
                self._halt(iteration, try_num)
                return TryEnd(ExitStatus.HALTED)
        for run in ended:
            if run.state is TaskState.EXIT:
                log.warning("%s asked runner to exit", run.task.name)
                return TryEnd(ExitStatus.EXIT)
        failures = [run for run in ended if run.state is not TaskState.REBOOT]
        reboots = [run for run in ended if run.state is TaskState.REBOOT]
        if reboots and not failures:
            request = RebootRequest(reboots[0], iteration, try_num, frozenset(result.done))
            assert self.plan is not None
            if reboot(request, plan=self.plan, life=self.life, boot=self.boot,
                      identity=self.identity, signals=self.signals):
                return TryEnd(self._stop_status(), rebooting=True)
            failures = reboots  # no reboot happened: retried like a failure
        for run in reboots:  # asked again in the next try
            result.done.discard(run.task.name)
        return TryEnd(failed=failures[0] if failures else None)

    def _too_many_boot_tries(self, failed: int, iteration: int, try_num: int) -> ExitStatus:
        limit = self.config.runner.max_boot_tries
        log.error("%d tries of the chain failed across restarts and reboots "
                  "(max_boot_tries = %d): halting instead of trying again", failed, limit)
        self._halt(iteration, try_num)
        self.boot.reset_tries()  # a repaired machine starts afresh
        return ExitStatus.GAVE_UP

    def _between_tries(self, settings: TaskSettings, try_num: int, cause: str,
                       iteration: int) -> ExitStatus | None:
        """The backoff pause; a stop or an operator's halt during it ends runner."""
        if not self._pause(settings, try_num, cause):
            return self._stop_status()
        return self._operator_halt(iteration, try_num) if self.controls.halt else None

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
        self.dispatcher.backoff(pause, cause)
        self.controls.set(in_backoff=True)
        try:
            return self.signals.sleep(
                pause, until=lambda: self.controls.take_retry_now() or self.controls.halt
            )
        finally:
            self.controls.set(in_backoff=False)

    # -- the halt task --------------------------------------------------------

    def _operator_halt(self, iteration: int, try_num: int) -> ExitStatus:
        log.error("halt asked by runner ctl")
        self._halt(iteration, try_num)
        return ExitStatus.HALTED

    def _halt(self, iteration: int, try_num: int) -> None:
        assert self.plan is not None
        halt = self.plan.halt
        if halt is None:
            log.error("a halt is needed but halt task %s is not in %s: not halting",
                      self.plan.halt_name, self.plan.task_dir)
            return
        run = self.life.run_special(halt, iteration, try_num, Kind.HALT, self.signals)
        if run.state is not TaskState.OK:
            log.error("halt task %s failed: %s", halt.name, describe_end(run))

    # -- signals and reloads --------------------------------------------------

    def _stop_status(self) -> ExitStatus:
        if self.signals.stop_signal == signal.SIGINT:
            return ExitStatus.SIGINT
        return ExitStatus.SIGTERM

    def _refresh(self, task: Task) -> Task:
        """Right before a task starts: apply a reload, and the task's new settings."""
        if not self._reload_if_asked():
            return task
        return dataclasses.replace(task, settings=self.config.task_settings(task.short_name))

    def _reload_if_asked(self) -> bool:
        """Apply a SIGHUP: load and check the new configuration; keep the old one if bad."""
        if not self.signals.reload:
            return False
        self.signals.reload = False
        self.dispatcher.flush()  # what happened before comes first in the log
        try:
            new = config_mod.load(self.options.config_path, self.options.overrides)
            plan = discover(new, task_dir_of(self.options, new))
            preflight.check(new, plan, self._containment())
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
        self.plan, self.unused_plan = plan, None
        self.life.reconfigure(new, self._dispatcher(), self._stamps(plan))
        self._fit_descriptors()
        log.info("SIGHUP: configuration reloaded from %s", new.path or "(defaults)")
        return True


def collect_from_now_on() -> None:
    """Start-up is over (runner.cli turned the collector off for it): what it made stays
    for the whole run, so it is frozen out of every later collection, and the collector
    is turned on for what the run itself makes."""
    gc.freeze()
    gc.enable()
