"""Run one command as its own process group and wait for it without polling.

The wait is a select() on a pidfd (the child exited), the signal self-pipe (runner
was asked to stop) and the nearest deadline (max_time, then kill_grace). Output is
read by a thread that hands whole lines to a callback as they arrive.
"""

from __future__ import annotations

import collections
import errno
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .signals import SignalState, SignalView

LINE_LIMIT = 64 * 1024  # longer lines are passed on in pieces of this size
TAIL_BYTES = 64 * 1024  # how much of the end of the output is kept with the result
# How long the output of an exited task may stay open (a background process it
# started holds it) before runner stops waiting for the end of it.
OUTPUT_LINGER_S = 1.0
GROUP_POLL_S = 0.05  # only while a stopped task's group is dying


@dataclass
class ProcessResult:
    """How a process ended."""

    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    stopped: bool = False
    error: str | None = None
    duration_s: float = 0.0
    output_tail: bytes = b""


@dataclass(frozen=True)
class Limits:
    """Time limits of one run; stop_after is how many stop signals interrupt it."""

    max_time: float = 0.0
    kill_grace: float = 10.0
    stop_after: int = 1


OnLine = Callable[[str], None]


def run_process(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: str,
    limits: Limits,
    signals: SignalState | SignalView,
    on_line: OnLine,
) -> ProcessResult:
    """Run argv in a new session with stdin from /dev/null and wait for it."""
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        return ProcessResult(error=_start_error(exc, argv, cwd), duration_s=0.0)
    reader = _OutputReader(proc.stdout, on_line)
    reader.start()
    result = _Waiter(proc, limits, signals, started).wait()
    reader.finish(OUTPUT_LINGER_S)
    result.output_tail = reader.tail()
    result.duration_s = time.monotonic() - started
    return result


def _start_error(exc: BaseException, argv: list[str], cwd: str) -> str:
    if isinstance(exc, OSError) and exc.filename == cwd:
        return f"cannot start: working directory {cwd}: {exc.strerror}"
    if isinstance(exc, OSError) and exc.errno == errno.ENOEXEC:
        return f"cannot start {argv[0]}: not an executable format (missing #! line?)"
    if isinstance(exc, OSError):
        return f"cannot start {argv[0]}: {exc.strerror}"
    return f"cannot start {argv[0]}: {exc}"


class _Waiter:
    """Waits for one process, enforcing max_time and stop requests on its whole group."""

    def __init__(
        self, proc: subprocess.Popen, limits: Limits, signals: SignalState | SignalView,
        started: float,
    ) -> None:
        self.proc = proc
        self.limits = limits
        self.signals = signals
        self.pgid = proc.pid  # start_new_session makes the child its group's leader
        self.deadline = started + limits.max_time if limits.max_time > 0 else None
        self.kill_at: float | None = None
        self.killed = False
        self.result = ProcessResult()

    def wait(self) -> ProcessResult:
        with selectors.DefaultSelector() as selector:
            pidfd = os.pidfd_open(self.proc.pid)
            try:
                selector.register(pidfd, selectors.EVENT_READ)
                if self.signals.fd >= 0:
                    selector.register(self.signals.fd, selectors.EVENT_READ)
                while self.proc.poll() is None:
                    now = time.monotonic()
                    self._react(now)
                    timeout = self._timeout(now)
                    self.signals.expect_wake_by(None if timeout is None else now + timeout)
                    selector.select(timeout)
                    self.signals.expect_wake_by(time.monotonic())  # awake: report again soon
                    self.signals.drain()
            finally:
                os.close(pidfd)
        self._record_status(self.proc.returncode)
        if self.kill_at is not None:
            self._finish_group()
        return self.result

    def _timeout(self, now: float) -> float | None:
        moments = [m for m in (self.deadline, self.kill_at) if m is not None]
        if not moments:
            return None
        return max(0.0, min(moments) - now)

    def _react(self, now: float) -> None:
        signals = self.signals
        stop = signals.stop_count >= self.limits.stop_after or signals.cancelled
        if stop and self.kill_at is None:
            self.result.stopped = True
            self._terminate(now)
        if signals.stop_count > self.limits.stop_after:
            self._kill()  # a second signal means now
        if self.deadline is not None and now >= self.deadline and self.kill_at is None:
            self.result.timed_out = True
            self._terminate(now)
        if self.kill_at is not None and now >= self.kill_at:
            self._kill()

    def _terminate(self, now: float) -> None:
        self._signal_group(signal.SIGTERM)
        self.kill_at = now + self.limits.kill_grace

    def _kill(self) -> None:
        if not self.killed:
            self._signal_group(signal.SIGKILL)
            self.killed = True

    def _signal_group(self, signum: int) -> bool:
        return signal_group(self.pgid, signum)

    def _finish_group(self) -> None:
        """After a stop, the rest of the group gets the same grace, then SIGKILL."""
        while group_has_live_members(self.pgid):
            if self.killed or time.monotonic() >= (self.kill_at or 0):
                self._kill()
                return
            if self.signals.stop_count > self.limits.stop_after:
                self._kill()
                return
            time.sleep(GROUP_POLL_S)

    def _record_status(self, status: int) -> None:
        if status < 0:
            self.result.signal = -status
        else:
            self.result.exit_code = status


def signal_group(pgid: int, signum: int) -> bool:
    """Send signum to the process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, signum)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def group_has_live_members(pgid: int) -> bool:
    """True while a process of the group is still running.

    kill(-pgid, 0) also succeeds for zombies, which a slow PID 1 (or none, in a
    container) may leave for seconds; /proc tells running members from them.
    """
    try:
        entries = os.listdir("/proc")
    except OSError:
        entries = []
    if not entries:
        return signal_group(pgid, 0)
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces and parentheses).
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


class _OutputReader(threading.Thread):
    """Reads a task's output and passes it on line by line; keeps the last bytes."""

    def __init__(self, stream, on_line: OnLine) -> None:
        super().__init__(daemon=True, name="output")
        self.stream = stream
        self.on_line = on_line
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_size = 0
        self._lock = threading.Lock()

    def run(self) -> None:
        try:
            with self.stream:
                while chunk := self.stream.readline(LINE_LIMIT):
                    self._keep(chunk)
                    self.on_line(decode_line(chunk))
        except (OSError, ValueError):
            pass

    def _keep(self, chunk: bytes) -> None:
        with self._lock:
            self._tail.append(chunk)
            self._tail_size += len(chunk)
            while self._tail_size - len(self._tail[0]) >= TAIL_BYTES:
                self._tail_size -= len(self._tail.popleft())

    def tail(self) -> bytes:
        with self._lock:
            return b"".join(self._tail)[-TAIL_BYTES:]

    def finish(self, linger: float) -> None:
        """Wait for the end of the output, unless a background process keeps it open."""
        self.join(linger)


def decode_line(chunk: bytes) -> str:
    """Bytes of one output line as printable text: invalid UTF-8 and NULs escaped."""
    text = chunk.rstrip(b"\n").decode("utf-8", "backslashreplace")
    return text.replace("\0", "\\x00")
