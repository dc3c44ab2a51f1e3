"""File descriptors: how many tasks runner can run at once without running out.

A running task holds about FDS_PER_TASK of runner's descriptors (its output pipe and the
eventfd that wakes its reader, a pidfd, a wake-up pipe, an epoll set, and for a moment the
pipes of the fork; measured: 20 running tasks, 139 descriptors in all); runner's own files
(journal, status, sockets, logs) take at most RESERVED. Past the soft RLIMIT_NOFILE a
pipe() fails with EMFILE, so runner raises its soft limit as far as `max_parallel` needs
(never past the hard limit) and runs no more tasks at once than the limit allows.

It raises the limit only as far as needed, not to the hard limit: tasks inherit it, and a
soft limit above 1024 hands programs that still use select() descriptors it cannot watch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
from dataclasses import dataclass

log = logging.getLogger("runner")
FDS_PER_TASK = 8
RESERVED = 64


@dataclass(frozen=True)
class Capacity:
    """How many tasks may run at once, and the limit that says so."""

    tasks: int
    soft: int
    hard: int

    def note(self, max_parallel: int) -> str | None:
        """A warning when the limit holds max_parallel back, else None."""
        if self.tasks >= max_parallel:
            return None
        return (f"[runner] max_parallel = {max_parallel}, but the file descriptor limit "
                f"(RLIMIT_NOFILE {self.soft}, hard {self.hard}) allows {self.tasks} tasks at "
                f"once: at most {self.tasks} run at a time (raise the hard limit, e.g. "
                "LimitNOFILE= in the unit, to run more)")


def close_on_exec() -> None:
    """Make every descriptor runner was started with (other than 0, 1 and 2) close-on-
    exec: none of them is for its tasks, and runner.process starts tasks with
    posix_spawn, which passes on whatever is not. (Python opens its own so already.)"""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: every number that could be open
        fds = list(range(3, min(_limits()[0], 1 << 16)))
    for fd in fds:
        if fd > 2:
            with contextlib.suppress(OSError):  # not open (the listing's own, by now)
                os.set_inheritable(fd, False)


def needed(max_parallel: int) -> int:
    return RESERVED + FDS_PER_TASK * max_parallel


def tasks_for(limit: int) -> int:
    return max(1, (limit - RESERVED) // FDS_PER_TASK)


def _limits() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    return (soft if soft != infinite else 1 << 20), (hard if hard != infinite else 1 << 20)


def fit(max_parallel: int) -> Capacity:
    """Raise the soft limit toward what max_parallel needs; what runner can run at once."""
    soft, hard = _limits()
    wanted = min(needed(max_parallel), hard)
    if wanted > soft:
        try:
            # The hard limit as the kernel has it (RLIM_INFINITY stays infinite).
            raw_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, raw_hard))
            soft = wanted
        except (OSError, ValueError) as exc:
            log.warning("cannot raise RLIMIT_NOFILE to %d: %s", wanted, exc)
    return Capacity(min(max_parallel, tasks_for(soft)), soft, hard)


def possible(max_parallel: int) -> Capacity:
    """What fit() would reach, without changing anything (`runner check`)."""
    soft, hard = _limits()
    limit = max(soft, min(needed(max_parallel), hard))
    return Capacity(min(max_parallel, tasks_for(limit)), limit, hard)


def preload_unwinder() -> None:
    """glibc loads libgcc_s with dlopen() when a thread first exits; out of descriptors,
    that open fails and the whole process aborts ("libgcc_s.so.1 must be installed for
    pthread_exit to work"), orphaning every task. Loaded at start, it is already there."""
    import ctypes

    try:
        ctypes.CDLL("libgcc_s.so.1")  # by soname: find_library would run ldconfig
    except OSError as exc:  # a static build has no libgcc_s to need
        log.debug("libgcc_s not preloaded: %s", exc)
