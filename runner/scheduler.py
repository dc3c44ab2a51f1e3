"""One try of the chain: which task starts when.

A task may start when every task it depends on is through (OK or SKIPPED); among the
tasks that may start, byte order of the file names decides, and at most max_parallel
run at once. Sequential runs are max_parallel = 1: each task then waits for the one
before it in plan order, because plan order is exactly this rule applied one at a time
(tasks.order). `runner plan` draws its waves with the same `ready()`.

Each task runs in a worker thread (kept in a pool and reused: runner.workers) with a
SignalView of its own; the main thread makes
every state change (skip, RUNNING, the result), so hooks and listeners are only ever
called from it. When one task runs at a time (max_parallel = 1) the main thread waits
for it itself, watching the signals as its own wait would: no hand-off between threads
per task, and the log lines and status updates of one task's end and the next one's
start are made while that next process runs (Dispatcher.transition's `defer`).
"""

from __future__ import annotations

import logging
import os
import queue
import selectors
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .controls import Controls
from .names import byte_order
from .process import Later, ProcessResult
from .settings import OnFailure
from .signals import SignalState, SignalView
from .states import TaskRun, TaskState
from .tasklife import Execution, Refusal, TaskLife
from .tasks import Task
from .workers import Job, Pool

log = logging.getLogger("runner")


def ready(pending: Iterable[Task], needs: dict[str, set[str]], done: set[str]) -> list[Task]:
    """The tasks of `pending` whose dependencies are all in `done`, in byte order."""
    return list(_ready(in_byte_order(pending), needs, done))


def in_byte_order(tasks: Iterable[Task]) -> list[Task]:
    return sorted(tasks, key=lambda t: byte_order(t.name))


def _ready(ordered: Iterable[Task], needs: dict[str, set[str]],
           done: set[str]) -> Iterator[Task]:
    """ready(), lazily, over tasks already in byte order: the scheduler takes the first
    one at each start without filtering and sorting the whole chain again (10,000 tasks
    would make that quadratic)."""
    return (t for t in ordered if t.name not in needs or needs[t.name] <= done)


@dataclass
class TryResult:
    """What one try of the chain did."""

    done: set[str]  # tasks through (OK or SKIPPED), with those done by earlier tries
    ended: list[TaskRun] = field(default_factory=list)  # every other result, as they came


@dataclass
class _Worker:
    run: TaskRun
    view: SignalView
    job: Job


