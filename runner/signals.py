"""Signals as events: handlers only record what arrived and wake the main loop."""

from __future__ import annotations

import os
import selectors
import signal
import time
from dataclasses import dataclass, field

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class SignalState:
    """What runner was asked to do by signals, plus a self-pipe that wakes any wait.

    The handlers run in the main thread between bytecodes; the wakeup fd makes a
    blocked select() return, so no wait ever has to poll for a signal.
    """

    # Every wait tells the watchdog when it will wake up next (runner.notify.Heartbeat).
    heartbeat: object | None = None
    stop_signal: int | None = None
    stop_count: int = 0
    reload: bool = False
    _read_fd: int = -1
    _write_fd: int = -1
    _previous: dict = field(default_factory=dict)

    def install(self) -> None:
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in (*STOP_SIGNALS, signal.SIGHUP):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(-1)
        for fd in (self._read_fd, self._write_fd):
            if fd >= 0:
                os.close(fd)
        self._read_fd = self._write_fd = -1

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

    def drain(self) -> None:
        try:
            while os.read(self._read_fd, 512):
                pass
        except (BlockingIOError, OSError):
            pass

    def sleep(self, seconds: float) -> bool:
        """Sleep, cut short by a stop signal; True if it slept the whole time."""
        deadline = time.monotonic() + seconds
        with selectors.DefaultSelector() as selector:
            if self._read_fd >= 0:
                selector.register(self._read_fd, selectors.EVENT_READ)
            while self.stop_signal is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return True
                self.expect_wake_by(deadline)
                selector.select(left)
                self.expect_wake_by(time.monotonic())
                self.drain()
        return False
