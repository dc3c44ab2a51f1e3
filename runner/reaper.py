"""What a task leaves behind: runner as a subreaper, escaped processes, zombies.

A task runs in its own session and process group, and a timeout or a stop signals that
group. A process that calls setsid() (a daemon, `setsid cmd &`) leaves the group, and
with a double fork also leaves the task's process tree. With PR_SET_CHILD_SUBREAPER
such orphans are re-parented to runner instead of PID 1, so runner can still find them:

- at a timeout or a stop, the processes of a task run are every descendant of the task
  (by parent links in /proc) plus the orphans runner adopted that belong to it: started
  after the task, not a child runner is waiting for, not in runner's own session, and
  whose environment does not name another run (RUNNER_RUN_ID, RUNNER_TASK, RUNNER_TRY,
  RUNNER_ITERATION); the subtrees of those count too;
- the ones outside the task's process group are its *leftovers*: they get the group's
  SIGTERM, SIGKILL after kill_grace, and a warning each naming pid and command line;
- adopted orphans that exit become runner's zombies: runner reaps them, by pid and only
  those it did not start itself, so no exit status a wait elsewhere needs is taken away.

After an OK exit nothing is killed: a task starting a worker in the background is how a
machine gets to work (README, "A task's background processes").
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("runner")

PR_SET_CHILD_SUBREAPER = 36
# Environment variables that tie a process to one task run (runner.taskenv).
RUN_MARKS = ("RUNNER_RUN_ID", "RUNNER_TASK", "RUNNER_ITERATION", "RUNNER_TRY")
COMMAND_LIMIT = 200  # characters of a leftover's command line in the log

_lock = threading.Lock()
_children: set[int] = set()  # pids runner started and still waits for (subprocess)


# -- runner as the subreaper of its tasks -------------------------------------------


def _libc():
    # The symbols python itself is linked with (libc among them); no ldconfig run.
    for name in (None, "libc.so.6"):
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
    return None


def enable_subreaper() -> bool:
    """Make runner the reaper of orphans among its descendants (Linux ≥ 3.4). Call once,
    in the process that supervises tasks (it is not inherited over fork). False (and a
    debug message) when the kernel or libc refuse; runner then works as before, except
    that a daemon that double-forked out of its task is not found any more."""
    libc = _libc()
    if libc is None or not hasattr(libc, "prctl"):
        log.debug("subreaper: no prctl() in libc")
        return False
    one, zero = ctypes.c_ulong(1), ctypes.c_ulong(0)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, one, zero, zero, zero) != 0:
        err = ctypes.get_errno()
        log.debug("subreaper: prctl(PR_SET_CHILD_SUBREAPER): %s", os.strerror(err))
        return False
    return True


# -- children runner waits for itself -----------------------------------------------


class Child(Protocol):
    """A started process as release() needs it: a subprocess.Popen, or runner.process's
    own record of one it started with posix_spawn."""

    pid: int


def popen(argv: list[str], **kwargs) -> subprocess.Popen:
    """subprocess.Popen, registered so that reap_orphans() never reaps this child in
    another thread before its own wait does. Call release(proc) once it was waited for."""
    with _lock:
        proc = subprocess.Popen(argv, **kwargs)
        _children.add(proc.pid)
    _wake_reaper()
    return proc


def spawn(path: str, argv: list[str], env: dict[str, str], **kwargs) -> int:
    """os.posix_spawn, registered like popen(); the pid."""
    with _lock:
        pid = os.posix_spawn(path, argv, env, **kwargs)
        _children.add(pid)
    _wake_reaper()
    return pid


def _wake_reaper() -> None:
    # Set already: the reaper's wait returns at once and its next waitid() sees this child
    # (it clears the event only right before that waitid). Event.set() takes two locks.
    if not _child_started.is_set():
        _child_started.set()


def release(proc: Child) -> None:
    with _lock:
        _children.discard(proc.pid)


# -- /proc -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    """One line of /proc/PID/stat: what runner needs of it."""

    pid: int
    ppid: int
    pgrp: int
    sid: int
    state: str
    start: int  # clock ticks after boot: with pid, identifies the process

    @property
    def running(self) -> bool:
        return self.state not in ("Z", "X")


def parse_stat(pid: int, stat: bytes) -> Proc | None:
    # The fields after the command name, which may hold spaces and parentheses.
    fields = stat[stat.rfind(b")") + 2:].split()
    if len(fields) < 20:
        return None
    return Proc(pid, int(fields[1]), int(fields[2]), int(fields[3]), fields[0].decode(),
                int(fields[19]))


def read_proc(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return parse_stat(pid, handle.read())
    except (OSError, ValueError):
        return None


def scan() -> dict[int, Proc]:
    """Every process in /proc (empty when /proc cannot be read)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    procs = {}
    for entry in entries:
        if entry.isdigit():
            proc = read_proc(int(entry))
            if proc is not None:
                procs[proc.pid] = proc
    return procs


