"""Run one command as its own process group and wait for it without polling.

The wait is a select() on a pidfd (the child exited), the signal self-pipe (runner
was asked to stop) and the nearest deadline (max_time, then kill_grace). Output is
read by a thread that hands whole lines to a callback as they arrive, with every
secret value masked first (runner.masking.StreamMasker): before the output is cut into
logged pieces or kept as the tail, so no cut can split a secret and let it through.

Nothing a task writes before it exits is lost: when it has exited, runner waits until
every byte it had written (what was read, plus what the pipe still holds) has been
logged, however slow the log, and only then takes the tail and reports the result. A
slow log (a stalled journald) slows runner and the task down, never costs a line. What
a process the task left behind writes into the pipe later is logged as
`[NAME background] line` until the pipe's end, or until runner exits (it logs what the
pipe holds then); it is not part of the task's tail. See _OutputReader.

Memory: whatever a task writes, runner holds per running task a read buffer and one
piece of a line (LINE_LIMIT bytes each; the piece's text is at most 4 times as long when
every byte is escaped), the bytes held back by masking (fewer than the longest secret
value) and the tail kept for the journal (TAIL_BYTES plus at most one piece); a process
left behind holding the pipe costs the buffer and a piece until the pipe's end. A piece
is logged and dropped before the next one is read, so a task writing faster than runner
logs waits on the full pipe (the kernel's buffer, 64 KiB by default, which is all that
runner has still to read once the task has exited). Measured: 1 GiB of output, or one
line of 100 MiB, raise runner's peak RSS by less than 1 MiB
(tests/faults/test_process_faults.py).

On a timeout or a stop the processes that escaped the task's group (setsid, a daemon's
double fork) are found and killed too; see runner.reaper.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import errno
import fcntl
import logging
import os
import select
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import permissions, reaper, usage
from .cgroup import Cell
from .masking import Masker
from .signals import SignalState, SignalView
from .states import ended_by
from .workers import Job, Pool

log = logging.getLogger("runner")

LINE_LIMIT = 64 * 1024  # longer lines are passed on in pieces of this size
TAIL_BYTES = 64 * 1024  # how much of the end of the output is kept with the result
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
    cost: usage.Cost | None = None  # None when it never started


def describe_exit(result: ProcessResult) -> str:
    """How a process ended, in a few words: its error, `signal N` or `exit N`."""
    return ended_by(result.error, result.signal, result.exit_code)


@dataclass(frozen=True)
class Limits:
    """Time limits of one run; stop_after is how many stop signals interrupt it."""

    max_time: float = 0.0
    kill_grace: float = 10.0
    stop_after: int = 1


OnLine = Callable[[str], None]
Later = Callable[[Callable[[], object]], None]


def _now(work: Callable[[], object]) -> None:
    work()


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
    cell: Cell | None = None,
    on_start: Callable[[], None] | None = None,
    later: Later | None = None,
) -> ProcessResult:
    """Run argv in a new session with stdin from /dev/null and wait for it.

    Its output reaches `on_line` and the result's output_tail masked by `masker`
    (required: every process runner starts can print a secret it was given).

    `label` names the run in warnings about processes it left behind (default: the
    task named by RUNNER_TASK in env, else the program's file name). With `trust`
    (strict_permissions), the program and the paths it names are checked right before
    the exec, and the program is run by the path that was checked. `on_start` is
    called right after the process started, before its first line is passed on.
    `later` takes what is left to do once the run's result is known and that nothing
    needs before the next start (reaping adopted orphans, closing an output pipe nobody
    read): a chain does it while its next process runs. Without it, it is done here.
    """
    try:
        return _run(argv, env, cwd, limits, signals, on_line, masker, label, trust, cell,
                    on_start, later or _now)
    finally:
        if cell is not None:
            cell.release()


def _run(argv: list[str], env: dict[str, str], cwd: str, limits: Limits,
         signals: SignalState | SignalView, on_line: OnLine, masker: Masker,
         label: str | None, trust: permissions.Trust | None,
         cell: Cell | None, on_start: Callable[[], None] | None,
         later: Later) -> ProcessResult:
    started = time.monotonic()
    executable = None
    if trust is not None:
        executable, reason = permissions.verify(argv, trust, cwd=cwd,
                                                search_path=env.get("PATH"))
        if reason:
            return ProcessResult(error=reason, refused=True)
    try:
        # Before the start: a run that cannot have its reader (no fd left) never starts.
        wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    except OSError as exc:
        return ProcessResult(error=_start_error(exc, argv, cwd), duration_s=0.0)
    try:
        proc = _start(argv, executable, env, cwd, cell)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        os.close(wake)
        if cell is not None and type(exc) is subprocess.SubprocessError:
            return ProcessResult(error=f"cannot start {argv[0]}: cannot enter its cgroup "
                                       f"{cell.path}", duration_s=0.0)
        return ProcessResult(error=_start_error(exc, argv, cwd), duration_s=0.0)
    if cell is not None:
        cell.close_fds()
    label = label or env.get("RUNNER_TASK") or os.path.basename(argv[0])
    reader = _OutputReader(proc.stdout, wake, on_line, _background_line(label), masker)
    try:
        if on_start is not None:
            on_start()  # before the reader starts: its lines come before the task's
        result = _Waiter(proc, limits, signals, started, env, label, cell, reader).wait()
    except BaseException:
        reader.start()  # reads to the end and closes the pipe, as after a run
        _stop_group(proc, limits.kill_grace)  # an error in runner must not leave it running
        if cell is not None:
            cell.kill(proc.pid)  # nor anything it started, wherever it went
        raise
    finally:
        reaper.release(proc)  # now: the pid may be the next process's
    later(reaper.reap_orphans)
    if not reader.finish_silent(later):
        reader.finish()
    result.output_tail = reader.tail()
    result.duration_s = time.monotonic() - started
    return result


def _start(argv: list[str], executable: str | None, env: dict[str, str], cwd: str,
           cell: Cell | None) -> subprocess.Popen | Spawned:
    """Start argv in a new session, stdin from /dev/null, stdout and stderr one pipe.

    posix_spawn (a vfork and an exec, and nothing of subprocess's own work: about 0.15
    ms less per task) where it does all that is needed: no cgroup to enter before the
    exec, the working directory already runner's own (posix_spawn cannot change it
    here; under systemd both are /), a program given by its path. It passes every
    descriptor that is not close-on-exec to the task: runner makes all of its own so
    (runner.fdlimit.close_on_exec at the start; Python's are so anyway)."""
    program = executable or argv[0]
    if cell is None and "/" in program and cwd == _cwd():
        spawned = _spawn(program, argv, env)
        if spawned is not None:
            return spawned
    # In its cell before the exec: all it ever starts is inside (runner.cgroup).
    # preexec_fn costs a fork instead of a vfork; it only writes to an open fd.
    return reaper.popen(
        argv,
        executable=executable,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        start_new_session=True,
        close_fds=True,
        preexec_fn=cell.enter if cell is not None else None,
    )


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # runner's own directory is gone
        return None


def _spawn(program: str, argv: list[str], env: dict[str, str]) -> Spawned | None:
    """posix_spawn with the output pipe; None when the pipe took fd 1 or 2 (runner's own
    were closed), which a dup2 onto itself would leave close-on-exec."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        if write_end < 3 or read_end < 3:
            os.close(read_end)
            return None
        pid = reaper.spawn(
            program, argv, env,
            file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                          (os.POSIX_SPAWN_DUP2, write_end, 1),
                          (os.POSIX_SPAWN_DUP2, write_end, 2)],
            setsid=True,
            setsigdef=_DEFAULT_IN_TASKS,
            setsigmask=(),
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return Spawned(pid, argv, _Pipe(read_end))


# What Python ignores and a task must not inherit ignored (subprocess's restore_signals).
_DEFAULT_IN_TASKS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ")
                          if hasattr(signal, name))


class _Pipe:
    """The read end of a task's output pipe: what _OutputReader uses of a file."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Spawned:
    """A process started with posix_spawn: what runner uses of a subprocess.Popen."""

    def __init__(self, pid: int, args: list[str], stdout: _Pipe) -> None:
        self.pid = pid
        self.args = args
        self.stdout = stdout
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: as Popen says then
                self.returncode = 0
                return 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Like Popen.wait: subprocess.TimeoutExpired after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(GROUP_POLL_S)
        assert self.returncode is not None
        return self.returncode


def _stop_group(proc: subprocess.Popen | Spawned, kill_grace: float) -> None:
    """SIGTERM to the group, SIGKILL after kill_grace: what a stop does, without the
    machinery that just failed."""
    for sig, wait in ((signal.SIGTERM, kill_grace), (signal.SIGKILL, KILL_WAIT_S)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # the whole group: what the task started too
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)


def _background_line(label: str) -> OnLine:
    """How output written after the run's end is logged: `[LABEL background] line`."""
    return lambda line: log.info("[%s background] %s", label, line)


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
        self, proc: subprocess.Popen | Spawned, limits: Limits,
        signals: SignalState | SignalView,
        started: float, env: dict[str, str] | None = None, label: str = "",
        cell: Cell | None = None, reader: _OutputReader | None = None,
    ) -> None:
        self.proc = proc
        self.reader = reader  # started at the first output (see _OutputReader)
        self.cell = cell
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
        # poll(), not a selector: an epoll instance per task cost a file descriptor and
        # three system calls more than this one wait needs.
        poller = select.poll()
        pidfd = os.pidfd_open(self.proc.pid)
        try:
            poller.register(pidfd, select.POLLIN)
            for fd in self.signals.fds:
                poller.register(fd, select.POLLIN)
            output = self.reader.fd if self.reader is not None else -1
            if output >= 0:
                poller.register(output, select.POLLIN)
            while not self._reaped():
                now = time.monotonic()
                self._react(now)
                timeout = self._timeout(now)
                self.signals.expect_wake_by(None if timeout is None else now + timeout)
                # The loop re-checks the deadlines: a huge max_time needs no huge wait.
                ready = poller.poll(None if timeout is None else min(timeout, MAX_WAIT_S)
                                    * 1000)
                events = [event for fd, event in ready if fd == output] if output >= 0 else []
                if events:
                    assert self.reader is not None
                    if events[0] & select.POLLIN:
                        self.reader.start()  # the first output: from now on it reads
                    else:  # the pipe's end (every writer exited) and nothing in it
                        self.reader.at_end = True
                    poller.unregister(output)
                    output = -1
                self.signals.expect_wake_by(time.monotonic())  # awake: report again soon
                self.signals.drain()
        finally:
            os.close(pidfd)
        assert self.proc.returncode is not None  # _reaped() said so
        self._record_status(self.proc.returncode)
        try:
            if self.kill_at is not None and self.cell is not None:
                self._finish_cell(self.cell)
            elif self.kill_at is not None:
                self._finish_group()
        finally:
            self.processes.close()
        if self.cell is not None:
            self.result.cost = self.cell.cost()
        return self.result

    def _reaped(self) -> bool:
        """Reap the process with wait4() (its CPU time comes with the status); True once
        it has exited. Popen is told the status, so it never waits for it itself."""
        if self.proc.returncode is not None:
            return True
        try:
            pid, status, rusage = os.wait4(self.proc.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: only Popen can know the status
            return self.proc.poll() is not None
        if not pid:
            return False
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.result.cost = usage.from_rusage(rusage)
        return True

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
        self.kill_at = now + self.limits.kill_grace
        if self.cell is not None:
            self.cell.signal_all(signal.SIGTERM, self.pgid)
            return
        # Find the escaped processes before the group dies: their parents still link
        # them to the task then.
        procs = reaper.scan()
        self.processes.collect(procs)
        self._signal_group(signal.SIGTERM)
        self.processes.signal_leftovers(signal.SIGTERM, procs)

    def _kill(self) -> None:
        if not self.killed and self.cell is not None:
            self.cell.kill(self.pgid)
            self.killed = True
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
            give_up = self._escalate(give_up)
            if give_up is not None and time.monotonic() >= give_up:
                break
            time.sleep(GROUP_POLL_S)
        reaper.reap_orphans(procs)
        why = "TIMEOUT" if self.result.timed_out else "STOPPED"
        self.result.leftovers = self.processes.report(self.label, why, reaper.scan())

    def _escalate(self, give_up: float | None) -> float | None:
        """One step of a stop's end: SIGKILL once kill_grace is over (or at a second
        stop signal); from then on, the moment runner stops waiting (KILL_WAIT_S)."""
        now = time.monotonic()
        if not self.killed and (now >= (self.kill_at or 0)
                                or self.signals.stop_count > self.limits.stop_after):
            self._kill()
        if self.killed and give_up is None:
            give_up = now + KILL_WAIT_S
        return give_up

    def _finish_cell(self, cell: Cell) -> None:
        """After a stop, what is left in the cell gets the rest of kill_grace, then
        cgroup.kill; runner goes on when the cell is empty."""
        give_up = None
        while cell.populated():
            give_up = self._escalate(give_up)
            if give_up is not None and time.monotonic() >= give_up:
                break
            time.sleep(GROUP_POLL_S)
        why = "TIMEOUT" if self.result.timed_out else "STOPPED"
        self.result.leftovers = cell.report(self.label, why)

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


class _OutputReader:
    """Reads a task's output, masks it and passes it on piece by piece (a line, or
    LINE_LIMIT bytes of a longer one); keeps the last TAIL_BYTES of the task's own.

    The rule that ends the task's part: once the task has exited (and been reaped),
    every byte it wrote is either read already or still in the pipe. So finish() sets a
    mark there, at what was read plus what the pipe holds (FIONREAD), and waits until
    the reader has passed on everything up to it. A reader that is behind (blocked in
    logging) only makes that wait longer: it never gives up on a time limit, and the
    wait is bounded by the pipe's size, not by what anyone writes later. Whether a
    process the task left behind still holds the pipe does not matter for the task's
    part: what it writes after the task's exit lies past the mark, and a process that
    floods the pipe cannot delay the result. Past the mark the output is logged as
    background until the end of the pipe, or until runner exits: close() marks what
    the pipe holds then, passes it on and stops.

    The reader never reads past a mark, so no read mixes the two parts. At the mark an
    unfinished last line of the task's is passed on as it is, like one at the end.
    """

    def __init__(self, stream, wake: int, on_line: OnLine, on_background: OnLine,
                 masker: Masker) -> None:
        self.stream = stream
        self.fd = stream.fileno()
        self.outputs = [on_line, on_background]  # one per part: the task's, background
        self.masker = masker
        self.masked = masker.stream()
        self._line = b""  # the line read so far: never LINE_LIMIT bytes or more
        self._buffer: memoryview | None = None  # LINE_LIMIT bytes, made at the first read
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_size = 0
        self._part = 0  # index into self.outputs
        # Guards the counters below; held for a read, never while logging.
        self._lock = threading.Lock()
        self._read_bytes = 0  # bytes read from the pipe so far
        self._mark: int | None = None  # where the current part ends (a read count)
        self._closing = False  # runner exits: the background part ends at the mark
        self._ended = False  # the pipe and the wake-up fd are closed
        # Made when the thread starts (most tasks of a chain write nothing and need no
        # thread; an Event with its Condition was a tenth of what setting this up cost).
        self._task_done: threading.Event | None = None
        self._wake = wake  # a non-blocking eventfd: finish() and close() wake the reader
        self._job: Job | None = None
        self.at_end = False  # the pipe was seen at its end with nothing in it

    def start(self) -> None:
        """Read from now on, in a thread of the pool (once; later calls do nothing)."""
        if self._job is None:
            self._task_done = threading.Event()
            self._job = _reader_threads.submit(self.run, "output reader")

    def _done(self) -> threading.Event:
        assert self._task_done is not None  # start() made it, before the thread ran
        return self._task_done

    def _silent(self) -> bool:
        """Never started, and the pipe is at its end with nothing in it: the task wrote
        nothing and nothing else holds the pipe (a process exits with its files closed).
        Most tasks of a chain: no thread is needed for them at all."""
        if self._job is not None:
            return False
        if self.at_end:
            return True
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return bool(poller.poll(0)) and not _pending(self.fd)

    def join(self) -> None:
        if self._job is not None:
            self._job.join()

    def run(self) -> None:
        try:
            self._read_all()
        except (OSError, ValueError):
            pass
        finally:
            try:
                self._end_part(more=False)  # the end of the pipe ends the task's part too
            finally:
                self._close()  # even if passing on failed: finish() must return
                _background.discard(self)

    def _close(self) -> None:
        """The pipe and the wake-up fd closed; finish() returns."""
        with self._lock:  # finish() and close() use the fds only while open
            self._ended = True
            self.stream.close()
            os.close(self._wake)
        self._done().set()

    def _read_all(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._wake, select.POLLIN)
        readable = False
        while True:
            chunk = self._read(readable)
            if chunk is None:  # the mark: the current part ends here
                if not self._end_part(more=True):
                    return
            elif chunk:
                self._take(chunk)
            elif readable:
                return  # the end of the pipe: every writer has closed it
            else:
                # Wait only right after _read() found the mark not reached (under the
                # lock): a mark set since then wakes this wait through the eventfd.
                readable = any(fd == self.fd for fd, _event in poller.poll())
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self._wake)
                continue
            readable = False  # look at the mark again before the next wait

    def _read(self, readable: bool) -> bytes | None:
        """What the pipe holds up to the mark (b"" when nothing is ready), or None at
        the mark. Never reads past the mark, so no read mixes the two parts."""
        with self._lock:
            limit = LINE_LIMIT - len(self._line)
            if self._mark is not None:
                if self._read_bytes >= self._mark:
                    return None
                limit = min(limit, self._mark - self._read_bytes)
            if not readable:
                return b""
            # Into a buffer of runner's own, then copied at its size: os.read() would
            # allocate `limit` bytes for every read and shrink them (heap fragments).
            if self._buffer is None:  # most tasks never write: no 64 KiB for them
                self._buffer = memoryview(bytearray(LINE_LIMIT))
            count = os.readv(self.fd, [self._buffer[:limit]])
            self._read_bytes += count
            return self._buffer[:count].tobytes()

    def _take(self, chunk: bytes) -> None:
        """Pass on every whole line and every LINE_LIMIT bytes of a longer one."""
        data = self._line + chunk if self._line else chunk
        start = 0
        while (end := data.find(b"\n", start) + 1) or len(data) - start >= LINE_LIMIT:
            end = end or start + LINE_LIMIT
            self._pass_on(self.masked.feed(data[start:end]))
            start = end
        self._line = data[start:]

    def _end_part(self, more: bool) -> bool:
        """The last bytes of the current part go out (no later byte can complete a line
        or a secret in them); True when the background part follows (`more`: the pipe
        is still open)."""
        self._pass_on(self.masked.feed(self._line, final=True))
        self._line = b""
        with self._lock:
            follows = more and not self._part and not self._closing
            if follows:
                self._part, self._mark = 1, None
                self.masked = self.masker.stream()
                _background.add(self)
        self._done().set()
        return follows

    def _pass_on(self, piece: bytes) -> None:
        if not piece:  # all of it held back, or nothing was left at the end
            return
        if self._part == 0:
            self._keep(piece)
        self.outputs[self._part](decode_line(piece))

    def _keep(self, chunk: bytes) -> None:
        self._tail.append(chunk)
        self._tail_size += len(chunk)
        while self._tail_size - len(self._tail[0]) >= TAIL_BYTES:
            self._tail_size -= len(self._tail.popleft())

    def tail(self) -> bytes:
        """The last TAIL_BYTES of the task's own output (call after finish())."""
        return b"".join(self._tail)[-TAIL_BYTES:]

    def finish(self) -> None:
        """The task has exited: wait until everything it wrote has been passed on.

        Every byte it wrote is either read already or still in the pipe, so the mark
        bounds the wait by the pipe's size, not by time: only a log that never takes
        another line could make it wait for ever (and then so would runner's own lines).
        A background process holding the pipe does not: what it writes later is past
        the mark."""
        if self.finish_silent(_now):
            return
        self.start()
        self._set_mark()
        self._done().wait()

    def finish_silent(self, later: Later) -> bool:
        """finish() of a task that wrote nothing (no thread ever read the pipe, and none
        will: nothing to lock against or wake); its descriptors are closed by `later`.
        False (nothing done) when it wrote something."""
        if not self._silent():
            return False
        self._ended = True
        later(self._close_unread)
        return True

    def _close_unread(self) -> None:
        self.stream.close()
        os.close(self._wake)

    def close(self) -> None:
        """runner exits: pass on what the pipe holds now, then stop reading."""
        with self._lock:
            self._closing = True
        self._set_mark()
        self.join()

    def _set_mark(self) -> None:
        with self._lock:
            if self._ended:  # the end of the pipe came first: nothing more to mark
                return
            if self._mark is None:
                self._mark = self._read_bytes + _pending(self.fd)
            os.eventfd_write(self._wake, 1)


def _pending(fd: int) -> int:
    """How many bytes the pipe holds."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]


class _Readers:
    """The readers of background output (their task has ended, a process it left holds
    the pipe): at exit each passes on what the pipe holds by then and stops."""

    def __init__(self) -> None:
        self._readers: set[_OutputReader] = set()
        self._lock = threading.Lock()

    def add(self, reader: _OutputReader) -> None:
        with self._lock:
            self._readers.add(reader)

    def discard(self, reader: _OutputReader) -> None:
        with self._lock:
            self._readers.discard(reader)

    def close(self) -> None:
        with self._lock:
            readers = list(self._readers)
        for reader in readers:
            reader.close()


_background = _Readers()
# The readers' threads, reused from task to task (runner.workers): process-wide, like
# _background, since any run_process (tasks, checks, hooks) needs one.
_reader_threads = Pool("output")
# At exit, before logging's own handler (registered earlier, so run later) closes the log.
atexit.register(_background.close)


def decode_line(chunk: bytes) -> str:
    """Bytes of one output line as text, every byte kept (invalid UTF-8 as surrogate
    escapes): the log escapes it (runner.escape), once, like every message."""
    return chunk.rstrip(b"\n").decode("utf-8", "surrogateescape")
