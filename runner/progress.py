"""The live progress line of `runner run` in the foreground on a terminal: the task
running (i of N) with its elapsed time against max_time, the try against max_tries, the
backoff counting down; redrawn in place ("\\r", the line, clear to its end) at most
INTERVAL_S apart, by a thread of its own.

It costs the chain nothing measurable: an event only sets a field or two; the drawing
thread reads them. It is never part of what is logged: it is written to the terminal
only, and the console log handler (runner.logs.ConsoleHandler) clears it under the
handler's own lock before it writes a record; the thread draws it again at its next tick.
Off (never built) when stderr is not a terminal (systemd, a pipe, a file), with --daemon,
with --no-progress, or on a terminal that cannot move the cursor (TERM=dumb).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from .escape import escape
from .events import Listener
from .logs import ConsoleHandler, console_handler
from .states import Kind, TaskRun, TaskState

INTERVAL_S = 0.25
CLEAR = "\r\x1b[K"  # to the line's start, erase to its end (VT100, every terminal since)


class ProgressLine(Listener):
    """Listens to runner's events and keeps one line on the terminal up to date."""

    def __init__(self, stream: TextIO, handler: ConsoleHandler | None, *,
                 tasks: Callable[[], list[str]] = list, max_tries: int = 1,
                 interval: float = INTERVAL_S) -> None:
        self.stream = stream
        self.handler = handler
        self.tasks = tasks  # the chain's task names in order (the supervisor's plan)
        self.interval = interval
        self.max_tries = max_tries
        self.iteration = 0
        self.try_num = 0
        self.running: dict[int, tuple[TaskRun, float]] = {}  # id(run) -> run, started
        self.waiting: tuple[float, str] | None = None  # backoff: until (monotonic), cause
        self.note = ""  # paused, rebooting
        self.drawn = ""  # what the terminal shows now ("" when cleared)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.lock = handler.lock if handler is not None and handler.lock else threading.RLock()

    # -- events: set fields, nothing more -------------------------------------------

    def started(self) -> None:
        if self.handler is not None:
            self.handler.overlay = self
        self.thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self.thread.start()

    def chain_started(self, iteration: int, try_num: int) -> None:
        self.iteration, self.try_num = iteration, try_num
        self.waiting, self.note = None, ""

    def task_changed(self, run: TaskRun) -> None:
        if run.state is TaskState.RUNNING:
            self.running[id(run)] = (run, time.monotonic())
            self.max_tries = run.max_tries
        else:
            self.running.pop(id(run), None)

    def backoff(self, seconds: float, cause: str) -> None:
        self.waiting = (time.monotonic() + seconds, cause)

    def paused(self) -> None:
        self.note = "paused (runner ctl resume goes on)"

    def resumed(self) -> None:
        self.note = ""

    def rebooting(self, after: str) -> None:
        self.note = f"waiting for the reboot (resuming after {escape(after)})"

    def finished(self, status: int) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        with self.lock:
            self.before_log()
            self.stream.flush()
            if self.handler is not None:
                self.handler.overlay = None

    # -- the terminal ------------------------------------------------------------------

    def before_log(self) -> None:
        """Called with the lock held, before a log record is written: clear the line
        (no flush: the record's own write carries it)."""
        if self.drawn:
            self.stream.write(CLEAR)
            self.drawn = ""

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.draw()
            except (OSError, ValueError):  # the terminal went away: stop drawing
                return

    def draw(self) -> None:
        text = fit(self.text(), _columns(self.stream))
        with self.lock:
            if self.stop.is_set() or text == self.drawn:
                return
            self.stream.write(CLEAR + text)
            self.stream.flush()
            self.drawn = text

    def text(self, now: float | None = None) -> str:
        """The line as it reads at `now` (monotonic)."""
        now = time.monotonic() if now is None else now
        where = f"iteration {self.iteration}, try {self.try_num}/{self.max_tries}"
        if self.note:
            return f"runner: {where}, {self.note}"
        # A copy first: the main thread changes the dict (list() of it runs in C, whole).
        running = sorted(list(self.running.values()), key=lambda item: item[1])
        if running:
            names = self.tasks()
            parts = [self._running(run, now - since, names) for run, since in running]
            return f"runner: {where}, " + " | ".join(parts)
        if self.waiting is not None:
            until, cause = self.waiting
            left = max(until - now, 0.0)
            return (f"runner: {where} failed at {escape(cause)}, retrying in {left:.1f}s "
                    f"(try {self.try_num + 1}/{self.max_tries} next)")
        return f"runner: {where}" if self.iteration else "runner: starting"

    @staticmethod
    def _running(run: TaskRun, elapsed: float, names: list[str]) -> str:
        limit = run.task.settings.max_time
        clock = f"{elapsed:.1f}s" + (f"/{limit:g}s" if limit else "")
        if run.kind is not Kind.TASK:
            return f"{run.kind.value} task {escape(run.task.name)} {clock}"
        try:
            place = f"task {names.index(run.task.name) + 1}/{len(names)} "
        except ValueError:
            place = "task "
        return f"{place}{escape(run.task.name)} {clock}"


def fit(text: str, columns: int) -> str:
    """One terminal line: a wrapped line could not be redrawn in place."""
    if len(text) < columns:
        return text
    return text[: max(columns - 4, 0)] + "..."


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError, AttributeError):
        return 80


def progress_line(*, max_tries: int) -> ProgressLine | None:
    """The progress line on stderr, or None where there must be none (not a terminal, a
    terminal without cursor movement, or stderr not runner.logs's console)."""
    stream = sys.stderr
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):
        terminal = False
    if not terminal or os.environ.get("TERM") == "dumb":
        return None
    handler = console_handler()
    if handler is None or handler.stream is not stream:
        return None
    return ProgressLine(stream, handler, max_tries=max_tries)
