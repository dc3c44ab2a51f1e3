"""Threads that are kept and reused.

Every task run needs two threads of its own (one waits for the task's process, one reads
its output). Starting a thread and joining it cost about 0.1 ms each time, twice per task:
in a chain of short tasks that was a tenth of runner's overhead over run-parts. A Pool
keeps its threads after a job and gives them the next one; it grows to as many threads as
jobs run at once (max_parallel tasks, plus a reader for each process still holding a
task's output), and its idle threads wait on a queue for the rest of runner's life.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("runner")


class Job:
    """One function run on a pool thread; join() waits for its end."""

    def __init__(self, fn: Callable[[], object], name: str) -> None:
        self.fn = fn
        self.name = name
        self._done = threading.Event()

    @staticmethod
    def done() -> Job:
        """A job that has ended: for work done on the calling thread itself."""
        return _ENDED

    def run(self) -> None:
        try:
            self.fn()
        except BaseException as exc:  # a job's error must not take its thread with it
            log.error("internal error in %s: %s", self.name, exc)
        finally:
            self._done.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the job's end; True once it has ended."""
        return self._done.wait(timeout)

    def is_alive(self) -> bool:
        return not self._done.is_set()


_ENDED = Job(lambda: None, "done on its own thread")
_ENDED.run()


class Pool:
    """Daemon threads that run jobs; a job never waits for a free thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job, or about to
        self._threads = 0

    def submit(self, fn: Callable[[], object], name: str) -> Job:
        job = Job(fn, name)
        with self._lock:
            if self._idle:
                self._idle -= 1  # that thread takes this job (or an equal one)
                start = False
            else:
                self._threads += 1
                start = True
        if start:
            threading.Thread(target=self._serve, name=f"{self.name}-{self._threads}",
                             daemon=True).start()
        self._jobs.put(job)
        return job

    @property
    def size(self) -> int:
        with self._lock:
            return self._threads

    def _serve(self) -> None:
        while True:
            self._jobs.get().run()
            with self._lock:
                self._idle += 1
