"""Run one command as its own process group and wait for it without polling.

The wait is a select() on a pidfd (the child exited), the signal self-pipe (runner
was asked to stop) and the nearest deadline (max_time, then kill_grace). Output is
read by a thread that hands whole lines to a callback as they arrive, with every
secret value masked first (runner.masking.StreamMasker): before the output is cut into
logged pieces or kept as the tail, so no cut can split a secret and let it through.

Memory: whatever a task writes, runner holds per running task one piece of a line
(LINE_LIMIT bytes, and its text, at most 4 times as long when every byte is escaped),
the bytes held back by masking (fewer than the longest secret value) and the tail kept
for the journal (TAIL_BYTES plus at most one piece). A piece is logged
and dropped before the next one is read; a task writing faster than runner logs waits
on the full pipe. Measured: 1 GiB of output, or one line of 100 MiB, raise runner's peak
RSS by less than 1 MiB (tests/faults/test_process_faults.py).

On a timeout or a stop the processes that escaped the task's group (setsid, a daemon's
double fork) are found and killed too; see runner.reaper.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import permissions, reaper
from .masking import Masker
from .signals import SignalState, SignalView

LINE_LIMIT = 64 * 1024  # longer lines are passed on in pieces of this size
TAIL_BYTES = 64 * 1024  # how much of the end of the output is kept with the result
# How long the output of an exited task may stay open (a background process it
# started holds it) before runner stops waiting for the end of it.
OUTPUT_LINGER_S = 1.0
GROUP_POLL_S = 0.05  # only while a stopped task's group is dying
MAX_WAIT_S = 3600.0  # longest single select(): far-off deadlines are re-checked
# How long runner waits for SIGKILLed processes to be gone (one in uninterruptible
# sleep, D, may take longer) before it goes on and reports them.
KILL_WAIT_S = 5.0


@dataclass
class ProcessResult:
    """How a process ended."""

    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    stopped: bool = False
    error: str | None = None
    refused: bool = False  # strict_permissions: not started, `error` says why
    duration_s: float = 0.0
    output_tail: bytes = b""
    # One line per process left outside the task's group at a timeout or stop, as
    # logged: "NAME: left process PID (COMMAND) behind after TIMEOUT: killed".
    leftovers: list[str] = field(default_factory=list)


def describe_exit(result: ProcessResult) -> str:
    """How a process ended, in a few words: its error, `signal N` or `exit N`."""
    return ended_by(result.error, result.signal, result.exit_code)


def ended_by(error: str | None, signal: int | None, exit_code: int | None) -> str:
    """The error that kept it from ending normally, else `signal N`, else `exit N`."""
    if error:
        return error
    if signal is not None:
        return f"signal {signal}"
    return f"exit {exit_code}"


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
    masker: Masker,
    label: str | None = None,
    trust: permissions.Trust | None = None,
) -> ProcessResult:
    """Run argv in a new session with stdin from /dev/null and wait for it.

    Its output reaches `on_line` and the result's output_tail masked by `masker`
    (required: every process runner starts can print a secret it was given).

    `label` names the run in warnings about processes it left behind (default: the
    task named by RUNNER_TASK in env, else the program's file name). With `trust`
    (strict_permissions), the program and the paths it names are checked right before
    the exec, and the program is run by the path that was checked.
    """
    started = time.monotonic()
    executable = None
    if trust is not None:
        executable, reason = permissions.verify(argv, trust, cwd=cwd,
                                                search_path=env.get("PATH"))
        if reason:
            return ProcessResult(error=reason, refused=True)
    try:
        proc = reaper.popen(
            argv,
            executable=executable,
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
    reader = _OutputReader(proc.stdout, on_line, masker)
    reader.start()
    label = label or env.get("RUNNER_TASK") or os.path.basename(argv[0])
    try:
        result = _Waiter(proc, limits, signals, started, env, label).wait()
    except BaseException:
        _stop_group(proc, limits.kill_grace)  # an error in runner must not leave it running
        raise
    finally:
        reaper.release(proc)
    reaper.reap_orphans()
    reader.finish(OUTPUT_LINGER_S)
    result.output_tail = reader.tail()
    result.duration_s = time.monotonic() - started
    return result


def _stop_group(proc: subprocess.Popen, kill_grace: float) -> None:
    """SIGTERM to the group, SIGKILL after kill_grace: what a stop does, without the
    machinery that just failed."""
    for sig, wait in ((signal.SIGTERM, kill_grace), (signal.SIGKILL, KILL_WAIT_S)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # the whole group: what the task started too
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)


def _start_error(exc: BaseException, argv: list[str], cwd: str) -> str:
    if isinstance(exc, OSError) and exc.filename == cwd:
        return f"cannot start: working directory {cwd}: {exc.strerror}"
    if isinstance(exc, OSError) and exc.errno == errno.ENOEXEC:
        return f"cannot start {argv[0]}: not an executable format (missing #! line?)"
    if isinstance(exc, OSError):
        return f"cannot start {argv[0]}: {exc.strerror}"
    return f"cannot start {argv[0]}: {exc}"


class _Waiter:
    """Waits for one process, enforcing max_time and stop requests on its whole group
    and on what escaped the group (runner.reaper)."""

    def __init__(
        self, proc: subprocess.Popen, limits: Limits, signals: SignalState | SignalView,
        started: float, env: dict[str, str] | None = None, label: str = "",
    ) -> None:
        self.proc = proc
        self.limits = limits
        self.signals = signals
        self.pgid = proc.pid  # start_new_session makes the child its group's leader
        self.deadline = started + limits.max_time if limits.max_time > 0 else None
        self.kill_at: float | None = None
        self.killed = False
        self.result = ProcessResult()
        args = proc.args
        program = args if isinstance(args, (str, bytes, os.PathLike)) else args[0]
        self.label = label or os.path.basename(os.fsdecode(program))
        self.processes = reaper.RunProcesses(proc.pid, env or {})

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
                    # The loop re-checks the deadlines: a huge max_time needs no huge wait.
                    selector.select(None if timeout is None else min(timeout, MAX_WAIT_S))
                    self.signals.expect_wake_by(time.monotonic())  # awake: report again soon
                    self.signals.drain()
            finally:
                os.close(pidfd)
        self._record_status(self.proc.returncode)
        try:
            if self.kill_at is not None:
                self._finish_group()
        finally:
            self.processes.close()
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
        # Find the escaped processes before the group dies: their parents still link
        # them to the task then.
        procs = reaper.scan()
        self.processes.collect(procs)
        self._signal_group(signal.SIGTERM)
        self.processes.signal_leftovers(signal.SIGTERM, procs)
        self.kill_at = now + self.limits.kill_grace

    def _kill(self) -> None:
        if not self.killed:
            self._signal_group(signal.SIGKILL)
            procs = reaper.scan()
            self.processes.collect(procs)
            self.processes.signal_leftovers(signal.SIGKILL, procs)
            self.killed = True

    def _signal_group(self, signum: int) -> bool:
        return signal_group(self.pgid, signum)

    def _finish_group(self) -> None:
        """After a stop, the rest of the group and the leftovers get the same grace, then
        SIGKILL; runner goes on only when they are gone (the next try must not meet them).
        Then each leftover is reported."""
        give_up = None
        while True:
            procs = reaper.scan()
            if not procs:  # no /proc: only the group can be seen
                self._finish_group_blind()
                return
            for left in self.processes.collect(procs):  # escaped while the group died
                left.send(signal.SIGKILL if self.killed else signal.SIGTERM)
            if not self.processes.group_alive(procs) and not self.processes.leftovers_alive(
                    procs):
                break
            now = time.monotonic()
            if not self.killed and (now >= (self.kill_at or 0)
                                    or self.signals.stop_count > self.limits.stop_after):
                self._kill()
            if self.killed:
                give_up = give_up or now + KILL_WAIT_S
                if now >= give_up:
                    break
            time.sleep(GROUP_POLL_S)
        reaper.reap_orphans(procs)
        why = "TIMEOUT" if self.result.timed_out else "STOPPED"
        self.result.leftovers = self.processes.report(self.label, why, reaper.scan())

    def _finish_group_blind(self) -> None:
        while signal_group(self.pgid, 0):
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


class _OutputReader(threading.Thread):
    """Reads a task's output, masks it and passes it on line by line; keeps the last bytes."""

    def __init__(self, stream, on_line: OnLine, masker: Masker) -> None:
        super().__init__(daemon=True, name="output")
        self.stream = stream
        self.on_line = on_line
        self.masked = masker.stream()
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_size = 0
        self._lock = threading.Lock()

    def run(self) -> None:
        try:
            with self.stream:
                while chunk := self.stream.readline(LINE_LIMIT):
                    # readline() returns a piece shorter than the limit without a newline
                    # only at the end of the output: nothing can follow it to complete a
                    # secret, so none of it is held back.
                    end = len(chunk) < LINE_LIMIT and not chunk.endswith(b"\n")
                    self._pass_on(self.masked.feed(chunk, final=end))
                self._pass_on(self.masked.feed(b"", final=True))
        except (OSError, ValueError):
            pass

    def _pass_on(self, piece: bytes) -> None:
        if piece:  # empty when all of it is held back, or nothing was left at the end
            self._keep(piece)
            self.on_line(decode_line(piece))

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
    """Bytes of one output line as text, every byte kept (invalid UTF-8 as surrogate
    escapes): the log escapes it (runner.escape), once, like every message."""
    return chunk.rstrip(b"\n").decode("utf-8", "surrogateescape")
