"""Signals as events: handlers only record what arrived and wake the main loop."""

from __future__ import annotations

import os
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class WakeWatcher(Protocol):
    """Told by every wait when it will wake up next (runner.notify.Heartbeat is one)."""

    def expect_wake_by(self, moment: float | None) -> None: ...


@dataclass
class SignalState:
    """What runner was asked to do by signals, plus a self-pipe that wakes any wait.

    The handlers run in the main thread between bytecodes; the wakeup fd makes a
    blocked select() return, so no wait ever has to poll for a signal.
    """

    # Every wait tells the watchdog when it will wake up next (runner.notify.Heartbeat).
    heartbeat: WakeWatcher | None = None
    stop_signal: int | None = None
    stop_count: int = 0
    reload: bool = False
    _read_fd: int = -1
    _write_fd: int = -1
    _previous: dict = field(default_factory=dict)
    _views: list[SignalView] = field(default_factory=list)
    _spare: list[tuple[int, int]] = field(default_factory=list)  # pipes of forgotten views

    @property
    def cancelled(self) -> bool:
        """What the main thread waits for itself (a check, a hook, the halt task) is never
        stopped alone: `runner ctl skip` cancels a task's own SignalView."""
        return False

    def install(self) -> None:
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in (*STOP_SIGNALS, signal.SIGHUP):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(-1)
        for fd in (self._read_fd, self._write_fd, *(fd for pipe in self._spare for fd in pipe)):
            if fd >= 0:
                os.close(fd)
        self._read_fd = self._write_fd = -1
        self._spare.clear()

    def _handle(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self.reload = True
            return
        if self.stop_signal is None:
            self.stop_signal = signum
        self.stop_count += 1

    def expect_wake_by(self, moment: float | None) -> None:
        if self.heartbeat is not None:
            self.heartbeat.expect_wake_by(moment)

    @property
    def fd(self) -> int:
        return self._read_fd

    @property
    def fds(self) -> tuple[int, ...]:
        """What a wait watches to wake for a signal or a poke."""
        return (self._read_fd,) if self._read_fd >= 0 else ()

    def drain(self) -> None:
        """Empty the self-pipe, and pass the wake-up on to every view: whoever wakes on
        the signals tells the task waits of other threads to look at them too. An empty
        pipe has nothing to pass on (every signal and poke leaves a byte): the wait that
        a task's own exit ended costs no write and read per view."""
        if _drain(self._read_fd):
            for view in list(self._views):
                view.poke()

    def poke(self) -> None:
        """Wake the main loop from another thread (a control command arrived)."""
        _poke(self._write_fd)

    def view(self, main: bool = False) -> SignalView:
        """A wake-up fd of its own for a task waited for in another thread (`main`: on
        the main thread, which then also watches and drains the signals themselves)."""
        view = SignalView(self, main, self._spare.pop() if self._spare else None)
        self._views.append(view)
        return view

    def forget(self, view: SignalView) -> None:
        """The view's run is over: its pipe, emptied, goes to the next view (a pipe2()
        and two close() less per task of a chain). Whoever held the view can no longer
        poke it (its fds are -1)."""
        if view in self._views:
            self._views.remove(view)
        pipe = view.detach()
        if pipe is not None:
            _drain(pipe[0])
            self._spare.append(pipe)

    def sleep(self, seconds: float, until: Callable[[], bool] | None = None) -> bool:
        """Sleep, cut short by a stop signal; True if it slept the whole time or `until()`
        became true (checked at every wake-up: signals and pokes)."""
        deadline = time.monotonic() + seconds
        return self._wait(lambda: until is not None and until(), deadline)

    def wait_until(self, condition: Callable[[], bool]) -> bool:
        """Block until condition() holds (re-checked at every poke); False if stopped."""
        return self._wait(condition, None)

    def _wait(self, condition: Callable[[], bool], deadline: float | None) -> bool:
        with selectors.DefaultSelector() as selector:
            if self._read_fd >= 0:
                selector.register(self._read_fd, selectors.EVENT_READ)
            while self.stop_signal is None:
                if condition():
                    return True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return True
                self.expect_wake_by(deadline)
                selector.select(None if left is None else min(left, 3600.0))
                self.expect_wake_by(time.monotonic())
                self.drain()
        return False


class SignalView:
    """The stop state of the signals with a wake-up pipe of its own: lets a task run in
    a worker thread be woken by signals (through SignalState.drain) or cancelled alone."""

    def __init__(self, parent: SignalState, main: bool = False,
                 pipe: tuple[int, int] | None = None) -> None:
        self.parent = parent
        self.main = main
        self.cancelled = False
        self._read_fd, self._write_fd = pipe or os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    @property
    def stop_count(self) -> int:
        return self.parent.stop_count

    @property
    def fd(self) -> int:
        return self._read_fd

    @property
    def fds(self) -> tuple[int, ...]:
        own = (self._read_fd,) if self._read_fd >= 0 else ()
        return own + self.parent.fds if self.main else own

    def expect_wake_by(self, moment: float | None) -> None:
        """Only the main thread speaks for the watchdog."""
        if self.main:
            self.parent.expect_wake_by(moment)

    def drain(self) -> None:
        if self.main:
            self.parent.drain()  # as the main loop would: every view hears of it
        _drain(self._read_fd)

    def poke(self) -> None:
        _poke(self._write_fd)

    def cancel(self) -> None:
        self.cancelled = True
        self.poke()

    def detach(self) -> tuple[int, int] | None:
        """Give up the pipe (None if closed already): this view wakes nobody any more."""
        if self._read_fd < 0:
            return None
        pipe = self._read_fd, self._write_fd
        self._read_fd = self._write_fd = -1
        return pipe

    def close(self) -> None:
        for fd in self.detach() or ():
            os.close(fd)


def _drain(fd: int) -> bool:
    """Empty a non-blocking pipe; True if it held anything."""
    held = False
    try:
        while os.read(fd, 512):
            held = True
    except (BlockingIOError, OSError):
        pass
    return held


def _poke(fd: int) -> None:
    try:
        os.write(fd, b"\0")
    except (BlockingIOError, OSError):  # full: a wake-up is pending anyway
        pass