class Scheduler:
    """Starts the tasks of one try as the rule above allows, until they are through, one
    fails (no new start; on_failure = stop also stops the running ones), or runner is
    stopped, paused or halted."""

    def __init__(
        self,
        life: TaskLife,
        signals: SignalState,
        controls: Controls,
        refusal: Refusal,
        refresh: Callable[[Task], Task] = lambda task: task,
    ) -> None:
        self.life = life
        self.signals = signals
        self.controls = controls
        self.refusal = refusal
        # Called right before a task starts: applies a reload asked for by SIGHUP.
        self.refresh = refresh
        # How many tasks runner's file descriptors allow at once (runner.fdlimit).
        self.capacity = 1 << 30
        self.pool = Pool("task")  # the threads that wait for the tasks' processes
        # One at a time: what is left of the task before (its output pipe closed, its
        # wake-up pipe given back, orphans reaped), done once the next process started.
        self._leftover: list[Callable[[], object]] = []

    def run_try(self, tasks: list[Task], needs: dict[str, set[str]], done: set[str],
                iteration: int, try_num: int) -> TryResult:
        result = TryResult(done=set(done))
        pending = in_byte_order(t for t in tasks if t.name not in result.done)
        workers: dict[str, _Worker] = {}
        # SimpleQueue: C, no Condition; the inline path puts and gets once per task.
        finished: queue.SimpleQueue[tuple[str, Execution]] = queue.SimpleQueue()
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        stop_new = False
        inline = self._one_at_a_time()
        try:
            while True:
                if not stop_new:
                    stop_new = self._start_ready(
                        pending, needs, workers, result, (iteration, try_num),
                        (lambda run, view: self._inline(run, view, finished)) if inline
                        else lambda run, view: self._spawn(run, view, finished, wake_w),
                        inline)
                if not workers:
                    break
                if finished.empty():
                    self._wait_for_workers(wake_r)
                if self.signals.stop_signal is not None or self.controls.halt:
                    stop_new = True
                while not finished.empty():
                    name, execution = finished.get()
                    if self._finish(workers.pop(name), execution, result, inline):
                        stop_new = True
                        self._stop_others(workers)
        except BaseException:
            self._abandon(workers)
            raise
        finally:
            self._tidy()
            os.close(wake_r)
            os.close(wake_w)
        self.life.dispatcher.flush()  # what the caller logs next comes after
        return result

    def _one_at_a_time(self) -> bool:
        return min(self.life.config.runner.max_parallel, self.capacity) == 1

    def _abandon(self, workers: dict[str, _Worker]) -> None:
        """An internal error in the main loop: no task it started may outlive it. Every
        worker stops its task's group (SIGTERM, SIGKILL after kill_grace) and is waited
        for, so runner exits (70) only once they are gone."""
        for worker in workers.values():
            worker.view.cancel()
        for worker in workers.values():
            grace = worker.run.task.settings.kill_grace
            worker.job.join(grace + 10)

    def _halted(self) -> bool:
        return (self.signals.stop_signal is not None or bool(self.controls.halt)
                or bool(self.refusal))

    def _start_ready(self, pending: list[Task], needs: dict[str, set[str]],
                     workers: dict[str, _Worker], result: TryResult, at: tuple[int, int],
                     spawn: Callable[[TaskRun, SignalView], Job], inline: bool) -> bool:
        """Start what may start; True when nothing more may start (stop, halt, refusal).
        `inline`: spawn runs the task on this thread (see the module's docstring)."""
        while len(workers) < min(self.life.config.runner.max_parallel, self.capacity):
            if self._halted():
                return True
            if self.controls.paused:
                if workers:
                    return False  # pause after what runs now
                if not self._wait_while_paused() or self.controls.halt:
                    return True
            first = next(_ready(pending, needs, result.done), None)
            if first is None:
                return False
            pending.remove(first)
            task = self.refresh(first)
            run = TaskRun(task, *at, task.settings.max_tries)
            if self.life.skipped(run, self.signals):
                result.done.add(task.name)
                continue
            if self._halted():
                return True  # stopped, or its check refused, while the check ran
            view = self.signals.view(main=inline)
            self.life.register(task.name, view)
            self.life.begin(run, defer=inline)  # the start hook runs here
            if self.signals.stop_signal is not None:  # asked to stop while the hook ran
                self.life.unregister(task.name)
                self.signals.forget(view)
                self.life.stop_before_start(run)
                result.ended.append(run)
                return True
            workers[task.name] = _Worker(run, view, spawn(run, view))
        return False

    def _spawn(self, run: TaskRun, view: SignalView, finished: queue.SimpleQueue,
               wake_w: int) -> Job:
        return self.pool.submit(lambda: self._work(run, view, finished, wake_w),
                                f"task {run.task.name}")

    def _work(self, run: TaskRun, view: SignalView, finished: queue.SimpleQueue,
              wake_w: int) -> None:
        finished.put((run.task.name, self._execute(run, view)))
        os.write(wake_w, b"\0")

    def _inline(self, run: TaskRun, view: SignalView, finished: queue.SimpleQueue) -> Job:
        """The task run on the main thread; runner is about to wait once its process
        has started (the deferred events go out then: Dispatcher.idle, and what is left
        of the task before)."""
        finished.put((run.task.name, self._execute(run, view, self._started_inline,
                                                   self._leftover.append)))
        return Job.done()

    def _started_inline(self) -> None:
        # The leftovers first: a moment later the new process may have exited too, and
        # the look for orphans' zombies would find it and scan /proc.
        self._tidy()
        self.life.dispatcher.idle()

    def _tidy(self) -> None:
        while self._leftover:
            self._leftover.pop(0)()

    def _execute(self, run: TaskRun, view: SignalView,
                 on_start: Callable[[], None] | None = None,
                 later: Later | None = None) -> Execution:
        try:
            return self.life.execute(run, view, on_start, later)
        except Exception as exc:  # a bug must not leave the main loop waiting forever
            return Execution(ProcessResult(error=f"internal error: {exc}"))

    def _wait_for_workers(self, wake_r: int) -> None:
        self.life.dispatcher.idle()
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

    def _finish(self, worker: _Worker, execution: Execution, result: TryResult,
                inline: bool = False) -> bool:
        """Conclude a run whose worker is done; True when no new task may start."""
        worker.job.join()
        name = worker.run.task.name
        skipped = self.life.unregister(name)
        if inline:
            self._leftover.append(lambda: self.signals.forget(worker.view))
        else:
            self.signals.forget(worker.view)
        self.life.conclude(worker.run, execution, skipped=skipped,
                           stopping=self.signals.stop_signal is not None, defer=inline)
        if self.refusal:
            return True
        if worker.run.state in (TaskState.OK, TaskState.SKIPPED):
            result.done.add(name)
            return False
        if worker.run.state is TaskState.REBOOT:
            result.done.add(name)
        result.ended.append(worker.run)
        return True

    def _stop_others(self, workers: dict[str, _Worker]) -> None:
        if self.life.config.runner.on_failure is OnFailure.STOP or self.refusal:
            for worker in workers.values():
                worker.view.cancel()

    def _wait_while_paused(self) -> bool:
        """Hold while `runner ctl pause` holds (a halt ends it too); False if stopped."""
        if not self.controls.paused or self.controls.halt:
            return True
        self.life.dispatcher.flush()  # the task before comes first in the log
        log.warning("paused by runner ctl: waiting for runner ctl resume")
        self.life.dispatcher.paused()
        if not self.signals.wait_until(lambda: not self.controls.paused or self.controls.halt):
            return False
        log.info("resumed by runner ctl")
        self.life.dispatcher.resumed()
        return True