def descendants(procs: dict[int, Proc], roots: set[int]) -> set[int]:
    """roots and every process below them, by parent links."""
    children: dict[int, list[int]] = {}
    for proc in procs.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found, todo = set(), [r for r in roots if r in procs]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return found


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read(4 * COMMAND_LIMIT)
    except OSError:
        raw = b""
    # Every byte kept (surrogate escapes): the log and the journal escape it, once, by
    # runner.escape's rule, which keeps the line one line whatever the arguments hold.
    text = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "surrogateescape")
    if not text:
        try:
            with open(f"/proc/{pid}/comm", "rb") as handle:
                text = "[" + handle.read().strip().decode("utf-8", "surrogateescape") + "]"
        except OSError:
            text = "?"
    return text if len(text) <= COMMAND_LIMIT else text[:COMMAND_LIMIT - 1] + "…"


def environment(pid: int) -> dict[str, str] | None:
    """The environment a process started with; None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


# -- zombies ---------------------------------------------------------------------------


def _zombie_child_waiting() -> bool:
    """True when some child of runner has exited and is not reaped (nothing is reaped)."""
    try:
        found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    except OSError:
        return True
    return found is not None


def _runner_children() -> dict[int, Proc]:
    """runner's children (each thread's /proc/self/task/TID/children); every process
    when the kernel does not list children (CONFIG_PROC_CHILDREN)."""
    found = {}
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children", "rb") as handle:
                for pid in handle.read().split():
                    proc = read_proc(int(pid))
                    if proc is not None:
                        found[proc.pid] = proc
    except FileNotFoundError:
        return scan()
    except OSError:
        pass  # a thread that ended while listed
    return found


def reap_orphans(procs: dict[int, Proc] | None = None) -> list[int]:
    """Reap the zombies among runner's children that runner did not start: adopted
    orphans of tasks. Never a child of runner's own session (a plain subprocess.run
    elsewhere in runner) nor one registered by popen(). Returns the pids reaped."""
    if procs is None and not _zombie_child_waiting():
        return []  # the common case costs one system call
    me, my_sid = os.getpid(), os.getsid(0)
    reaped = []
    with _lock:
        for proc in (procs if procs is not None else _runner_children()).values():
            if proc.ppid != me or proc.running or proc.pid in _children:
                continue
            if proc.sid == my_sid:
                continue
            try:
                pid, _status = os.waitpid(proc.pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if pid:
                reaped.append(pid)
    return reaped


class OrphanReaper:
    """Reaps adopted orphans as they die, not when their task ends: a task that keeps
    double-forking short jobs would otherwise pile up runner's zombies (each holds a pid,
    and counts against the task's tasks_max).

    A thread blocks in waitid(P_ALL, WNOWAIT) (no signal handler, so nothing wakes the
    main loop or interrupts a system call): when a child has exited it looks at which.
    An adopted orphan it reaps; a child that another wait is for (registered by popen(),
    or in runner's own session) it leaves to that wait, which comes at once, and looks
    again a moment later."""

    def __init__(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="reaper")
        self._stopped = False

    def install(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        my_sid = os.getsid(0)
        while not self._stopped:
            try:
                found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:  # no child now: the next task brings one
                _child_started.wait(IDLE_WAIT_S)
                _child_started.clear()
                continue
            if found is None or self._stopped:
                continue
            try:
                self._settle(found.si_pid, my_sid)
            except Exception:  # a reaper that dies would let zombies pile up again
                log.exception("reaping orphans failed")
                _child_started.wait(IDLE_WAIT_S)

    @staticmethod
    def _settle(pid: int, my_sid: int) -> None:
        with _lock:
            ours = pid in _children
        if ours:
            # popen()'s: its own wait reaps it in a moment. Look again a little later, not
            # when it is released: a wake-up at every task's end costs a chain of short
            # tasks more than a look every OWNED_WAIT_S.
            _nobody.wait(OWNED_WAIT_S)
            return
        proc = read_proc(pid)
        if proc is not None and proc.sid != my_sid:  # an adopted orphan
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return
        # In runner's own session: a plain subprocess, whose own wait comes in a moment.
        pause, waited = 0.0002, 0.0
        while _zombie(pid):
            if waited > ABANDONED_S:  # nobody waits for it after all
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                return
            _nobody.wait(pause)
            waited += pause
            pause = min(pause * 2, 0.1)

    def uninstall(self) -> None:
        self._stopped = True  # the thread is a daemon: blocked in waitid, it dies with runner
        _child_started.set()


IDLE_WAIT_S = 1.0
OWNED_WAIT_S = 0.02
ABANDONED_S = 10.0
# Never set: a wait on the monotonic clock (time.sleep fails under libfaketime's jumps).
_nobody = threading.Event()
_child_started = threading.Event()  # set by popen(): waitid has a child to wait for


def _zombie(pid: int) -> bool:
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return False


# -- what one task run leaves behind ---------------------------------------------------


@dataclass
class Leftover:
    """A process of a task run outside its process group, found at a timeout or stop."""

    pid: int
    start: int
    command: str
    pidfd: int = -1
    signals: list[int] = field(default_factory=list)
    error: str | None = None

    def send(self, signum: int) -> None:
        """Signal it, never a process that took its pid over."""
        try:
            if self.pidfd >= 0:
                signal.pidfd_send_signal(self.pidfd, signum)
            else:
                current = read_proc(self.pid)
                if current is None or current.start != self.start:
                    return
                os.kill(self.pid, signum)
        except ProcessLookupError:
            return
        except OSError as exc:
            self.error = exc.strerror
            return
        self.signals.append(signum)

    def alive(self, procs: dict[int, Proc]) -> bool:
        proc = procs.get(self.pid)
        return proc is not None and proc.start == self.start and proc.running

    def outcome(self, procs: dict[int, Proc]) -> str:
        if not self.alive(procs):
            if signal.SIGKILL in self.signals:
                return "killed (SIGKILL after kill_grace)"
            return "killed" if self.signals else "it exited"
        if self.error:
            return f"could not kill it: {self.error}"
        return "still running after SIGKILL"

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


class RunProcesses:
    """The processes of one task run: its group (pgid = the task's pid) and leftovers."""

    def __init__(self, pid: int, env: dict[str, str]) -> None:
        self.pid = self.pgid = pid
        self._start: int | None = None
        self.marks = {key: env[key] for key in RUN_MARKS if key in env}
        self.leftovers: dict[int, Leftover] = {}

    @property
    def start(self) -> int:
        """The task's start time, read when first needed: at a timeout or stop, while
        the task is not yet waited for (so its pid cannot belong to another process).
        Most tasks end by themselves and never pay for reading /proc."""
        if self._start is None:
            proc = read_proc(self.pid)
            self._start = proc.start if proc is not None else 0
        return self._start

    def collect(self, procs: dict[int, Proc]) -> list[Leftover]:
        """Find processes of this run outside its group not found before; the new ones."""
        roots = self._adopted(procs)
        known = [(self.pid, self.start)] + [(p, left.start) for p, left in self.leftovers.items()]
        # A pid that was reaped may be taken over: only the same process is a root.
        roots.update(pid for pid, start in known if pid in procs and procs[pid].start == start)
        new = []
        for pid in sorted(descendants(procs, roots)):
            proc = procs[pid]
            if pid in self.leftovers or proc.pgrp == self.pgid or not proc.running:
                continue
            leftover = Leftover(pid, proc.start, command_line(pid))
            leftover.pidfd = _pidfd(proc)
            self.leftovers[pid] = leftover
            new.append(leftover)
        return new

    def _adopted(self, procs: dict[int, Proc]) -> set[int]:
        """Orphans runner adopted as subreaper that belong to this run."""
        me, my_sid = os.getpid(), os.getsid(0)
        with _lock:
            ours = set(_children)
        found = set()
        for proc in procs.values():
            if proc.ppid != me or proc.pid in ours or proc.sid == my_sid:
                continue
            if not proc.running or proc.start < self.start:
                continue
            if self._same_run(proc.pid):
                found.add(proc.pid)
        return found

    def _same_run(self, pid: int) -> bool:
        env = environment(pid)
        if env is None:
            return True  # cannot tell; it started after this run and is runner's orphan
        return all(env.get(key, value) == value for key, value in self.marks.items())

    def group_alive(self, procs: dict[int, Proc]) -> bool:
        return any(p.pgrp == self.pgid and p.running for p in procs.values())

    def leftovers_alive(self, procs: dict[int, Proc]) -> bool:
        """True while a leftover runner can signal still runs (one it may not signal,
        EPERM, is reported, not waited for)."""
        return any(left.alive(procs) and left.error is None for left in self.leftovers.values())

    def signal_leftovers(self, signum: int, procs: dict[int, Proc]) -> None:
        for left in self.leftovers.values():
            if left.alive(procs):
                left.send(signum)

    def report(self, label: str, why: str, procs: dict[int, Proc]) -> list[str]:
        """Log a warning per leftover; the lines logged."""
        return [report_leftover(label, left.pid, left.command, why, left.outcome(procs))
                for left in self.leftovers.values()]

    def close(self) -> None:
        for left in self.leftovers.values():
            left.close()


def report_leftover(label: str, pid: int, command: str, why: str, outcome: str) -> str:
    """Log the warning for one process a run left behind at a timeout or stop."""
    line = f"{label}: left process {pid} ({command}) behind after {why}: {outcome}"
    log.warning("%s", line)
    return line


def _pidfd(proc: Proc) -> int:
    """A pidfd of proc, checked to be the same process the scan saw; -1 if none."""
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:
        return -1
    current = read_proc(proc.pid)
    if current is None or current.start != proc.start:
        os.close(fd)
        return -1
    return fd
